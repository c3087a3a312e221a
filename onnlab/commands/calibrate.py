"""CLI: `onnlab calibrate --device slm0 [--config FILE] [--sim] [--steps ...] [--out DIR]`.

Measures the built bench through its drivers (dark/photon transfer, display response, focus,
registration, PSFs), writes a `CalibrationArtifact` (calibration.h5), a report PNG and a JSON
summary into a fresh run directory, and prints a summary table with the paths. Every refusal
of a procedure (saturated, no signal, defocused, misregistered) is one line saying what to
change.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer


def _sim_only(config: Any) -> Any:
    """The same bench with every device replaced by its simulated twin (``--sim``)."""
    from drivers.registry import SimDeviceConfig

    devices = {}
    kinds: set[str] = set()
    for dev_id, dev in config.devices.items():
        if dev.kind in kinds:
            continue  # one SimulatedBench has one device of each kind
        kinds.add(dev.kind)
        devices[dev_id] = SimDeviceConfig(kind=dev.kind)
    return config.model_copy(update={"devices": devices})


def calibrate_command(
    *,
    device: str,
    config_path: Path | None,
    sim: bool,
    steps: str,
    out: Path | None,
    design: Path | None,
    previous: Path | None,
    rows: int | None,
    cols: int | None,
    gap_px: int | None,
    quick: bool,
    progress: bool,
) -> dict[str, Any]:
    """Run the calibration; returns the JSON summary (also written to the run dir)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from calibration.artifact import CalibrationArtifact
    from calibration.report import write_report
    from calibration.runner import STEPS, CalibrationOptions, run_calibration
    from calibration.setup import load_design, setup_from_devices
    from drivers.registry import default_config_path, load_bench_config, open_devices
    from onnlab.runtime import make_run_dir, write_json

    wanted = [s.strip() for s in steps.split(",") if s.strip()]
    bad = [s for s in wanted if s not in STEPS]
    if bad or not wanted:
        raise ValueError(f"--steps: unknown {bad or steps!r}; choose from {','.join(STEPS)}")
    config = load_bench_config(config_path or default_config_path())
    if sim:
        config = _sim_only(config)
    design_psfs = load_design(design) if design is not None else None
    prev = CalibrationArtifact.load(previous, bench_config=config) if previous else None
    options = CalibrationOptions.quick() if quick else CalibrationOptions()
    with open_devices(config, design_psfs=design_psfs) as devices:
        setup = setup_from_devices(
            config,
            devices,
            slm_id=device,
            design_psfs=design_psfs,
            rows=rows,
            cols=cols,
            gap_px=gap_px,
        )
        columns = (TextColumn("{task.description:<34}"), BarColumn(), TimeElapsedColumn())
        with Progress(*columns, disable=not progress, transient=True) as bar:
            tasks = {s: bar.add_task(s, total=1.0, visible=False) for s in wanted}

            def report(message: str, fraction: float) -> None:
                step = message.split(":")[0].split()[0]
                if step in tasks:
                    bar.update(
                        tasks[step], completed=fraction, visible=True, description=message[:34]
                    )

            run = run_calibration(
                setup, steps=wanted, options=options, progress=report, previous=prev
            )
    run_dir = make_run_dir("calibrate", out)
    art_path = run.artifact.save(run_dir / "calibration.h5")
    png = write_report(run.artifact, run_dir / "report.png")
    summary = {
        "artifact": str(art_path),
        "report": str(png),
        "run_dir": str(run_dir),
        "seconds": run.seconds,
        "steps": {
            name: {
                "residual": rec.residual,
                "seconds": rec.seconds,
                "frames": rec.n_frames,
                **rec.values,
            }
            for name, rec in run.artifact.meta.steps.items()
        },
        **run.artifact.summary(),
    }
    write_json(run_dir / "summary.json", summary)
    return summary


def _print_summary(summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="onnlab calibrate")
    for col in ("step", "residual", "frames", "seconds", "result"):
        table.add_column(col)
    for name, rec in summary["steps"].items():
        vals = {k: v for k, v in rec.items() if k not in ("residual", "seconds", "frames")}
        text = ", ".join(f"{k}={v:.4g}" for k, v in vals.items())
        table.add_row(
            name, f"{rec['residual']:.4g}", str(rec["frames"]), f"{rec['seconds']:.1f}", text
        )
    console = Console()
    console.print(table)
    console.print(f"alpha: {', '.join(f'{a:.3f}' for a in summary['alpha'])}")
    console.print(f"artifact: [bold]{summary['artifact']}[/]")
    console.print(f"report:   [bold]{summary['report']}[/]")


def register(app: typer.Typer) -> None:
    """Add `onnlab calibrate` to the root app."""

    @app.command("calibrate")
    def calibrate(
        device: str = typer.Option("slm0", "--device", help="id of the SLM to calibrate"),
        config: Path = typer.Option(
            None, "--config", help="bench YAML (default: configs/bench/sim.yaml)"
        ),
        sim: bool = typer.Option(False, "--sim", help="use simulated twins of every device"),
        steps: str = typer.Option(
            "dark,response,focus,registration,psf", "--steps", help="comma-separated subset"
        ),
        out: Path = typer.Option(None, "--out", help="folder for the run dir (default: runs/)"),
        design: Path = typer.Option(None, "--design", help="design PSFs (K,C,k,k) .npy/.pt"),
        previous: Path = typer.Option(
            None, "--previous", help="earlier artifact of this bench: values for skipped steps"
        ),
        rows: int = typer.Option(None, "--rows", help="tile rows (default: from the config)"),
        cols: int = typer.Option(None, "--cols", help="tile columns (default: from the config)"),
        gap_px: int = typer.Option(None, "--gap-px", help="dark pixels between tiles"),
        quick: bool = typer.Option(False, "--quick", help="fewer frames (smoke tests)"),
        json_out: bool = typer.Option(False, "--json", help="print the summary as JSON"),
        progress: bool = typer.Option(True, "--progress/--no-progress"),
    ) -> None:
        """Calibrate the bench: camera noise, display response, focus, registration, PSFs."""
        import json

        summary = calibrate_command(
            device=device,
            config_path=config,
            sim=sim,
            steps=steps,
            out=out,
            design=design,
            previous=previous,
            rows=rows,
            cols=cols,
            gap_px=gap_px,
            quick=quick,
            progress=progress and not json_out,
        )
        if json_out:
            typer.echo(json.dumps(summary, indent=2, default=str))
        else:
            _print_summary(summary)
