"""Step "psf": each kernel's effective PSF (per colour channel) and its brightness α.

Two estimators, one forward model (`calibration.forward`):

* ``method="random"`` (default, better): N sparse random binary patterns; the PSFs are the
  non-negative, regularised (MAP, prior centred on the design) least-squares solution of
  frames ≈ model(PSFs), from exact per-kernel normal equations (`psf_normal_equations`) and
  projected FISTA (`solve_psfs_map`). Every pixel of every frame constrains every PSF pixel,
  binary patterns only use the two best-known display levels (black level and white), and
  independent patterns per colour channel separate R, G and B kernels. The registration is
  refined jointly with the PSFs (`refine_geometry_varpro`).
* ``method="points"``: sparse dot grids (point sources, one colour channel at a time),
  ``n_frames`` averaged per pattern and fitted through the same model — what a lab does with
  a pinhole; far fewer photons per PSF pixel, so noisier (≈3× the error in the benchmark).

Units and the α convention: PSFs are *effective* — in feature units (the design frontend's
output for unit display intensity), brightness included — so the twin needs nothing else.
``alpha[k] = sum(psf_k) / sum(design_k)``: the measured/design energy ratio. Camera units are
undone with the gain (photon transfer), the exposure and ``electrons_per_unit`` (the sensor's
``full_scale_e`` from the bench config); without the latter the PSFs are scaled so that the
mean α is 1 (relative radiometry, recorded in the artifact).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from scipy.ndimage import laplace

from calibration.fitting.deconv import PSFSolve, solve_psfs_map
from calibration.fitting.leakage import (
    background_basis,
    background_signal,
    refine_window,
    unexplained_fraction,
)
from calibration.forward import ForwardModel
from calibration.normal_equations import psf_normal_equations
from calibration.procedures.base import BenchContext, StepResult, with_single_thread
from calibration.procedures.geometry import composite_offset, refine_geometry_varpro
from calibration.procedures.patterns import dot_image, dot_phases, dot_positions, random_binary
from onnlab.errors import CalibrationError


@dataclass(frozen=True)
class PSFResult(StepResult):
    """Effective PSFs (K, C, k, k), α (K,), and fit diagnostics.

    ``residual`` is the RMS fit residual divided by the RMS noise predicted by the camera
    model (≈ 1 for a fit that explains everything but noise).
    """

    psfs: torch.Tensor
    alpha: np.ndarray
    method: str
    exposure_s: float
    rel_residual: float  # ‖model − frames‖ / ‖frames‖
    residual_map: np.ndarray  # (H, W) RMS over frames of (model − frames), DN
    iterations: int
    width_ratio: float  # RMS width measured / design (≫ 1: defocused)
    sharpness_ratio: float  # median core Laplacian energy measured / design (≪ 1: defocused)
    # Leakage model (`calibration.fitting.leakage`): margin 0 = kernel window only.
    margin_px: int = 0
    window_psfs: torch.Tensor | None = None  # (K, C, k + 2 margin, same), effective
    background: np.ndarray | None = None  # (C, H, W) feature units per unit channel sum
    unexplained_fraction: float = 0.0  # of the captured signal power, beyond noise


def _rms_width(psfs: torch.Tensor) -> float:
    p = psfs.detach().double().sum(1)  # (K, k, k)
    k = p.shape[-1]
    yy, xx = torch.meshgrid(
        torch.arange(k, dtype=p.dtype), torch.arange(k, dtype=p.dtype), indexing="ij"
    )
    tot = p.sum((1, 2)).clamp_min(1e-30)
    cy = (p * yy).sum((1, 2)) / tot
    cx = (p * xx).sum((1, 2)) / tot
    r2 = (p * ((yy - cy[:, None, None]) ** 2 + (xx - cx[:, None, None]) ** 2)).sum((1, 2)) / tot
    return float(r2.sqrt().mean())


def _core_sharpness(psfs: torch.Tensor) -> np.ndarray:
    """Per kernel: Laplacian energy of the energy-normalised PSF inside its window's rim.

    Defocus removes fine structure first; the rim is excluded because a finite kernel window
    truncates a blurred PSF there (sharp edges that do not mean focus)."""
    p = psfs.detach().double().sum(1).numpy()
    p = p / np.maximum(p.sum(axis=(1, 2), keepdims=True), 1e-30)
    return np.array([(laplace(q, mode="constant")[1:-1, 1:-1] ** 2).sum() for q in p])


def _check_shape(
    psfs: torch.Tensor,
    design: torch.Tensor,
    max_width: float,
    min_sharp: float,
    focused: bool = False,
) -> tuple[float, float]:
    """(width ratio, sharpness ratio) vs the design; refuse a defocused-looking result.

    Defocus widens a PSF *and* removes its fine structure. Smoother alone is no evidence: a
    realised or fabricated optic cannot reproduce every pixel-scale detail of a free design
    (band limit, quantisation, scatter), so low sharpness refuses only with some widening,
    or when the PSFs are nearly flat (a blur wider than the window cannot widen them).

    ``focused``: the focus step of this calibration put the stage at the measured best focus.
    Blur left then is the optic's own (scattered light from height noise, a zero order,
    quantisation, source bandwidth all widen and smooth a fabricated PSF) and is what the
    PSFs must record, so the ratios are reported, not refused."""
    width = _rms_width(psfs) / max(_rms_width(design), 1e-12)
    sharp = float(np.median(_core_sharpness(psfs) / np.maximum(_core_sharpness(design), 1e-30)))
    if focused:
        return width, sharp
    if width > max_width or (sharp < min_sharp and (width > 1.1 or sharp < min_sharp / 4)):
        raise CalibrationError(
            f"psf: measured PSFs are {width:.2f}x as wide and {sharp:.2f}x as sharp as the "
            "design (defocused?); run the focus step"
        )
    return width, sharp


def fit_acceptable(
    chi: float, unexplained: float, max_chi: float = 3.0, max_unexplained: float = 0.05
) -> bool:
    """Whether a PSF fit explains the frames well enough to use.

    Both numbers must fail to refuse: ``chi`` (RMS residual / camera noise) alone is not
    scale-free -- at a bright exposure a model mismatch of 0.1 % of the signal (a real optic's
    scatter that no finite model captures) is several times the shot noise, yet harmless for
    the features. ``unexplained`` (the fraction of the captured signal power left beyond
    noise) says how much of the signal the model misses: a camera rotation 50 mrad off leaves
    10 %; the physical bench's fabricated optics leave 0.1-3.5 % (scatter, a zero order and
    etch-depth errors that no finite window model holds exactly), which is reported
    (``unexplained_fraction``), not refused.
    """
    return chi <= max_chi or unexplained <= max_unexplained


@with_single_thread
def measure_psfs(
    ctx: BenchContext,
    *,
    method: str = "random",
    n_patterns: int = 96,
    n_frames: int = 1,
    fill: float = 0.25,
    seed: int = 1234,
    prior_rel_std: float | None = 0.25,
    refine_geometry: bool = True,
    refine_frames: int = 25,
    max_width_ratio: float = 1.35,
    min_sharpness_ratio: float = 0.5,
    margin_px: int | None = None,
    leak_chi: float = 1.5,
    window_prior_rel_std: float | None = None,
    max_chi: float = 3.0,
    max_unexplained: float = 0.05,
) -> PSFResult:
    """Capture, solve, check; updates only ``ctx.geometry`` (refined by the tile edges).

    Refuses when earlier steps are missing (needs camera gain/offset, display response and
    registration), when frames saturate, when the fit leaves far more than noise *and* a
    real part of the signal unexplained (`fit_acceptable`: stray light, wrong registration,
    moving optics), or when the PSFs are much wider or
    smoother than the design's and no focus step has run (defocused: run the focus step).

    Leakage: ``margin_px`` > 0 also fits each PSF on a window ``margin_px`` wider on every side
    (light in the gap and on neighbouring tiles) plus a broad background
    (`calibration.fitting.leakage`); None (auto) does so with the tile gap as margin when the
    kernel-window fit leaves more than ``leak_chi`` times the noise. The kernel-window PSFs
    (``psfs``) are then the centre of the window PSFs. The window fit has no design prior by
    default (``window_prior_rel_std``): an as-built optic that needs a leakage model differs
    from its design by more than the prior allows (shifted foci, scattered light), and the
    window's many frames per unknown make plain non-negative least squares well posed.
    """
    if method not in ("random", "points"):
        raise ValueError(f"method: expected 'random' or 'points', got {method!r}")
    missing = [
        n
        for n, v in (
            ("dark", ctx.gain_dn_per_e),
            ("response", ctx.response),
            ("registration", ctx.geometry),
        )
        if v is None
    ]
    if missing:
        raise CalibrationError(f"psf step needs the {', '.join(missing)} step(s) first")
    assert ctx.response is not None and ctx.gain_dn_per_e is not None
    t0 = time.perf_counter()
    n0 = ctx.frames_captured
    design = ctx.design_psfs.detach().double()
    n_k, n_c, k, _ = design.shape
    h, w = ctx.image_hw
    if method == "random":
        grey = random_binary(n_patterns, n_c, (h, w), seed, fill)
    else:
        radius = k // 2 + 2
        pitch = 2 * radius + 2
        grids = [dot_positions((h, w), k, pitch, ph) for ph in dot_phases(pitch, n_patterns)]
        grey = np.zeros((len(grids) * n_c, n_c, h, w), np.uint8)
        for i, g in enumerate(grids):
            for c in range(n_c):  # one channel at a time: R, G, B PSFs stay separable
                grey[i * n_c + c, c] = dot_image((h, w), g)
    white = np.full((1, n_c, h, w), 255, np.uint8)
    ctx.report("psf: exposure", 0.0)
    ctx.auto_expose(ctx.pattern(grey[0]), target=0.75)
    exposure = float(ctx.camera.exposure_s)
    if method == "random":  # white (for the tile edges) only if it does not saturate now
        peak = ctx.capture_mean(ctx.pattern(white[0]), 1, "psf-white-check").max()
        if peak < ctx.saturation - 0.5:
            grey = np.concatenate([white, grey])
    frames = []
    for i, g in enumerate(grey):
        ctx.report(f"psf: pattern {i + 1}/{len(grey)}", 0.7 * (i + 1) / len(grey))
        frames.append(ctx.capture_mean(ctx.pattern(g), n_frames, f"psf{i}"))
    y_dn = np.stack(frames)
    if (y_dn >= ctx.saturation - 0.5).mean() > 1e-4:
        raise CalibrationError("psf: frames saturate; reduce exposure or display brightness")
    y_dn = y_dn - ctx.offset
    intensity = ctx.response.apply(grey / 255.0)  # (N, C, h, w) relative intensity
    dn_per_unit = ctx.gain_dn_per_e * (ctx.electrons_per_unit or 1.0) * exposure
    read_var = (ctx.read_noise_dn or 0.0) ** 2 + 1.0 / 12.0
    var_dn = (ctx.gain_dn_per_e * np.clip(y_dn, 0, None) + read_var) / n_frames
    y = torch.from_numpy(y_dn / dn_per_unit)
    x = torch.from_numpy(intensity)
    wts = torch.from_numpy(dn_per_unit**2 / var_dn)  # inverse variance in feature units
    fm = ForwardModel(ctx.tiles, ctx.geometry)

    def solve(frames: slice = slice(None)) -> tuple[torch.Tensor, PSFSolve, int]:
        gram, rhs, yty, npx, _ = psf_normal_equations(
            fm, x[frames], y[frames], k, weights=wts[frames]
        )
        sol = solve_psfs_map(gram, rhs, yty, npx, design, 1.0, prior_rel_std=prior_rel_std)
        return sol.psfs.reshape(design.shape), sol, npx

    refine = refine_geometry and method == "random"
    sub = slice(0, min(len(grey), refine_frames))
    ctx.report("psf: solving", 0.75)

    def misfit(pred: torch.Tensor) -> tuple[np.ndarray, float]:
        """Residual frames (DN) and chi (RMS residual in units of the camera noise)."""
        r = (pred - y).numpy() * dn_per_unit
        return r, float(np.sqrt(np.mean(r**2 / var_dn)))

    psfs, sol, _ = solve()
    focused = ctx.focus_position_m is not None  # the focus step ran: blur is the optic's
    _check_shape(psfs, design, max_width_ratio, min_sharpness_ratio, focused)  # before refining
    with torch.no_grad():
        resid, chi = misfit(fm.signal(x, psfs))
    if refine:
        ctx.report("psf: refining geometry", 0.8)
        # Registration and PSFs jointly (variable projection) on a subset of the frames,
        # then the PSFs from all frames in the refined geometry. The refinement sees only the
        # subset, so it is kept only if it also explains all frames better (on sharp designs
        # a few frames can pull it off the registration that the dots measured).
        before = (fm.geometry, psfs, sol)
        geom, _, _ = refine_geometry_varpro(
            fm, x[sub], y[sub], wts[sub], design, psfs, prior_rel_std=prior_rel_std
        )
        fm.set_geometry(geom)
        ctx.report("psf: solving again", 0.9)
        psfs, sol, _ = solve()
        with torch.no_grad():
            resid_ref, chi_ref = misfit(fm.signal(x, psfs))
        if chi_ref <= chi:
            resid, chi = resid_ref, chi_ref
        else:
            fm.set_geometry(before[0])
            psfs, sol = before[1], before[2]
        ctx.geometry = fm.geometry
        ctx.composite_offset = composite_offset(fm.geometry)
    margin = int(margin_px) if margin_px is not None else 0
    if margin_px is None and chi > leak_chi and method == "random":
        margin = int(ctx.tiles.gap_px)
    window = background = None
    if margin > 0:
        ctx.report("psf: leakage and background", 0.95)
        geometry_before = fm.geometry
        window, bg, _ = refine_window(
            fm, x, y, wts, psfs, design, margin, prior_rel_std=window_prior_rel_std
        )
        with torch.no_grad():
            pred = fm.signal(x, window, full=True) + background_signal(background_basis(x), bg)
        resid_win, chi_win = misfit(pred)
        # The window model holds the kernel-window model (zero margin, zero background), so a
        # worse fit means its refinement went astray: keep the simpler model then (asked for
        # explicitly with margin_px, the window model is kept regardless).
        if margin_px is not None or chi_win <= chi:
            resid, chi = resid_win, chi_win
            psfs = window[..., margin : margin + k, margin : margin + k].contiguous()
            background = None if bg is None else bg.numpy()
        else:
            fm.set_geometry(geometry_before)
            window, margin = None, 0
        ctx.geometry = fm.geometry
        ctx.composite_offset = composite_offset(fm.geometry)
    unexplained = unexplained_fraction(
        torch.from_numpy(resid), torch.from_numpy(y_dn), torch.from_numpy(var_dn)
    )
    if not fit_acceptable(chi, unexplained, max_chi, max_unexplained):
        raise CalibrationError(
            f"psf: fit residual is {chi:.1f}x the camera noise and leaves "
            f"{100 * unexplained:.1f} % of the signal unexplained; re-run registration and "
            "focus, block stray light, and check the display response"
        )
    width, sharp = _check_shape(psfs, design, max_width_ratio, min_sharpness_ratio, focused)
    if ctx.electrons_per_unit is None:  # relative radiometry: mean alpha = 1
        scale = design.sum() / psfs.sum().clamp_min(1e-30)
        psfs = psfs * scale
        if window is not None:
            window = window * scale
            background = None if background is None else background * float(scale)
    alpha = (psfs.sum((1, 2, 3)) / design.sum((1, 2, 3)).clamp_min(1e-30)).numpy()
    if (alpha < 0.05).any():
        raise CalibrationError(
            f"psf: kernel(s) {np.flatnonzero(alpha < 0.05).tolist()} transmit < 5 % of design; "
            "check the optic for damage or blocked tiles"
        )
    return PSFResult(
        residual=chi,
        n_frames=ctx.frames_captured - n0,
        seconds=time.perf_counter() - t0,
        psfs=psfs.float(),
        alpha=alpha,
        method=method,
        exposure_s=exposure,
        rel_residual=float(np.linalg.norm(resid) / max(np.linalg.norm(y_dn), 1e-30)),
        residual_map=np.sqrt((resid**2).mean(0)),
        iterations=sol.iterations,
        width_ratio=width,
        sharpness_ratio=sharp,
        margin_px=margin,
        window_psfs=None if window is None else window.float(),
        background=background,
        unexplained_fraction=unexplained,
    )
