"""Step "registration": where each kernel's tile lands on the camera, from displayed dots.

Why dots: a single lit panel pixel images to one copy of each kernel's PSF in each tile; its
centroid is exact (dot position + the PSF's own centroid, mapped by the registration), needs
no PSF model, and many dots over several grid phases average the noise far below 0.1 px.
Why a global model instead of independent per-tile fits: the tiles are one rigid relay, so
one similarity (shift, rotation, scale about the frame centre) moves all of them; the dots'
spread *within* a tile additionally reveals the display's rotation relative to the optic.
What dots cannot tell apart is a shift of the display image from a shift of the camera (both
move every blob); the tile windows can: content is cut where a tile ends, so the final split
comes from fitting the edges of a full-white frame (`window_offset.fit_window_offset`).

Why a per-tile centroid shift in the fit: a dot's image sits at the AS-BUILT PSF's centroid,
and calibration only knows the design's. Fabrication moves each kernel's centroid by roughly
(relative per-tap error) x (PSF radius) / sqrt(taps): ~0.1 px for 7x7 smooth MNIST kernels,
but 0.25-0.35 px for the segmentation design's 3x3 taps at dilation 4 (taps 4 px from the
centre). A pure similarity then leaves that as "misfit" although the relay is perfectly
registered (measured on the segmentation bench: 0.24-0.29 px misfit, 0.01 px true error).
So each tile gets its own centroid shift (a nuisance parameter, reported), fixed in gauge to
carry no translation, rotation or scale pattern across the tiles: that part of random
centroid errors is indistinguishable from registration by dots (about sigma / sqrt(K)) and is
what the tile-edge fit then corrects. The acceptance test is applied to what registration
errors produce and centroid errors cannot: the misfit of the dots within each tile.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import least_squares
from scipy.signal import convolve2d

from calibration.fitting.registration import psf_centroid_offset, window_centroids
from calibration.forward import ForwardModel, Geometry, TileGeometry
from calibration.normal_equations import tile_boxes
from calibration.procedures.base import BenchContext, StepResult, with_single_thread
from calibration.procedures.patterns import dot_image, dot_phases, dot_positions
from calibration.procedures.window_offset import fit_window_offset
from onnlab.errors import CalibrationError


@dataclass(frozen=True)
class RegistrationResult(StepResult):
    """Fitted geometry (residual = RMS centroid misfit in px) and the raw fiducials."""

    geometry: Geometry
    composite_offset: tuple[float, float]  # camera offset + scale·R·display shift
    per_tile_rms_px: np.ndarray  # (K,) within-tile misfit
    centroid_shift_px: np.ndarray  # (K, 2) as-built minus design PSF centroid (gauge-fixed)
    measured_yx: np.ndarray  # (N, 2) centroids on the camera
    predicted_yx: np.ndarray  # (N, 2) model positions
    tile_index: np.ndarray  # (N,)
    blob_width_ratio: float  # measured / design PSF RMS width (diagnostic; ≫1: defocused?)


def _model_points(
    p: np.ndarray, tiles: TileGeometry, src: np.ndarray, psf_off: np.ndarray, tile_idx: np.ndarray
) -> np.ndarray:
    """Camera positions of dot images: p = (scale, rot, image_rot, ty_eff, tx_eff).

    The display rotation acts on the dot position (before the optic), the PSF centroid
    offset is added after it (the optic's own frame), then tiles and registration.
    """
    scale, rot, irot, ty, tx = p
    h, w = tiles.image_hw
    ci = np.array([(h - 1) / 2, (w - 1) / 2])
    cs = np.asarray(tiles.centre_px)
    ri = np.array([[np.cos(irot), np.sin(irot)], [-np.sin(irot), np.cos(irot)]])
    rs = np.array([[np.cos(rot), np.sin(rot)], [-np.sin(rot), np.cos(rot)]])
    q = ci + (src - ci) @ ri.T  # display rotation about the panel centre
    u = tiles.tile_origins_px()[tile_idx] + q + psf_off[tile_idx]
    return cs + scale * (u - cs) @ rs.T + np.array([ty, tx])


def _gauge_basis(tiles: TileGeometry) -> np.ndarray:
    """(2K, 4) orthonormal tile-level displacement fields of a similarity (translation y/x,
    scale, rotation about the frame centre): per-tile shifts must carry none of them."""
    h, w = tiles.image_hw
    u = tiles.tile_origins_px() + np.array([(h - 1) / 2, (w - 1) / 2]) - np.asarray(tiles.centre_px)
    n = len(u)
    fields = np.zeros((n, 2, 4))
    fields[:, 0, 0] = 1.0
    fields[:, 1, 1] = 1.0
    fields[:, :, 2] = u  # d/ds of s * u
    fields[:, 0, 3], fields[:, 1, 3] = u[:, 1], -u[:, 0]  # d/dtheta of R(theta) u at 0
    q, _ = np.linalg.qr(fields.reshape(2 * n, 4))
    return q


def fit_dots(
    tiles: TileGeometry,
    src: np.ndarray,
    psf_off: np.ndarray,
    tile_idx: np.ndarray,
    measured: np.ndarray,
    x0: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Joint least squares of the similarity and per-tile PSF centroid shifts.

    Returns (p = (scale, rot, image_rot, ty, tx), shifts (K, 2), residuals (N, 2)). The
    shifts are gauge-fixed (`_gauge_basis`) and weakly tied to 0 (1e-3 weight) so tiles with
    no dots stay defined; both constraints are stiff or tiny enough not to bias the rest.
    """
    n_k = tiles.n_kernels
    basis = _gauge_basis(tiles)
    stiff = 10.0 * np.sqrt(len(measured))

    def split(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return x[:5], x[5:].reshape(n_k, 2)

    def resid(x: np.ndarray) -> np.ndarray:
        p, shifts = split(x)
        pts = _model_points(p, tiles, src, psf_off + shifts, tile_idx) - measured
        return np.concatenate([pts.ravel(), stiff * (basis.T @ shifts.ravel()), 1e-3 * x[5:]])

    sol = least_squares(
        resid,
        x0=np.concatenate([x0, np.zeros(2 * n_k)]),
        x_scale=np.concatenate([[1e-3, 1e-3, 1e-3, 0.1, 0.1], np.full(2 * n_k, 0.1)]),
    )
    p, shifts = split(sol.x)
    return p, shifts, _model_points(p, tiles, src, psf_off + shifts, tile_idx) - measured


def worst_measured_shift(
    shifts: np.ndarray, tile_idx: np.ndarray, min_points: int = 3
) -> int | None:
    """The tile with the largest PSF-centroid shift among tiles that ``min_points`` dots
    measured (None if none did). A tile whose kernel sends too little light for its dots to
    pass the energy test has no measured shift -- only the weak tie to 0 and the gauge
    constraints define it -- so it cannot be judged misplaced (a realised dilated kernel with
    most of its light scattered does this)."""
    counts = np.bincount(tile_idx, minlength=len(shifts))
    measured = np.flatnonzero(counts >= min_points)
    if measured.size == 0:
        return None
    return int(measured[np.argmax(np.linalg.norm(shifts[measured], axis=1))])


def _rms_width(blob: np.ndarray) -> float:
    """RMS radius of a non-negative blob about its centroid."""
    b = np.clip(blob, 0, None)
    tot = b.sum()
    if tot <= 0:
        return float("nan")
    yy, xx = np.indices(b.shape)
    cy, cx = (b * yy).sum() / tot, (b * xx).sum() / tot
    return float(np.sqrt((b * ((yy - cy) ** 2 + (xx - cx) ** 2)).sum() / tot))


@with_single_thread
def measure_registration(
    ctx: BenchContext,
    *,
    n_phases: int = 4,
    n_frames: int = 3,
    dot_px: int = 2,
    max_rms_px: float = 0.3,
    max_centroid_shift_px: float | None = None,
    split_with_edges: bool = True,
) -> RegistrationResult:
    """Fit the registration from dot grids (+ tile edges of a white frame); store in ``ctx``.

    Refuses when dots are missing (no signal / wrong exposure), when blobs fill their centroid
    windows (defocused: run the focus step; never judged against the design's PSFs), when
    the similarity does not explain the dots within the tiles (RMS > ``max_rms_px``: a
    distorting relay, or misregistered beyond the search window), or when a tile's blobs sit
    farther than ``max_centroid_shift_px`` from where the design's PSF centroid puts them
    (wrong design or tile layout: light a tile pitch away). Default k/2, half the kernel
    window: fabrication can move a centroid that far without any light leaving the window,
    by shifting energy between a sparse kernel's taps (the realised 9x9 dilated kernels of
    the segmentation optic moved 2.4-3.5 px on two fabrications; k/4 refused them).
    """
    t0 = time.perf_counter()
    n0 = ctx.frames_captured
    tiles = ctx.tiles
    design = ctx.design_psfs.detach().cpu().double()
    k = int(design.shape[-1])
    # Windows must hold a whole blob (PSF + dot + interpolation) but no neighbour.
    radius = k // 2 + dot_px + 1
    pitch = 2 * radius + 2
    black = ctx.uniform(0)
    phases = dot_phases(pitch, n_phases)
    grids = [dot_positions(ctx.image_hw, k, pitch, ph, dot_px) for ph in phases]

    def show(dots: np.ndarray) -> np.ndarray:
        return ctx.pattern(dot_image(ctx.image_hw, dots, dot_px=dot_px))

    centre = (dot_px - 1) / 2
    ctx.report("registration: exposure", 0.0)
    ctx.auto_expose(show(grids[0]), target=0.7)
    bg = ctx.capture_mean(black, n_frames + 1, "reg-black")
    offsets = np.stack([psf_centroid_offset(p) for p in design.numpy()])  # (K, 2)

    # Coarse integer shift: correlate the first dot frame with its nominal prediction.
    fm0 = ForwardModel(tiles, Geometry.identity())
    first = ctx.capture_mean(show(grids[0]), n_frames, "reg0")
    img0 = dot_image(ctx.image_hw, grids[0], dot_px=dot_px) / 255.0
    nominal = fm0.signal(
        torch.from_numpy(img0)[None, None].expand(1, ctx.channels, -1, -1), design
    )[0].numpy()
    shift = _integer_shift(first - bg, nominal)

    meas, src, tidx, widths = [], [], [], []
    n_expected = 0
    for i, dots in enumerate(grids):
        ctx.report(f"registration: dots {i + 1}/{len(grids)}", (i + 1) / (len(grids) + 1))
        frame = first if i == 0 else ctx.capture_mean(show(dots), n_frames, f"reg{i}")
        diff = frame - bg
        src_all = np.repeat(dots[None] + centre, tiles.n_kernels, 0).astype(np.float64)
        t_all = np.repeat(np.arange(tiles.n_kernels)[:, None], len(dots), 1)
        guess = tiles.tile_origins_px()[t_all] + src_all + offsets[t_all] + shift
        cen, energy = window_centroids(diff, guess.reshape(-1, 2), radius=radius)
        n_expected += len(cen)
        ok = np.isfinite(cen).all(1) & (energy > 0.2 * np.median(energy[energy > 0]))
        ok &= np.linalg.norm(cen - guess.reshape(-1, 2), axis=1) < k / 2
        meas.append(cen[ok])
        src.append(src_all.reshape(-1, 2)[ok])
        tidx.append(t_all.ravel()[ok])
        for c in cen[ok][:: max(1, ok.sum() // 16)]:
            cy, cx = np.rint(c).astype(int)
            r = radius
            widths.append(_rms_width(diff[cy - r : cy + r + 1, cx - r : cx + r + 1]))
    meas_a, src_a, tidx_a = np.concatenate(meas), np.concatenate(src), np.concatenate(tidx)
    found = len(meas_a) / max(n_expected, 1)
    if found < 0.7:
        raise CalibrationError(
            f"registration: only {found:.0%} of the dots were found; raise exposure, check "
            "focus, or enlarge the dot pitch if tiles are far from their nominal place"
        )
    box = np.ones((dot_px, dot_px))
    design_w = np.mean([_rms_width(convolve2d(p.sum(0), box)) for p in design.numpy()])
    blob_w = float(np.nanmedian(widths))
    width_ratio = blob_w / design_w  # a diagnostic only: as-built PSFs need not look designed
    # Centroids are only trustworthy while a blob fits its window (a flat window of n = 2
    # radius + 1 px has RMS radius sqrt((n^2 - 1) / 6)); wider means spread light (defocus)
    # -- a test on the kernel size and the window, never on how the design PSFs look.
    # The widest in-focus blob any design can make is a flat k x k kernel times the dot
    # (RMS radius sqrt(((k + dot - 1)^2 - 1) / 6)); leakage and scatter add tails, so allow
    # 30 % more, but never more than 85 % of a flat window.
    flat_w = math.sqrt(((2 * radius + 1) ** 2 - 1) / 6)
    widest = math.sqrt(((k + dot_px - 1) ** 2 - 1) / 6)
    limit = min(1.3 * widest, 0.85 * flat_w)
    if blob_w > limit:
        raise CalibrationError(
            f"registration: point images are wider (RMS radius {blob_w:.1f} px) than any "
            f"in-focus {k} px kernel makes ({limit:.1f}); defocused? run the focus step first"
        )

    x0 = np.array([1.0, 0.0, 0.0, float(shift[0]), float(shift[1])])
    params, shifts, res_yx = fit_dots(tiles, src_a, offsets, tidx_a, meas_a, x0)
    # A dot the display misalignment pushed near a panel edge images to a blob the tile
    # window cuts (wide dilated PSFs reach 4 px out), biasing its centroid by up to pixels.
    # Such dots are outliers of a fit that is otherwise good to ~0.02 px: drop points beyond
    # 4 robust sigmas (never below 0.1 px) and refit; the whole fit still needs 70 % of dots.
    for _ in range(2):
        err = np.linalg.norm(res_yx, axis=1)
        keep = err <= max(4 * 1.4826 * float(np.median(err)), 0.1)
        if keep.all() or keep.sum() < 0.7 * n_expected:
            break
        meas_a, src_a, tidx_a = meas_a[keep], src_a[keep], tidx_a[keep]
        params, shifts, res_yx = fit_dots(tiles, src_a, offsets, tidx_a, meas_a, params)
    pred = meas_a + res_yx
    err = np.linalg.norm(res_yx, axis=1)
    rms = float(np.sqrt(np.mean(err**2)))
    per_tile = np.array(
        [
            np.sqrt(np.mean(err[tidx_a == j] ** 2)) if (tidx_a == j).any() else np.nan
            for j in range(tiles.n_kernels)
        ]
    )
    if rms > max_rms_px:
        raise CalibrationError(
            f"registration: a similarity transform leaves {rms:.2f} px RMS misfit within the "
            f"tiles (> {max_rms_px}); tiles misregistered beyond the search window or the "
            "relay distorts; check alignment and focus"
        )
    limit = k / 2 if max_centroid_shift_px is None else max_centroid_shift_px
    worst = worst_measured_shift(shifts, tidx_a)
    if worst is not None and np.linalg.norm(shifts[worst]) > limit:
        raise CalibrationError(
            f"registration: tile {worst}'s point images sit {np.linalg.norm(shifts[worst]):.2f}"
            f" px from where its design PSF puts them (> {limit:g}); check the design PSFs "
            "and the tile layout"
        )
    scale, rot, irot, ty, tx = (float(v) for v in params)
    ctx.geometry = Geometry.from_values((ty, tx), rot, scale, (0.0, 0.0), irot)
    _check_tiles_on_camera(ctx)
    ctx.composite_offset = (ty, tx)
    if split_with_edges:
        ctx.report("registration: tile edges", 0.95)
        white = ctx.uniform(255)
        ctx.auto_expose(white, target=0.7)
        frame = ctx.capture_mean(white, n_frames + 1, "reg-white") - ctx.offset
        ones = np.ones((1, ctx.channels, *ctx.image_hw))
        fit_window_offset(ctx, frame[None], ones, design)
    geom = ctx.geometry
    return RegistrationResult(
        residual=rms,
        n_frames=ctx.frames_captured - n0,
        seconds=time.perf_counter() - t0,
        geometry=geom,
        composite_offset=(ty, tx),
        per_tile_rms_px=per_tile,
        centroid_shift_px=shifts,
        measured_yx=meas_a,
        predicted_yx=pred,
        tile_index=tidx_a,
        blob_width_ratio=width_ratio,
    )


def _check_tiles_on_camera(ctx: BenchContext) -> None:
    """Refuse when a registered tile window reaches past the camera frame: its edge pixels
    would be measured as dark and every later fit would be biased."""
    fm = ForwardModel(ctx.tiles, ctx.geometry or Geometry.identity())
    hh, ww = ctx.tiles.camera_hw
    for k, (y0, y1, x0, x1) in enumerate(tile_boxes(fm, pad=0)):
        if y0 <= 0 or x0 <= 0 or y1 >= hh or x1 >= ww:
            raise CalibrationError(
                f"registration: tile {k} lands partly outside the camera frame (rows {y0}-{y1}, "
                f"cols {x0}-{x1} of {hh}x{ww}); re-centre the camera or its ROI on the tiles"
            )


def _integer_shift(measured: np.ndarray, nominal: np.ndarray) -> np.ndarray:
    """Integer (dy, dx) maximising the circular cross-correlation (FFT)."""
    a = measured - measured.mean()
    b = nominal - nominal.mean()
    xc = np.fft.irfft2(np.fft.rfft2(a) * np.conj(np.fft.rfft2(b)), s=a.shape)
    iy, ix = np.unravel_index(int(np.argmax(xc)), xc.shape)
    h, w = a.shape
    return np.array([iy if iy <= h // 2 else iy - h, ix if ix <= w // 2 else ix - w], float)
