"""Joint refinement of registration and PSFs by variable projection (Golub–Pereyra).

Why: frames depend linearly on the PSFs and non-linearly on a handful of geometric numbers
(camera offset, rotation, scale; display shift and rotation). Alternating "fit PSFs, then fit
geometry" crawls, because per-kernel PSF shifts can imitate per-tile translations caused by a
wrong rotation or display shift: the PSFs silently absorb geometric errors. Variable projection
minimises the PSF-*profiled* misfit over the geometry alone: each Gauss–Newton step uses the
Schur complement S = JᵀWJ − Bᵀ(G + Λ)⁻¹B, i.e. only the part of each geometric derivative J
that no PSF change can explain. Tile edges, the panel's edges and the display resampling are
what remain, and they pin the geometry to hundredths of a pixel in three or four steps.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from calibration.fitting.deconv import solve_psfs_map
from calibration.fitting.gauss_newton import damped_capped_step
from calibration.forward import ForwardModel, Geometry
from calibration.normal_equations import psf_normal_equations

# Finite-difference steps per parameter: (ty, tx) px, rotation rad, log scale,
# (βy, βx) px, display rotation rad. Bilinear models are piecewise linear, so central
# differences with small steps are exact almost everywhere.
_STEPS = np.array([1e-3, 1e-3, 1e-6, 1e-6, 1e-3, 1e-3, 1e-5])


def _geometry(theta: np.ndarray) -> Geometry:
    return Geometry.from_values(
        (float(theta[0]), float(theta[1])),
        float(theta[2]),
        float(np.exp(theta[3])),
        (float(theta[4]), float(theta[5])),
        float(theta[6]),
    )


def _theta(g: Geometry) -> np.ndarray:
    v: dict[str, Any] = g.values()
    parts = [*v["offset_px"], v["rotation_rad"], np.log(v["scale"])]
    return np.array([*parts, *v["image_shift_px"], v["image_rotation_rad"]], np.float64)


def refine_geometry_varpro(
    fm: ForwardModel,
    x: torch.Tensor,
    y: torch.Tensor,
    wts: torch.Tensor,
    design: torch.Tensor,
    psfs: torch.Tensor,
    *,
    prior_rel_std: float | None = 0.25,
    iterations: int = 3,
    damping: float = 1e-3,
) -> tuple[Geometry, torch.Tensor, list[float]]:
    """Gauss–Newton on the PSF-profiled weighted misfit; returns (geometry, PSFs, χ² history).

    ``x`` (N, C, h, w) intensity, ``y`` (N, H, W) frames in feature units, ``wts`` inverse
    variances, ``psfs`` a starting estimate (K, C, k, k). ``fm`` is left at the result.
    """
    k = int(design.shape[-1])
    theta = _theta(fm.geometry)
    p = psfs.detach().double()
    history: list[float] = []
    for _ in range(iterations):
        fm.set_geometry(_geometry(theta))
        cols = []
        with torch.no_grad():
            for i, h in enumerate(_STEPS):
                d = np.zeros_like(theta)
                d[i] = h
                fm.set_geometry(_geometry(theta + d))
                plus = fm.signal(x, p)
                fm.set_geometry(_geometry(theta - d))
                minus = fm.signal(x, p)
                cols.append((plus - minus) / (2 * h))
        jac = torch.stack(cols, dim=1)  # (N, P, H, W)
        fm.set_geometry(_geometry(theta))
        gram, rhs, yty, npx, bx = psf_normal_equations(fm, x, y, k, weights=wts, extra=jac)
        sol = solve_psfs_map(gram, rhs, yty, npx, design, 1.0, prior_rel_std=prior_rel_std)
        p = sol.psfs.reshape(design.shape)
        history.append(float((sol.chi2 * npx).sum()))
        with torch.no_grad():
            r = fm.signal(x, p) - y
        jw = jac * wts[:, None]
        grad = torch.einsum("nphw,nhw->p", jw, r).numpy()
        jtj = torch.einsum("nphw,nqhw->pq", jw, jac).numpy()
        # Posterior precision of the PSFs (data + prior), to eliminate them (Schur complement).
        d = design.reshape(design.shape[0], -1).double()
        hk = gram.clone()
        if prior_rel_std is not None:
            mean = sol.amplitude[:, None] * d
            floor = 0.02 * mean.amax(-1, keepdim=True)
            hk = hk + torch.diag_embed(1.0 / (prior_rel_std * mean + floor) ** 2)
        assert bx is not None
        schur = jtj - torch.einsum("knp,knq->pq", bx, torch.linalg.solve(hk, bx)).numpy()
        schur = 0.5 * (schur + schur.T)
        # Never jump further than the linearisation can be trusted (a fraction of a pixel).
        step = damped_capped_step(schur, grad, damping, shift_indices=(0, 1, 4, 5))
        theta = theta + step
        if np.all(np.abs(step) < _STEPS * 2):
            break
    geom = _geometry(theta)
    fm.set_geometry(geom)
    return geom, p, history


def composite_offset(g: Geometry) -> tuple[float, float]:
    """Where displayed content lands, as one offset: camera offset + scale·R·display shift."""
    v = g.values()
    s, th = float(v["scale"]), float(v["rotation_rad"])  # type: ignore[arg-type]
    rs = np.array([[np.cos(th), np.sin(th)], [-np.sin(th), np.cos(th)]])
    c = np.asarray(v["offset_px"]) + s * rs @ np.asarray(v["image_shift_px"])
    return float(c[0]), float(c[1])
