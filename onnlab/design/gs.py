"""Starting points for phase retrieval: Gerchberg-Saxton (MRAF) and smooth random phases.

Kept apart from `realise` (which owns the fit): both only need the optics and the target, and
GS uses its own matrix Fourier operators over the whole alias-free focal window (not just the
kernel window the wave model evaluates), with their adjoint for the way back to the pupil.
"""

from __future__ import annotations

import math

import torch

from onnlab.optics.grid import Grid
from onnlab.optics.layout import OpticsConfig
from onnlab.optics.psf import aperture_mask


def _subpixel_axis(config: OpticsConfig, oversample: int, pad: int) -> torch.Tensor:
    """Focal-plane sub-pixel centres (m) of the kernel window, extended by `pad` on each side
    with the same pitch (psf_from_pupil's convention: the axis hits pixel k // 2's centre)."""
    k, m, p = config.kernel_px, oversample, config.sensor_pitch_m
    i = torch.arange(-pad, k * m + pad, dtype=torch.float64)
    return (i - (k // 2) * m + 0.5 - m / 2) * (p / m)


def gerchberg_saxton(
    target: torch.Tensor,
    config: OpticsConfig,
    n_phase: int,
    *,
    iterations: int = 50,
    oversample: int = 3,
    init: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    outside_gain: float = 0.2,
) -> torch.Tensor:
    """MRAF Gerchberg-Saxton phase estimate (B, N, N) for target PSFs (B, k, k) at the design
    wavelength.

    The focal grid spans the whole alias-free window lambda f / pitch at the sensor's sub-pixel
    pitch, so the forward operator is (nearly) a tight frame and its adjoint a good inverse.
    Inside the kernel window each pixel's sub-pixel field is scaled so that the pixel collects
    the target power (a target spread uniformly over sub-pixels would ask a band-limited field
    for blocky detail it cannot have); outside, the field is kept but damped by `outside_gain`
    (mixed-region amplitude freedom: undamped, the iteration drifts to states that park most
    light outside the window). The adjoint's scale is irrelevant: only the pupil phase is kept.
    The iterate with the smallest window error is returned (GS is not monotone here).
    """
    lam, f = config.reference_wavelength_m, config.focal_length_m
    b, k = target.shape[0], config.kernel_px
    m = int(oversample)
    grid = Grid.covering(config.kernel_size_m, n_phase)
    d = grid.pitch_m[0]
    period_sub = lam * f / d / (config.sensor_pitch_m / m)
    pad = max(0, math.ceil((period_sub - k * m) / 2))
    u = _subpixel_axis(config, m, pad)
    x = grid.axes(torch.float64)[0]
    a = torch.exp(torch.outer(u, x) * (-2j * math.pi / (lam * f)))  # (Q, N)
    amp = aperture_mask(grid, config.aperture_shape, config.kernel_size_m, torch.float64)
    # Physical window fraction of a sub-pixel = c |A U A^T|^2 (see psf_from_pupil).
    scale = d**2 / (lam * f)
    c = scale**2 * (config.sensor_pitch_m / m) ** 2 / (float(amp.sum()) * d**2)
    win = slice(pad, pad + k * m)
    if init is None:
        init = 2 * math.pi * torch.rand(b, n_phase, n_phase, generator=generator)
    phi = init.to(torch.float64)
    best, best_err = phi.clone(), torch.full((b,), math.inf, dtype=torch.float64)
    norm = target.flatten(1).norm(dim=1).clamp_min(1e-30)
    for _ in range(iterations + 1):
        pupil = torch.polar(amp.expand_as(phi), phi)
        v = a @ pupil @ a.T
        inner = v[:, win, win]
        power = (inner.abs() ** 2 * c).reshape(b, k, m, k, m).sum(dim=(2, 4))
        err = (power - target).flatten(1).norm(dim=1) / norm
        better = err < best_err
        best[better], best_err[better] = phi[better], err[better]
        # Pixel-sum projection: scale each pixel's sub-pixels so that the pixel collects the
        # target power, keeping the field's own (band-limited) distribution inside the pixel;
        # damp the free region (MRAF) so light is not parked outside the window for good.
        gain = torch.sqrt(target / power.clamp_min(1e-30))
        gain = gain.repeat_interleave(m, -2).repeat_interleave(m, -1)
        v = v * outside_gain
        v[:, win, win] = inner * gain
        phi = torch.angle(a.conj().T @ v @ a.conj())
    phi = best
    return torch.remainder(phi, 2 * math.pi)


def smooth_random_phases(
    config: OpticsConfig,
    n_kernels: int,
    n_phase: int,
    generator: torch.Generator,
    cycles: float = 1.5,
) -> torch.Tensor:
    """(K, N, N) random smooth phases that spread light over the kernel window (the same
    construction as `PhaseMaskFrontend`'s initial phase, drawn from a given generator).

    A low-pass Gaussian random field (~`cycles` undulations across the sub-aperture) scaled so
    that the RMS ray deflection (lambda0 f / 2 pi) |grad phi| is a quarter of the window side:
    a start that puts most light into the window with pixel-scale structure. A white-noise
    phase would scatter light over the whole focal period lambda f / pitch (only a few per cent
    reach the window), from which Gerchberg-Saxton stagnates in speckle.
    """
    n = n_phase
    noise = torch.randn(n_kernels, n, n, generator=generator, dtype=torch.float64)
    f = torch.fft.fftfreq(n, dtype=torch.float64) * n
    gauss = torch.exp(-(f[:, None] ** 2 + f[None, :] ** 2) / (2 * cycles**2))
    field = torch.fft.ifft2(torch.fft.fft2(noise) * gauss).real
    pitch = config.kernel_size_m / n
    gy = (field.roll(-1, 1) - field.roll(1, 1)) / (2 * pitch)
    gx = (field.roll(-1, 2) - field.roll(1, 2)) / (2 * pitch)
    rms = (gy**2 + gx**2).mean(dim=(1, 2)).sqrt().clamp_min(1e-30)
    lam0, focal = config.reference_wavelength_m, config.focal_length_m
    scale = (config.kernel_extent_m / 4) * 2 * math.pi / (lam0 * focal) / rms
    return field * scale[:, None, None]
