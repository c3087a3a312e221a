"""Focus metrics and the sub-step location of the focus peak.

Why the default is image *contrast* (normalised variance, Muller & Buffington's ∫I²): for
incoherent imaging, defocus multiplies the object spectrum by an OTF whose magnitude shrinks
with blur, so ∫I² can only fall away from focus, for any object and any PSF shape. Derivative
metrics (Laplacian, gradient) weight frequencies the small PSFs of an optical frontend barely
pass, so their change is buried in shot noise. With two frames the contrast is computed as
their cross-covariance, which is free of the noise bias (noise is independent between frames).

Why normalised metrics: the focus sweep changes nothing but blur, yet the display, the
exposure or a drifting source could change brightness; dividing by the squared mean makes
the metric a pure measure of high spatial frequencies. The peak is located by a parabola
through log-metric around the best sample (a Gaussian-shaped peak is a parabola in log),
which gives sub-step precision from a coarse grid.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import laplace, sobel


def variance_of_laplacian(image: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Var(∇²I) / mean(I)² over ``mask``: large when the image has sharp detail."""
    img = np.asarray(image, dtype=np.float64)
    lap = laplace(img, mode="nearest")
    sel = np.ones(img.shape, bool) if mask is None else mask
    mean = img[sel].mean()
    return float(lap[sel].var() / max(mean**2, 1e-12))


