"""Data layer: WebDataset shards of content photos and style paintings, and their streaming loader.

``distst.data.shards`` builds shards (``distst shards build``), ``distst.data.manifest`` verifies them,
``distst.data.sample`` makes the bundled ``shards/sample`` set, and ``distst.data.loader`` streams them.
"""

from .loader import TrainStream, eval_pairs, image_batches

__all__ = ["TrainStream", "eval_pairs", "image_batches"]
