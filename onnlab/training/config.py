"""Training configuration and the per-task defaults the CLI starts from."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class TrainConfig(BaseModel):
    """Everything that decides a training run (written to config.json; resume checks it)."""

    model_config = ConfigDict(extra="forbid")

    task: str | None = None  # None: taken from the dataset
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    momentum: float = Field(0.9, ge=0, lt=1)
    schedule: Literal["cosine", "onecycle", "constant"] = "cosine"
    warmup_fraction: float = Field(0.0, ge=0, lt=1)  # of all steps (cosine); onecycle uses 0.3
    grad_clip: float | None = Field(5.0, gt=0)
    augment: Literal["none", "shift", "crop_flip", "flip"] = "none"
    label_smoothing: float = Field(0.0, ge=0, lt=1)  # task loss of classification only
    keep_best: bool = False  # end on the epoch with the best validation metric, not the last
    frontend_lr_scale: float = Field(1.0, gt=0)  # PSF logits often want a larger step
    seed: int = 0
    device: str = "auto"
    eval_batch_size: int = Field(512, ge=1)
    progress: bool = True


# Fields that may change when a run is resumed (they do not change what is computed).
RESUMABLE_CHANGES = frozenset({"progress", "device", "eval_batch_size", "epochs"})


def learning_rate(config: TrainConfig, step: int, total_steps: int) -> float:
    """Learning rate at optimiser step `step` (0-based) of `total_steps`.

    Computed from the step alone (not a stateful scheduler), so a resumed run continues on
    exactly the same curve.
    """
    base = config.lr
    frac = min(step / max(total_steps, 1), 1.0)
    if config.schedule == "constant":
        warm = config.warmup_fraction
        return base * min(1.0, (frac / warm)) if warm > 0 and frac < warm else base
    if config.schedule == "onecycle":  # linear up to 30 %, cosine down to base/1e4
        peak = 0.3
        if frac < peak:
            return base * (0.04 + 0.96 * frac / peak)
        t = (frac - peak) / (1 - peak)
        return base * (1e-4 + (1 - 1e-4) * 0.5 * (1 + math.cos(math.pi * t)))
    warm = config.warmup_fraction
    if warm > 0 and frac < warm:
        return base * frac / warm
    t = (frac - warm) / max(1 - warm, 1e-12)
    return base * 0.5 * (1 + math.cos(math.pi * t))


# Per-task, per-role defaults used by the CLI (`onnlab train`, `onnlab teacher train`).
DEFAULTS: dict[tuple[str, str], dict] = {
    ("mnist", "teacher"): dict(
        epochs=8, batch_size=128, lr=2e-3, schedule="onecycle", augment="shift"
    ),
    ("cifar10", "teacher"): dict(
        epochs=16,
        batch_size=256,
        lr=0.1,
        optimizer="sgd",
        weight_decay=5e-4,
        schedule="onecycle",
        augment="crop_flip",
        label_smoothing=0.1,
    ),
    ("segmentation", "teacher"): dict(
        epochs=15, batch_size=16, lr=2e-3, schedule="onecycle", augment="flip"
    ),
    ("mnist", "student"): dict(epochs=5, batch_size=128, lr=3e-3, frontend_lr_scale=10.0),
    # 30 epochs with crops and flips: without augmentation the student peaks near epoch 9 and
    # then overfits (53 % val); every transfer method trains on the same augmented views.
    ("cifar10", "student"): dict(
        epochs=30,
        batch_size=128,
        lr=1e-3,
        frontend_lr_scale=10.0,
        weight_decay=1e-2,
        augment="crop_flip",
    ),
    ("segmentation", "student"): dict(epochs=10, batch_size=8, lr=3e-3, frontend_lr_scale=10.0),
}


def default_config(task: str, role: str, **overrides) -> TrainConfig:
    """The tuned defaults of a task/role with overrides (None values are ignored)."""
    if (task, role) not in DEFAULTS:
        raise ValueError(f"no defaults for task={task!r} role={role!r}")
    values = {**DEFAULTS[(task, role)], **{k: v for k, v in overrides.items() if v is not None}}
    return TrainConfig(task=task, **values)
