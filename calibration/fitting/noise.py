"""Camera noise model from dark frames and a photon-transfer (mean–variance) sweep.

Why mean–variance: for a linear camera with Poisson shot noise and Gaussian read noise,
``var_DN = g * (mean_DN - offset) + (g * sigma_read_e)**2 + 1/12`` (the last term is the
quantisation step), so the slope of temporal variance against mean is the conversion gain
``g`` in DN per electron, independent of how bright the scene is. Temporal statistics per
pixel (N repeated frames of a static scene) remove every fixed pattern (PSF shape, display
non-uniformity) and leave only sensor noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnlab.errors import CalibrationError

QUANT_VAR_DN2 = 1.0 / 12.0


@dataclass(frozen=True)
class DarkStats:
    """Offset and read noise from frames with no light on the sensor."""

    offset_dn: float
    read_noise_dn: float  # quantisation removed
    clipped_fraction: float  # pixels at 0 DN: a clipped offset biases everything


@dataclass(frozen=True)
class PhotonTransferFit:
    """Linear fit var = gain * (mean - offset) + intercept over the linear range."""

    gain_dn_per_e: float
    intercept_dn2: float
    offset_dn: float
    saturation_dn: float
    linear_range_dn: tuple[float, float]
    residual: float  # RMS relative deviation of binned variances from the line
    bin_means_dn: np.ndarray
    bin_vars_dn2: np.ndarray
    n_pixels: int


def dark_stats(frames: np.ndarray, max_dn: float | None = None) -> DarkStats:
    """Offset and read noise of dark frames.

    Temporal statistics (per-pixel mean and variance over the stack, medians across pixels)
    exclude fixed-pattern offsets from the noise. When the offset sits so low that frames clip
    at 0 DN (many sensors ship with offset 0), those statistics are biased; the pooled
    histogram is then fitted by maximum likelihood with a rounded, censored Gaussian, which
    recovers the true mean and sigma from the visible upper part of the distribution.
    """
    stack = _as_stack(frames, "frames")
    clipped = float((stack <= 0).mean())
    if clipped < 0.002:
        mean = stack.mean(axis=0)
        var = stack.var(axis=0, ddof=1)
        offset = float(np.median(mean))
        read_var = float(np.median(var) * _MEDIAN_CHI2_CORRECTION(stack.shape[0]))
        read = float(np.sqrt(max(read_var - QUANT_VAR_DN2, 0.0)))
        return DarkStats(offset_dn=offset, read_noise_dn=read, clipped_fraction=clipped)
    offset, sigma = _censored_gaussian_mle(stack.ravel(), max_dn)
    # The likelihood models rounding explicitly, so sigma is already the pre-rounding noise.
    return DarkStats(offset_dn=offset, read_noise_dn=sigma, clipped_fraction=clipped)


def _MEDIAN_CHI2_CORRECTION(n: int) -> float:  # noqa: N802 - reads like the constant it is
    """mean/median of a scaled chi-square with n-1 dof: medians of variances are biased low."""
    from scipy.stats import chi2

    dof = max(n - 1, 1)
    return dof / float(chi2.median(dof))


def _censored_gaussian_mle(values: np.ndarray, max_dn: float | None) -> tuple[float, float]:
    """MLE of (mu, sigma) for round(N(mu, sigma^2)) clamped to [0, max_dn]."""
    from scipy.optimize import minimize
    from scipy.stats import norm

    v = np.rint(np.asarray(values, np.float64)).astype(np.int64)
    levels, counts = np.unique(v, return_counts=True)
    top = np.inf if max_dn is None else float(max_dn)

    def nll(p: np.ndarray) -> float:
        mu, sig = p[0], np.exp(p[1])
        hi = np.where(levels >= top, np.inf, levels + 0.5)
        lo = np.where(levels <= 0, -np.inf, levels - 0.5)
        prob = norm.cdf((hi - mu) / sig) - norm.cdf((lo - mu) / sig)
        return float(-(counts * np.log(np.maximum(prob, 1e-300))).sum())

    mu0 = float(v.mean())
    sig0 = max(float(v.std()), 0.3)
    sol = minimize(nll, x0=[mu0, np.log(sig0)], method="Nelder-Mead", options={"xatol": 1e-5})
    return float(sol.x[0]), float(np.exp(sol.x[1]))


def saturation_level(frames: np.ndarray) -> float | None:
    """The DN value at which pixels pile up with no temporal variance, or None if none do.

    A saturated pixel reads the same maximal value in every frame, so the level is the most
    common per-pixel maximum among pixels whose frames are all identical and that sit at the
    top of the histogram.
    """
    stack = _as_stack(frames, "frames")
    top = float(stack.max())
    frozen = (stack.min(axis=0) == stack.max(axis=0)) & (stack.max(axis=0) >= top - 0.5)
    if frozen.sum() < max(4, 0.001 * frozen.size):
        return None
    return top


def photon_transfer_fit(
    stacks: list[np.ndarray],
    offset_dn: float,
    *,
    saturation_dn: float | None = None,
    read_noise_dn: float | None = None,
    fixed_intercept: bool = True,
    n_bins: int = 48,
    min_pixels_per_bin: int = 20,
) -> PhotonTransferFit:
    """Fit the gain from per-pixel temporal mean/variance of several static-scene stacks.

    ``stacks``: list of (N, H, W) repeated frames, each of one static scene and exposure.
    Pixels that touch 0 or the saturation level in any frame are excluded (clipping
    shrinks variance). Remaining (mean, variance) pairs are binned by mean; bins use the
    *mean* variance (unbiased, unlike the median of a chi-square). A weighted line through the
    bins (weights = pixels / var², the inverse variance of each bin's estimate) gives the gain.
    With ``fixed_intercept`` and a dark-frame ``read_noise_dn``, the line is pinned at
    read² + 1/12 (what the dark frames measured directly), so every bin informs the slope and
    none is spent on the intercept: about half the gain error for the same frames.
    Raises CalibrationError when the data cannot support a fit, saying what to change.
    """
    if not stacks:
        raise ValueError("stacks: need at least one (N, H, W) stack")
    means, vars_ = [], []
    top = -np.inf
    for i, s in enumerate(stacks):
        stack = _as_stack(s, f"stacks[{i}]")
        top = max(top, float(stack.max()))
        sat = saturation_dn if saturation_dn is not None else np.inf
        ok = (stack.min(axis=0) > 0) & (stack.max(axis=0) < sat - 0.5)
        means.append(stack.mean(axis=0)[ok])
        vars_.append(stack.var(axis=0, ddof=1)[ok])
    m = np.concatenate(means)
    v = np.concatenate(vars_)
    sig = m - offset_dn
    read_var = (read_noise_dn or 0.0) ** 2 + QUANT_VAR_DN2
    # Only pixels with a signal well above the read noise carry slope information.
    keep = sig > 3.0 * np.sqrt(read_var)
    if keep.sum() < 200:
        raise CalibrationError(
            "photon transfer: too few lit, unsaturated pixels "
            f"({int(keep.sum())}); increase exposure or display brightness"
        )
    m, v, sig = m[keep], v[keep], sig[keep]
    edges = np.quantile(sig, np.linspace(0.0, 1.0, n_bins + 1))
    idx = np.clip(np.searchsorted(edges, sig, side="right") - 1, 0, n_bins - 1)
    counts = np.bincount(idx, minlength=n_bins)
    good = counts >= min_pixels_per_bin
    bm = np.bincount(idx, weights=sig, minlength=n_bins)[good] / counts[good]
    bv = np.bincount(idx, weights=v, minlength=n_bins)[good] / counts[good]
    n = counts[good]
    n_frames = min(_as_stack(s, "stacks").shape[0] for s in stacks)
    if len(bm) < 4:
        raise CalibrationError(
            "photon transfer: signal range too narrow; use more exposures or grey levels"
        )
    pin = read_var if (fixed_intercept and read_noise_dn is not None) else None
    gain, icpt, resid = _weighted_line(bm, bv, n, n_frames, pin)
    # Linear range: bins whose variance is within 10 % of the line (clipping near the top
    # and non-linearity show up as a variance deficit).
    rel = np.abs(bv - (gain * bm + icpt)) / np.maximum(gain * bm + icpt, 1e-12)
    tol = max(0.1, 4.0 * np.sqrt(2.0 / max(n_frames - 1, 1) / max(n.min(), 1)))
    lin = bm[rel < tol]
    lin_hi = float(lin.max() + offset_dn) if lin.size else float(bm.max() + offset_dn)
    lin_lo = float(offset_dn + 3.0 * np.sqrt(read_var))
    if gain <= 0 or not np.isfinite(gain):
        raise CalibrationError(
            "photon transfer: variance does not grow with signal (non-positive gain); "
            "check that the scene is static and the camera is not in auto-gain"
        )
    if resid > 0.15:
        raise CalibrationError(
            f"photon transfer: mean-variance not linear (residual {resid:.2f}); "
            "reduce exposure (saturation) or disable camera auto gain/exposure"
        )
    return PhotonTransferFit(
        gain_dn_per_e=float(gain),
        intercept_dn2=float(icpt),
        offset_dn=float(offset_dn),
        saturation_dn=float(saturation_dn if saturation_dn is not None else top),
        linear_range_dn=(lin_lo, lin_hi),
        residual=float(resid),
        bin_means_dn=bm + offset_dn,
        bin_vars_dn2=bv,
        n_pixels=int(n.sum()),
    )


def _weighted_line(
    x: np.ndarray, y: np.ndarray, n: np.ndarray, n_frames: int, intercept: float | None = None
) -> tuple[float, float, float]:
    """Iteratively reweighted line fit; weight = n / var² (variance of a sample variance).
    ``intercept`` given: only the slope is fitted."""
    w = n / np.maximum(y, 1e-12) ** 2
    slope, icpt = 0.0, 0.0 if intercept is None else float(intercept)
    for _ in range(3):
        sw = np.sqrt(w)
        if intercept is None:
            a = np.stack([x, np.ones_like(x)], axis=1)
            (slope, icpt), *_ = np.linalg.lstsq(a * sw[:, None], y * sw, rcond=None)
        else:
            slope = float(np.sum(w * x * (y - icpt)) / np.sum(w * x * x))
        pred = np.maximum(slope * x + icpt, 1e-12)
        w = n / pred**2
    pred = np.maximum(slope * x + icpt, 1e-12)
    # Residual relative to what sampling noise alone explains: ~0 for a perfect camera.
    expected = np.sqrt(2.0 / max(n_frames - 1, 1) / n)
    excess = np.sqrt(np.maximum(((y - pred) / pred) ** 2 - expected**2, 0.0))
    return float(slope), float(icpt), float(np.sqrt(np.mean(excess**2)))


def _as_stack(frames: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(frames, dtype=np.float64)
    if arr.ndim != 3 or arr.shape[0] < 2:
        raise ValueError(f"{name}: expected (N>=2, H, W) repeated frames, got {arr.shape}")
    return arr
