"""Channel pruning that makes models physically smaller: filter-L2 (mirrored), ICCP and CPST, one schedule."""

from .importance import FilterNorm, Importance, ResponseNorm, ScaleMagnitude
from .methods import ChannelSection, CpstSection, IccpSection, L2Section
from .runner import ChannelSchedule, write_slim
from .surgery import ChannelGraph, Selection, coupled_layers, mask_channels, slim, widths

__all__ = ["ChannelGraph", "ChannelSchedule", "ChannelSection", "CpstSection", "FilterNorm", "IccpSection",
           "Importance", "L2Section", "ResponseNorm", "ScaleMagnitude", "Selection", "coupled_layers",
           "mask_channels", "slim", "widths", "write_slim"]