def gradient_energy(image: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Normalised gradient energy mean(|∇I|²) / mean(I)² (Tenengrad without threshold)."""
    img = np.asarray(image, dtype=np.float64)
    g2 = sobel(img, axis=0, mode="nearest") ** 2 + sobel(img, axis=1, mode="nearest") ** 2
    sel = np.ones(img.shape, bool) if mask is None else mask
    return float(g2[sel].mean() / max(img[sel].mean() ** 2, 1e-12))


def contrast(frames: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Normalised variance cov(f1, f2) / mean² of a static scene; noise-unbiased for n ≥ 2."""
    st = np.asarray(frames, dtype=np.float64)
    if st.ndim == 2:
        st = st[None]
    sel = np.ones(st.shape[1:], bool) if mask is None else mask
    vals = st[:, sel]
    mean = vals.mean()
    dev = vals - vals.mean(axis=1, keepdims=True)
    if len(vals) == 1:
        return float((dev[0] ** 2).mean() / max(mean**2, 1e-12))
    n = len(vals)
    cross = sum((dev[i] * dev[j]).mean() for i in range(n) for j in range(i + 1, n))
    return float(cross / (n * (n - 1) / 2) / max(mean**2, 1e-12))


def concentration(frames: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Energy concentration ΣI² / (ΣI)² of point-source images (Strehl-like; noise-unbiased
    via cross-products when n ≥ 2). Maximal at focus for any PSF shape, since blur spreads
    a fixed energy over more pixels."""
    st = np.asarray(frames, dtype=np.float64)
    if st.ndim == 2:
        st = st[None]
    sel = np.ones(st.shape[1:], bool) if mask is None else mask
    vals = st[:, sel]
    total = vals.mean(axis=0).sum()
    n = len(vals)
    if n == 1:
        sq = (vals[0] ** 2).sum()
    else:
        sq = sum((vals[i] * vals[j]).sum() for i in range(n) for j in range(i + 1, n))
        sq /= n * (n - 1) / 2
    return float(sq / max(total**2, 1e-30))


def blob_sharpness(
    frames: np.ndarray, centres_yx: np.ndarray, inner_radius: int, outer_radius: int
) -> float:
    """Laplacian energy at the cores of point-source images over their squared energy.

    ``frames`` (n, H, W) background-free point images; the Laplacian energy is summed over
    (2·inner+1)² windows at each blob centre (the core, where blur acts first; excluding a
    PSF's outer rim, which a finite optic window truncates at any focus), the energy over
    (2·outer+1)² windows. Cross-products of independent frames remove the noise bias.
    """
    st = np.asarray(frames, dtype=np.float64)
    if st.ndim == 2:
        st = st[None]
    h, w = st.shape[1:]
    inner = np.zeros((h, w), bool)
    outer = np.zeros((h, w), bool)
    for cy, cx in np.rint(np.asarray(centres_yx)).astype(int):
        inner[
            max(cy - inner_radius, 0) : cy + inner_radius + 1,
            max(cx - inner_radius, 0) : cx + inner_radius + 1,
        ] = True
        outer[
            max(cy - outer_radius, 0) : cy + outer_radius + 1,
            max(cx - outer_radius, 0) : cx + outer_radius + 1,
        ] = True
    laps = [laplace(f, mode="nearest")[inner] for f in st]
    n = len(laps)
    if n == 1:
        e2 = float((laps[0] ** 2).sum())
    else:
        e2 = sum(float((laps[i] * laps[j]).sum()) for i in range(n) for j in range(i + 1, n))
        e2 /= n * (n - 1) / 2
    total = float(st.mean(axis=0)[outer].sum())
    return e2 / max(total**2, 1e-30)


def _on_mean(fn):  # adapt single-image metrics to a frame stack
    def metric(frames: np.ndarray, mask: np.ndarray | None = None) -> float:
        st = np.asarray(frames, dtype=np.float64)
        return fn(st.mean(axis=0) if st.ndim == 3 else st, mask)

    metric.__doc__ = fn.__doc__
    return metric


METRICS = {
    "concentration": concentration,
    "contrast": contrast,
    "laplacian": _on_mean(variance_of_laplacian),
    "gradient": _on_mean(gradient_energy),
}


def peak_location(positions: np.ndarray, values: np.ndarray, n_fit: int = 5) -> tuple[float, float]:
    """Sub-sample peak of a focus curve: (position, RMS residual of the log-parabola fit).

    Fits ``log(value)`` with a parabola over the ``n_fit`` samples nearest the maximum. When
    the parabola opens upward (flat or noisy curve) the best sample itself is returned.
    """
    z = np.asarray(positions, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    order = np.argsort(z)
    z, v = z[order], v[order]
    i = int(np.argmax(v))
    half = n_fit // 2
    lo, hi = max(0, i - half), min(len(z), i + half + 1)
    if hi - lo < 3:
        return float(z[i]), float("nan")
    zz = z[lo:hi]
    yy = np.log(np.maximum(v[lo:hi], 1e-300))
    scale = max(np.ptp(zz), 1e-30)
    u = (zz - z[i]) / scale
    coef = np.polyfit(u, yy, 2)
    resid = float(np.sqrt(np.mean((np.polyval(coef, u) - yy) ** 2)))
    if coef[0] >= 0:
        return float(z[i]), resid
    peak = -coef[1] / (2 * coef[0])
    peak = float(np.clip(peak, u.min(), u.max()))
    return float(z[i] + peak * scale), resid


def peak_gaussian(positions: np.ndarray, values: np.ndarray) -> tuple[float, float]:
    """Peak of a + b·exp(−(z − z0)² / 2w²) fitted to (z, value): (z0, RMS relative residual).

    Why a bell and not a parabola: near focus the curve is flat-topped and noisy, far away it
    flattens into the background; a bell with a baseline uses every sample of a sweep that
    brackets the peak, which averages the noise of single samples. Falls back to the best
    sample when the fit fails or lands outside the sampled range.
    """
    from scipy.optimize import curve_fit

    z = np.asarray(positions, np.float64)
    v = np.asarray(values, np.float64)
    i = int(np.argmax(v))
    span = max(float(np.ptp(z)), 1e-30)
    u = (z - z[i]) / span

    def bell(x: np.ndarray, a: float, b: float, x0: float, w: float) -> np.ndarray:
        return a + b * np.exp(-((x - x0) ** 2) / (2 * w * w))

    p0 = [float(v.min()), float(v.max() - v.min()), 0.0, 0.25]
    try:
        popt, _ = curve_fit(bell, u, v, p0=p0, maxfev=4000)
    except (RuntimeError, ValueError):
        return float(z[i]), float("nan")
    x0 = float(popt[2])
    if not (u.min() <= x0 <= u.max()) or popt[1] <= 0:
        return float(z[i]), float("nan")
    resid = float(np.sqrt(np.mean((bell(u, *popt) - v) ** 2)) / max(float(np.abs(v).mean()), 1e-30))
    return float(z[i] + x0 * span), resid
