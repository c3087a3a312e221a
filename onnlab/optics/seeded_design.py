"""Design knowledge a stand-alone simulated bench and its calibration share: the tile grid,
PSF files, and seeded stand-in designs (PSFs, or phase maps for the physical bench).

It lives in layer 1 so that both the simulator (`drivers.sim`) and calibration can read the same
design without calibration importing the simulator (no inverse crime: calibration knows the
design, never the as-built bench). The seeded designs are NOT trained kernels; they only make a
bench config without a model self-contained.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from onnlab.optics.as_built import AsBuilt
from onnlab.optics.fab_sampling import correlated_noise
from onnlab.optics.fabrication import effective_psfs_stack
from onnlab.optics.grid import Grid
from onnlab.optics.layout import OpticsConfig

# Sub-pixels per sensor pixel and axis when a simulated bench integrates PSFs over its pixels
# (the phase frontend uses 7; 5 keeps the integration error of the band-limited PSF near 2 %
# of its peak at half the cost).
OVERSAMPLE = 5

TASK_DEFAULTS: dict[str, dict[str, object]] = {
    # channels and SLM image size per task (mirrors onnlab.models.zoo.TASKS; kept here because
    # drivers may not import layer 2)
    "mnist": {"channels": 1, "image_hw": (28, 28)},
    "cifar10": {"channels": 3, "image_hw": (32, 32)},
    "segmentation": {"channels": 1, "image_hw": (64, 64)},
}

# The wave-model optics of the phase frontend (onnlab.models.phase_frontend.default_optics):
# 0.5 mm sub-apertures 0.1 mm apart at F/5 (f = 2.5 mm) on 3.45 um pixels, so that the PSF's
# band limit D / (lambda f) exceeds the sensor Nyquist and pixel-scale kernels are realisable.
SIM_OPTICS: dict[str, object] = dict(
    kernel_size_m=0.5e-3,
    spacing_m=0.1e-3,
    focal_length_m=2.5e-3,
    sensor_pitch_m=3.45e-6,
    aperture_shape="square",
)


def design_psfs(
    task: str = "mnist",
    kernels: int = 8,
    kernel_px: int = 7,
    channels: int | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Seeded (K, C, k, k) float32 PSFs: smooth random non-negative kernels (a random field
    low-pass filtered across the window) with per-kernel transmission in [0.3, 0.6]."""
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


def design_phases(
    config: OpticsConfig, kernels: int, phase_samples: int = 64, seed: int = 0
) -> torch.Tensor:
    """Seeded (K, N, N) float32 design phases (radians at the reference wavelength).

    Each kernel: a tilt moving its focus by up to +-1.5 px, a few radians of defocus and
    astigmatism (blobs 2-4 px wide, like trained kernels), plus a 0.6 rad smooth random phase
    correlated over D / 6 (speckled detail). Radians are what a realised design looks like;
    the PSFs follow from the wave model (`onnlab.optics.psfs_from_phases`).
    """
    k, n = int(kernels), int(phase_samples)
    if k < 1 or n < 2:
        raise ValueError(f"kernels >= 1 and phase_samples >= 2 required, got {k}, {n}")
    gen = torch.Generator().manual_seed(int(seed) * 104729 + 17)
    grid = Grid.covering(config.kernel_size_m, (n, n))
    half = config.kernel_size_m / 2
    y = (torch.arange(n, dtype=torch.float64) - (n - 1) / 2) * grid.pitch_m[0] / half
    x = (torch.arange(n, dtype=torch.float64) - (n - 1) / 2) * grid.pitch_m[1] / half
    yy, xx = torch.meshgrid(y, x, indexing="ij")  # normalised pupil coordinates in [-1, 1]
    lam, f, p = config.reference_wavelength_m, config.focal_length_m, config.sensor_pitch_m
    # a tilt of s pixels at the sensor: phase 2 pi s p u / (lambda f), u in metres
    tilt_rad_per_px = 2 * math.pi * p * half / (lam * f)
    c = torch.rand(k, 5, generator=gen, dtype=torch.float64) * 2 - 1
    shift = 1.5 * c[:, :2]
    defocus = 3.0 + 2.0 * c[:, 2]  # radians at the pupil edge
    astig = 2.0 * c[:, 3:5]
    r2 = yy**2 + xx**2
    phase = (
        tilt_rad_per_px * (shift[:, 0, None, None] * yy + shift[:, 1, None, None] * xx)
        + defocus[:, None, None] * r2
        + astig[:, 0, None, None] * (yy**2 - xx**2)
        + astig[:, 1, None, None] * (2 * yy * xx)
    )
    phase = phase + correlated_noise((k, n, n), grid.pitch_m[0], 0.6, config.kernel_size_m / 6, gen)
    return phase.to(torch.float32)


def sim_optics(task: str, overrides: dict | None = None) -> OpticsConfig:
    """The optics of a stand-alone simulated bench: the task preset with `SIM_OPTICS`."""
    return OpticsConfig.preset(task, **{**SIM_OPTICS, **(overrides or {})})


def design_kernel_psfs(
    design_phases: torch.Tensor, optics: OpticsConfig, material: str, oversample: int = OVERSAMPLE
) -> torch.Tensor:
    """(K, C, k, k) float32 PSFs of the design itself (perfect optic, in focus), the numbers
    the model and calibration assume before fabrication."""
    phases = torch.as_tensor(design_phases).detach().to(torch.float32).cpu()
    perfect = AsBuilt.perfect(optics, int(phases.shape[0]), int(phases.shape[-1]))
    psfs = effective_psfs_stack(
        phases, optics, material, perfect, [0.0], window_px=optics.kernel_px, oversample=oversample
    )[0]
    return psfs.to(torch.float32)


def stand_alone_design(sim: Any, resolve: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(design PSFs (K, C, k, k), design phases (K, N, N) or None) of a bench config's ``sim``
    section: the physical model uses a seeded phase design (its PSFs from the wave model);
    the legacy model reads ``design.psfs_path`` (resolved by ``resolve``) or seeds PSFs.
    Raises ValueError / FileNotFoundError naming the field."""
    d = sim.design
    if getattr(sim, "model", "legacy") == "physical":
        if d.psfs_path:
            raise ValueError(
                "sim.design.psfs_path: the physical model renders a phase design; a PSF file "
                "needs realising first (onnlab.design.realise) -- drop psfs_path or use "
                "sim.model: legacy"
            )
        optics = sim_optics(d.task, dict(getattr(sim, "optics", {}) or {}))
        if optics.kernel_px != d.kernel_px:
            optics = optics.model_copy(update={"kernel_px": int(d.kernel_px)})
        if d.channels is not None and d.channels != optics.in_channels:
            raise ValueError(
                f"sim.design.channels: {d.channels} but the {d.task} optics has "
                f"{optics.in_channels} wavelengths"
            )
        phases = design_phases(optics, d.kernels, d.phase_samples, d.seed)
        return design_kernel_psfs(phases, optics, d.material), phases
    if not d.psfs_path:
        return design_psfs(d.task, d.kernels, d.kernel_px, d.channels, d.seed), None
    return read_psfs(resolve(d.psfs_path)), None


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
