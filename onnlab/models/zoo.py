"""The paper's three systems and their teachers, built by name.

| task | student frontend | backend | teacher |
|---|---|---|---|
| mnist | 8 PSFs 7x7, mono | pool 4 → FC 120 → FC 10 (≈0.05 M total) | LeNet (20/50/500) |
| cifar10 | 16 PSFs 7x7, R,G,B | pool 2 → FC 384 → FC 192 → FC 10 (≈1.65 M) | CifarNet (VGG+BN) |
| segmentation | 56 PSFs of 3x3 taps at dilations 1/2/4 (8+16+32), R,G,B | up-conv decoder | U-Net |

Every built model carries `build_info = {"task", "role", "kwargs"}` so a checkpoint can
rebuild exactly the same architecture (`onnlab.training.checkpoint`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from onnlab.models.backends import ClassifierBackend, SegmentationBackend
from onnlab.models.frontend import OpticalFrontend, dilated_support
from onnlab.models.hybrid import HybridONN
from onnlab.models.teachers import CifarNet, LeNet, UNet


@dataclass(frozen=True)
class TaskSpec:
    """What a task's images and outputs look like."""

    name: str
    in_channels: int
    image_hw: tuple[int, int]
    n_classes: int
    kind: str  # "classification" | "segmentation"


TASKS: dict[str, TaskSpec] = {
    "mnist": TaskSpec("mnist", 1, (28, 28), 10, "classification"),
    "cifar10": TaskSpec("cifar10", 3, (32, 32), 10, "classification"),
    "segmentation": TaskSpec("segmentation", 3, (64, 64), 1, "segmentation"),
}

STUDENT_DEFAULTS: dict[str, dict[str, Any]] = {
    "mnist": {"n_kernels": 8, "kernel_px": 7, "hidden": (120,), "pool": 4},
    "cifar10": {"n_kernels": 16, "kernel_px": 7, "hidden": (384, 192), "pool": 2},
    "segmentation": {"groups": (8, 16, 32), "taps": 3, "dilations": (1, 2, 4), "width": 16},
}
TEACHER_DEFAULTS: dict[str, dict[str, Any]] = {
    "mnist": {},
    "cifar10": {"width": 32, "flip_tta": True},
    "segmentation": {"base": 8, "depth": 3},
}
_FRONTEND_KEYS = ("pseudo_negative", "method", "max_transmission", "init_transmission")


def task_spec(task: str) -> TaskSpec:
    """The TaskSpec of `task`, or a ValueError listing the known tasks."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {tuple(TASKS)}, got {task!r}")
    return TASKS[task]


def _merge(defaults: dict[str, Any], overrides: dict[str, Any], allowed: tuple[str, ...]) -> dict:
    unknown = set(overrides) - set(defaults) - set(allowed)
    if unknown:
        raise ValueError(f"unknown architecture option(s) {sorted(unknown)}")
    merged = {**defaults, **overrides}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in merged.items()}


def build_student(task: str, **overrides: Any) -> HybridONN:
    """The hybrid ONN student of `task`; overrides change its architecture options.

    Options: classification — n_kernels, kernel_px, hidden, pool, dropout; segmentation —
    groups, taps, dilations, width; all — pseudo_negative, method, max_transmission,
    init_transmission. With pseudo_negative the frontend has twice the PSFs, so the backend
    sees the same number of features.
    """
    spec = task_spec(task)
    extra = (*_FRONTEND_KEYS, "dropout") if spec.kind == "classification" else _FRONTEND_KEYS
    kw = _merge(STUDENT_DEFAULTS[task], overrides, extra)
    fkw = {k: kw[k] for k in _FRONTEND_KEYS if k in kw}
    pairs = 2 if kw.get("pseudo_negative") else 1
    if spec.kind == "classification":
        frontend = OpticalFrontend(
            kw["n_kernels"] * pairs, spec.in_channels, kw["kernel_px"], **fkw
        )
        backend: nn.Module = ClassifierBackend(
            kw["n_kernels"],
            spec.image_hw,
            spec.n_classes,
            hidden=kw["hidden"],
            pool=kw["pool"],
            dropout=kw.get("dropout", 0.0),
        )
    else:
        groups, dilations, taps = kw["groups"], kw["dilations"], kw["taps"]
        if len(groups) != len(dilations):
            raise ValueError(f"groups {groups} and dilations {dilations} differ in length")
        kernel_px = (taps - 1) * max(dilations) + 1
        masks = [
            dilated_support(kernel_px, taps, d).expand(n * pairs, -1, -1)
            for n, d in zip(groups, dilations, strict=True)
        ]
        support = torch.cat(masks)
        if pairs == 2:  # pair k with k + K/2: both halves must follow the same group order
            half = [m[: len(m) // 2] for m in masks]
            support = torch.cat(half + half)
        n_kernels = sum(groups) * pairs
        frontend = OpticalFrontend(n_kernels, spec.in_channels, kernel_px, support=support, **fkw)
        backend = SegmentationBackend(sum(groups), width=kw["width"])
    model = HybridONN(frontend, backend)
    model.build_info = {"task": task, "role": "student", "kwargs": kw}
    return model


def build_teacher(task: str, **overrides: Any) -> nn.Module:
    """The all-digital teacher of `task` (LeNet, CifarNet, U-Net)."""
    spec = task_spec(task)
    kw = _merge(TEACHER_DEFAULTS[task], overrides, ())
    if task == "mnist":
        model: nn.Module = LeNet(spec.in_channels, spec.n_classes, spec.image_hw)
    elif task == "cifar10":
        model = CifarNet(
            spec.in_channels, spec.n_classes, width=kw["width"], flip_tta=kw["flip_tta"]
        )
    else:
        model = UNet(spec.in_channels, 1, base=kw["base"], depth=kw["depth"])
    model.build_info = {"task": task, "role": "teacher", "kwargs": kw}
    return model


def build_model(task: str, role: str, **kwargs: Any) -> nn.Module:
    """`build_student` or `build_teacher` by role (what checkpoints call)."""
    if role == "student":
        return build_student(task, **kwargs)
    if role == "teacher":
        return build_teacher(task, **kwargs)
    raise ValueError(f"role must be 'student' or 'teacher', got {role!r}")


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (all, or only those with requires_grad)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
