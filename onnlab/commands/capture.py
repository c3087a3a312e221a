"""CLI: `onnlab capture` - the technicians' capture script (resumable, seeded, fault tolerant)."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add `onnlab capture` to the root app."""

    @app.command("capture")
    def capture(
        config: Path = typer.Option(
            None, "--config", help="bench YAML (default: configs/bench/sim.yaml)"
        ),
        dataset: str = typer.Option("mnist", "--dataset", help="mnist | cifar10 | segmentation"),
        split: str = typer.Option("train", "--split", help="train | val | test"),
        fraction: float = typer.Option(0.1, "--fraction", help="fraction of the split, (0, 1]"),
        out: Path = typer.Option(..., "--out", help="capture store (HDF5); rerun to resume"),
        calibration: Path = typer.Option(
            None,
            "--calibration",
            help="calibration artifact: store per-kernel feature tiles instead of raw frames",
        ),
        seed: int = typer.Option(0, "--seed", help="seed of the subset selection"),
        data_root: str = typer.Option(None, "--data-root", help="dataset folder ($ONNLAB_DATA)"),
        limit: int = typer.Option(None, "--limit", help="use at most this many split samples"),
        chunk_size: int = typer.Option(64, "--chunk-size", help="frames per committed chunk"),
        slm_id: str = typer.Option(None, "--slm", help="SLM device id (default: the first)"),
        camera_id: str = typer.Option(None, "--camera", help="camera id (default: the first)"),
        no_exposure_check: bool = typer.Option(
            False, "--no-exposure-check", help="keep the camera's exposure as configured"
        ),
        max_attempts: int = typer.Option(5, "--max-attempts", help="tries per frame"),
        json_out: bool = typer.Option(False, "--json", help="print the summary as JSON"),
        progress: bool = typer.Option(True, "--progress/--no-progress"),
    ) -> None:
        """Show a seeded fraction of a dataset on the SLM and store every camera frame.

        Interrupt it any time (Ctrl-C, a crash, a cable): rerunning the same command resumes
        with no duplicate and no gap.
        """
        import json

        from rich.console import Console

        from onnlab.capture.cli_support import capture_command

        summary = capture_command(
            config=config,
            dataset=dataset,
            split=split,
            fraction=fraction,
            out=out,
            calibration=calibration,
            seed=seed,
            data_root=data_root,
            limit=limit,
            chunk_size=chunk_size,
            slm_id=slm_id,
            camera_id=camera_id,
            exposure_check=not no_exposure_check,
            max_attempts=max_attempts,
            progress=progress and not json_out,
        )
        if json_out:
            typer.echo(json.dumps(summary, indent=2, default=str))
            return
        console = Console()
        console.print(
            f"[bold]{summary['path']}[/]: captured {summary['captured']}, "
            f"skipped (already present) {summary['skipped']}, retried {summary['retried']}, "
            f"failed {summary['failed']}, saturated {summary['saturated_frames']} - "
            f"{summary['frames_per_s']:.1f} frames/s, "
            f"{'complete' if summary['complete'] else 'INCOMPLETE'}"
        )
