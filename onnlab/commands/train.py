"""CLI commands: `onnlab teacher train`, `onnlab train`, `onnlab evaluate`.

Heavy imports (torch, models) live inside the command bodies so `onnlab --help` stays instant.
Every check of the user's input happens before a run folder is created or data is loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from onnlab.commands.options import (
    Method,
    Split,
    Task,
    check_data,
    choices,
    data_root_option,
    device_option,
    eval_limit_option,
    limit_option,
    out_option,
    progress_option,
    seed0_option,
    task_option,
)

teacher_app = typer.Typer(
    help="Train the all-digital teachers used for distillation.", no_args_is_help=True
)


def parse_opts(items: list[str], flag: str) -> dict[str, Any]:
    """KEY=VALUE pairs; values parsed as int, float, bool or left as text (UsageError)."""
    from onnlab.errors import UsageError

    opts: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"{flag} expects KEY=VALUE, got {item!r}")
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


def check_architecture(task: str, role: str, arch: dict[str, Any]) -> None:
    """Build the model once so a wrong --arch key or value fails before any work."""
    from onnlab.errors import UsageError
    from onnlab.models.zoo import build_model

    if not arch:
        return
    try:
        build_model(task, role, **arch)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"--arch {arch}: {exc}") from exc


def check_loss(method: str, task: str, teacher: Any, opts: dict[str, Any]) -> None:
    """Build the objective once: an unknown --loss-opt key or a bad value is a UsageError."""
    import inspect

    from onnlab.errors import UsageError
    from onnlab.training.losses import make_loss

    if method == "none":
        if opts:
            raise UsageError(f"--method none takes no loss options, got {sorted(opts)}")
        return
    if method == "kd":
        from onnlab.training.losses import KDLoss as cls
    else:
        from onnlab.distill.objective import NTKDObjective as cls
    params = inspect.signature(cls.__init__).parameters
    valid = sorted(p for p in params if p not in ("self", "teacher", "task", "params"))
    for key in opts:
        if key not in valid:
            from onnlab.config_errors import nearest

            guess = nearest(key, valid)
            hint = f"; did you mean {guess!r}?" if guess else ""
            raise UsageError(
                f"--loss-opt {key}: not an option of {method}{hint} (options: {', '.join(valid)})"
            )
    try:
        make_loss(method, task, teacher, **opts)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{method} loss options {opts}: {exc}") from exc


def training_config(task: str, role: str, **options: Any) -> Any:
    """The task's tuned TrainConfig with the command-line overrides; a bad value names its flag."""
    from pydantic import ValidationError

    from onnlab.config_errors import describe_error
    from onnlab.errors import UsageError
    from onnlab.training.config import TrainConfig, default_config

    try:
        return default_config(task, role, **options)
    except ValidationError as exc:
        error = exc.errors()[0]
        flag = "--" + str(error["loc"][0]).replace("_", "-") if error["loc"] else "option"
        raise UsageError(
            f"{flag}: {describe_error(error, TrainConfig).split(': ', 1)[-1]}"
        ) from exc


def _interrupted(run_dir: Path, what: str, rerun: str) -> Any:
    from onnlab.errors import Interrupted
    from onnlab.runtime import holds_results

    if run_dir.is_dir() and holds_results(run_dir):
        return Interrupted(f"{what} kept in {run_dir}; resume with `{rerun} --out {run_dir}`")
    return Interrupted("nothing finished yet, nothing kept")


