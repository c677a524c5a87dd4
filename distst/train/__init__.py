"""Training: the DeepSpeed engine, checkpoints, the hook protocol for methods, and the one loop."""

from .hooks import Method, MethodList, TrainContext
from .loop import EXIT_REQUEUE, TrainResult, train

__all__ = ["EXIT_REQUEUE", "Method", "MethodList", "TrainContext", "TrainResult", "train"]
