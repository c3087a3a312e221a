"""Whole training jobs as the CLI and benchmarks run them: data → model → loop → test → files.

Kept out of the CLI module so benchmarks and workflows can call the same code in-process.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

from onnlab.errors import CheckpointError
from onnlab.runtime import runs_root, write_json
from onnlab.training.config import TrainConfig
from onnlab.training.distributed import world


def registered_teacher_path(task: str, data_root: str | Path | None = None) -> Path:
    """Where `onnlab teacher train` registers the teacher `onnlab train` uses by default.

    One per task *and dataset* (`runs/teachers/<task>/<dataset>.pt`), so a Carvana teacher
    never replaces the synthetic-set one, nor a full-MNIST teacher the bundled-sample one.
    """
    from onnlab.data.paths import dataset_identity

    dataset = dataset_identity(task, data_root)["dataset"]
    return runs_root() / "teachers" / task / f"{dataset}.pt"


def check_dataset(meta: dict[str, Any], task: str, data_root: str | Path | None, what: str):
    """CheckpointError unless a checkpoint was trained on the data `data_root` resolves to.

    Old checkpoints without a record pass (nothing to compare).
    """
    from onnlab.data.paths import dataset_identity

    saved = meta.get("dataset")
    if not isinstance(saved, dict):
        return
    now = dataset_identity(task, data_root)
    if saved.get("dataset") != now["dataset"] or (
        saved.get("data_root") and now["data_root"] and saved["data_root"] != now["data_root"]
    ):
        hint = (
            f"pass --data-root {saved['data_root']}"
            if saved.get("data_root")
            else "omit --data-root and unset $ONNLAB_DATA"
        )
        raise CheckpointError(
            f"{what} was trained on {saved.get('dataset')} "
            f"({saved.get('data_root') or 'built-in'}), but this run uses {now['dataset']} "
            f"({now['data_root'] or 'built-in'}); {hint}"
        )


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
    """Train the task's teacher, test it, and (optionally) register it for distillation.

    The checkpoint records the dataset (name and data root), the split seed and `limit`.
    """
    from onnlab.data.paths import dataset_identity
    from onnlab.models.zoo import build_teacher
    from onnlab.training.loop import train
    from onnlab.training.losses import TaskLoss
    from onnlab.training.metrics import evaluate

    train_set, val_set, test_set = _splits(task, data_root, config.seed, limit, eval_limit)
    from onnlab.runtime import seed_everything

    seed_everything(config.seed)
    model = build_teacher(task, **(architecture or {}))
    meta = {"dataset": dataset_identity(task, data_root), "seed": config.seed, "limit": limit}
    history = train(
        model,
        train_set,
        val_set,
        config,
        TaskLoss(task, config.label_smoothing),
        run_dir,
        meta=meta,
        label=f"{task} teacher",
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
        target = registered_teacher_path(task, data_root)
        if world().is_main:  # DDP: rank 0 alone writes (every rank tests the same weights)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(run_dir / "model.pt", target)
        summary["registered"] = str(target)
    if world().is_main:
        write_json(run_dir / "summary.json", summary)
    return summary


def load_teacher(
    task: str, path: str | Path | None, data_root: str | Path | None = None
) -> tuple[Any, Path]:
    """The teacher at `path` (default: the one registered for this dataset), checked for
    `task`; a registered teacher must also come from the same dataset."""
    from onnlab.training.checkpoint import load_checkpoint

    explicit = path is not None
    path = Path(path) if explicit else registered_teacher_path(task, data_root)
    if not path.is_file():
        if explicit:
            raise CheckpointError(f"--teacher: checkpoint not found: {path}")
        raise CheckpointError(
            f"no registered {task} teacher for this dataset at {path}: run `onnlab teacher "
            f"train --task {task}` with the same --data-root (a --limit teacher registers only "
            "with --register), or pass --teacher PATH"
        )
    model, meta = load_checkpoint(path)
    if meta.get("task") != task:
        raise CheckpointError(f"{path} is a {meta.get('task')} model, not {task}")
    if meta.get("role") != "teacher":
        raise CheckpointError(f"{path} is a {meta.get('role')} checkpoint, not a teacher")
    if not explicit:
        check_dataset(meta, task, data_root, f"the registered teacher {path}")
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
    evaluate_test: bool = True,
) -> dict[str, Any]:
    """Train one student per seed into `run_dir/seed-<s>/`; summary with mean ± std on test.

    Re-running on the same run_dir skips finished seeds and resumes an interrupted one.
    ``evaluate_test=False`` (hyper-parameter trials) never touches the test split: results
    carry ``"test": None`` and the summary scores the validation split.
    """
    import json

    from onnlab.data.paths import dataset_identity
    from onnlab.models.zoo import build_student
    from onnlab.runtime import seed_everything
    from onnlab.training.loop import train
    from onnlab.training.losses import make_loss
    from onnlab.training.metrics import evaluate, primary_metric
    from onnlab.training.report import summarise

    dataset = dataset_identity(task, data_root)

    teacher = None
    if method != "none":
        teacher, teacher_path = load_teacher(task, teacher_path, data_root)
        device = config.device if config.device != "auto" else None
        from onnlab.runtime import default_device

        teacher.to(device or default_device())
    metric = primary_metric(task)
    per_seed: list[dict[str, Any]] = []
    for seed in seeds:
        seed_dir = run_dir / f"seed-{seed}"
        done = seed_dir / "result.json"
        if done.is_file():
            print(
                f"{task} student seed {seed} ({method}): finished earlier, reusing {done}",
                file=sys.stderr,
            )
            per_seed.append(json.loads(done.read_text()))
            continue
        seed_config = config.model_copy(update={"seed": seed})
        train_set, val_set, test_set = _splits(task, data_root, seed, limit, eval_limit)
        if not evaluate_test:
            test_set = None  # trials: the test split is never scored
        seed_everything(seed)
        model = build_student(task, **(architecture or {}))
        opts = dict(loss_options or {})
        if method == "ntkd":
            opts.setdefault("seed", seed)
        loss = make_loss(method, task, teacher, **opts)
        meta = {
            "method": method,
            "seed": seed,
            "limit": limit,
            "dataset": dataset,
            "teacher": str(teacher_path) if teacher else None,
            "loss_options": opts,  # provenance: which β, T... trained this (and resume checks)
        }
        label = f"{task} student seed {seed} ({method})"
        history = train(
            model, train_set, val_set, seed_config, loss, seed_dir, meta=meta, label=label
        )
        test = (
            evaluate(model.cpu(), test_set, task, config.eval_batch_size) if evaluate_test else None
        )
        result = {
            "seed": seed,
            "test": test,
            "val": history["final"].get("val", {}),
            "train_time_s": history["train_time_s"],
            "prepare_time_s": history.get("prepare_time_s", 0.0),
            "checkpoint": str(seed_dir / "model.pt"),
            "loss_options": opts,
            "architecture": dict(architecture or {}),
        }
        if world().is_main:  # DDP: rank 0 alone writes (every rank tests the same weights)
            write_json(done, result)
        per_seed.append(result)
    summary = {
        "task": task,
        "method": method,
        "seeds": seeds,
        "metric": metric,
        "dataset": dataset,
        "teacher": str(teacher_path) if teacher is not None else None,
        "loss_options": dict(loss_options or {}),
        "architecture": dict(architecture or {}),
        "test": (summarise([r["test"][metric] for r in per_seed]) if evaluate_test else None),
        "val": (
            summarise([r["val"][metric] for r in per_seed])
            if all(metric in (r.get("val") or {}) for r in per_seed)
            else None
        ),
        "train_time_s": summarise([r["train_time_s"] for r in per_seed]),
        "prepare_time_s": summarise([r.get("prepare_time_s", 0.0) for r in per_seed]),
        "runs": per_seed,
    }
    if world().is_main:
        write_json(run_dir / "summary.json", summary)
    return summary
