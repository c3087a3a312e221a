"""CLI: `onnlab calibrate [--config FILE] [--sim] [--slm ID] [--steps ...] [--out DIR]`.

Measures the built bench through its drivers (dark/photon transfer, display response, focus,
registration, PSFs) and writes, into its run folder, a `CalibrationArtifact`
(calibration.h5), a report PNG and a JSON summary, then prints a summary table. After every
finished step everything measured so far is saved (calibration.partial.h5), so Ctrl-C keeps
the finished steps and rerunning with the same `--out` resumes from the next one. Simulated
devices are announced on the first output line and recorded in the artifact.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import typer

from onnlab.commands.options import (
    config_option,
    console,
    json_option,
    out_option,
    progress_option,
)

PARTIAL = "calibration.partial.h5"
FINAL = "calibration.h5"


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


def simulated_devices(config: Any) -> list[str]:
    """Ids of the config's simulated devices."""
    return [i for i, d in config.devices.items() if d.driver == "sim"]


def simulation_line(config: Any, source: Path, forced: bool) -> str | None:
    """The first output line when any device is simulated (None for a real bench)."""
    ids = simulated_devices(config)
    if not ids:
        return None
    if forced:
        return f"SIMULATED: --sim replaces every device of {source} by a simulated twin"
    if len(ids) == len(config.devices):
        return f"SIMULATED bench: every device of {source} is simulated (pass --config LAB.yaml)"
    return f"SIMULATED devices {', '.join(ids)} of {source}; the others are real"


def _parse_steps(text: str) -> list[str]:
    from calibration.runner import STEPS

    wanted = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in wanted if s not in STEPS]
    if bad or not wanted:
        raise typer.BadParameter(
            f"unknown {bad or text!r}; choose from {','.join(STEPS)}", param_hint="'--steps'"
        )
    return wanted


