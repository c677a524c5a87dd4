"""Channel pruning that makes models physically smaller: filter-L2 (mirrored), ICCP and CPST, one runner."""

from .methods import ChannelSection, CpstSection, IccpSection, L2Section
from .runner import ChannelResult, run_channel_pruning, write_slim
from .surgery import Selection, coupled_layers, mask_channels, slim, widths

__all__ = ["ChannelResult", "ChannelSection", "CpstSection", "IccpSection", "L2Section", "Selection",
           "coupled_layers", "mask_channels", "run_channel_pruning", "slim", "widths", "write_slim"]
