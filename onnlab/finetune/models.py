"""Teacher and student for a fine-tuning experiment: load a checkpoint, reuse a cache, or train.

Why a cache: the demo's run dir holds `teacher/model.pt` and `student/model.pt`, so rerunning
with `--out` (e.g. after a Ctrl-C, or to try other fabrication seeds) skips straight to the
bench. The training loop itself resumes an interrupted stage from its `state.pt`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from torch import nn

from onnlab.errors import CheckpointError
from onnlab.finetune.config import ExperimentConfig, train_config


def _load(path: Path, task: str, role: str) -> tuple[nn.Module, dict[str, Any]]:
    from onnlab.training.checkpoint import load_checkpoint

    model, meta = load_checkpoint(path)
    if meta.get("task") != task or meta.get("role") != role:
        raise CheckpointError(
            f"{path} is a {meta.get('task')} {meta.get('role')}, expected a {task} {role}"
        )
    return model, meta


def _load_existing(
    checkpoint: str | Path | None, run_dir: Path, task: str, role: str
) -> tuple[nn.Module, dict[str, Any]] | None:
    """An explicit checkpoint, else the run dir's cached `ROLE/model.pt`, else None (train).

    Returns the model in eval mode and its provenance (`source`, plus the training `method`
    for students), one rule for teacher and student so a rerun reuses both the same way.
    """
    cached = run_dir / role / "model.pt"
    if checkpoint is not None:
        path, source = Path(checkpoint), str(checkpoint)
    elif cached.is_file():
        path, source = cached, f"cache {cached}"
    else:
        return None
    model, meta = _load(path, task, role)
    info: dict[str, Any] = {"source": source}
    if role == "student":
        info["method"] = meta.get("method", "?")
    return model.eval(), info


def get_teacher(
    cfg: ExperimentConfig,
    data: dict[str, Any],
    run_dir: Path,
    *,
    checkpoint: str | Path | None,
    seed: int,
    progress: bool,
) -> tuple[nn.Module, dict[str, Any]]:
    """The teacher from `checkpoint`, from `run_dir/teacher/model.pt`, or freshly trained."""
    from onnlab.models.zoo import build_teacher
    from onnlab.runtime import seed_everything
    from onnlab.training.loop import train
    from onnlab.training.losses import TaskLoss

    task = cfg.task
    existing = _load_existing(checkpoint, run_dir, task, "teacher")
    if existing is not None:
        print(f"{task} teacher: reusing {existing[1]['source']}", file=sys.stderr)
        return existing
    config = train_config(task, "teacher", cfg.teacher.train, str(cfg.source), seed=seed)
    config = config.model_copy(update={"progress": progress})
    seed_everything(seed)
    model = build_teacher(task)
    history = train(
        model,
        data["train"],
        data["val"],
        config,
        TaskLoss(task),
        run_dir / "teacher",
        label=f"{task} teacher",
    )
    return model.eval(), {"source": "trained", "train_time_s": history["train_time_s"]}


def get_student(
    cfg: ExperimentConfig,
    data: dict[str, Any],
    teacher: nn.Module,
    run_dir: Path,
    *,
    checkpoint: str | Path | None,
    seed: int,
    progress: bool,
) -> tuple[nn.Module, dict[str, Any]]:
    """The simulation-trained hybrid ONN, trained with the configured transfer method."""
    from onnlab.models.zoo import build_student
    from onnlab.runtime import seed_everything
    from onnlab.training.loop import train
    from onnlab.training.losses import make_loss

    task = cfg.task
    existing = _load_existing(checkpoint, run_dir, task, "student")
    if existing is not None:
        print(f"{task} student: reusing {existing[1]['source']}", file=sys.stderr)
        return existing
    method = cfg.student.method
    opts = dict({"ntkd": cfg.student.ntkd, "kd": cfg.student.kd}.get(method, {}))
    if method == "ntkd":
        opts.setdefault("seed", seed)
    loss = make_loss(method, task, teacher if method != "none" else None, **opts)
    config = train_config(task, "student", cfg.student.train, str(cfg.source), seed=seed)
    config = config.model_copy(update={"progress": progress})
    seed_everything(seed)
    model = build_student(task, **cfg.student.architecture)
    history = train(
        model,
        data["train"],
        data["val"],
        config,
        loss,
        run_dir / "student",
        meta={"method": method, "seed": seed},
        label=f"{task} student ({method}, in simulation)",
    )
    return model.eval(), {
        "source": "trained",
        "method": method,
        "train_time_s": history["train_time_s"],
    }
