"""Training: the DeepSpeed engine, checkpoints, the hook protocol for methods, and the one loop."""

from ..stop import EXIT_REQUEUE
from .hooks import GradientAccess, Method, MethodList, StepInputs, TrainContext
from .loop import TrainResult, train

__all__ = ["EXIT_REQUEUE", "GradientAccess", "Method", "MethodList", "StepInputs", "TrainContext", "TrainResult",
           "train"]
