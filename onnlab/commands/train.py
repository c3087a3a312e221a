"""CLI commands: `onnlab teacher train`, `onnlab train`, `onnlab evaluate`.

Heavy imports (torch, models) live inside the command bodies so `onnlab --help` stays instant.
"""

from __future__ import annotations

from pathlib import Path

import typer

TASK_HELP = "mnist | cifar10 | segmentation"
teacher_app = typer.Typer(
    help="Train the all-digital teachers used for distillation.", no_args_is_help=True
)


def _out_dir(out: Path | None, kind: str) -> Path:
    from onnlab.runtime import make_run_dir

    if out is None:
        return make_run_dir(kind)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _parse_opts(items: list[str], flag: str = "--loss-opt") -> dict:
    """KEY=VALUE pairs; values parsed as int, float, bool or left as text."""
    opts: dict = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"{flag} expects KEY=VALUE, got {item!r}")
        key, text = item.split("=", 1)
        value: object = text
        for cast in (int, float):
            try:
                value = cast(text)
                break
            except ValueError:
                continue
        if text.lower() in ("true", "false"):
            value = text.lower() == "true"
        opts[key.strip()] = value
    return opts


@teacher_app.command("train")
def teacher_train(
    task: str = typer.Option(..., help=TASK_HELP),
    epochs: int | None = typer.Option(None, help="Epochs (default per task)."),
    batch_size: int | None = typer.Option(None, help="Batch size (default per task)."),
    lr: float | None = typer.Option(None, help="Peak learning rate (default per task)."),
    label_smoothing: float | None = typer.Option(
        None, help="Label smoothing of the cross-entropy (default per task: 0.1 for cifar10)."
    ),
    seed: int = typer.Option(0, help="Seed of init, split and batch order."),
    data_root: Path | None = typer.Option(None, help="Data root (default $ONNLAB_DATA)."),
    limit: int | None = typer.Option(None, help="Use at most this many training images."),
    eval_limit: int | None = typer.Option(None, help="At most this many val/test images."),
    out: Path | None = typer.Option(None, help="Run directory (reuse one to resume)."),
    device: str = typer.Option("auto", help="auto | cpu | cuda."),
    register: bool = typer.Option(True, help="Copy the result to runs/teachers/<task>.pt."),
    arch: list[str] = typer.Option([], help="Architecture option KEY=VALUE, e.g. width=16."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Train the task's teacher (LeNet, CifarNet, U-Net) and test it."""
    from onnlab.training.config import default_config
    from onnlab.training.runner import train_teacher

    config = default_config(
        task,
        "teacher",
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        label_smoothing=label_smoothing,
        seed=seed,
        device=device,
        progress=progress,
    )
    run_dir = _out_dir(out, f"teacher-{task}")
    typer.echo(f"run directory: {run_dir}")
    summary = train_teacher(
        task,
        config,
        run_dir,
        data_root=data_root,
        limit=limit,
        eval_limit=eval_limit,
        register=register and limit is None,
        architecture=_parse_opts(arch, "--arch"),
    )
    typer.echo(f"test: {summary['test']}  ({summary['train_time_s']:.0f} s training)")
    typer.echo(f"checkpoint: {summary['checkpoint']}")
    if "registered" in summary:
        typer.echo(f"registered teacher: {summary['registered']}")


def train_command(
    task: str = typer.Option(..., help=TASK_HELP),
    method: str = typer.Option("none", help="none (task loss) | kd (Hinton) | ntkd."),
    seeds: int = typer.Option(1, help="Number of seeds (seed0, seed0+1, ...)."),
    seed0: int = typer.Option(0, help="First seed."),
    teacher: Path | None = typer.Option(
        None, help="Teacher checkpoint (default runs/teachers/<task>.pt)."
    ),
    epochs: int | None = typer.Option(None, help="Epochs (default per task)."),
    batch_size: int | None = typer.Option(None, help="Batch size (default per task)."),
    lr: float | None = typer.Option(None, help="Peak learning rate (default per task)."),
    alpha: float | None = typer.Option(None, help="KD/NTKD weight alpha."),
    temperature: float | None = typer.Option(None, help="KD temperature."),
    beta: float | None = typer.Option(None, help="NTKD weight beta."),
    loss_opt: list[str] = typer.Option([], help="Extra loss option KEY=VALUE (repeatable)."),
    data_root: Path | None = typer.Option(
        None, help="Data root (default $ONNLAB_DATA, else bundled)."
    ),
    limit: int | None = typer.Option(None, help="Use at most this many training images."),
    eval_limit: int | None = typer.Option(None, help="At most this many val/test images."),
    pseudo_negative: bool = typer.Option(False, help="Pseudo-negative PSF pairs."),
    arch: list[str] = typer.Option([], help="Student architecture option KEY=VALUE."),
    out: Path | None = typer.Option(None, help="Run directory (reuse one to resume)."),
    device: str = typer.Option("auto", help="auto | cpu | cuda."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Train hybrid-ONN students with a transfer method over several seeds; test mean ± std."""
    from onnlab.training.config import default_config
    from onnlab.training.losses import METHODS
    from onnlab.training.runner import train_students

    if method not in METHODS:
        raise ValueError(f"--method must be one of {METHODS}, got {method!r}")
    if seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {seeds}")
    opts = {
        k: v
        for k, v in (("alpha", alpha), ("temperature", temperature), ("beta", beta))
        if v is not None
    }
    opts.update(_parse_opts(loss_opt))
    if method == "none" and opts:
        raise ValueError(f"--method none takes no loss options, got {sorted(opts)}")
    config = default_config(
        task,
        "student",
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        device=device,
        progress=progress,
    )
    if method != "none":  # fail before creating a run directory
        from onnlab.training.runner import load_teacher

        load_teacher(task, teacher)
    run_dir = _out_dir(out, f"train-{task}-{method}")
    typer.echo(f"run directory: {run_dir}")
    summary = train_students(
        task,
        method,
        list(range(seed0, seed0 + seeds)),
        config,
        run_dir,
        data_root=data_root,
        limit=limit,
        eval_limit=eval_limit,
        teacher_path=teacher,
        loss_options=opts,
        architecture={
            **_parse_opts(arch, "--arch"),
            **({"pseudo_negative": True} if pseudo_negative else {}),
        },
    )
    stats = summary["test"]
    typer.echo(
        f"test {summary['metric']}: {100 * stats['mean']:.2f} ± {100 * stats['std']:.2f} % "
        f"over {stats['n']} seed(s); {summary['train_time_s']['mean']:.0f} s per seed"
    )
    typer.echo(f"summary: {run_dir / 'summary.json'}")


def evaluate_command(
    checkpoint: Path = typer.Argument(..., help="A model.pt written by onnlab."),
    split: str = typer.Option("test", help="train | val | test."),
    data_root: Path | None = typer.Option(
        None, help="Data root (default $ONNLAB_DATA, else bundled)."
    ),
    limit: int | None = typer.Option(None, help="Evaluate at most this many images."),
    seed: int = typer.Option(0, help="Seed of the train/val split."),
    out: Path | None = typer.Option(None, help="Run directory for metrics.json."),
) -> None:
    """Evaluate a checkpoint on a data split and write metrics.json."""
    from onnlab.data import load_dataset
    from onnlab.runtime import write_json
    from onnlab.training.checkpoint import load_checkpoint
    from onnlab.training.metrics import evaluate

    model, meta = load_checkpoint(checkpoint)
    dataset = load_dataset(meta["task"], split, data_root, seed=seed, limit=limit)
    metrics = evaluate(model, dataset, meta["task"])
    run_dir = _out_dir(out, "evaluate")
    write_json(
        run_dir / "metrics.json",
        {
            "checkpoint": str(checkpoint),
            "task": meta["task"],
            "role": meta["role"],
            "split": split,
            "n": len(dataset),
            "metrics": metrics,
        },
    )
    typer.echo(" ".join(f"{k}={v:.4f}" for k, v in metrics.items()) + f"  (n={len(dataset)})")
    typer.echo(f"run directory: {run_dir}")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.add_typer(teacher_app, name="teacher")
    app.command("train")(train_command)
    app.command("evaluate")(evaluate_command)
