"""Sweeps (tuning grids, random search, seeds) on Hydra multirun; one file, laptop or SLURM.

`run_sweep(file, out, overrides)` validates the sweep file, writes the Hydra config into the
sweep folder, runs every (configuration, seed) job through the launcher the overrides choose,
and collects one table (`summary.json`, `summary.csv`) with mean ± std over seeds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from onnlab.errors import ConfigError
from onnlab.sweep.collect import (
    best_point,
    format_rows,
    point_command,
    summary_table,
    write_summary,
)
from onnlab.sweep.engine import launch, read_results, write_hydra_config
from onnlab.sweep.spec import SweepSpec, load_spec, resolve, validate

__all__ = ["SweepSpec", "collect", "load_spec", "run_sweep"]

PLAN_FILE = "sweep.json"


def _plan(spec: SweepSpec, points: list[dict[str, Any]]) -> dict[str, Any]:
    return {"spec": spec.model_dump(mode="json"), "points": points}


def prepare(spec: SweepSpec, sweep_dir: Path, where: str) -> list[dict[str, Any]]:
    """Validate every point and record the plan; a reused folder must hold the same plan."""
    points = validate(spec, where)
    plan = _plan(spec, points)
    saved = sweep_dir / PLAN_FILE
    if saved.is_file():
        before = json.loads(saved.read_text())
        if before != json.loads(json.dumps(plan)):
            raise ConfigError(
                f"{sweep_dir} holds a different sweep ({saved}); use a new --out to run this one"
            )
    from onnlab.runtime import write_json

    write_json(saved, plan)
    write_hydra_config(sweep_dir, spec, points)
    return points


def collect(sweep_dir: Path) -> dict[str, Any]:
    """(Re)build the results table of a sweep folder from its job results."""
    from onnlab.training.metrics import primary_metric

    saved = sweep_dir / PLAN_FILE
    if not saved.is_file():
        raise ConfigError(f"{sweep_dir} is not a sweep folder (no {PLAN_FILE})")
    plan = json.loads(saved.read_text())
    spec = SweepSpec.model_validate(plan["spec"])
    table = summary_table(plan["points"], read_results(sweep_dir), spec.seed_list())
    metric = primary_metric(spec.task)
    header = {"sweep": spec.name, "task": spec.task, "role": spec.role, "metric": metric}
    header["seeds"] = spec.seed_list()
    header["score_on"] = spec.score_on
    header["best_point"] = best = best_point(table, metric, spec.score_on)
    if best is not None:  # the command that trains the chosen point (the rows of a study)
        command, unexpressed = point_command(resolve(spec, plan["points"][best]))
        header["best_command"] = command
        header["best_command_missing"] = unexpressed
    paths = write_summary(sweep_dir, header, table)
    lines = format_rows(table, metric, spec.score_on)
    return {**header, **table, "lines": lines, "files": paths}


def run_sweep(spec: SweepSpec, sweep_dir: Path, overrides: list[str], where: str) -> dict:
    """Validate, launch every job through Hydra, collect the table."""
    prepare(spec, sweep_dir, where)
    launch(sweep_dir, overrides)
    return collect(sweep_dir)
