"""Display response: grey level → emitted relative intensity, monotone and invertible.

A display is never linear (gamma, black level). The twin needs the forward curve to predict
frames of arbitrary images, and the capture code needs its inverse to show patterns whose
*intensity* is what the design assumed. We fit a physical model ``b + (1 − b)(g/255)^γ``
(smooth, few parameters, extrapolates sanely) and add a monotone (isotonic) correction at the
measured levels, so the lookup table is exact where we measured and smooth in between.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import least_squares

from onnlab.errors import CalibrationError

MAX_LEVEL = 255


def isotonic_increasing(y: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
    """Pool-adjacent-violators: the closest (weighted L2) non-decreasing sequence to ``y``."""
    y = np.asarray(y, dtype=np.float64)
    w = np.ones_like(y) if w is None else np.asarray(w, dtype=np.float64)
    vals: list[float] = []
    wts: list[float] = []
    sizes: list[int] = []
    for yi, wi in zip(y, w, strict=True):
        vals.append(float(yi))
        wts.append(float(wi))
        sizes.append(1)
        while len(vals) > 1 and vals[-2] > vals[-1]:
            wsum = wts[-2] + wts[-1]
            merged = (vals[-2] * wts[-2] + vals[-1] * wts[-1]) / wsum
            vals[-2:] = [merged]
            wts[-2:] = [wsum]
            sizes[-2:] = [sizes[-2] + sizes[-1]]
    return np.repeat(np.asarray(vals), sizes)


@dataclass(frozen=True)
class DisplayResponse:
    """Relative intensity (1.0 at full white) for every grey level 0..255.

    ``lut[g]`` is what the design's "pixel value g/255" really emits; ``gamma`` and
    ``black_level`` are the parametric part (for reports and extrapolation).
    """

    lut: np.ndarray  # (256,) float64, non-decreasing, lut[255] == 1
    gamma: float
    black_level: float
    residual: float  # RMS of measured − fitted relative intensities
    levels: np.ndarray = field(default_factory=lambda: np.zeros(0))  # measured grey levels
    measured: np.ndarray = field(default_factory=lambda: np.zeros(0))  # measured intensities

    def apply(self, values: np.ndarray, *, quantize: bool = True) -> np.ndarray:
        """Image values in [0, 1] (as sent to the display) → emitted relative intensity."""
        v = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0) * MAX_LEVEL
        if quantize:
            return self.lut[np.rint(v).astype(np.int64)]
        return np.interp(v, np.arange(MAX_LEVEL + 1), self.lut)

    def inverse(self, intensity: np.ndarray) -> np.ndarray:
        """Relative intensity wanted → display value in [0, 1] (continuous; round to show).

        Intensities below the black level map to 0 (they cannot be shown); the LUT is made
        strictly increasing first so the inverse is a function.
        """
        lut = self.lut + np.arange(MAX_LEVEL + 1) * 1e-12
        g = np.interp(np.asarray(intensity, dtype=np.float64), lut, np.arange(MAX_LEVEL + 1))
        return g / MAX_LEVEL

    def linearize(self, values: np.ndarray) -> np.ndarray:
        """Display values so that emitted intensity is ∝ ``values`` over [black, 1]."""
        b = self.black_level
        return self.inverse(b + (1.0 - b) * np.clip(np.asarray(values, np.float64), 0, 1))


def gamma_curve(g: np.ndarray, gamma: float, black: float) -> np.ndarray:
    """The parametric display model ``b + (1 − b)(g/255)^γ``."""
    return black + (1.0 - black) * (np.asarray(g, np.float64) / MAX_LEVEL) ** gamma


def fit_display_response(
    levels: np.ndarray, intensity: np.ndarray, weights: np.ndarray | None = None
) -> DisplayResponse:
    """Fit the response from measured (grey level, relative intensity) pairs.

    ``intensity`` is any positive multiple of the emitted intensity (offset-subtracted DN);
    it is normalised by its value at the highest level, which must be 255.
    Refuses when the curve is not increasing or has no dynamic range (display off, camera
    saturated at every level, wrong cable).
    """
    g = np.asarray(levels, dtype=np.float64)
    y = np.asarray(intensity, dtype=np.float64)
    if g.ndim != 1 or g.shape != y.shape or g.size < 4:
        raise ValueError("levels: need >= 4 grey levels matching intensity")
    order = np.argsort(g)
    g, y = g[order], y[order]
    if g[-1] != MAX_LEVEL or g[0] < 0:
        raise ValueError("levels: must lie in [0, 255] and include 255")
    if y[-1] <= 0:
        raise CalibrationError(
            "display response: no signal at full white; check the display is on and "
            "increase exposure"
        )
    y = y / y[-1]
    if y.max() - y.min() < 0.2:
        raise CalibrationError(
            "display response: intensity hardly changes with grey level "
            f"(range {y.max() - y.min():.3f}); camera saturated? reduce exposure"
        )
    w = np.ones_like(y) if weights is None else np.asarray(weights, np.float64)[order]
    mono = isotonic_increasing(y, w)

    def resid(p: np.ndarray) -> np.ndarray:
        return (gamma_curve(g, p[0], p[1]) - mono) * np.sqrt(w)

    sol = least_squares(resid, x0=[2.2, max(float(mono[0]), 0.0)], bounds=([0.2, 0.0], [6, 0.9]))
    gamma, black = float(sol.x[0]), float(sol.x[1])
    allg = np.arange(MAX_LEVEL + 1, dtype=np.float64)
    # Exact at measured levels: interpolate the residual of the isotonic points vs the model.
    corr = np.interp(allg, g, mono - gamma_curve(g, gamma, black))
    lut = np.maximum.accumulate(gamma_curve(allg, gamma, black) + corr)
    lut = lut / lut[-1]
    fit_res = float(np.sqrt(np.mean((gamma_curve(g, gamma, black) - y) ** 2)))
    return DisplayResponse(
        lut=lut, gamma=gamma, black_level=black, residual=fit_res, levels=g, measured=y
    )
