"""Hydra multirun as the sweep engine: one job per (point, seed), any Hydra launcher.

Why Hydra: it is a well-kept, light (pure Python) engine whose launchers are plugins chosen by
an override, so the same sweep runs jobs one after another in this process (the default basic
launcher), as local subprocesses (``hydra/launcher=submitit_local``) or as SLURM jobs
(``hydra/launcher=submitit_slurm hydra.launcher.partition=gpu ...``) without a changed file.
Ray Tune could do the same but pulls in a cluster runtime onnlab does not otherwise need.

onnlab expands the sweep file into its points itself (grid or seeded random draws, see
:mod:`onnlab.sweep.spec`) and hands Hydra's basic sweeper two axes, ``point`` and ``seed``:
random search becomes a grid over point indices, so every launcher runs it unchanged.  The
generated Hydra config (``hydra-sweep.yaml`` in the sweep folder) holds the whole validated
spec, so a job on a cluster node needs nothing but that config and the installed package.

Each job trains into ``<sweep>/jobs/point-P-seed-S/`` and writes ``sweep-result.json`` there
(a failed job writes its error instead: one diverging point does not cancel the others).
Rerunning a sweep on the same folder resumes: the training runner skips finished seeds and
continues interrupted ones.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path
from typing import Any

import yaml

from onnlab.sweep.spec import SweepSpec, flatten, resolve, train_config

HYDRA_CONFIG = "hydra-sweep"
RESULT_FILE = "sweep-result.json"
JOBS_DIR = "jobs"


def job_dir_name(point: int, seed: int) -> str:
    return f"point-{point}-seed-{seed}"


def write_hydra_config(sweep_dir: Path, spec: SweepSpec, points: list[dict[str, Any]]) -> Path:
    """The Hydra primary config of a sweep: the spec, its points and the two sweep axes."""
    seeds = spec.seed_list()
    config = {
        "defaults": ["_self_"],
        "spec": spec.model_dump(mode="json"),
        "points": points,
        "point": 0,
        "seed": seeds[0],
        "hydra": {
            "mode": "MULTIRUN",
            "sweep": {
                "dir": str((sweep_dir / JOBS_DIR).resolve()),
                "subdir": job_dir_name("${point}", "${seed}"),  # type: ignore[arg-type]
            },
            "sweeper": {
                "params": {
                    "point": ",".join(str(i) for i in range(len(points))),
                    "seed": ",".join(str(s) for s in seeds),
                }
            },
            "job": {"chdir": False, "name": spec.name},
        },
    }
    path = sweep_dir / f"{HYDRA_CONFIG}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def launch(sweep_dir: Path, overrides: list[str]) -> None:
    """Run every job of the sweep through Hydra multirun (blocks until all have finished).

    ``overrides`` are Hydra command-line overrides, e.g. ``hydra/launcher=submitit_slurm``.
    """
    import hydra

    main = hydra.main(version_base="1.3", config_path=None, config_name=None)(run_job)
    argv = [
        "onnlab-sweep",
        "--config-dir",
        str(sweep_dir.resolve()),
        "--config-name",
        HYDRA_CONFIG,
        *overrides,
    ]
    saved = sys.argv
    sys.argv = argv  # hydra.main reads its arguments from sys.argv
    try:
        main()
    finally:
        sys.argv = saved


def run_job(cfg: Any) -> dict[str, Any]:
    """One Hydra job: train one point with one seed; write its result (or its error)."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    out = Path(HydraConfig.get().runtime.output_dir)
    spec = SweepSpec.model_validate(OmegaConf.to_container(cfg.spec, resolve=True))
    points = OmegaConf.to_container(cfg.points, resolve=True)
    index, seed = int(cfg.point), int(cfg.seed)
    point = points[index]  # type: ignore[index]
    record: dict[str, Any] = {"point": index, "seed": seed, "params": flatten(point)}
    try:
        record.update(train_point(spec, point, seed, out))
    except Exception as exc:  # noqa: BLE001 - recorded and reported by collect(), not hidden
        record["error"] = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
        (out / "error.txt").write_text(traceback.format_exc())
    from onnlab.runtime import write_json

    write_json(out / RESULT_FILE, record)
    return record


def train_point(spec: SweepSpec, point: dict[str, Any], seed: int, out: Path) -> dict[str, Any]:
    """Train one configuration with one seed into ``out``; its test/val metrics and times."""
    from onnlab.training.runner import train_students, train_teacher

    job = resolve(spec, point)
    config = train_config(job, seed)
    data = job["data"]
    common = {
        "data_root": data["data_root"],
        "limit": data["limit"],
        "eval_limit": data["eval_limit"],
        "architecture": job["arch"],
    }
    if job["role"] == "teacher":
        summary = train_teacher(job["task"], config, out, register=False, **common)
        return {
            "test": summary["test"],
            "val": summary["val"],
            "train_time_s": summary["train_time_s"],
        }
    summary = train_students(
        job["task"],
        job["method"],
        [seed],
        config,
        out,
        teacher_path=job["teacher"],
        loss_options=job["loss"],
        evaluate_test=spec.score_on == "test",
        **common,
    )
    run = summary["runs"][0]
    return {
        "test": run["test"],
        "val": run["val"],
        "train_time_s": run["train_time_s"],
        "prepare_time_s": run.get("prepare_time_s", 0.0),
    }


def read_results(sweep_dir: Path) -> list[dict[str, Any]]:
    """Every job result written under ``<sweep>/jobs`` (finished or failed)."""
    return [
        json.loads(p.read_text()) for p in sorted((sweep_dir / JOBS_DIR).glob(f"*/{RESULT_FILE}"))
    ]
