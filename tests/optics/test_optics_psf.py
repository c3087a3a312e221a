"""Phase -> PSF against analytic focusing results: peak irradiance, energy, chromatic scaling."""

from __future__ import annotations

import math

import pytest
import torch

from onnlab.optics import (
    Grid,
    OpticsConfig,
    aperture_mask,
    cauchy_index,
    dispersed_phase,
    psf_from_phase,
    psfs_from_phases,
)

LAM = 0.5e-6
F = 10e-3


def peak_x(psf: torch.Tensor) -> float:
    """Sub-pixel x of the brightest spot (parabola through the maximum and its neighbours),
    relative to the centre pixel k // 2; exact for a symmetric spot, unlike a windowed centroid."""
    iy, ix = divmod(int(psf.argmax()), psf.shape[-1])
    a, b, c = (float(v) for v in psf[iy, ix - 1 : ix + 2])
    return ix + 0.5 * (a - c) / (a - 2 * b + c) - psf.shape[-1] // 2


def test_peak_of_focused_spot_is_area_over_lambda_f_squared():
    """On-axis irradiance of a focused uniform beam is P * A / (lambda f)^2 (any aperture
    shape), so the centre pixel holds A p^2 / (lambda f)^2 of the incident power."""
    grid = Grid.square(64, 0.5e-3 / 64)
    amp = aperture_mask(grid, "circle", 0.5e-3, torch.float64)
    pixel = 1e-6  # well below the 10 um spot, so pixel averaging costs < 0.2 %
    psf = psf_from_phase(
        torch.zeros(64, 64, dtype=torch.float64), grid, LAM, F, pixel, 5, amplitude=amp
    )[0]
    area = float(amp.sum()) * grid.area_element_m2
    expected = area * pixel**2 / (LAM * F) ** 2
    assert float(psf[2, 2]) == pytest.approx(expected, rel=0.005)
    assert float(psf[2, 2]) == float(psf.max())


def test_psf_energy_is_transmitted_fraction():
    """Non-negative; a big window collects the whole Airy pattern except its far tails; a 0.5
    amplitude mask transmits a quarter of the power; random phases never exceed 1."""
    grid = Grid.square(32, 0.5e-3 / 32)
    amp = aperture_mask(grid, "square", 0.5e-3, torch.float64)
    flat = torch.zeros(32, 32, dtype=torch.float64)
    pitch = 5e-6  # spot lambda f / D = 10 um; the 61 px window spans +-30 spot widths
    big = psf_from_phase(flat, grid, LAM, F, pitch, 61, amplitude=amp, oversample=1)
    assert 0.98 < float(big.sum()) <= 1.0
    half = psf_from_phase(flat, grid, LAM, F, pitch, 61, amplitude=0.5 * amp, oversample=1)
    assert float(half.sum() / big.sum()) == pytest.approx(0.25, rel=1e-9)
    gen = torch.Generator().manual_seed(0)
    rand = psf_from_phase(
        6 * torch.rand(4, 32, 32, generator=gen, dtype=torch.float64), grid, LAM, F, pitch, 7
    )
    assert rand.shape == (4, 1, 7, 7)
    assert float(rand.min()) >= 0 and float(rand.sum((-3, -2, -1)).max()) <= 1.0
    # Random phase scatters light away from the focus: less lands in the window than focused.
    assert float(rand.sum((-3, -2, -1)).max()) < float(
        psf_from_phase(flat, grid, LAM, F, pitch, 7).sum()
    )


def test_rgb_psf_scales_with_wavelength():
    """Diffraction-limited peak irradiance scales as 1 / lambda^2 at fixed power."""
    grid = Grid.square(48, 0.5e-3 / 48)
    lams = (630e-9, 532e-9, 465e-9)
    psf = psf_from_phase(
        torch.zeros(48, 48, dtype=torch.float64), grid, lams, F, 1e-6, 3, design_wavelength_m=532e-9
    )
    assert psf.shape == (3, 3, 3)
    assert float(psf.sum()) <= 1.0
    peaks = psf[:, 1, 1]
    assert float(peaks[0] / peaks[2]) == pytest.approx((465 / 630) ** 2, rel=0.005)