@teacher_app.command("train")
def teacher_train(
    task: Task = task_option(),
    epochs: int | None = typer.Option(
        None, min=1, metavar="INT", help="Epochs (default: the task's, see training/config.py)."
    ),
    batch_size: int | None = typer.Option(
        None, min=1, metavar="INT", help="Batch size (default: the task's)."
    ),
    lr: float | None = typer.Option(
        None, min=0.0, metavar="FLOAT", help="Peak learning rate (default: the task's)."
    ),
    label_smoothing: float | None = typer.Option(
        None,
        min=0.0,
        max=0.99,
        metavar="FLOAT",
        help="Label smoothing of the cross-entropy (default: 0.1 for cifar10, else 0).",
    ),
    seed0: int = seed0_option("Seed of the initialisation, the train/val split and batches."),
    data_root: Path | None = data_root_option(),
    limit: int | None = limit_option(),
    eval_limit: int | None = eval_limit_option(),
    out: Path | None = out_option(),
    device: str = device_option(),
    register: bool | None = typer.Option(
        None,
        "--register/--no-register",
        show_default="register unless --limit",
        help="Make it the default teacher of this task and dataset (runs/teachers/).",
    ),
    arch: list[str] = typer.Option(
        [], metavar="KEY=VALUE", help="Architecture option, e.g. width=16 (repeatable)."
    ),
    progress: bool = progress_option(),
) -> None:
    """Train the task's teacher (LeNet, CifarNet, U-Net) and test it."""
    from onnlab.runtime import run_folder
    from onnlab.training.runner import registered_teacher_path, train_teacher

    name = task.value
    architecture = parse_opts(arch, "--arch")
    check_architecture(name, "teacher", architecture)
    config = training_config(
        name,
        "teacher",
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        label_smoothing=label_smoothing,
        seed=seed0,
        device=device,
        progress=progress,
    )
    check_data(name, data_root)
    do_register = (limit is None) if register is None else register
    target = registered_teacher_path(name, data_root)
    with run_folder(f"teacher-{name}", out) as run_dir:
        typer.echo(f"run directory: {run_dir}")
        try:
            summary = train_teacher(
                name,
                config,
                run_dir,
                data_root=data_root,
                limit=limit,
                eval_limit=eval_limit,
                register=do_register,
                architecture=architecture,
            )
        except KeyboardInterrupt:
            rerun = f"onnlab teacher train --task {name}"
            raise _interrupted(run_dir, "finished epochs", rerun) from None
    typer.echo(f"test: {summary['test']}  ({summary['train_time_s']:.0f} s training)")
    typer.echo(f"checkpoint: {summary['checkpoint']}")
    if "registered" in summary:
        typer.echo(f"registered teacher: {summary['registered']}")
    else:
        why = f"--limit {limit}" if limit is not None and register is None else "--no-register"
        typer.echo(
            f"not registered as the default teacher ({why}); `onnlab train --method kd` "
            f"needs --teacher {summary['checkpoint']} (or rerun with --register to replace "
            f"{target})"
        )


