"""PSFs measured in windows larger than the kernel (leakage, crosstalk) and a broad background.

A real meta-optic does not keep its light inside the kernel window: scatter from height
errors, quantisation orders and defocus put a few per cent of it into the gap and the
neighbouring tiles, and unfocused (zero-order) light lands as a broad background. Calibration
cannot model that physics (it never imports the simulator), so it *learns* it:

* window PSFs: each kernel's PSF is fitted on W = k + 2 m pixels with the full convolution
  (the image of kernel k extends W // 2 px beyond its tile, so neighbouring tiles' light
  overlaps each box: crosstalk). The per-kernel normal equations are exact for each kernel's
  own light; the neighbours' light enters through the residual (block Jacobi: every kernel
  solves against the frame minus the others' current prediction), which converges quickly
  because the overlap is a small fraction of each box;
* background: the remaining residual regressed, per camera pixel, on each channel's total
  displayed intensity (a broad, unfocused term is linear in the image and nearly independent
  of where in the small panel the light comes from): B_c(y) with
  background(y) = sum_c B_c(y) * sum(I_c).

What both still leave is reported as ``unexplained_fraction`` (see `unexplained_fraction`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from calibration.fitting.deconv import solve_psfs_map
from calibration.forward import ForwardModel
from calibration.normal_equations import box_normal_equations, tile_boxes


def window_boxes(model: ForwardModel, window_px: int) -> list[tuple[int, int, int, int]]:
    """Camera boxes holding all of each kernel's light for a W-px PSF window."""
    return tile_boxes(model, pad=1 + int(window_px) // 2)


def window_gram(
    model: ForwardModel,
    intensity: torch.Tensor,
    window_px: int,
    weights: torch.Tensor | None = None,
    chunk: int = 16,
    extra: torch.Tensor | None = None,
) -> tuple[torch.Tensor, int, torch.Tensor | None]:
    """Per-kernel Gram matrices G_k = A_kᵀ W A_k (K, n, n), n = C·W², of the full-support
    model, the pixels used per kernel summed over frames, and A_kᵀ W extra (K, n, T) for
    ``extra`` (N, T, H, W) right-hand sides (e.g. geometry derivatives), else None."""
    wp = int(window_px)
    gram, _, _, pixels, rhs_x = box_normal_equations(
        model,
        intensity,
        wp,
        window_boxes(model, wp),
        extension_px=wp // 2,
        weights=weights,
        extra=extra,
        chunk=chunk,
        max_rows=2048,
    )
    return gram, pixels, rhs_x


def background_basis(intensity: torch.Tensor) -> torch.Tensor:
    """(N, C) regressors of the broad background: each channel's total displayed intensity."""
    return intensity.double().sum(dim=(-2, -1))


def background_signal(basis: torch.Tensor, background: torch.Tensor | None) -> torch.Tensor | float:
    """sum_c B_c(y) S_c for (N, C) regressors and (C, H, W) maps -> (N, H, W) (0 if none)."""
    if background is None:
        return 0.0
    return torch.einsum("nc,chw->nhw", basis.to(background), background)


def fit_background(
    residual: torch.Tensor, basis: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Per-pixel weighted least squares of residual (N, H, W) on the regressors (N, C):
    the background maps (C, H, W). Non-negative light: clamped at 0."""
    r, s, wt = residual.double(), basis.double(), weights.double()
    n_c = s.shape[1]
    # normal equations per pixel: (C x C) sum_n w s s^T, (C) sum_n w s r
    ata = torch.einsum("nhw,nc,nd->hwcd", wt, s, s)
    atb = torch.einsum("nhw,nc,nhw->hwc", wt, s, r)
    ridge = 1e-9 * ata.diagonal(dim1=-2, dim2=-1).mean(-1).clamp_min(1e-300)
    ata = ata + ridge[..., None, None] * torch.eye(n_c, dtype=ata.dtype)
    sol = torch.linalg.solve(ata, atb[..., None])[..., 0]
    return sol.permute(2, 0, 1).clamp_min(0)


# Frames whose Gram stands in for all frames' (the Hessian of the window fit): equations per
# unknown PSF pixel. The Gram costs n² per camera pixel (n = C·W², 867 for the 56-kernel RGB
# optic: most of its calibration); random patterns are i.i.d., so a subset's Gram, scaled, is
# the full one to ~1/sqrt(this ratio), and the fit stays exact because every iteration uses
# the gradient of all frames (a quasi-Newton step whose fixed point is the full-data optimum).
HESSIAN_EQUATIONS_PER_UNKNOWN = 100


def hessian_gram(
    model: ForwardModel, intensity: torch.Tensor, window_px: int, weights: torch.Tensor
) -> tuple[torch.Tensor, int]:
    """Window Gram of enough leading frames (`HESSIAN_EQUATIONS_PER_UNKNOWN`), scaled to all
    frames; exact when that needs every frame."""
    n_frames = int(intensity.shape[0])
    n = int(intensity.shape[1]) * window_px * window_px
    boxes = window_boxes(model, window_px)
    box_px = float(np.mean([(y1 - y0) * (x1 - x0) for y0, y1, x0, x1 in boxes]))
    m = min(n_frames, max(2, math.ceil(HESSIAN_EQUATIONS_PER_UNKNOWN * n / box_px)))
    g_mat, npx, _ = window_gram(model, intensity[:m], window_px, weights[:m])
    if m == n_frames:
        return g_mat, npx
    return g_mat * (n_frames / m), round(npx * n_frames / m)


def solve_window_psfs(
    model: ForwardModel,
    intensity: torch.Tensor,
    target: torch.Tensor,
    weights: torch.Tensor,
    start: torch.Tensor,
    design: torch.Tensor,
    margin_px: int,
    *,
    prior_rel_std: float | None = 0.25,
    iterations: int = 4,
    background: bool = True,
    gram: tuple[torch.Tensor, int] | None = None,
    bg: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, list[float]]:
    """Window PSFs (K, C, W, W) (W = k + 2 margin) and background maps (C, H, W) or None.

    ``start`` (K, C, k, k) is the kernel-window estimate; ``design`` (K, C, k, k) centres the
    prior (zero outside the kernel window: leakage is a small, data-driven addition).
    Returns also the weighted chi (RMS of residual / noise) after every iteration.
    """
    m = int(margin_px)
    k = int(design.shape[-1])
    wp = k + 2 * m
    pad = (m, m, m, m)
    p = start.double() if start.shape[-1] == wp else F.pad(start.double(), pad)
    d_win = F.pad(design.double(), pad)
    n_k, n_c = int(design.shape[0]), int(design.shape[1])
    if gram is None:
        gram = hessian_gram(model, intensity, wp, weights)
    g_mat, npx = gram
    x, y, wt = intensity.double(), target.double(), weights.double()
    basis = background_basis(x)
    history = []
    for _ in range(iterations):
        pv = p.clone().requires_grad_(True)
        pred = model.signal(x, pv, full=True) + background_signal(basis, bg)
        resid = y - pred
        loss = 0.5 * (wt * resid**2).sum()
        (grad,) = torch.autograd.grad(loss, pv)
        history.append(float(torch.sqrt((wt * resid.detach() ** 2).mean())))
        flat = p.reshape(n_k, -1)
        rhs = -grad.reshape(n_k, -1) + torch.einsum("kij,kj->ki", g_mat, flat)
        yty = torch.full((n_k,), float(loss.detach()), dtype=torch.float64)
        sol = solve_psfs_map(g_mat, rhs, yty, npx, d_win, 1.0, prior_rel_std=prior_rel_std)
        p = sol.psfs.reshape(n_k, n_c, wp, wp)
        if background:
            with torch.no_grad():
                r0 = y - model.signal(x, p, full=True)
            bg = fit_background(r0, basis, wt)
    with torch.no_grad():
        resid = y - model.signal(x, p, full=True) - background_signal(basis, bg)
    history.append(float(torch.sqrt((wt * resid**2).mean())))
    return p, bg, history


def _offset_splits(offset: np.ndarray) -> list[np.ndarray]:
    """Camera offsets to try: the whole-pixel part first, then the registered one (if
    different)."""
    whole = np.round(offset)
    return [whole] if np.allclose(whole, offset, atol=1e-6) else [whole, offset.copy()]


def refine_window(
    model: ForwardModel,
    intensity: torch.Tensor,
    target: torch.Tensor,
    weights: torch.Tensor,
    start: torch.Tensor,
    design: torch.Tensor,
    margin_px: int,
    *,
    prior_rel_std: float | None = 0.25,
    rounds: int = 6,
    refine_frames: int = 16,
    final_iterations: int = 3,
) -> tuple[torch.Tensor, torch.Tensor | None, list[float]]:
    """Window PSFs, background and geometry jointly: variable projection as in
    `calibration.procedures.geometry`, with the window model. A geometry refined with the
    kernel-window model is biased (it bends the registration to explain leaked light), so the
    geometry is refined again once the model can explain that light. ``model`` is left at the
    refined geometry. Returns (window PSFs, background maps, chi history)."""
    from calibration.procedures.geometry import _STEPS, _geometry, _theta

    wp = int(design.shape[-1]) + 2 * int(margin_px)
    x_all, y_all, wt_all = intensity.double(), target.double(), weights.double()
    sub = slice(0, min(int(refine_frames), x_all.shape[0]))  # geometry from a subset, as
    x, y, wt = x_all[sub], y_all[sub], wt_all[sub]  # refine_geometry_varpro does
    basis = background_basis(x)
    # A display shift or rotation resamples the image bilinearly before the optics, a
    # low-pass filter that no non-negative PSF undoes; with full-support PSFs it is also not
    # identifiable (below). Fold it into the camera registration (offset, rotation) instead.
    theta = _theta(model.geometry)
    s_, th = float(np.exp(theta[3])), float(theta[2])
    rot = np.array([[np.cos(th), np.sin(th)], [-np.sin(th), np.cos(th)]])
    theta[0:2] = theta[0:2] + s_ * rot @ theta[4:6]
    theta[2] = theta[2] + theta[6]
    theta[4:7] = 0.0
    # The sub-pixel part of the camera offset is ambiguous in the same way, and which side
    # gets it matters: bilinear resampling by a fraction f of a pixel is the low-pass filter
    # [1 - f, f], which no non-negative PSF undoes, while an exact translation of the optical
    # image (an optic offset on the sensor, which the registration step books as a camera
    # offset) keeps its full sharpness. Window PSFs can carry either translation but their
    # prior resists the smeared one, so both splits are fitted on the subset and the one the
    # frames prefer is refined: the whole-pixel camera offset (window PSFs carry the fraction)
    # or the registered one. Physical bench, 3 fabrications: point-image error 7.0 / 15.7 /
    # 8.4 % -> 2.0 / 6.4 / 4.1 %, twin fidelity 1.60 / 3.20 / 1.80 -> 1.06 / 1.55 / 1.25.
    # With full-support PSFs, a camera offset, a display shift and a shift of every PSF move
    # the light identically (no tile edge crops it), and so do a display rotation and a
    # camera rotation up to per-tile shifts: only the camera rotation and scale (the image
    # size and orientation inside each tile) are identifiable; the rest stays as chosen here.
    free = [2, 3]
    best = None
    for offset in _offset_splits(theta[0:2]):
        trial = theta.copy()
        trial[0:2] = offset
        model.set_geometry(_geometry(trial))
        fit = solve_window_psfs(
            model, x, y, wt, start, design, margin_px, prior_rel_std=prior_rel_std
        )
        if best is None or fit[2][-1] < best[1][2][-1]:
            best = (trial, fit)
    assert best is not None
    theta, (p, bg, history) = best
    model.set_geometry(_geometry(theta))
    for _ in range(rounds):
        cols = []
        with torch.no_grad():
            for i in free:
                h = _STEPS[i]
                d = np.zeros_like(theta)
                d[i] = h
                model.set_geometry(_geometry(theta + d))
                plus = model.signal(x, p, full=True)
                model.set_geometry(_geometry(theta - d))
                minus = model.signal(x, p, full=True)
                cols.append((plus - minus) / (2 * h))
        jac = torch.stack(cols, dim=1)
        model.set_geometry(_geometry(theta))
        gram, npx, bx = window_gram(model, x, wp, wt, extra=jac)
        with torch.no_grad():
            r = model.signal(x, p, full=True) + background_signal(basis, bg) - y
        jw = jac * wt[:, None]
        grad = torch.einsum("nphw,nhw->p", jw, r).numpy()
        jtj = torch.einsum("nphw,nqhw->pq", jw, jac).numpy()
        ridge = 1e-6 * gram.diagonal(dim1=-2, dim2=-1).mean(-1).clamp_min(1e-300)
        hk = gram + ridge[:, None, None] * torch.eye(gram.shape[-1], dtype=gram.dtype)
        assert bx is not None
        schur = jtj - torch.einsum("knp,knq->pq", bx, torch.linalg.solve(hk, bx)).numpy()
        schur = 0.5 * (schur + schur.T)
        eig = np.linalg.eigvalsh(schur) if np.isfinite(schur).all() else np.array([0.0])
        if eig.min() <= 1e-9 * max(abs(eig.max()), 1e-300) or not np.isfinite(grad).all():
            break  # the PSFs explain every geometric change: nothing left to refine
        step = -np.linalg.solve(schur + 1e-3 * np.diag(np.diag(schur)), grad)
        full_step = np.zeros_like(theta)
        full_step[free] = 0.7 * step  # under-relaxed: the PSFs re-fit after each step
        # Never move the frame's edge by more than a fraction of a pixel per step.
        big = max(abs(step[0]), abs(step[1])) * max(model.tiles.camera_hw)
        if big > 0.3:
            full_step *= 0.3 / big
        theta = theta + full_step
        model.set_geometry(_geometry(theta))
        p, bg, more = solve_window_psfs(
            model,
            x,
            y,
            wt,
            p,
            design,
            margin_px,
            prior_rel_std=prior_rel_std,
            bg=bg,
            iterations=3,
            gram=(gram, npx),  # this round's: the step moved the geometry a fraction of a px
        )
        history += more
        if np.all(np.abs(full_step) < _STEPS * 2):
            break
    p, bg, more = solve_window_psfs(
        model,
        x_all,
        y_all,
        wt_all,
        p,
        design,
        margin_px,
        prior_rel_std=prior_rel_std,
        bg=bg,
        iterations=final_iterations,
    )
    return p, bg, history + more


def unexplained_fraction(
    residual: torch.Tensor, signal: torch.Tensor, noise_var: torch.Tensor
) -> float:
    """Fraction of the captured signal's power that the fitted model leaves unexplained
    beyond the camera noise: max(0, Σ r² − Σ σ²) / Σ s² (s: captured signal above offset).
    0 = everything but noise explained; the leakage / background terms lower it."""
    r2 = float((residual.double() ** 2).sum())
    var = float(noise_var.double().sum())
    s2 = float((signal.double() ** 2).sum())
    return max(0.0, r2 - var) / max(s2, 1e-300)
