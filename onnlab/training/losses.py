"""Loss callables of the training contract: `loss(model, batch) -> (loss_tensor, logs)`.

`batch = {"x": model input, "y": target, "x_teacher": raw images for the teacher}`. A loss
owns the forward pass (not the loop) because NTKD needs Jacobians, not just outputs, and
backend-only fine-tuning feeds the student captured features while the teacher sees images.

The losses themselves live one layer down, so that this registry and the NTKD objective can
both import them without a cycle: `TaskLoss`, `KDLoss` and their functions in
`onnlab.distill.task_losses` (re-exported here), `NTKDObjective` in `onnlab.distill.objective`.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn

from onnlab.distill.objective import NTKDObjective
from onnlab.distill.task_losses import (
    KDLoss,
    TaskLoss,
    dice_loss,
    kd_divergence,
    task_kind,
    task_loss,
)

METHODS = ("none", "kd", "ntkd")

__all__ = [
    "METHODS",
    "KDLoss",
    "LossFn",
    "NTKDObjective",
    "TaskLoss",
    "dice_loss",
    "kd_divergence",
    "make_loss",
    "task_kind",
    "task_loss",
]


class LossFn(Protocol):
    """The contract every training objective satisfies."""

    def __call__(
        self, model: nn.Module, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, float]]: ...


def make_loss(method: str, task: str, teacher: nn.Module | None = None, **opts: Any) -> LossFn:
    """Build the objective of a transfer method: "none" | "kd" | "ntkd".

    Options go to the loss class (KD: temperature, alpha; NTKD: see NTKDObjective).
    """
    if method == "none":
        if opts:
            raise ValueError(f"method 'none' takes no options, got {sorted(opts)}")
        return TaskLoss(task)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if teacher is None:
        raise ValueError(f"method {method!r} needs a teacher model")
    if method == "kd":
        return KDLoss(teacher, task, **opts)
    return NTKDObjective(teacher, task, **opts)
