"""Leakage model of calibration: window PSFs (light beyond the kernel, crosstalk between
tiles) and a broad background, recovered from synthetic frames with known answers."""

from __future__ import annotations

import torch

from calibration.fitting.leakage import (
    background_basis,
    background_signal,
    solve_window_psfs,
    unexplained_fraction,
    window_boxes,
    window_gram,
)
from calibration.forward import ForwardModel, Geometry, TileGeometry


def _problem(n_frames: int = 40, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    k, margin, hw = 5, 2, (12, 12)
    tiles = TileGeometry(2, 2, 2, hw, (40, 40), 4)
    geom = Geometry.from_values((0.3, -0.2), 0.002, 1.001, (0.0, 0.0), 0.0)
    model = ForwardModel(tiles, geom)
    w = k + 2 * margin
    core = torch.rand(4, 1, k, k, generator=gen, dtype=torch.float64) + 0.2
    window = 0.02 * torch.rand(4, 1, w, w, generator=gen, dtype=torch.float64)
    window[..., margin : margin + k, margin : margin + k] += core
    window = window / window.sum((1, 2, 3), keepdim=True) * 0.8
    x = (torch.rand(n_frames, 1, *hw, generator=gen) < 0.3).double()
    bg = 1e-4 * (1 + torch.rand(1, 40, 40, generator=gen, dtype=torch.float64))
    y = model.signal(x, window, full=True) + background_signal(background_basis(x), bg)
    design = window[..., margin : margin + k, margin : margin + k].clone() * 1.1
    return model, x, y, window, bg, design, margin, k


def test_full_support_puts_leaked_light_on_the_neighbouring_tile() -> None:
    model, x, _, window, _, _, _, _ = _problem()
    one = torch.zeros(1, 1, 12, 12, dtype=torch.float64)
    one[0, 0, 6, 11] = 1.0  # right edge of the panel: kernel 0's light spills to tile 1
    only0 = window.clone()
    only0[1:] = 0
    frame = ForwardModel(model.tiles, Geometry.identity()).signal(one, only0, full=True)[0]
    oy, ox = model.tiles.tile_origins_px()[1].astype(int)
    on_tile1 = float(frame[oy : oy + 12, ox : ox + 12].sum())
    # kernel 0's PSF reaches 4 px right of the lit pixel (margin 2 + k // 2): 2 px gap, so
    # exactly the window's last two columns land on tile 1.
    assert abs(on_tile1 - float(window[0, 0, :, -2:].sum())) < 1e-9
    assert abs(float(frame.sum()) - float(window[0].sum())) < 1e-9  # nothing lost


def test_window_psfs_and_background_are_recovered() -> None:
    model, x, y, window, bg, design, margin, k = _problem()
    start = design.clone()
    wts = torch.full_like(y, 1e6)
    p, fitted_bg, history = solve_window_psfs(
        model, x, y, wts, start, design, margin, prior_rel_std=None, iterations=12
    )
    # A flat pedestal over the window and the broad background are nearly the same signal
    # (both ~ total displayed intensity), so they trade; the kernel window and the frames
    # they predict together are what is pinned.
    core = (slice(None), slice(None), slice(margin, margin + k), slice(margin, margin + k))
    assert float((p[core] - window[core]).norm() / window[core].norm()) < 1e-2
    assert fitted_bg is not None
    pred = model.signal(x, p, full=True) + background_signal(background_basis(x), fitted_bg)
    assert float((pred - y).norm() / y.norm()) < 5e-3  # 0.27 % after 12 alternations
    assert float((p - window).norm() / window.norm()) < 2e-2
    assert history[-1] < 0.05 * history[0]


def test_kernel_window_alone_leaves_the_leaked_light_unexplained() -> None:
    model, x, y, window, _, _, margin, k = _problem()
    core = window[..., margin : margin + k, margin : margin + k]
    resid = y - model.signal(x, core)
    frac = unexplained_fraction(resid, y, torch.zeros_like(y))
    leaked = 1 - float(core.sum() / window.sum())
    assert frac > 0.1 * leaked**2  # something the window model must explain
    resid_full = (
        y - model.signal(x, window, full=True) - background_signal(background_basis(x), None)
    )
    assert unexplained_fraction(resid_full, y, torch.zeros_like(y)) < frac


def test_window_gram_equals_the_model_built_column_by_column() -> None:
    """G_k = A_kᵀ W A_k and A_kᵀ W extra from the box-only resampling equal the products of
    the model's own responses to one window pixel at a time (the definition), on a
    registration with offset, rotation, scale and a display shift, two colours and a tile
    whose extended image reaches the frame edge."""
    gen = torch.Generator().manual_seed(4)
    tiles = TileGeometry(2, 2, 2, (10, 10), (23, 24), 4)  # <= 1 px margin: windows clip
    geom = Geometry.from_values((0.4, -0.7), 0.01, 1.003, (0.3, -0.2), 0.004)
    model = ForwardModel(tiles, geom)
    wp = 5
    x = torch.rand(3, 2, 10, 10, generator=gen, dtype=torch.float64)
    wts = 0.5 + torch.rand(3, 23, 24, generator=gen, dtype=torch.float64)
    extra = torch.rand(3, 2, 23, 24, generator=gen, dtype=torch.float64)
    gram, _, gx = window_gram(model, x, wp, wts, chunk=2, extra=extra)
    boxes = window_boxes(model, wp)
    n = 2 * wp * wp
    for j, (y0, y1, x0, x1) in enumerate(boxes):
        cols = []
        for i in range(n):
            psfs = torch.zeros(4, 2 * wp * wp, dtype=torch.float64)
            psfs[j, i] = 1.0
            sig = model.signal(x, psfs.reshape(4, 2, wp, wp), full=True)
            cols.append(sig[:, y0:y1, x0:x1].reshape(-1))
        a = torch.stack(cols)  # (n, pixels)
        w = wts[:, y0:y1, x0:x1].reshape(-1)
        ex = extra[:, :, y0:y1, x0:x1].permute(0, 2, 3, 1).reshape(-1, 2)
        torch.testing.assert_close(gram[j], (a * w) @ a.T, rtol=1e-5, atol=1e-6)
        assert gx is not None
        torch.testing.assert_close(gx[j], (a * w) @ ex, rtol=1e-5, atol=1e-6)