def test_thin_element_dispersion_keeps_beam_steering_achromatic():
    """A linear phase designed at lambda0 steers by lambda0 f g; the thin-element model scales the
    phase by lambda0 / lambda, so every colour lands at the same place, whereas a
    non-dispersive phase would steer red further (position proportional to lambda)."""
    n = 64
    grid = Grid.square(n, 0.5e-3 / n)
    lam0, lam1 = 500e-9, 600e-9
    pitch = 1e-6
    g = 2.0 * pitch / (lam0 * F)  # 2-pixel deflection at lambda0 (spot ~10 px)
    _, xx = grid.mesh(torch.float64)
    phase = 2 * math.pi * g * xx
    opts = dict(oversample=1)
    disp = psf_from_phase(
        phase, grid, (lam0, lam1), F, pitch, 9, design_wavelength_m=lam0, wrap=False, **opts
    )
    plain = psf_from_phase(phase, grid, (lam0, lam1), F, pitch, 9, **opts)
    assert peak_x(disp[0]) == pytest.approx(2.0, abs=0.05)
    assert peak_x(disp[1]) == pytest.approx(2.0, abs=0.05)
    assert peak_x(plain[1]) == pytest.approx(2.0 * lam1 / lam0, abs=0.05)


def test_dispersed_phase_formula_and_material_dispersion():
    phi = torch.tensor([1.0, 3.0])
    out = dispersed_phase(phi, 500e-9, 625e-9)
    torch.testing.assert_close(out, phi * 0.8)
    n = cauchy_index(2.0, 2e-14)  # n(500 nm) = 2.08, n(625 nm) = 2.0512
    out = dispersed_phase(phi, 500e-9, 625e-9, refractive_index=n)
    torch.testing.assert_close(out, phi * 0.8 * (1.0512 / 1.08))
    wrapped = dispersed_phase(torch.tensor([2 * math.pi + 1.0]), 500e-9, 500e-9)
    torch.testing.assert_close(wrapped, torch.tensor([1.0]))


def test_psfs_from_config_shape_and_bounds():
    cfg = OpticsConfig.preset("cifar10")
    phases = torch.zeros(cfg.n_kernels, 16, 16, requires_grad=True)
    psfs = psfs_from_phases(phases, cfg, oversample=1)
    assert psfs.shape == (16, 3, 7, 7)
    assert psfs.dtype == torch.float32
    energy = psfs.sum((1, 2, 3))
    assert float(psfs.detach().min()) >= 0 and float(energy.detach().max()) <= 1.0
    psfs[:, :, 3, 3].sum().backward()
    assert phases.grad is not None and torch.isfinite(phases.grad).all()


def test_psf_from_phase_gradcheck():
    grid = Grid.square(6, 0.5e-3 / 6)
    phase = torch.randn(6, 6, dtype=torch.float64, requires_grad=True)

    def fn(p):
        return psf_from_phase(
            p, grid, (600e-9, 500e-9), F, 4e-6, 3, design_wavelength_m=5e-7, oversample=1
        )

    assert torch.autograd.gradcheck(fn, (phase,))


def test_psf_refuses_aliasing_setups():
    # 4 samples over 0.5 mm: the focal-plane window lambda f / pitch = 40 um < 21 px * 5 um.
    grid = Grid.square(4, 0.5e-3 / 4)
    with pytest.raises(ValueError, match="pitch_m"):
        psf_from_phase(torch.zeros(4, 4), grid, LAM, F, 5e-6, 21)
    with pytest.raises(ValueError, match="wavelengths_m"):
        psf_from_phase(torch.zeros(4, 4), grid, (LAM, -LAM), F, 5e-6, 3)
    with pytest.raises(ValueError, match="sensor_pitch_m"):
        psf_from_phase(torch.zeros(4, 4), grid, LAM, F, 0.0, 3)
    with pytest.raises(ValueError, match="phase_rad"):
        psf_from_phase(torch.zeros(4), grid, LAM, F, 5e-6, 3)