def read_design(path: Path) -> Any:
    """Design PSFs from `--design`; a foreign or malformed file is one ConfigError line."""
    from calibration.setup import load_design
    from onnlab.errors import ConfigError

    try:
        return load_design(path)
    except ConfigError as exc:
        raise ConfigError(f"--design: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - a foreign file fails in many ways
        raise ConfigError(
            f"--design: {path} is not a design PSF file (.npy or .pt with a (K, C, k, k) "
            f"array): {type(exc).__name__}"
        ) from exc


def calibrate_command(
    *,
    slm: str | None,
    config_path: Path | None,
    sim: bool,
    steps: list[str],
    out: Path | None,
    design: Path | None,
    previous: Path | None,
    rows: int | None,
    cols: int | None,
    gap_px: int | None,
    quick: bool,
    progress: bool,
    say: Any = print,
) -> dict[str, Any]:
    """Run (or resume) the calibration; returns the JSON summary (also in the run folder)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from calibration.artifact import CalibrationArtifact
    from calibration.report import write_report
    from calibration.runner import CalibrationOptions, run_calibration
    from calibration.setup import setup_from_devices
    from drivers.errors import DeviceError
    from drivers.registry import default_config_path, open_devices
    from onnlab.commands.options import bench_config
    from onnlab.errors import CalibrationError, Interrupted, UsageError
    from onnlab.runtime import run_folder, write_json

    source = config_path or default_config_path()
    config, _ = bench_config(config_path)
    if sim:
        config = _sim_only(config)
    design_psfs = read_design(design) if design is not None else None
    prev = CalibrationArtifact.load(previous, bench_config=config) if previous else None
    options = CalibrationOptions.quick() if quick else CalibrationOptions()
    if out is not None and (out / FINAL).is_file():
        raise UsageError(f"--out {out} already holds a finished calibration; choose a new --out")
    line = simulation_line(config, source, sim)  # the first line, once the input is valid
    if slm is None:
        slms = [i for i, d in config.devices.items() if d.kind == "slm"]
        slm = slms[0] if slms else "slm0"
    notes = {"simulated": bool(simulated_devices(config))}
    notes["simulated_devices"] = simulated_devices(config)
    with run_folder("calibrate", out) as run_dir:
        partial = run_dir / PARTIAL
        resuming = None
        if partial.is_file():
            done = list(CalibrationArtifact.load(partial).meta.steps)
            resuming = f"resuming {run_dir}: steps {', '.join(done)} were finished earlier"
        try:
            with open_devices(config, design_psfs=design_psfs) as devices:
                setup = setup_from_devices(
                    config,
                    devices,
                    slm_id=slm,
                    design_psfs=design_psfs,
                    rows=rows,
                    cols=cols,
                    gap_px=gap_px,
                )
                for text in (line, resuming):
                    if text:
                        say(text)
                columns = (TextColumn("{task.description:<34}"), BarColumn(), TimeElapsedColumn())
                with Progress(*columns, disable=not progress, transient=True) as bar:
                    tasks = {s: bar.add_task(s, total=1.0, visible=False) for s in steps}

                    def report(message: str, fraction: float) -> None:
                        step = message.split(":")[0].split()[0]
                        if step in tasks:
                            bar.update(
                                tasks[step],
                                completed=fraction,
                                visible=True,
                                description=message[:34],
                            )

                    run = run_calibration(
                        setup,
                        steps=steps,
                        options=options,
                        progress=report,
                        previous=prev,
                        checkpoint=partial,
                        notes=notes,
                    )
        except KeyboardInterrupt:
            if partial.is_file():
                kept = ", ".join(CalibrationArtifact.load(partial).meta.steps)
                raise Interrupted(
                    f"finished steps {kept} kept in {partial}; resume with the same command "
                    f"and --out {run_dir}"
                ) from None
            raise Interrupted("no calibration step had finished; nothing kept") from None
        except (DeviceError, CalibrationError) as exc:
            if not partial.is_file():
                raise
            kept = ", ".join(CalibrationArtifact.load(partial).meta.steps)
            what = f"{type(exc).__name__}: {exc}" if isinstance(exc, DeviceError) else str(exc)
            raise CalibrationError(
                f"{what} (finished steps {kept} kept in {partial}; fix the cause and rerun "
                f"with --out {run_dir} to resume)"
            ) from exc
        art_path = run.artifact.save(run_dir / FINAL)
        partial.unlink(missing_ok=True)
        png = write_report(run.artifact, run_dir / "report.png")
        summary = {
            "artifact": str(art_path),
            "report": str(png),
            "run_dir": str(run_dir),
            "simulated": notes["simulated"],
            "simulated_devices": notes["simulated_devices"],
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


_MM = re.compile(r"_m$")

# What each step's residual measures, and in which unit (the "trust number" of the step).
RESIDUALS: dict[str, str] = {
    "dark": "rel. RMS misfit of the variance-vs-mean line beyond sampling noise",
    "response": "RMS misfit of the gamma curve (fraction of full scale)",
    "focus": "rel. RMS misfit of the Gaussian focus curve",
    "registration": "RMS fiducial misfit (px)",
    "psf": "RMS residual in units of camera noise (1 = noise-limited)",
}


def _fmt_value(key: str, value: float) -> str:
    """Positions and lengths in mm (one unit on every line of the CLI), the rest as is."""
    if _MM.search(key):
        return f"{key[:-2]}_mm={value * 1e3:.4g}"
    return f"{key}={value:.4g}"


def _print_summary(summary: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title="onnlab calibrate" + (" (SIMULATED)" if summary.get("simulated") else ""))
    for col in ("step", "residual", "residual is", "frames", "seconds", "result"):
        table.add_column(col)
    for name, rec in summary["steps"].items():
        vals = {k: v for k, v in rec.items() if k not in ("residual", "seconds", "frames")}
        text = ", ".join(_fmt_value(k, v) for k, v in vals.items())
        table.add_row(
            name,
            f"{rec['residual']:.4g}",
            RESIDUALS.get(name, ""),
            str(rec["frames"]),
            f"{rec['seconds']:.1f}",
            text,
        )
    out = console()
    out.print(table)
    out.print(f"alpha: {', '.join(f'{a:.3f}' for a in summary['alpha'])}")
    out.print(f"artifact: [bold]{summary['artifact']}[/]")
    out.print(f"report:   [bold]{summary['report']}[/]")


def register(app: typer.Typer) -> None:
    """Add `onnlab calibrate` to the root app."""

    @app.command("calibrate")
    def calibrate(
        config: Path | None = config_option(),
        sim: bool = typer.Option(
            False, "--sim", help="Replace every device of the config by its simulated twin."
        ),
        slm: str | None = typer.Option(
            None, "--slm", metavar="ID", help="Id of the SLM to calibrate (default: the first)."
        ),
        steps: str = typer.Option(
            "dark,response,focus,registration,psf",
            "--steps",
            metavar="STEP,...",
            help="Comma-separated subset of dark,response,focus,registration,psf.",
        ),
        out: Path | None = out_option(),
        design: Path | None = typer.Option(
            None,
            "--design",
            metavar="FILE",
            exists=True,
            dir_okay=False,
            help="Design PSFs (K, C, k, k) as .npy or .pt (default: the config's sim design).",
        ),
        previous: Path | None = typer.Option(
            None,
            "--previous",
            metavar="FILE",
            exists=True,
            dir_okay=False,
            show_default="none",
            help="Earlier artifact of this bench: values for the steps not run.",
        ),
        rows: int | None = typer.Option(
            None, "--rows", min=1, metavar="INT", help="Tile rows (default: from the config)."
        ),
        cols: int | None = typer.Option(
            None, "--cols", min=1, metavar="INT", help="Tile columns (default: from the config)."
        ),
        gap_px: int | None = typer.Option(
            None,
            "--gap-px",
            min=0,
            metavar="INT",
            help="Dark pixels between tiles (default: from the config).",
        ),
        quick: bool = typer.Option(False, "--quick", help="Use fewer frames (smoke tests)."),
        json_out: bool = json_option(),
        progress: bool = progress_option(),
    ) -> None:
        """Calibrate the bench: camera noise, display response, focus, registration, PSFs."""
        import json
        import sys

        wanted = _parse_steps(steps)
        say = (lambda msg: print(msg, file=sys.stderr)) if json_out else typer.echo
        summary = calibrate_command(
            slm=slm,
            config_path=config,
            sim=sim,
            steps=wanted,
            out=out,
            design=design,
            previous=previous,
            rows=rows,
            cols=cols,
            gap_px=gap_px,
            quick=quick,
            progress=progress and not json_out,
            say=say,
        )
        if json_out:
            typer.echo(json.dumps(summary, indent=2, default=str))
        else:
            _print_summary(summary)
