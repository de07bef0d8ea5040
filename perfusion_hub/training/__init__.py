"""Training one concept (method.md §5): data, prompts, the loop, checkpoints, registration."""

from perfusion_hub.training.loop import TrainingInterrupted
from perfusion_hub.training.options import TrainOptions
from perfusion_hub.training.progress import Reporter, RichReporter, SilentReporter
from perfusion_hub.training.service import TrainResult, train_concept

__all__ = [
    "Reporter",
    "RichReporter",
    "SilentReporter",
    "TrainOptions",
    "TrainResult",
    "TrainingInterrupted",
    "train_concept",
]
