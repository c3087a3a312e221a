"""Registration, second half: split the dots' composite offset into camera offset and display
shift from the edges of the tile windows.

Why a separate fit: a shift of the displayed image and a shift of the camera move every dot
blob alike, so dots measure only their sum (the composite offset). The tile windows do not
move with the content: where a window cuts a bright frame's content tells the camera offset,
and the display shift makes up the rest (β = (s·R)⁻¹ (t_eff − t)).
"""

from __future__ import annotations

import numpy as np
import torch

from calibration.fitting.gauss_newton import damped_capped_step
from calibration.forward import ForwardModel, Geometry
from calibration.normal_equations import tile_boxes
from calibration.procedures.base import BenchContext
from onnlab.errors import CalibrationError


def fit_window_offset(
    ctx: BenchContext,
    frames_dn: np.ndarray,
    images: np.ndarray,
    psfs: torch.Tensor,
    *,
    iterations: int = 8,
) -> Geometry:
    """Split the composite offset into camera offset and display shift from tile edges.

    ``frames_dn`` (N, H, W) offset-free frames of ``images`` (N, C, h, w) display intensity,
    predicted with ``psfs`` (any scale: a brightness per kernel is fitted alongside, so design
    PSFs will do). The content position (composite offset) stays fixed; moving the camera
    offset moves only where each tile's window cuts the content, which the edges of bright
    images reveal; camera rotation and scale are refined too (tile windows pin the relay,
    dots alone confuse it with per-kernel PSF centroid errors). Gauss–Newton with
    finite-difference derivatives: a handful of parameters, each step a few model renders.
    """
    if ctx.geometry is None or ctx.composite_offset is None:
        raise CalibrationError("registration has not been measured; run the registration step")
    g0 = ctx.geometry
    teff = np.asarray(ctx.composite_offset, np.float64)
    y = torch.as_tensor(frames_dn, dtype=torch.float64)
    x = torch.as_tensor(images, dtype=torch.float64)
    p = psfs.detach().double()
    n_k = p.shape[0]
    fm = ForwardModel(ctx.tiles, g0)

    def build(th: np.ndarray) -> Geometry:
        t, rot, s = th[:2], th[2], float(np.exp(th[3]))
        rs = np.array([[np.cos(rot), np.sin(rot)], [-np.sin(rot), np.cos(rot)]])
        beta = np.linalg.solve(s * rs, teff - t)
        return Geometry.from_values(tuple(t), float(rot), s, tuple(beta), float(g0.image_rotation))

    masks = torch.zeros(n_k, 1, *ctx.tiles.camera_hw, dtype=torch.float64)

    def render(th: np.ndarray) -> torch.Tensor:
        """(K, N, H, W) per-kernel contributions: tiles never overlap, so one render split by
        the tile boxes gives them all."""
        fm.set_geometry(build(th))
        with torch.no_grad():
            return fm.signal(x, p)[None] * masks

    theta = np.array([*g0.offset.detach().numpy(), float(g0.rotation), np.log(float(g0.scale))])
    steps = np.array([1e-3, 1e-3, 1e-6, 1e-6])
    for _ in range(iterations):
        fm.set_geometry(build(theta))
        masks.zero_()
        for j, (y0, y1, x0, x1) in enumerate(tile_boxes(fm, pad=2)):
            masks[j, 0, y0:y1, x0:x1] = 1.0
        parts = render(theta)  # (K, N, H, W)
        flat = parts.reshape(n_k, -1).T  # (M, K): brightness enters linearly
        amp = torch.linalg.lstsq(flat, y.reshape(-1, 1)).solution[:, 0]
        r = (flat @ amp - y.reshape(-1)).numpy()
        cols = []
        for i, h in enumerate(steps):
            d = np.zeros(4)
            d[i] = h
            diff = (render(theta + d) - render(theta - d)) / (2 * h)
            cols.append(torch.einsum("k,km->m", amp, diff.reshape(n_k, -1)).numpy())
        jac = np.concatenate([np.stack(cols, 1), flat.numpy()], axis=1)  # geometry + amplitudes
        jtj = jac.T @ jac
        step = damped_capped_step(jtj, jac.T @ r, 1e-9, shift_indices=(0, 1))[:4]
        theta = theta + step
        if np.all(np.abs(step) < steps * 2):
            break
    geom = build(theta)
    ctx.geometry = geom
    return geom
