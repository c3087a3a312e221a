"""CLI: `onnlab capture` - the technicians' capture script (resumable, seeded, fault tolerant)."""

from __future__ import annotations

from pathlib import Path

import typer

from onnlab.commands.options import (
    Split,
    Task,
    choices,
    config_option,
    console,
    data_root_option,
    json_option,
    progress_option,
    seed0_option,
    task_option,
)

STORE = "capture.h5"


def register(app: typer.Typer) -> None:
    """Add `onnlab capture` to the root app."""

    @app.command("capture")
    def capture(
        config: Path | None = config_option(),
        task: Task = task_option(Task.mnist),
        split: Split = typer.Option(
            Split.train, "--split", metavar=choices(Split), help="Split to capture."
        ),
        fraction: float = typer.Option(
            0.1, "--fraction", min=0.0, max=1.0, metavar="FLOAT", help="Fraction of the split."
        ),
        out: Path | None = typer.Option(
            None,
            "--out",
            metavar="DIR",
            file_okay=False,
            help=f"Run folder; the store is DIR/{STORE}. Rerun with the same folder to resume "
            "(default: a fresh folder under runs/).",
        ),
        store: Path | None = typer.Option(
            None,
            "--store",
            metavar="FILE",
            dir_okay=False,
            show_default="none",
            help="Capture store (HDF5) to write instead of DIR/capture.h5; rerun to resume.",
        ),
        calibration: Path | None = typer.Option(
            None,
            "--calibration",
            metavar="FILE",
            exists=True,
            dir_okay=False,
            show_default="none: raw frames",
            help="Calibration artifact: store per-kernel feature tiles instead of raw frames.",
        ),
        seed0: int = seed0_option("Seed of the subset selection."),
        data_root: Path | None = data_root_option(),
        limit: int | None = typer.Option(
            None,
            "--limit",
            min=1,
            metavar="INT",
            show_default="all",
            help="Use at most this many split samples.",
        ),
        chunk_size: int = typer.Option(
            64, "--chunk-size", min=1, metavar="INT", help="Frames per committed chunk."
        ),
        slm_id: str | None = typer.Option(
            None, "--slm", metavar="ID", help="SLM device id (default: the first SLM)."
        ),
        camera_id: str | None = typer.Option(
            None, "--camera", metavar="ID", help="Camera device id (default: the first camera)."
        ),
        no_exposure_check: bool = typer.Option(
            False, "--no-exposure-check", help="Keep the camera's exposure as configured."
        ),
        max_attempts: int = typer.Option(
            5, "--max-attempts", min=1, metavar="INT", help="Tries per frame."
        ),
        json_out: bool = json_option(),
        progress: bool = progress_option(),
    ) -> None:
        """Show a seeded fraction of a dataset on the SLM and store every camera frame.

        Interrupt it any time (Ctrl-C, a crash, a cable): rerunning the same command resumes
        with no duplicate and no gap.
        """
        import json
        import sys

        from drivers.registry import default_config_path
        from onnlab.capture.cli_support import capture_command
        from onnlab.commands.calibrate import simulation_line
        from onnlab.commands.options import bench_config, check_data
        from onnlab.errors import UsageError
        from onnlab.runtime import run_folder

        if fraction <= 0:
            raise typer.BadParameter(
                f"must be in (0, 1], got {fraction}", param_hint="'--fraction'"
            )
        if out is not None and store is not None:
            raise UsageError("pass --out DIR or --store FILE, not both")
        bench, _ = bench_config(config)
        check_data(task.value, data_root)
        for flag, dev_id in (("--slm", slm_id), ("--camera", camera_id)):
            if dev_id is not None and dev_id not in bench.devices:
                have = ", ".join(bench.devices)
                raise UsageError(f"{flag} {dev_id!r}: no such device in the bench config ({have})")
        line = simulation_line(bench, config or default_config_path(), False)
        if line:
            print(line, file=sys.stderr if json_out else sys.stdout)

        def run(path: Path) -> dict:
            return capture_command(
                config=config,
                dataset=task.value,
                split=split.value,
                fraction=fraction,
                out=path,
                calibration=calibration,
                seed=seed0,
                data_root=data_root,
                limit=limit,
                chunk_size=chunk_size,
                slm_id=slm_id,
                camera_id=camera_id,
                exposure_check=not no_exposure_check,
                max_attempts=max_attempts,
                progress=progress and not json_out,
            )

        if store is not None:
            summary = run(store)
        else:
            with run_folder("capture", out) as run_dir:
                summary = run(run_dir / STORE)
        summary["simulated"] = line is not None
        if json_out:
            typer.echo(json.dumps(summary, indent=2, default=str))
            return
        console().print(
            f"[bold]{summary['path']}[/]: captured {summary['captured']}, "
            f"skipped (already present) {summary['skipped']}, retried {summary['retried']}, "
            f"failed {summary['failed']}, saturated {summary['saturated_frames']} - "
            f"{summary['frames_per_s']:.1f} frames/s, "
            f"{'complete' if summary['complete'] else 'INCOMPLETE'}"
        )
