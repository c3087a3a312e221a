"""`onnlab bench NAME [--json] [--quick]`: benchmarks that print JSON.

Each benchmark lives in `onnlab/bench/<name>.py` and exposes `run(quick: bool, seed: int) -> dict`.
Timings inside a benchmark are reported as ratios against a baseline measured in the same
process, so the numbers are comparable across machines. The JSON also goes to a run directory.
"""

from __future__ import annotations

import json
from enum import Enum
from importlib import import_module
from pathlib import Path

import typer

from onnlab.commands.options import json_option, out_option, seed0_option

BENCHMARKS: dict[str, str] = {
    "optics": "frontend forward+backward throughput: direct vs FFT vs naive loop",
    "ntk": "NTK estimator accuracy and NTKD step time relative to a KD step",
    "calibration": "calibration fidelity on the simulated bench against its hidden truth",
    "estimate": "pre-fabrication estimate vs trained accuracy, and its speed-up",
    "design": "free PSFs realised as phase masks, accuracy drop, phase-step cost, GDSII round trip",
}

CALIBRATION_MODELS = ("legacy", "physical")
Benchmark = Enum("Benchmark", {k: k for k in BENCHMARKS}, type=str)  # type: ignore[misc]


def register(app: typer.Typer) -> None:
    """Add `onnlab bench`."""

    @app.command("bench")
    def bench(
        name: Benchmark = typer.Argument(
            ...,
            metavar="NAME",
            help="Benchmark: " + "; ".join(f"{k} ({v})" for k, v in BENCHMARKS.items()) + ".",
            show_default=False,
        ),
        as_json: bool = json_option(),
        quick: bool = typer.Option(False, "--quick", help="Use fewer repeats and smaller sizes."),
        seed0: int = seed0_option("Seed of data, models and noise."),
        checkpoint: Path | None = typer.Option(
            None,
            metavar="FILE",
            dir_okay=False,
            help="Student checkpoint to benchmark (design only; default: train one).",
        ),
        opts: list[str] = typer.Option(
            [],
            "--opt",
            metavar="KEY=VALUE",
            help="Setting, e.g. task=cifar10 (estimate) or model=physical (calibration).",
            show_default=False,
        ),
        out: Path | None = out_option(),
    ) -> None:
        """Run a benchmark and print its JSON result (also saved under runs/)."""
        from onnlab.errors import ConfigError
        from onnlab.runtime import run_dir_at, to_jsonable, write_json

        name = name.value  # type: ignore[assignment]
        seed = seed0
        extra = {}
        if checkpoint is not None:
            if name != "design":
                raise ConfigError(f"--checkpoint applies to `bench design` only, not {name}")
            extra["checkpoint"] = checkpoint
        if opts and name == "estimate":
            from onnlab.bench.estimate import parse_options

            try:
                extra.update(parse_options(opts))
            except ValueError as exc:
                raise ConfigError(f"--opt: {exc}") from exc
        elif opts and name == "calibration":
            for pair in opts:
                key, _, text = pair.partition("=")
                if key.strip() != "model" or text.strip() not in CALIBRATION_MODELS:
                    raise ConfigError(
                        f"--opt {pair!r}: bench calibration takes model=legacy|physical "
                        "(the simulated bench it calibrates)"
                    )
                extra["model"] = text.strip()
        elif opts:
            raise ConfigError(
                f"--opt applies to `bench estimate` and `bench calibration`, not {name}"
            )
        result = import_module(f"onnlab.bench.{name}").run(quick=quick, seed=seed, **extra)
        run_dir = run_dir_at(out, f"bench-{name}")
        write_json(run_dir / "result.json", result)
        text = json.dumps(to_jsonable(result), indent=2)
        if as_json:
            typer.echo(text)
        else:
            typer.echo(f"{name}: {BENCHMARKS[name]}")
            typer.echo(text)
            typer.echo(f"saved {run_dir / 'result.json'}")
