"""CLI: `onnlab finetune` - post-fabrication compensation of the digital backend.

`--sim` is the main demo (simulated fabrication -> calibration -> capture -> fine-tuning);
without it the command fine-tunes a trained model on capture stores from a real bench.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add `onnlab finetune` to the root app."""

    @app.command("finetune")
    def finetune(
        sim: bool = typer.Option(
            False, "--sim", help="simulate a fabricated bench end to end (the main demo)"
        ),
        task: str = typer.Option("mnist", "--task", help="mnist | cifar10 | segmentation"),
        experiment: Path = typer.Option(
            None, "--experiment", help="experiment YAML (default configs/experiments/TASK.yaml)"
        ),
        epochs: int = typer.Option(None, "--epochs", help="fine-tuning epochs (override)"),
        seed: int = typer.Option(0, "--seed", help="training / selection seed"),
        seeds: int = typer.Option(
            1, "--seeds", help="number of fabrication seeds (FAB, FAB+1, ...): mean ± std"
        ),
        fabrication_seed: int = typer.Option(
            0, "--fabrication-seed", help="seed of the hidden fabrication errors"
        ),
        data_root: str = typer.Option(None, "--data-root", help="dataset folder ($ONNLAB_DATA)"),
        tiny: bool = typer.Option(False, "--tiny", help="seconds-long variant (tests)"),
        student: Path = typer.Option(None, "--student", help="trained student checkpoint"),
        teacher: Path = typer.Option(None, "--teacher", help="teacher checkpoint"),
        calibration: Path = typer.Option(
            None, "--calibration", help="calibration artifact the captures were made with"
        ),
        train_capture: list[Path] = typer.Option(
            None, "--train-capture", help="capture store(s) of training images (repeatable)"
        ),
        test_capture: Path = typer.Option(None, "--test-capture", help="capture store of tests"),
        run_dir: Path = typer.Option(
            None, "--run-dir", help="run directory (reused: cached models, resumed captures)"
        ),
        threads: int = typer.Option(
            None,
            "--threads",
            help="torch CPU threads (default 1 for mnist, where more threads only wait on "
            "each other; 0 = torch's default)",
        ),
        json_out: bool = typer.Option(False, "--json", help="print the results as JSON"),
        progress: bool = typer.Option(True, "--progress/--no-progress"),
    ) -> None:
        """Fine-tune the backend on captured features: none vs end-to-end vs NTKD."""
        import contextlib
        import sys

        import torch
        from rich.console import Console

        if threads is None:
            threads = 1 if task == "mnist" else 0
        if threads > 0:
            torch.set_num_threads(threads)
        console = Console(stderr=json_out)
        log = console.print  # with --json on stderr, so stdout stays pure JSON
        # with --json, everything else (training logs, progress) goes to stderr
        quiet = contextlib.redirect_stdout(sys.stderr) if json_out else contextlib.nullcontext()
        with quiet:
            if sim:
                from onnlab.finetune.sim import SimOptions, run_sim

                payload = run_sim(
                    SimOptions(
                        task=task,
                        experiment=experiment,
                        epochs=epochs,
                        seed=seed,
                        fabrication_seed=fabrication_seed,
                        n_fabrications=seeds,
                        data_root=data_root,
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

                if student is None or teacher is None or not train_capture or not test_capture:
                    raise typer.BadParameter(
                        "without --sim, pass --student, --teacher, --train-capture and "
                        "--test-capture"
                    )
                payload = run_lab(
                    student=student,
                    teacher=teacher,
                    calibration=calibration,
                    train_captures=list(train_capture),
                    test_capture=test_capture,
                    data_root=data_root,
                    epochs=epochs,
                    seed=seed,
                    experiment=experiment,
                    run_dir=run_dir,
                    progress=progress and not json_out,
                    log=log,
                )
        if json_out:
            slim = {k: v for k, v in payload.items() if k != "details"}
            typer.echo(json.dumps(slim, indent=2, default=str))
            return
        from onnlab.finetune.report import rich_table

        console.print(rich_table(payload["runs"], payload["metric"], payload["task"]))
        console.print(
            f"NTKD recovers {100 * payload['ntkd_recovery']:.1f} % of the simulation "
            f"{payload['metric']}; {payload['seconds']:.0f} s; results in {payload['run_dir']}"
        )
