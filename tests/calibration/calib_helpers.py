"""Helpers shared by the calibration tests: sim configs, small benches, truth views.

(Kept out of conftest.py so test modules can import them by name, like tests/capture does.)
"""

from __future__ import annotations

from typing import Any

import torch

from calibration.forward import TileGeometry
from calibration.procedures.base import BenchContext
from calibration.runner import CalibrationOptions, run_calibration
from calibration.setup import setup_from_devices
from drivers.registry import default_config_path, load_bench_config, open_devices
from drivers.sim import SimulatedBench, design_psfs


def sim_config(seed: int = 0, model: str = "legacy") -> Any:
    """configs/bench/sim.yaml with another fabrication seed and rendering ``model``.

    Legacy by default: these tests measure the *procedures'* precision (PSF 3 %, twin 1.2,
    residual ~ noise) on a bench whose truth has the fitting model's form, so any miss is a
    procedure bug. The physical bench (sim.yaml's default, not the calibration model) is
    tested through the CLI (tests/calibration/test_calibrate_cli.py) and
    `onnlab bench calibration`, against the goals it reaches.
    """
    cfg = load_bench_config(default_config_path())
    sim = cfg.sim.model_copy(update={"seed": seed, "model": model})
    return cfg.model_copy(update={"sim": sim})


def calibrate_sim(seed: int, model: str = "legacy") -> tuple[Any, Any, Any]:
    """(config, open devices, CalibrationRun) for the sim bench with ``seed`` and ``model``."""
    cfg = sim_config(seed, model)
    devices = open_devices(cfg)
    run = run_calibration(setup_from_devices(cfg, devices), options=CalibrationOptions.quick())
    return cfg, devices, run


def small_context(
    kernels: int = 4,
    image_hw: tuple[int, int] = (24, 24),
    seed: int = 0,
    task: str = "mnist",
    **bench_kw: Any,
) -> tuple[SimulatedBench, BenchContext]:
    """A small simulated bench (fast) and a fresh calibration context for it
    (task "cifar10" gives an RGB panel and RGB design PSFs)."""
    design = design_psfs(task, kernels, 7, seed=seed)
    return context_for(design, image_hw, seed=seed, **bench_kw)


def context_for(
    design: torch.Tensor, image_hw: tuple[int, int], seed: int = 0, **bench_kw: Any
) -> tuple[SimulatedBench, BenchContext]:
    """A simulated bench of the given design PSFs and a fresh calibration context for it."""
    bench = SimulatedBench(design, image_hw, seed=seed, **bench_kw)
    lay = bench.truth.layout
    tiles = TileGeometry(
        lay.rows, lay.cols, lay.gap_px, image_hw, bench.camera.shape_hw, int(design.shape[0])
    )
    ctx = BenchContext(
        bench.slm,
        bench.camera,
        bench.stage,
        tiles,
        design,
        electrons_per_unit=bench.truth.sensor.full_scale_e,
    )
    return bench, ctx


def true_effective_psfs(bench: SimulatedBench) -> torch.Tensor:
    """α_k · as-built PSF at the current stage position (what calibration should measure)."""
    t = bench.truth
    return (t.psfs_at(bench.stage.position_m) * t.gain[:, None, None, None]).double()
