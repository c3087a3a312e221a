"""Training of hybrid ONNs and teachers: losses, one loop, metrics, checkpoints."""

from onnlab.training.checkpoint import load_checkpoint, save_checkpoint
from onnlab.training.config import TrainConfig, default_config
from onnlab.training.loop import train
from onnlab.training.losses import KDLoss, TaskLoss, make_loss
from onnlab.training.metrics import accuracy, evaluate, miou

__all__ = [
    "KDLoss",
    "TaskLoss",
    "TrainConfig",
    "accuracy",
    "default_config",
    "evaluate",
    "load_checkpoint",
    "make_loss",
    "miou",
    "save_checkpoint",
    "train",
]
