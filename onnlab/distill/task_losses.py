"""Task and logit-KD losses: the leaf that the training contract and NTKD both build on.

Why a module of its own: ``onnlab.training.losses`` (the method registry, ``make_loss``) builds
the NTKD objective, and the NTKD objective adds these same task and KD terms.  Keeping them here,
importing nothing of ``onnlab.training`` and of ``onnlab.distill`` only the leaf
``teacher_outputs``, lets both import them at module level without a cycle.

- ``TaskLoss``: cross-entropy, or BCE + soft Dice for binary masks (BCE alone under-weights the
  thin object boundary when the foreground is small; Dice is overlap-based and does not).
- ``KDLoss``: Hinton et al. 2015, ``α·T²·KL(p_t^T ‖ p_s^T) + (1−α)·task``, T = 10, α = 0.5 as
  the paper's baseline.  For masks each pixel is a two-class distribution (sigmoid).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from onnlab.distill.teacher_outputs import TeacherOutputs, ViewStream
from onnlab.models.zoo import task_spec


def task_kind(task: str) -> str:
    """ "classification" or "segmentation" for a task name (raises on an unknown task)."""
    return task_spec(task).kind


def dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 − soft Dice per image, averaged; `eps` smooths empty masks."""
    prob = torch.sigmoid(logits).flatten(1)
    target = target.flatten(1)
    inter = (prob * target).sum(1)
    return (1 - (2 * inter + eps) / (prob.sum(1) + target.sum(1) + eps)).mean()


def task_loss(
    kind: str, output: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0
) -> torch.Tensor:
    """CE for classification (optionally label-smoothed); BCE + Dice for binary segmentation."""
    if kind == "classification":
        return F.cross_entropy(output, target, label_smoothing=label_smoothing)
    target = target.to(output.dtype)
    return F.binary_cross_entropy_with_logits(output, target) + dice_loss(output, target)


class TaskLoss:
    """Supervised loss only ('no transfer' baseline).

    `label_smoothing` (classification only) keeps a high-capacity teacher from becoming
    over-confident; it is a teacher-training option, the students' baselines use 0.
    """

    def __init__(self, task: str, label_smoothing: float = 0.0) -> None:
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.task = task
        self.kind = task_kind(task)
        self.label_smoothing = label_smoothing

    def __call__(
        self, model: nn.Module, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        loss = task_loss(self.kind, model(batch["x"]), batch["y"], self.label_smoothing)
        return loss, {"loss": loss.item(), "task": loss.item()}


def kd_divergence(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float, kind: str
) -> torch.Tensor:
    """T²·KL(teacher ‖ student) at temperature T (T² keeps gradient scale T-independent)."""
    t = temperature
    if kind == "classification":
        log_p_s = F.log_softmax(student / t, dim=1)
        log_p_t = F.log_softmax(teacher / t, dim=1)
        kl = F.kl_div(log_p_s, log_p_t, log_target=True, reduction="batchmean")
    else:  # per-pixel Bernoulli KL, averaged over pixels
        s, q = student / t, teacher / t
        p_t = torch.sigmoid(q)
        kl = (
            p_t * (F.logsigmoid(q) - F.logsigmoid(s))
            + (1 - p_t) * (F.logsigmoid(-q) - F.logsigmoid(-s))
        ).mean()
    return kl * t * t


class KDLoss:
    """Hinton knowledge distillation from a frozen teacher (logits or mask logits).

    Teacher outputs come from `onnlab.distill.teacher_outputs.TeacherOutputs`: cached per
    training sample when the inputs are fixed, and per augmented view (on disk, shared by
    every run that draws the same views) when the loop names its view stream.
    """

    def __init__(
        self, teacher: nn.Module, task: str, temperature: float = 10.0, alpha: float = 0.5
    ) -> None:
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.task, self.kind = task, task_kind(task)
        self.temperature, self.alpha = temperature, alpha
        self.outputs = TeacherOutputs(self.teacher)

    @property
    def teacher_samples(self) -> int:
        """Samples the teacher has run on (the cost the caches save)."""
        return self.outputs.teacher_samples

    def prepare(
        self,
        train_set: Any,
        device: Any = None,
        *_: Any,
        view_stream: ViewStream | None = None,
        **__: Any,
    ) -> None:
        """Start the caches for ``train_set`` (called by the training loop per run)."""
        self.outputs.prepare(train_set, view_stream)

    def teacher_outputs(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The teacher's outputs for the batch, from a cache where the inputs repeat."""
        return self.outputs(batch)

    def __call__(
        self, model: nn.Module, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        output = model(batch["x"])
        teacher_out = self.teacher_outputs(batch)
        ce = task_loss(self.kind, output, batch["y"])
        kd = kd_divergence(output, teacher_out, self.temperature, self.kind)
        loss = self.alpha * kd + (1 - self.alpha) * ce
        return loss, {"loss": loss.item(), "task": ce.item(), "kd": kd.item()}
