"""Step "response": uniform grey levels → measured intensity → monotone, invertible LUT.

Why uniform patterns summed over all lit pixels: the optics are linear in intensity, so the
ratio of a grey level's frame to full white's frame is the display's relative intensity at
every pixel; pooling thousands of pixels makes the curve precise even at the dark end where
each pixel sees only a few electrons. The exposure is fixed for the sweep (set on white), so
the camera's linearity — already verified by the photon-transfer step — carries the scale.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from calibration.fitting.response import DisplayResponse, fit_display_response
from calibration.procedures.base import BenchContext, StepResult, lit_mask
from onnlab.errors import CalibrationError

# Denser at the dark end, where gamma bends the curve most.
DEFAULT_LEVELS: tuple[int, ...] = (0, 8, 16, 24, *range(32, 256, 16), 255)


@dataclass(frozen=True)
class ResponseResult(StepResult):
    """Fitted display response plus the raw curve it came from."""

    response: DisplayResponse
    levels: np.ndarray
    intensity: np.ndarray  # measured relative intensity (1 at 255)


def measure_display_response(
    ctx: BenchContext, *, levels: tuple[int, ...] = DEFAULT_LEVELS, n_frames: int = 2
) -> ResponseResult:
    """Show each grey level, measure the pooled signal, fit `DisplayResponse`; store in ctx."""
    t0 = time.perf_counter()
    n0 = ctx.frames_captured
    if 255 not in levels or 0 not in levels:
        raise ValueError("levels: must include 0 and 255")
    white = ctx.uniform(255)
    ctx.report("display response: exposure", 0.0)
    ctx.auto_expose(white, target=0.7)
    ref = ctx.capture_mean(white, n_frames, "resp255")
    if (ref >= ctx.saturation - 0.5).any():
        raise CalibrationError("display response: white frame saturates; reduce exposure")
    mask = lit_mask(ref, ctx.offset)
    if mask.sum() < 16:
        raise CalibrationError("display response: no lit tiles found; check alignment")
    signal = []
    for i, g in enumerate(levels):
        ctx.report(f"display response: level {g}", (i + 1) / (len(levels) + 1))
        frame = ref if g == 255 else ctx.capture_mean(ctx.uniform(g), n_frames, f"resp{g}")
        signal.append(float((frame[mask] - ctx.offset).sum()))
    y = np.asarray(signal)
    resp = fit_display_response(np.asarray(levels, np.float64), y)
    ctx.response = resp
    return ResponseResult(
        residual=resp.residual,
        n_frames=ctx.frames_captured - n0,
        seconds=time.perf_counter() - t0,
        response=resp,
        levels=np.asarray(levels, np.float64),
        intensity=y / y[-1] if y[-1] > 0 else y,
    )
