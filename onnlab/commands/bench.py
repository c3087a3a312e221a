"""`onnlab bench NAME [--json] [--quick]`: benchmarks that print JSON.

Each benchmark lives in `onnlab/bench/<name>.py` and exposes `run(quick: bool, seed: int) -> dict`.
Timings inside a benchmark are reported as ratios against a baseline measured in the same
process, so the numbers are comparable across machines. The JSON also goes to a run directory.
"""

from __future__ import annotations

import json
from importlib import import_module

import typer

BENCHMARKS: dict[str, str] = {
    "optics": "frontend forward+backward throughput: direct vs FFT vs naive loop",
    "ntk": "NTK estimator accuracy and NTKD step time relative to a KD step",
    "calibration": "calibration fidelity on the simulated bench against its hidden truth",
    "estimate": "pre-fabrication estimate vs trained accuracy, and its speed-up",
}


def register(app: typer.Typer) -> None:
    """Add `onnlab bench`."""

    @app.command("bench")
    def bench(
        name: str = typer.Argument(..., help=f"One of: {', '.join(BENCHMARKS)}."),
        as_json: bool = typer.Option(False, "--json", help="Print only the JSON result."),
        quick: bool = typer.Option(False, "--quick", help="Fewer repeats / smaller sizes."),
        seed: int = typer.Option(0, help="Seed for data, models and noise."),
    ) -> None:
        """Run a benchmark and print its JSON result (also saved under runs/)."""
        from onnlab.runtime import make_run_dir, to_jsonable, write_json

        if name not in BENCHMARKS:
            raise ValueError(f"unknown benchmark {name!r}; choose one of {', '.join(BENCHMARKS)}")
        result = import_module(f"onnlab.bench.{name}").run(quick=quick, seed=seed)
        run_dir = make_run_dir(f"bench-{name}")
        write_json(run_dir / "result.json", result)
        text = json.dumps(to_jsonable(result), indent=2)
        if as_json:
            typer.echo(text)
        else:
            typer.echo(f"{name}: {BENCHMARKS[name]}")
            typer.echo(text)
            typer.echo(f"saved {run_dir / 'result.json'}")
