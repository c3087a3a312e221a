"""One damped, capped Gauss–Newton step for the sub-pixel geometry fits.

Why one helper: the geometry fit (`procedures.geometry`) and the tile-edge offset fit
(`procedures.window_offset`) both linearise a rendered image in sub-pixel shifts. Such a
linearisation only holds over a fraction of a pixel, so both solve the Levenberg–Marquardt
normal equations (Marquardt's diagonal scaling keeps the step invariant to parameter units) and
then shrink the whole step, direction kept, until no shift moves more than ``max_shift_px``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def damped_capped_step(
    hessian: np.ndarray,
    gradient: np.ndarray,
    damping: float,
    shift_indices: Sequence[int],
    max_shift_px: float = 0.5,
) -> np.ndarray:
    """Solve ``(H + damping·diag(H)) step = -gradient``; scale the step so that the entries at
    ``shift_indices`` (parameters in pixels) stay within ``±max_shift_px``."""
    hessian = np.asarray(hessian, dtype=np.float64)
    gradient = np.asarray(gradient, dtype=np.float64)
    if hessian.shape != (gradient.size, gradient.size):
        raise ValueError(f"hessian {hessian.shape} does not match gradient of size {gradient.size}")
    if not max_shift_px > 0:
        raise ValueError(f"max_shift_px must be positive, got {max_shift_px}")
    step = -np.linalg.solve(hessian + damping * np.diag(np.diag(hessian)), gradient)
    idx = list(shift_indices)
    largest = float(np.abs(step[idx]).max()) if idx and step.size else 0.0
    if largest > max_shift_px:
        step *= max_shift_px / largest
    return step
