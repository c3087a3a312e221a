"""Step "focus": coarse-to-fine stage sweep on a sharpness metric, ending AT best focus.

Why point sources and Laplacian energy at the blob cores (metric "blob"): a point's image is
the PSF itself, and defocus removes its finest structure first, whatever the PSF looks like.
The textbook alternatives were tried and fail on optical frontends: textures imaged through
broad, smooth designed PSFs barely change with focus and drown in shot noise; energy
concentration ΣI²/(ΣI)² (Muller & Buffington) is not monotonic when each kernel's blurred PSF
is truncated to its window (as the simulated bench does). Excluding the window's rim keeps
the metric monotonic and steep near focus (other metrics stay selectable). The display's
black level is removed with a black frame at every position, and independent frames give a
noise-free estimate by cross-products. Colour panels show the dots in the green channel only
(a white dot images to the sum of three PSFs, much smoother than each).
Why coarse-to-fine: far from focus the curve is broad, near focus flat-topped; each pass
narrows the range around the best sample, and a bell fitted through all samples of the finer
passes gives the sub-step position. The stage always finishes there, so later steps measure
the focused system.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from calibration.fitting.focus import METRICS, blob_sharpness, peak_gaussian, peak_location
from calibration.fitting.registration import window_centroids
from calibration.procedures.base import BenchContext, StepResult
from calibration.procedures.patterns import dot_image, dot_positions
from onnlab.errors import CalibrationError


@dataclass(frozen=True)
class FocusResult(StepResult):
    """Best position, and the whole (position, metric) curve in sweep order."""

    position_m: float
    positions_m: np.ndarray
    metric: np.ndarray
    metric_name: str
    contrast: float  # max/min of the metric: ≈1 means the sweep saw no focus change


def measure_focus(
    ctx: BenchContext,
    *,
    search_half_range_m: float = 0.4e-3,
    points_per_pass: int = 13,
    passes: int = 3,
    metric: str = "blob",
    n_frames: int = 2,
    centre_m: float | None = None,
) -> FocusResult:
    """Sweep, narrow, repeat; move the stage to the fitted best focus and return the curve.

    Refuses when there is no stage, when the metric hardly changes over the sweep (no signal,
    or the range is far too small), or when the best position is at the edge of the searched
    range (move the stage nearer focus or widen ``search_half_range_m``).
    """
    if ctx.stage is None:
        raise CalibrationError("focus: this bench has no stage; skip the focus step")
    if metric != "blob" and metric not in METRICS:
        raise ValueError(f"metric: expected one of {sorted(METRICS)}, got {metric!r}")
    t0 = time.perf_counter()
    n0 = ctx.frames_captured
    stage = ctx.stage
    lo_lim, hi_lim = stage.limits_m
    centre = float(stage.position_m if centre_m is None else centre_m)
    k = int(ctx.design_psfs.shape[-1])
    pos = dot_positions(ctx.image_hw, k, k + 3)
    # Colour panels: dots in the middle (green) channel only. A white dot images to the sum of
    # the kernel's R, G and B PSFs, which is much smoother than each of them and hides focus.
    plane = dot_image(ctx.image_hw, pos)
    planes = np.zeros((ctx.channels, *ctx.image_hw), np.uint8)
    planes[ctx.channels // 2] = plane
    dots = ctx.pattern(planes)
    black = ctx.uniform(0)
    ctx.report("focus: exposure", 0.0)
    ctx.auto_expose(dots, target=0.6)
    if metric == "blob":
        # Blob cores located once (blur is symmetric, so they do not move with focus).
        d0 = ctx.capture_mean(dots, 2, "focus-dots") - ctx.capture_mean(black, 2, "focus-black")
        guesses = (ctx.tiles.tile_origins_px()[:, None, :] + pos[None]).reshape(-1, 2)
        centres, energy = window_centroids(d0, guesses, radius=k // 2 + 1, iterations=4)
        good = np.isfinite(centres).all(axis=1) & (energy > 0.05 * np.nanmax(energy))
        if good.sum() < 3:
            raise CalibrationError(
                "focus: no point images found; check exposure, display and that the tiles "
                "are on the camera"
            )
        centres = np.unique(np.rint(centres[good]), axis=0)

        def score(d: np.ndarray) -> float:
            return blob_sharpness(d, centres, max(k // 2 - 1, 1), k // 2 + 1)
    else:
        score = METRICS[metric]

    def measure(z: float) -> float:
        stage.move_absolute(float(z), timeout_s=max(ctx.timeout_s, 30.0))
        d = ctx.capture(dots, n_frames, "focus-dots") - ctx.capture_mean(black, 1, "focus-black")
        return score(d)

    zs: list[float] = []
    ms: list[float] = []
    lo, hi = max(lo_lim, centre - search_half_range_m), min(hi_lim, centre + search_half_range_m)
    for p in range(passes):
        grid = np.linspace(lo, hi, points_per_pass)
        for i, z in enumerate(grid):
            ctx.report(f"focus pass {p + 1}/{passes}", (p + i / len(grid)) / passes)
            zs.append(float(z))
            ms.append(measure(z))
        if p == 0:
            m0 = np.asarray(ms)
            contrast = float(m0.max() / max(m0.min(), 1e-30))
            if not contrast > 1.02:
                raise CalibrationError(
                    f"focus: sharpness hardly changes over the sweep (max/min {contrast:.3f}); "
                    "check the dots reach the camera, widen the range or raise exposure"
                )
            best = int(np.argmax(m0))
            if best in (0, len(m0) - 1):
                raise CalibrationError(
                    f"focus: sharpest at the edge of the searched range ({grid[best]:.6g} m); "
                    "move the stage nearer focus or widen search_half_range_m"
                )
        step = (hi - lo) / (points_per_pass - 1)
        zbest = zs[int(np.argmax(ms))]
        lo, hi = max(lo_lim, zbest - 2 * step), min(hi_lim, zbest + 2 * step)
    z_arr, m_arr = np.asarray(zs), np.asarray(ms)
    # A bell through every sample of the finer passes (they bracket the peak); the finest
    # pass's log-parabola if the bell fails.
    fine = slice(points_per_pass if passes > 1 else 0, len(zs))
    z_best, resid = peak_gaussian(z_arr[fine], m_arr[fine])
    if not np.isfinite(resid):
        last = slice(len(zs) - points_per_pass, len(zs))
        z_best, resid = peak_location(z_arr[last], m_arr[last], n_fit=points_per_pass)
    stage.move_absolute(z_best, timeout_s=max(ctx.timeout_s, 30.0))
    ctx.focus_position_m = float(stage.position_m)
    return FocusResult(
        residual=float(resid) if np.isfinite(resid) else 0.0,
        n_frames=ctx.frames_captured - n0,
        seconds=time.perf_counter() - t0,
        position_m=ctx.focus_position_m,
        positions_m=z_arr,
        metric=m_arr,
        metric_name=metric,
        contrast=float(m_arr.max() / max(m_arr.min(), 1e-30)),
    )
