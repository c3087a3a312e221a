"""The design a simulated bench is built from: its PSFs and its tile grid, in one place.

Calibration must assume exactly the design the simulator renders (same PSFs, same tile grid),
so both read it from here (`sim_design_psfs`, `tile_grid`) instead of restating the rules.

Drivers may not import the model zoo, so a bench config that names no PSF file gets a seeded,
plausible design instead: smooth random non-negative kernels (a random field low-pass filtered
across the kernel window) with per-kernel transmission in [0.3, 0.6], like a lossy meta-optic.
They are NOT trained kernels; they only make the sim bench self-contained.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from drivers.errors import ConfigurationError

TASK_DEFAULTS: dict[str, dict[str, object]] = {
    # channels and SLM image size per task (mirrors onnlab.models.zoo.TASKS; kept here because
    # drivers may not import layer 2)
    "mnist": {"channels": 1, "image_hw": (28, 28)},
    "cifar10": {"channels": 3, "image_hw": (32, 32)},
    "segmentation": {"channels": 1, "image_hw": (64, 64)},
}


def design_psfs(
    task: str = "mnist",
    kernels: int = 8,
    kernel_px: int = 7,
    channels: int | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Seeded (K, C, k, k) float32 PSFs; `channels` defaults to the task's input channels."""
    if task not in TASK_DEFAULTS:
        raise ValueError(f"task: expected one of {sorted(TASK_DEFAULTS)}, got {task!r}")
    if kernels < 1 or kernel_px < 1:
        raise ValueError("kernels and kernel_px: expected >= 1")
    c = int(channels if channels is not None else TASK_DEFAULTS[task]["channels"])
    if c not in (1, 3):
        raise ValueError(f"channels: expected 1 or 3, got {c}")
    gen = torch.Generator().manual_seed(int(seed) * 7919 + sum(map(ord, task)))
    field = torch.rand(kernels * c, 1, kernel_px + 2, kernel_px + 2, generator=gen) ** 2
    smooth = F.avg_pool2d(field, 3, stride=1).reshape(kernels, c, kernel_px, kernel_px)
    transmission = 0.3 + 0.3 * torch.rand(kernels, generator=gen)
    energy = smooth.sum(dim=(1, 2, 3), keepdim=True)
    return (smooth / energy * transmission[:, None, None, None]).to(torch.float32)


def read_psfs(path: str | Path) -> torch.Tensor:
    """(K, C, k, k) float32 PSFs from .npy (no pickle) or .pt (weights_only)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"design PSFs not found: {p}")
    try:
        if p.suffix == ".npy":
            arr = np.load(p, allow_pickle=False)
        else:
            arr = torch.load(p, weights_only=True)
        psfs = torch.as_tensor(arr, dtype=torch.float32)
    except Exception as exc:  # noqa: BLE001 - a foreign file fails in many ways; say which file
        raise ValueError(
            f"{p}: not a PSF array (.npy, or .pt holding one tensor): {type(exc).__name__}"
        ) from exc
    if psfs.ndim != 4 or psfs.shape[2] != psfs.shape[3]:
        raise ValueError(f"{p}: expected (K, C, k, k) PSFs, got {tuple(psfs.shape)}")
    return psfs


def sim_design_psfs(config: Any) -> torch.Tensor:
    """The design PSFs of a bench config's ``sim`` section: its file, else the seeded design."""
    d = config.sim.design
    if not d.psfs_path:
        return design_psfs(d.task, d.kernels, d.kernel_px, d.channels, d.seed)
    path = config.resolve(d.psfs_path)
    try:
        return read_psfs(path)
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigurationError(
            f"{config.source}: sim.design.psfs_path: {exc}", operation="config"
        ) from exc


def tile_grid(n_kernels: int, rows: int | None = None, cols: int | None = None) -> tuple[int, int]:
    """The rows x cols tile grid for K kernels; a missing count is derived from the other.

    Default: the most square grid with rows <= cols (8 -> 2x4, 16 -> 4x4, 56 -> 7x8), which
    keeps the sensor compact and the relay's field of view round.
    """
    if n_kernels < 1:
        raise ValueError(f"n_kernels: expected >= 1, got {n_kernels}")
    if rows is None and cols is None:
        rows = max(1, int(math.floor(math.sqrt(n_kernels))))
    if rows is None:
        rows = math.ceil(n_kernels / cols)
    elif cols is None:
        cols = math.ceil(n_kernels / rows)
    if rows < 1 or cols < 1 or rows * cols < n_kernels:
        raise ValueError(f"rows*cols = {rows}x{cols} tiles cannot hold K = {n_kernels} kernels")
    return int(rows), int(cols)
