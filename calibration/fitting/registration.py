"""Sub-pixel fiducial centroids and least-squares similarity transforms.

Why centroids: an intensity-weighted centroid of a blob is *exactly* the dot position plus the
PSF's own centroid, and it stays exact under bilinear resampling of a translated image, so it
needs no PSF model. Background is removed per window (median of the window border) so that a
black level or an offset error does not pull the centroid towards the window centre.
Why a similarity (shift, rotation, isotropic scale): a tile's image on the sensor is a rigid
relay with magnification; more freedom (affine shear) would only fit noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Similarity:
    """p = scale · R(rotation) · u + (ty, tx) in (y, x) coordinates; R turns +x towards +y."""

    scale: float
    rotation_rad: float
    ty: float
    tx: float

    @property
    def matrix(self) -> np.ndarray:
        """2×2 linear part acting on (y, x) column vectors."""
        c, s = np.cos(self.rotation_rad), np.sin(self.rotation_rad)
        # x' = c x - s y... expressed for (y, x): y' = s x + c y, x' = c x - s y
        return self.scale * np.array([[c, s], [-s, c]])

    def apply(self, points_yx: np.ndarray) -> np.ndarray:
        """Map (N, 2) (y, x) points."""
        pts = np.asarray(points_yx, dtype=np.float64)
        return pts @ self.matrix.T + np.array([self.ty, self.tx])

    def inverse(self) -> Similarity:
        """The inverse map (also a similarity)."""
        inv = np.linalg.inv(self.matrix)
        t = -inv @ np.array([self.ty, self.tx])
        return Similarity(1.0 / self.scale, -self.rotation_rad, float(t[0]), float(t[1]))


def fit_similarity(src_yx: np.ndarray, dst_yx: np.ndarray) -> tuple[Similarity, float]:
    """Least-squares similarity dst ≈ S(src) (Umeyama, closed form); returns (S, RMS px)."""
    src = np.asarray(src_yx, dtype=np.float64)
    dst = np.asarray(dst_yx, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ValueError("src_yx/dst_yx: need matching (N>=2, 2) point arrays")
    # Work in (x, y) complex form: dst = a * src + b with a = s·e^{iθ} (θ turns +x to +y).
    zs = src[:, 1] + 1j * src[:, 0]
    zd = dst[:, 1] + 1j * dst[:, 0]
    ms, md = zs.mean(), zd.mean()
    a = np.vdot(zs - ms, zd - md) / max(np.vdot(zs - ms, zs - ms).real, 1e-300)
    b = md - a * ms
    sim = Similarity(float(abs(a)), float(np.angle(a)), float(b.imag), float(b.real))
    rms = float(np.sqrt(np.mean(np.sum((sim.apply(src) - dst) ** 2, axis=1))))
    return sim, rms


def window_centroids(
    image: np.ndarray, guesses_yx: np.ndarray, radius: int, *, iterations: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """Background-subtracted centroids of blobs near each guess.

    Each window (2·radius+1 square) is re-centred on the previous centroid ``iterations``
    times, so a guess off by a few pixels still converges. Returns (N, 2) centroids and (N,)
    blob energies (sum above background); windows leaving the image give NaN.
    """
    img = np.asarray(image, dtype=np.float64)
    h, w = img.shape
    out = np.full((len(guesses_yx), 2), np.nan)
    energy = np.zeros(len(guesses_yx))
    offs = np.arange(-radius, radius + 1)
    for i, g in enumerate(np.asarray(guesses_yx, dtype=np.float64)):
        c = g.copy()
        for _ in range(iterations):
            cy, cx = int(round(c[0])), int(round(c[1]))
            if cy - radius < 0 or cx - radius < 0 or cy + radius >= h or cx + radius >= w:
                c = np.array([np.nan, np.nan])
                break
            win = img[cy - radius : cy + radius + 1, cx - radius : cx + radius + 1]
            border = np.concatenate([win[0], win[-1], win[1:-1, 0], win[1:-1, -1]])
            # No clipping: clipping noise at zero would pull every centroid to the window
            # centre; background-free windows give unbiased (if noisier) weights.
            wts = win - np.median(border)
            tot = wts.sum()
            if tot <= 0:
                c = np.array([np.nan, np.nan])
                break
            c = np.array([cy + (wts.sum(1) @ offs) / tot, cx + (wts.sum(0) @ offs) / tot])
            energy[i] = tot
        out[i] = c
    return out, energy


def psf_centroid_offset(psf: np.ndarray) -> np.ndarray:
    """(dy, dx) of a PSF's centroid from its centre pixel (k // 2): where a point lands."""
    p = np.asarray(psf, dtype=np.float64)
    if p.ndim == 3:
        p = p.sum(0)
    kh, kw = p.shape
    tot = p.sum()
    if tot <= 0:
        return np.zeros(2)
    cy = (p.sum(1) @ np.arange(kh)) / tot
    cx = (p.sum(0) @ np.arange(kw)) / tot
    return np.array([cy - kh // 2, cx - kw // 2])
