"""Sweep files: what to train, which values to try (grid or random), how many seeds.

A sweep file is plain YAML, validated here before anything is launched, so a typo in a
`TrainConfig` field fails in a second on the login node, not after a day in a SLURM queue.
It says nothing about where jobs run: the launcher is a Hydra override on the command line
(`onnlab sweep FILE hydra/launcher=submitit_slurm`), so the same file serves a laptop and a
cluster.

    name: lr-beta                 # the sweep folder is runs/sweep-<name>-<stamp>
    task: mnist
    role: student                 # or teacher (method none, no loss options)
    method: ntkd                  # none | kd | ntkd
    train: {epochs: 5}            # TrainConfig fields fixed for every point
    loss: {ntk_batch: 16}         # loss options (what --loss-opt KEY=VALUE sets)
    arch: {}                      # architecture options (what --arch KEY=VALUE sets)
    data: {limit: 4500, eval_limit: 10000}
    seeds: 3                      # seeds per point: seed0, seed0+1, ...
    seed0: 0
    score_on: test                # val: tuning (the test split is never evaluated)
    grid:                         # every combination of these values ...
      train.lr: [1.0e-3, 3.0e-3]
      loss.beta: [0.3, 1.0]
    random:                       # ... or n seeded random draws (not both)
      n: 8
      seed: 0
      params:
        train.lr: {low: 1.0e-4, high: 1.0e-2, log: true}
        loss.beta: {choices: [0.3, 1.0, 3.0]}

Swept names are ``train.<TrainConfig field>``, ``loss.<option>``, ``arch.<option>`` or
``method``.  A point is the nested dict of the values it sets (``{"train": {"lr": 0.001}}``).
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from onnlab.errors import ConfigError

SECTIONS = ("train", "loss", "arch")
# TrainConfig fields a sweep may not set: the task comes from the file, seeds from seeds/seed0,
# and a job never shows a progress bar (its log is a file).
RESERVED_TRAIN = frozenset({"task", "seed", "progress"})


class RandomParam(BaseModel):
    """One randomly drawn value: uniform in [low, high] (log-uniform with log), or a choice."""

    model_config = ConfigDict(extra="forbid")

    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> RandomParam:
        if self.choices is not None:
            if self.low is not None or self.high is not None or not self.choices:
                raise ValueError("give either a non-empty choices list or low/high, not both")
            return self
        if self.low is None or self.high is None or not self.low <= self.high:
            raise ValueError("needs low <= high (or choices)")
        if self.log and self.low <= 0:
            raise ValueError("log needs low > 0")
        return self

    def draw(self, rng: np.random.Generator) -> Any:
        if self.choices is not None:
            return self.choices[int(rng.integers(len(self.choices)))]
        lo, hi = float(self.low), float(self.high)  # type: ignore[arg-type]
        value = (
            math.exp(rng.uniform(math.log(lo), math.log(hi))) if self.log else rng.uniform(lo, hi)
        )
        return int(round(value)) if self.integer else float(value)


class RandomSearch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n: int = Field(ge=1)
    seed: int = 0
    params: dict[str, RandomParam]


class DataSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    limit: int | None = Field(None, ge=1)
    eval_limit: int | None = Field(None, ge=1)
    data_root: str | None = None


class SweepSpec(BaseModel):
    """A validated sweep file (see the module docstring for the format)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("sweep", pattern=r"^[A-Za-z0-9_.-]+$")
    task: Literal["mnist", "cifar10", "segmentation"]
    role: Literal["student", "teacher"] = "student"
    method: Literal["none", "kd", "ntkd"] = "none"
    teacher: str | None = None  # student KD/NTKD: teacher checkpoint (default: registered)
    train: dict[str, Any] = Field(default_factory=dict)
    loss: dict[str, Any] = Field(default_factory=dict)
    arch: dict[str, Any] = Field(default_factory=dict)
    data: DataSpec = Field(default_factory=DataSpec)
    seeds: int = Field(1, ge=1)
    seed0: int = 0
    # test: the table reports the test split (a study of finished settings). val: tuning --
    # jobs never evaluate the test split, and the table ranks the points by validation.
    score_on: Literal["test", "val"] = "test"
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    random: RandomSearch | None = None

    @model_validator(mode="after")
    def _check(self) -> SweepSpec:
        if self.grid and self.random is not None:
            raise ValueError("give either grid or random, not both")
        for key in [*self.grid, *(self.random.params if self.random else {})]:
            _check_key(key)
        for key, values in self.grid.items():
            if not values:
                raise ValueError(f"grid.{key}: needs at least one value")
        return self

    def seed_list(self) -> list[int]:
        return list(range(self.seed0, self.seed0 + self.seeds))


