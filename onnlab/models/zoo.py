"""The paper's three systems and their teachers, built by name.

| task | student frontend | backend | teacher |
|---|---|---|---|
| mnist | 8 PSFs 7x7, mono | pool 4 → FC 120 → FC 10 (≈0.05 M total) | LeNet (20/50/500) |
| cifar10 | 16 PSFs 7x7, R,G,B | pool 2 → FC 384 → FC 192 → FC 10 (≈1.65 M) | CifarNet (VGG+BN) |
| segmentation | 56 PSFs of 3x3 taps at dilations 1/2/4 (8+16+32), R,G,B | up-conv decoder | U-Net |

`frontend="free"` (default) trains the PSFs directly (`OpticalFrontend`, the paper's protocol);
`frontend="phase"` trains phase maps whose PSFs come from the wave model (`PhaseMaskFrontend`).
Both accept the physical system (`optics`: OpticsConfig overrides of `default_optics(task)`,
`material`, `phase_samples`); a free student only records it, for realisation and export.

Every built model carries `build_info = {"task", "role", "kwargs"}` so a checkpoint can
rebuild exactly the same architecture (`onnlab.training.checkpoint`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from pydantic import ValidationError
from torch import nn

from onnlab.models.backends import ClassifierBackend, SegmentationBackend
from onnlab.models.frontend import OpticalFrontend, dilated_support
from onnlab.models.hybrid import HybridONN
from onnlab.models.phase_frontend import (
    MATERIAL,
    PHASE_SAMPLES,
    PhaseMaskFrontend,
    PhaseSystem,
    default_optics,
)
from onnlab.models.teachers import CifarNet, LeNet, UNet
from onnlab.optics.materials import Material, get_material


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
# The physical system (both frontends) and the frontend kind; see `student_system`.
_PHYSICS_KEYS = ("frontend", "optics", "material", "phase_samples")
FRONTENDS = ("free", "phase")


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


def _student_kwargs(task: str, overrides: dict[str, Any]) -> dict[str, Any]:
    spec = task_spec(task)
    extra = (*_FRONTEND_KEYS, *_PHYSICS_KEYS)
    if spec.kind == "classification":
        extra = (*extra, "dropout")
    kw = _merge(STUDENT_DEFAULTS[task], overrides, extra)
    if kw.get("frontend", "free") not in FRONTENDS:
        raise ValueError(f"frontend must be one of {FRONTENDS}, got {kw['frontend']!r}")
    return kw


def _stack(task: str, kw: dict[str, Any]) -> tuple[int, int, torch.Tensor | None]:
    """(physical PSF count, PSF stack side, support mask or None) of a student's frontend."""
    pairs = 2 if kw.get("pseudo_negative") else 1
    if task_spec(task).kind == "classification":
        return kw["n_kernels"] * pairs, kw["kernel_px"], None
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
    return sum(groups) * pairs, kernel_px, support


def _material(value: Any) -> Material:
    if isinstance(value, dict):
        return Material(**value)
    return get_material(value)


def _system(task: str, kw: dict[str, Any], n_kernels: int, kernel_px: int) -> PhaseSystem:
    spec = task_spec(task)
    if not isinstance(kw.get("optics") or {}, dict):
        raise ValueError(f"optics must be a mapping of OpticsConfig fields, got {kw['optics']!r}")
    optics_kw = dict(kw.get("optics") or {})
    if optics_kw.get("kernel_px", kernel_px) != kernel_px:
        raise ValueError(
            f"optics.kernel_px={optics_kw['kernel_px']} differs from the student's PSF stack "
            f"({kernel_px} px)"
        )
    optics_kw["kernel_px"] = kernel_px
    try:
        optics = default_optics(task, n_kernels=n_kernels, **optics_kw)
    except ValidationError as exc:  # one line naming the field, as for every bad option
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "optics"
        raise ValueError(f"optics.{field}: {first['msg']}") from exc
    if optics.in_channels != spec.in_channels:
        raise ValueError(
            f"optics.wavelengths_m has {optics.in_channels} wavelength(s) but task {task} "
            f"displays {spec.in_channels} colour channel(s)"
        )
    material = _material(kw.get("material", MATERIAL[task]))
    phase_samples = kw.get("phase_samples", PHASE_SAMPLES[task])
    return PhaseSystem(optics, material, phase_samples)


def student_system(task: str, **overrides: Any) -> PhaseSystem:
    """The physical optical system (optics, material, phase samples N) of the student that
    `build_student(task, **overrides)` builds, free or phase (e.g. from a checkpoint's
    architecture) -- what realisation and fabrication export need."""
    kw = _student_kwargs(task, overrides)
    n_kernels, kernel_px, _ = _stack(task, kw)
    return _system(task, kw, n_kernels, kernel_px)


def _json_optics(optics: Any) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in optics.model_dump().items()}


def build_student(task: str, **overrides: Any) -> HybridONN:
    """The hybrid ONN student of `task`; overrides change its architecture options.

    Options: classification — n_kernels, kernel_px, hidden, pool, dropout; segmentation —
    groups, taps, dilations, width; all — pseudo_negative, method, max_transmission,
    init_transmission (free only); frontend ("free" | "phase"), optics (OpticsConfig
    overrides), material, phase_samples. With pseudo_negative the frontend has twice the PSFs,
    so the backend sees the same number of features. A phase student records its resolved
    optics, material and N in `build_info`, so a checkpoint rebuilds the same physics even if
    the defaults change.
    """
    spec = task_spec(task)
    kw = _student_kwargs(task, overrides)
    fkw = {k: kw[k] for k in _FRONTEND_KEYS if k in kw}
    n_kernels, kernel_px, support = _stack(task, kw)
    frontend: nn.Module
    if kw.get("frontend", "free") == "phase":
        if "init_transmission" in fkw:
            raise ValueError("init_transmission is a free-frontend option (phase: efficiency)")
        system = _system(task, kw, n_kernels, kernel_px)
        frontend = PhaseMaskFrontend(
            n_kernels,
            system.optics,
            system.material,
            system.phase_samples,
            oversample=system.oversample,
            **fkw,
        )
        kw["optics"] = _json_optics(system.optics)
        kw["phase_samples"] = system.phase_samples
        if not isinstance(kw.get("material"), dict):
            kw["material"] = system.material.name
    else:
        if any(k in kw for k in ("optics", "material", "phase_samples")):
            student_system(task, **overrides)  # validate the recorded physics now
        frontend = OpticalFrontend(n_kernels, spec.in_channels, kernel_px, support=support, **fkw)
    if spec.kind == "classification":
        backend: nn.Module = ClassifierBackend(
            kw["n_kernels"],
            spec.image_hw,
            spec.n_classes,
            hidden=kw["hidden"],
            pool=kw["pool"],
            dropout=kw.get("dropout", 0.0),
        )
    else:
        backend = SegmentationBackend(sum(kw["groups"]), width=kw["width"])
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
