"""CLI: `onnlab finetune` - post-fabrication compensation of the digital backend.

`--sim` is the main demo (simulated fabrication -> calibration -> capture -> fine-tuning);
without it the command fine-tunes a trained model on capture stores from a real bench. Every
stage leaves its result in the run folder (models, calibration, captures, fine-tuning
epochs), so Ctrl-C keeps what finished and rerunning with the same `--out` resumes.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from onnlab.commands.options import (
    Task,
    console,
    data_root_option,
    json_option,
    progress_option,
    task_option,
)


def check_experiment(cfg: object) -> None:
    """Build what the experiment file describes once (student architecture, loss options), so
    a typo in it is one ConfigError naming the file before minutes of teacher training."""
    from onnlab.commands.train import check_architecture, check_loss
    from onnlab.errors import ConfigError, UsageError
    from onnlab.models.zoo import build_teacher

    task = cfg.task  # type: ignore[attr-defined]
    student = cfg.student  # type: ignore[attr-defined]
    checks = [
        ("student.architecture", lambda: check_architecture(task, "student", student.architecture)),
    ]
    teacher = build_teacher(task)
    if student.method != "none":
        opts = dict(getattr(student, student.method))
        checks.append(
            (f"student.{student.method}", lambda: check_loss(student.method, task, teacher, opts))
        )
    ntkd = dict(cfg.finetune.ntkd)  # type: ignore[attr-defined]
    checks.append(("finetune.ntkd", lambda: check_loss("ntkd", task, teacher, ntkd)))
    for field, check in checks:
        try:
            check()
        except UsageError as exc:
            text = str(exc).replace("--loss-opt ", "").replace("--arch ", "")
            raise ConfigError(f"{cfg.source}: {field}: {text}") from exc  # type: ignore[attr-defined]


def _file(help_text: str, default: str = "none") -> object:
    return typer.Option(
        None,
        metavar="FILE",
        exists=True,
        dir_okay=False,
        show_default=default,
        help=help_text,
    )


def register(app: typer.Typer) -> None:
    """Add `onnlab finetune` to the root app."""

    @app.command("finetune")
    def finetune(
        sim: bool = typer.Option(
            False, "--sim", help="Simulate a fabricated bench end to end (the main demo)."
        ),
        task: Task = task_option(Task.mnist),
        experiment: Path | None = typer.Option(
            None,
            "--experiment",
            metavar="FILE",
            exists=True,
            dir_okay=False,
            help="Experiment YAML (default: configs/experiments/TASK.yaml).",
        ),
        epochs: int | None = typer.Option(
            None,
            "--epochs",
            min=1,
            metavar="INT",
            help="Fine-tuning epochs (default: the experiment's).",
        ),
        fabrication_seeds: int = typer.Option(
            1,
            "--seeds",
            "--fabrication-seeds",
            min=1,
            metavar="INT",
            help="Number of simulated fabrications, seeds seed0, seed0+1, ... (mean ± std).",
        ),
        fabrication_seed0: int = typer.Option(
            0,
            "--seed0",
            "--fabrication-seed0",
            metavar="INT",
            help="Seed of the first simulated fabrication's hidden errors.",
        ),
        seed0: int = typer.Option(
            0,
            "--train-seed",
            metavar="INT",
            help="Seed of training, the captured subset and fine-tuning.",
        ),
        data_root: Path | None = data_root_option(),
        tiny: bool = typer.Option(False, "--tiny", help="Run the seconds-long variant (tests)."),
        student: Path | None = _file(
            "Trained student checkpoint (needed without --sim).", "with --sim: trained here"
        ),
        teacher: Path | None = _file(
            "Teacher checkpoint (needed without --sim).", "with --sim: trained here"
        ),
        calibration: Path | None = _file("Calibration artifact the captures were made with."),
        train_capture: list[Path] = typer.Option(
            [],
            "--train-capture",
            metavar="FILE",
            exists=True,
            dir_okay=False,
            show_default="none",
            help="Capture store of training images (without --sim; repeatable).",
        ),
        test_capture: Path | None = _file("Capture store of the test images (without --sim)."),
        out: Path | None = typer.Option(
            None,
            "--out",
            metavar="DIR",
            file_okay=False,
            help="Run folder; rerun with the same folder to resume (default: a fresh folder "
            "under runs/).",
        ),
        threads: int | None = typer.Option(
            None,
            "--threads",
            min=0,
            metavar="INT",
            show_default="1 for mnist, else torch's",
            help="Torch CPU threads; 0 means torch's default.",
        ),
        json_out: bool = json_option(),
        progress: bool = progress_option(),
    ) -> None:
        """Fine-tune the backend on captured features: none vs end-to-end vs NTKD."""
        import contextlib
        import sys

        import torch

        from onnlab.errors import Interrupted, UsageError
        from onnlab.runtime import holds_results, run_folder

        name = task.value
        if not sim and (
            student is None or teacher is None or not train_capture or not test_capture
        ):
            raise UsageError(
                "without --sim, pass --student, --teacher, --train-capture and --test-capture"
            )
        if sim and (train_capture or test_capture or calibration):
            raise UsageError("--sim captures its own data: drop --train-capture, --test-capture, "
                             "--calibration")  # fmt: skip
        if sim:  # check the inputs now, not after minutes of training
            from onnlab.commands.options import check_data
            from onnlab.finetune.config import load_experiment
            from onnlab.finetune.models import _load

            cfg = load_experiment(name, experiment, tiny=tiny)
            check_experiment(cfg)
            for path, role in ((teacher, "teacher"), (student, "student")):
                if path is not None:
                    _load(path, cfg.task, role)
            check_data(cfg.task, data_root)
        if threads is None:
            threads = 1 if name == "mnist" else 0
        if threads > 0:
            torch.set_num_threads(threads)
        out_console = console(stderr=json_out)
        log = out_console.print  # with --json on stderr, so stdout stays pure JSON
        # with --json, everything else (training logs, progress) goes to stderr
        quiet = contextlib.redirect_stdout(sys.stderr) if json_out else contextlib.nullcontext()
        kind = f"finetune-sim-{name}" if sim else f"finetune-{name}"
        with quiet, run_folder(kind, out) as run_dir:
            try:
                if sim:
                    from onnlab.finetune.sim import SimOptions, run_sim

                    payload = run_sim(
                        SimOptions(
                            task=name,
                            experiment=experiment,
                            epochs=epochs,
                            seed=seed0,
                            fabrication_seed=fabrication_seed0,
                            n_fabrications=fabrication_seeds,
                            data_root=None if data_root is None else str(data_root),
                            tiny=tiny,
                            student=student,
                            teacher=teacher,
                            run_dir=run_dir,
                            progress=progress and not json_out,
                            log=log,
                        )
                    )
                else:
                    from onnlab.finetune.lab import run_lab

                    payload = run_lab(
                        student=student,  # type: ignore[arg-type]
                        teacher=teacher,  # type: ignore[arg-type]
                        calibration=calibration,
                        train_captures=list(train_capture),
                        test_capture=test_capture,  # type: ignore[arg-type]
                        data_root=data_root,
                        epochs=epochs,
                        seed=seed0,
                        experiment=experiment,
                        run_dir=run_dir,
                        progress=progress and not json_out,
                        log=log,
                    )
            except KeyboardInterrupt:
                if not holds_results(run_dir):
                    raise Interrupted("nothing finished yet, nothing kept") from None
                raise Interrupted(
                    f"finished stages (models, calibration, captures, epochs) kept in {run_dir}; "
                    f"resume with the same command and --out {run_dir}"
                ) from None
        if json_out:
            slim = {k: v for k, v in payload.items() if k != "details"}
            typer.echo(json.dumps(slim, indent=2, default=str))
            return
        from onnlab.finetune.report import rich_table

        out_console.print(rich_table(payload["runs"], payload["metric"], payload["task"]))
        out_console.print(
            f"NTKD recovers {100 * payload['ntkd_recovery']:.1f} % of the simulation "
            f"{payload['metric']}; {payload['seconds']:.0f} s; results in {payload['run_dir']}"
        )