def _check_key(key: str) -> None:
    if key == "method":
        return
    section, _, field = key.partition(".")
    if section not in SECTIONS or not field or "." in field:
        raise ValueError(
            f"swept name {key!r} must be 'method' or train.FIELD, loss.OPTION, arch.OPTION"
        )


def points(spec: SweepSpec) -> list[dict[str, Any]]:
    """The configurations of a sweep, each as the nested dict of values it sets.

    Grid: the Cartesian product in file order (last name varies fastest).  Random: ``n``
    draws from a generator seeded by ``random.seed``, so the same file gives the same points
    on every machine.  Neither: one point, the base configuration.
    """
    if spec.random is not None:
        rng = np.random.default_rng(spec.random.seed)
        flat = [
            {k: p.draw(rng) for k, p in spec.random.params.items()} for _ in range(spec.random.n)
        ]
    elif spec.grid:
        keys = list(spec.grid)
        flat = [
            dict(zip(keys, combo, strict=True)) for combo in itertools.product(*spec.grid.values())
        ]
    else:
        flat = [{}]
    return [nest(p) for p in flat]


def nest(flat: dict[str, Any]) -> dict[str, Any]:
    """{"train.lr": 1e-3, "method": "kd"} -> {"train": {"lr": 1e-3}, "method": "kd"}."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        section, _, field = key.partition(".")
        if field:
            out.setdefault(section, {})[field] = value
        else:
            out[section] = value
    return out


def flatten(point: dict[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`nest` (column names of the results table)."""
    out: dict[str, Any] = {}
    for key, value in point.items():
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            out[key] = value
    return out


def resolve(spec: SweepSpec, point: dict[str, Any]) -> dict[str, Any]:
    """The full job settings of one point: method, train/loss/arch dicts, data."""
    return {
        "task": spec.task,
        "role": spec.role,
        "method": point.get("method", spec.method),
        "teacher": spec.teacher,
        "train": {**spec.train, **point.get("train", {})},
        "loss": {**spec.loss, **point.get("loss", {})},
        "arch": {**spec.arch, **point.get("arch", {})},
        "data": spec.data.model_dump(),
    }


def train_config(job: dict[str, Any], seed: int):
    """The TrainConfig of a job (the task/role defaults, then the sweep's values)."""
    from onnlab.training.config import default_config

    config = default_config(job["task"], job["role"], **job["train"])
    return config.model_copy(update={"seed": seed, "progress": False})


def validate(spec: SweepSpec, where: str = "sweep") -> list[dict[str, Any]]:
    """Every point checked as a job would build it; returns the points.  ConfigError names
    the point and the field."""
    from onnlab.training.losses import METHODS

    all_points = points(spec)
    for i, point in enumerate(all_points):
        job = resolve(spec, point)
        bad = RESERVED_TRAIN & set(job["train"])
        if bad:
            raise ConfigError(f"{where}: train.{sorted(bad)[0]} is set by the sweep itself")
        if job["method"] not in METHODS:
            raise ConfigError(f"{where}: point {i}: method must be one of {METHODS}")
        if job["role"] == "teacher" and (job["method"] != "none" or job["loss"]):
            raise ConfigError(f"{where}: a teacher sweep takes method none and no loss options")
        if job["method"] == "none" and job["loss"]:
            raise ConfigError(f"{where}: point {i}: method none takes no loss options")
        try:
            train_config(job, spec.seed0)
        except (ValidationError, ValueError) as exc:
            text = " ".join(str(exc).split())
            raise ConfigError(f"{where}: point {i} {flatten(point)}: {text}") from exc
    return all_points


def load_spec(path: str | Path) -> SweepSpec:
    """Read and validate a sweep file (yaml.safe_load; unknown keys are errors)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a sweep file is a mapping (name, task, grid, ...)")
    try:
        return SweepSpec.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise ConfigError(f"{path}: {where}: {first['msg']}") from exc
