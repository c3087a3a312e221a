"""Experiment configs (`configs/experiments/<task>.yaml`): the paper's three systems end to end.

One validated file per system says how the teacher and student are trained in simulation, how
the simulated fabrication goes wrong, how much is captured, and how the backend is fine-tuned.
Training options are handed to `onnlab.training.config.default_config` as overrides, so the
per-task training defaults live in one place and a typo in a field is a one-line ConfigError
naming the file and the field. `tiny:` holds overrides (deep-merged) for `--tiny`, the
seconds-long variant the tests run.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from onnlab.config_errors import format_validation
from onnlab.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "experiments"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataSpec(_Strict):
    """Which samples are used; None = the whole split (bundled sample for mnist)."""

    train_limit: int | None = Field(None, ge=10)
    test_limit: int | None = Field(None, ge=10)


class TrainSpec(_Strict):
    """A training stage: `onnlab.training.TrainConfig` overrides."""

    train: dict[str, Any] = Field(default_factory=dict)


class StudentSpec(_Strict):
    """Pre-fabrication student training; `method` ntkd falls back to kd if NTKD is missing.

    `ntkd` / `kd` hold the options of each objective; the one of the method used applies.
    """

    method: Literal["ntkd", "kd", "none"] = "ntkd"
    architecture: dict[str, Any] = Field(default_factory=dict)
    train: dict[str, Any] = Field(default_factory=dict)
    ntkd: dict[str, Any] = Field(default_factory=dict)
    kd: dict[str, Any] = Field(default_factory=dict)


class FabricationSpec(_Strict):
    """How the simulated bench deviates from the design (Eq. 10), hidden from training.

    `gain_std`, `shift_std_px`, `rotation_std_rad`, `delta_std` parametrise
    `FabricationErrors.sample`; `bench_error_strength` scales the bench's other hidden
    deviations (display gamma, sensor registration, focus) which calibration must find.
    """

    strength: float = Field(1.0, ge=0)
    gain_std: float = Field(0.1, ge=0)
    shift_std_px: float = Field(0.5, ge=0)
    rotation_std_rad: float = Field(0.01, ge=0)
    delta_std: float = Field(0.15, ge=0)
    bench_error_strength: float = Field(1.0, ge=0)
    sensor: dict[str, Any] = Field(default_factory=dict)
    bench: dict[str, Any] = Field(default_factory=dict)
    # "physical" (default): the design's phase (or the realisation of free PSFs) fabricated with
    # height-domain errors and rendered through the wave model (drivers.sim.physical), with
    # `physical` holding onnlab.optics.fabrication.FabricationErrors fields (SI units); the
    # gain alpha (gain_std) and the bench's other hidden deviations stay. "legacy": per-pixel
    # PSF error delta and display misalignment beta (the fields above), nearly calibration's
    # own model (kept to compare with older results).
    model: Literal["legacy", "physical"] = "physical"
    physical: dict[str, Any] = Field(default_factory=dict)


class CaptureSpec(_Strict):
    """What goes through the bench: a fraction of train, and the test set (or a subset)."""

    fraction: float = Field(0.1, gt=0, le=1)
    chunk_size: int = Field(64, ge=1)


class CalibrationSpec(_Strict):
    """How thoroughly the fabricated bench is calibrated (quick: fewer frames, ~2x faster).

    `options` override single `calibration.runner.CalibrationOptions` fields (e.g.
    ``psf_patterns``) on top of the quick/full defaults, for seconds-long test benches.
    """

    quick: bool = False
    options: dict[str, Any] = Field(default_factory=dict)


class FinetuneSpec(_Strict):
    """Backend-only fine-tuning on captured features; both methods share `train`.

    `val_fraction` > 0 holds out that share of the captured training features (seeded) and
    ends each method on its best validated epoch: a few thousand captures overfit a backend
    long before a fixed epoch budget runs out, and the test captures must not pick the epoch.
    """

    train: dict[str, Any] = Field(default_factory=dict)
    ntkd: dict[str, Any] = Field(default_factory=dict)
    val_fraction: float = Field(0.0, ge=0, lt=0.5)


class ExperimentConfig(_Strict):
    """A whole post-fabrication experiment for one task."""

    task: Literal["mnist", "cifar10", "segmentation"]
    description: str = ""
    data: DataSpec = Field(default_factory=DataSpec)
    teacher: TrainSpec = Field(default_factory=TrainSpec)
    student: StudentSpec = Field(default_factory=StudentSpec)
    fabrication: FabricationSpec = Field(default_factory=FabricationSpec)
    calibration: CalibrationSpec = Field(default_factory=CalibrationSpec)
    capture: CaptureSpec = Field(default_factory=CaptureSpec)
    finetune: FinetuneSpec = Field(default_factory=FinetuneSpec)
    tiny: dict[str, Any] = Field(default_factory=dict)
    source: str | None = None

    @field_validator("tiny")
    @classmethod
    def _tiny_is_partial_config(cls, value: dict[str, Any]) -> dict[str, Any]:
        unknown = set(value) - (set(cls.model_fields) - {"tiny", "source"})
        if unknown:
            raise ValueError(f"unknown section(s) {sorted(unknown)}")
        return value


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`extra` over `base`, recursing into mappings (so `tiny:` can change one field)."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _format(source: str, exc: ValidationError, model: type[BaseModel] | None = None) -> str:
    return format_validation(source, exc, model)


def parse_experiment(data: Any, source: str, *, tiny: bool = False) -> ExperimentConfig:
    """Validate a loaded mapping (with the `tiny:` overrides merged in when asked)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: <root>: expected a mapping, got {type(data).__name__}")
    try:
        config = ExperimentConfig.model_validate({**data, "source": source})
        if tiny and config.tiny:
            merged = deep_merge(data, config.tiny)
            config = ExperimentConfig.model_validate({**merged, "source": source})
    except ValidationError as exc:
        raise ConfigError(_format(source, exc, ExperimentConfig)) from exc
    return config


def experiment_path(task: str) -> Path:
    """The shipped config of `task` in this checkout."""
    return CONFIG_DIR / f"{task}.yaml"


def load_experiment(
    task: str | None = None, path: str | Path | None = None, *, tiny: bool = False
) -> ExperimentConfig:
    """Load `path`, or the shipped config of `task` (ConfigError if neither is found)."""
    if path is None:
        if task is None:
            raise ValueError("task or path is required")
        path = experiment_path(task)
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"experiment config not found: {path} (pass --experiment PATH)")
    try:
        data = yaml.safe_load(path.read_text())
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a text (YAML) file") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "?"
        raise ConfigError(f"{path}: {where}: not valid YAML") from exc
    config = parse_experiment(data, str(path), tiny=tiny)
    if task is not None and config.task != task:
        raise ConfigError(f"{path}: task: is {config.task!r}, but --task {task!r} was asked for")
    return config


def train_config(task: str, role: str, overrides: dict[str, Any], source: str, **extra: Any):
    """`default_config(task, role)` + file overrides + call-site extras, errors as ConfigError."""
    from onnlab.training.config import default_config

    try:
        return default_config(task, role, **{**overrides, **extra})
    except ValidationError as exc:
        from onnlab.training.config import TrainConfig

        raise ConfigError(_format(f"{source} ({role} training)", exc, TrainConfig)) from exc