def train_command(
    task: Task = task_option(),
    method: Method = typer.Option(
        Method.none,
        "--method",
        metavar=choices(Method),
        help="Transfer method: none (task loss only), kd (Hinton) or ntkd.",
    ),
    seeds: int = typer.Option(
        1, "--seeds", min=1, metavar="INT", help="Number of seeds: seed0, seed0+1, ..."
    ),
    seed0: int = seed0_option(),
    teacher: Path | None = typer.Option(
        None,
        metavar="FILE",
        exists=True,
        dir_okay=False,
        help="Teacher checkpoint (default: the one registered for this task and dataset).",
    ),
    epochs: int | None = typer.Option(
        None, min=1, metavar="INT", help="Epochs (default: the task's)."
    ),
    batch_size: int | None = typer.Option(
        None, min=1, metavar="INT", help="Batch size (default: the task's)."
    ),
    lr: float | None = typer.Option(
        None, min=0.0, metavar="FLOAT", help="Peak learning rate (default: the task's)."
    ),
    alpha: float | None = typer.Option(
        None,
        metavar="FLOAT",
        show_default="kd 0.5, ntkd 1.0",
        help="Weight alpha of the distillation term.",
    ),
    temperature: float | None = typer.Option(
        None, metavar="FLOAT", show_default="10", help="Softmax temperature of KD."
    ),
    beta: float | None = typer.Option(
        None, metavar="FLOAT", show_default="1.0", help="Weight beta of the NTK term (ntkd)."
    ),
    loss_opt: list[str] = typer.Option(
        [], metavar="KEY=VALUE", help="Further loss option, e.g. ntk_batch=32 (repeatable)."
    ),
    data_root: Path | None = data_root_option(),
    limit: int | None = limit_option(),
    eval_limit: int | None = eval_limit_option(),
    pseudo_negative: bool = typer.Option(
        False, help="Use pseudo-negative PSF pairs (signed kernels from two PSFs)."
    ),
    arch: list[str] = typer.Option(
        [], metavar="KEY=VALUE", help="Student architecture option (repeatable)."
    ),
    out: Path | None = out_option(),
    device: str = device_option(),
    progress: bool = progress_option(),
) -> None:
    """Train hybrid-ONN students with a transfer method over several seeds; test mean ± std."""
    from onnlab.runtime import run_folder
    from onnlab.training.runner import load_teacher, train_students

    name, how = task.value, method.value
    opts = {
        k: v
        for k, v in (("alpha", alpha), ("temperature", temperature), ("beta", beta))
        if v is not None
    }
    opts.update(parse_opts(loss_opt, "--loss-opt"))
    architecture = {
        **parse_opts(arch, "--arch"),
        **({"pseudo_negative": True} if pseudo_negative else {}),
    }
    check_architecture(name, "student", architecture)
    config = training_config(
        name, "student", epochs=epochs, batch_size=batch_size, lr=lr, device=device,
        progress=progress,
    )  # fmt: skip
    check_data(name, data_root)
    teacher_model = None
    if how != "none":  # fail before creating a run directory
        teacher_model, _ = load_teacher(name, teacher, data_root)
    check_loss(how, name, teacher_model, opts)
    with run_folder(f"train-{name}-{how}", out) as run_dir:
        typer.echo(f"run directory: {run_dir}")
        try:
            summary = train_students(
                name,
                how,
                list(range(seed0, seed0 + seeds)),
                config,
                run_dir,
                data_root=data_root,
                limit=limit,
                eval_limit=eval_limit,
                teacher_path=teacher,
                loss_options=opts,
                architecture=architecture,
            )
        except KeyboardInterrupt:
            rerun = f"onnlab train --task {name} --method {how} --seeds {seeds} --seed0 {seed0}"
            raise _interrupted(run_dir, "finished seeds and epochs", rerun) from None
    stats = summary["test"]
    typer.echo(
        f"test {summary['metric']}: {100 * stats['mean']:.2f} ± {100 * stats['std']:.2f} % "
        f"over {stats['n']} seed(s); {summary['train_time_s']['mean']:.0f} s per seed"
    )
    typer.echo(f"summary: {run_dir / 'summary.json'}")


def evaluate_command(
    checkpoint: Path = typer.Argument(
        ...,
        metavar="CHECKPOINT",
        exists=True,
        dir_okay=False,
        help="A model.pt written by onnlab.",
        show_default=False,
    ),
    split: Split = typer.Option(Split.test, metavar=choices(Split), help="Split to score."),
    data_root: Path | None = data_root_option(),
    limit: int | None = typer.Option(
        None, min=1, metavar="INT", show_default="all", help="Evaluate at most this many images."
    ),
    seed0: int | None = typer.Option(
        None,
        "--seed0",
        metavar="INT",
        show_default="the checkpoint's",
        help="Seed of the train/val split.",
    ),
    out: Path | None = out_option(),
) -> None:
    """Evaluate a checkpoint on a data split and write metrics.json.

    Refuses a dataset other than the one the checkpoint was trained on (Carvana vs synthetic).
    """
    from onnlab.data import load_dataset
    from onnlab.runtime import run_folder, write_json
    from onnlab.training.checkpoint import load_checkpoint
    from onnlab.training.metrics import evaluate
    from onnlab.training.runner import check_dataset

    model, meta = load_checkpoint(checkpoint)
    check_dataset(meta, meta["task"], data_root, f"checkpoint {checkpoint}")
    seed = int(meta.get("seed", 0)) if seed0 is None else seed0
    dataset = load_dataset(meta["task"], split.value, data_root, seed=seed, limit=limit)
    metrics = evaluate(model, dataset, meta["task"])
    with run_folder("evaluate", out) as run_dir:
        write_json(
            run_dir / "metrics.json",
            {
                "checkpoint": str(checkpoint),
                "task": meta["task"],
                "role": meta["role"],
                "dataset": meta.get("dataset"),
                "split": split.value,
                "seed": seed,
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
