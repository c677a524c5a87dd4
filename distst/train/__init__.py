"""Training: the DeepSpeed engine, checkpoints, the hook protocol for methods, and the one loop."""

from .hooks import GradientAccess, Method, MethodList, StepInputs, TrainContext
from .loop import EXIT_REQUEUE, TrainResult, train

__all__ = ["EXIT_REQUEUE", "GradientAccess", "Method", "MethodList", "StepInputs", "TrainContext", "TrainResult",
           "train"]
