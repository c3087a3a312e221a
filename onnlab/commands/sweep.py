"""CLI command: `onnlab sweep FILE [HYDRA_OVERRIDE]...` (grids, random search, seeds).

The sweep engine is Hydra multirun (`onnlab.sweep`); the launcher is an override, so the same
file runs here (`onnlab sweep configs/sweeps/example.yaml`) and on SLURM
(`... hydra/launcher=submitit_slurm hydra.launcher.partition=gpu`).
"""

from __future__ import annotations

from pathlib import Path

import typer

from onnlab.commands.options import device_option, out_option


def sweep_command(
    file: Path = typer.Argument(
        ..., metavar="FILE", dir_okay=False, help="Sweep file (YAML; see configs/sweeps/)."
    ),
    overrides: list[str] | None = typer.Argument(
        None,
        metavar="HYDRA_OVERRIDE",
        help="Hydra overrides, e.g. hydra/launcher=submitit_slurm hydra.launcher.partition=gpu.",
    ),
    seeds: int | None = typer.Option(
        None, "--seeds", metavar="INT", min=1, help="Seeds per configuration (default: the file's)."
    ),
    seed0: int | None = typer.Option(
        None, "--seed0", metavar="INT", help="First seed (default: the file's)."
    ),
    device: str = device_option(),
    out: Path | None = out_option("a fresh runs/sweep-NAME-TIME"),
    collect_only: bool = typer.Option(
        False, "--collect-only", help="Only rebuild the summary table of the sweep in --out."
    ),
) -> None:
    """Run a sweep file through Hydra multirun; write summary.json/csv (mean ± std over seeds)."""
    from onnlab.runtime import make_run_dir
    from onnlab.sweep import collect, load_spec, run_sweep

    if collect_only:
        if out is None:
            raise typer.BadParameter("--collect-only needs --out SWEEP_FOLDER")
        result = collect(out)
    else:
        spec = load_spec(file)
        update: dict = {k: v for k, v in (("seeds", seeds), ("seed0", seed0)) if v is not None}
        if device != "auto":
            update["train"] = {**spec.train, "device": device}
        spec = spec.model_copy(update=update)
        if out is None:
            out = make_run_dir(f"sweep-{spec.name}")
        else:
            out.mkdir(parents=True, exist_ok=True)
        typer.echo(f"sweep folder: {out}")
        result = run_sweep(spec, out, list(overrides or []), where=str(file))
    for line in result["lines"]:
        typer.echo(line)
    if result.get("best_command"):
        missing = result["best_command_missing"]
        note = f"  (not expressible as flags: {', '.join(missing)})" if missing else ""
        typer.echo(f"best point {result['best_point']}: {result['best_command']}{note}")
    typer.echo("summary: " + "  ".join(str(p) for p in result["files"]))
    if result["failed"]:
        for job in result["failed"]:
            typer.echo(f"failed: point {job['point']} seed {job['seed']}: {job['error']}", err=True)
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add this module's command to the root app."""
    app.command("sweep")(sweep_command)
