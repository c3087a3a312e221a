"""Whole training jobs as the CLI and benchmarks run them: data → model → loop → test → files.

Kept out of the CLI module so benchmarks and workflows can call the same code in-process.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from onnlab.errors import CheckpointError
from onnlab.runtime import runs_root, write_json
from onnlab.training.config import TrainConfig


def registered_teacher_path(task: str) -> Path:
    """Where `onnlab teacher train` registers the teacher that `onnlab train` uses by default."""
    return runs_root() / "teachers" / f"{task}.pt"


def _splits(task: str, data_root, seed: int, limit: int | None, eval_limit: int | None):
    from onnlab.data import load_dataset

    return (
        load_dataset(task, "train", data_root, seed=seed, limit=limit),
        load_dataset(task, "val", data_root, seed=seed, limit=eval_limit),
        load_dataset(task, "test", data_root, seed=seed, limit=eval_limit),
    )


def train_teacher(
    task: str,
    config: TrainConfig,
    run_dir: Path,
    *,
    data_root: str | Path | None = None,
    limit: int | None = None,
    eval_limit: int | None = None,
    register: bool = True,
    architecture: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train the task's teacher, test it, and (optionally) register it for distillation."""
    from onnlab.models.zoo import build_teacher
    from onnlab.training.loop import train
    from onnlab.training.losses import TaskLoss
    from onnlab.training.metrics import evaluate

    train_set, val_set, test_set = _splits(task, data_root, config.seed, limit, eval_limit)
    from onnlab.runtime import seed_everything

    seed_everything(config.seed)
    model = build_teacher(task, **(architecture or {}))
    history = train(
        model, train_set, val_set, config, TaskLoss(task, config.label_smoothing), run_dir
    )
    test = evaluate(model.cpu(), test_set, task, config.eval_batch_size)
    summary = {
        "task": task,
        "role": "teacher",
        "n_train": len(train_set),
        "test": test,
        "val": history["final"].get("val", {}),
        "train_time_s": history["train_time_s"],
        "checkpoint": str(run_dir / "model.pt"),
    }
    if register:
        target = registered_teacher_path(task)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(run_dir / "model.pt", target)
        summary["registered"] = str(target)
    write_json(run_dir / "summary.json", summary)
    return summary


def load_teacher(task: str, path: str | Path | None) -> tuple[Any, Path]:
    """The teacher checkpoint at `path` (default: the registered one), checked for `task`."""
    from onnlab.training.checkpoint import load_checkpoint

    path = Path(path) if path is not None else registered_teacher_path(task)
    if not path.is_file():
        raise CheckpointError(
            f"teacher checkpoint not found: {path} (run `onnlab teacher train --task {task}` "
            "or pass --teacher PATH)"
        )
    model, meta = load_checkpoint(path)
    if meta.get("task") != task:
        raise CheckpointError(f"{path} is a {meta.get('task')} model, not {task}")
    return model, path


def train_students(
    task: str,
    method: str,
    seeds: list[int],
    config: TrainConfig,
    run_dir: Path,
    *,
    data_root: str | Path | None = None,
    limit: int | None = None,
    eval_limit: int | None = None,
    teacher_path: str | Path | None = None,
    loss_options: dict[str, Any] | None = None,
    architecture: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train one student per seed into `run_dir/seed-<s>/`; summary with mean ± std on test.

    Re-running on the same run_dir skips finished seeds and resumes an interrupted one.
    """
    import json

    from onnlab.models.zoo import build_student
    from onnlab.runtime import seed_everything
    from onnlab.training.loop import train
    from onnlab.training.losses import make_loss
    from onnlab.training.metrics import evaluate, primary_metric
    from onnlab.training.report import summarise

    teacher = None
    if method != "none":
        teacher, teacher_path = load_teacher(task, teacher_path)
        device = config.device if config.device != "auto" else None
        from onnlab.runtime import default_device

        teacher.to(device or default_device())
    metric = primary_metric(task)
    per_seed: list[dict[str, Any]] = []
    for seed in seeds:
        seed_dir = run_dir / f"seed-{seed}"
        done = seed_dir / "result.json"
        if done.is_file():
            per_seed.append(json.loads(done.read_text()))
            continue
        seed_config = config.model_copy(update={"seed": seed})
        train_set, val_set, test_set = _splits(task, data_root, seed, limit, eval_limit)
        seed_everything(seed)
        model = build_student(task, **(architecture or {}))
        opts = dict(loss_options or {})
        if method == "ntkd":
            opts.setdefault("seed", seed)
        loss = make_loss(method, task, teacher, **opts)
        meta = {"method": method, "seed": seed, "teacher": str(teacher_path) if teacher else None}
        history = train(model, train_set, val_set, seed_config, loss, seed_dir, meta=meta)
        test = evaluate(model.cpu(), test_set, task, config.eval_batch_size)
        result = {
            "seed": seed,
            "test": test,
            "val": history["final"].get("val", {}),
            "train_time_s": history["train_time_s"],
            "prepare_time_s": history.get("prepare_time_s", 0.0),
            "checkpoint": str(seed_dir / "model.pt"),
        }
        write_json(done, result)
        per_seed.append(result)
    summary = {
        "task": task,
        "method": method,
        "seeds": seeds,
        "metric": metric,
        "teacher": str(teacher_path) if teacher is not None else None,
        "test": summarise([r["test"][metric] for r in per_seed]),
        "train_time_s": summarise([r["train_time_s"] for r in per_seed]),
        "prepare_time_s": summarise([r.get("prepare_time_s", 0.0) for r in per_seed]),
        "runs": per_seed,
    }
    write_json(run_dir / "summary.json", summary)
    return summary
