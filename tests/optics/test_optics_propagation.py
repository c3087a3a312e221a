"""Propagators against analytic diffraction: Airy, Parseval, shift theorem, Gaussian beam."""

from __future__ import annotations

import math

import pytest
import torch

from onnlab.optics import (
    Grid,
    angular_spectrum,
    aperture_mask,
    energy,
    fraunhofer,
    fraunhofer_to,
    lens_phase,
)

LAM = 0.5e-6


def gaussian(grid: Grid, w0: float, dtype=torch.float64) -> torch.Tensor:
    """Fundamental Gaussian beam waist: amplitude exp(-r^2 / w0^2)."""
    r = grid.radius(dtype)
    return torch.exp(-(r**2) / w0**2).to(
        torch.complex128 if dtype == torch.float64 else torch.complex64
    )


def second_moment_width(intensity: torch.Tensor, grid: Grid) -> tuple[float, float]:
    """1/e^2 radius from second moments: for I ~ exp(-2 r^2 / w^2), <x^2> = w^2 / 4."""
    yy, xx = grid.mesh(torch.float64)
    i = intensity.to(torch.float64)
    total = i.sum()
    return (
        float(2 * torch.sqrt((i * yy**2).sum() / total)),
        float(2 * torch.sqrt((i * xx**2).sum() / total)),
    )


def first_minimum(profile: torch.Tensor) -> float:
    """Position (fractional index) of the first local minimum, refined by a parabola."""
    p = profile.tolist()
    for i in range(1, len(p) - 1):
        if p[i] < p[i - 1] and p[i] <= p[i + 1]:
            a, b, c = p[i - 1], p[i], p[i + 1]
            return i + 0.5 * (a - c) / (a - 2 * b + c)
    raise AssertionError("no minimum found")


def test_airy_first_zero_radius():
    """Circular aperture D in a lens pupil: first dark ring at 1.22 lambda f / D (within 2 %)."""
    grid = Grid.square(128, 10e-6)
    diameter = 64 * 10e-6
    pupil = aperture_mask(grid, "circle", diameter, torch.float64)
    f = 0.1
    out, out_grid = fraunhofer(pupil, grid.pitch_m, LAM, f, pad_to=(1024, 1024))
    intensity = out.abs() ** 2
    c = 1024 // 2
    radius_px = 0.5 * (first_minimum(intensity[c, c:]) + first_minimum(intensity[c:, c]))
    expected = 1.22 * LAM * f / diameter
    assert out_grid.pitch_m[0] == pytest.approx(LAM * f / (1024 * 10e-6))
    assert radius_px * out_grid.pitch_m[1] == pytest.approx(expected, rel=0.02)


def test_fraunhofer_conserves_energy_float64():
    gen = torch.Generator().manual_seed(1)
    u = torch.randn(3, 40, 48, dtype=torch.complex128, generator=gen)
    grid = Grid((40, 48), (7e-6, 5e-6))
    out, out_grid = fraunhofer(u, grid.pitch_m, LAM, 0.05, pad_to=(64, 96))
    torch.testing.assert_close(energy(out, out_grid), energy(u, grid), rtol=1e-6, atol=0)


def test_angular_spectrum_conserves_energy_float64():
    grid = Grid.square(128, 2e-6)
    u = gaussian(grid, 20e-6) * torch.exp(1j * grid.mesh(torch.float64)[1] * 2e4)
    out = angular_spectrum(u, grid, LAM, 1e-3)
    torch.testing.assert_close(energy(out, grid), energy(u, grid), rtol=1e-6, atol=0)
    assert not torch.allclose(out.abs(), u.abs(), atol=1e-3)  # it really propagated


def test_fraunhofer_shift_theorem():
    """A linear phase ramp tilts the beam: the focal spot moves by exactly lambda f * ramp freq;
    translating the input multiplies the far field by exp(-i 2 pi x0 u / (lambda f))."""
    grid = Grid.square(64, 4e-6)
    f = 0.02
    u = gaussian(grid, 30e-6)
    out, out_grid = fraunhofer(u, grid, LAM, f)
    shift_px = 5
    fx = shift_px * out_grid.pitch_m[1] / (LAM * f)  # cycles per metre in the pupil
    _, xx = grid.mesh(torch.float64)
    tilted, _ = fraunhofer(u * torch.exp(2j * math.pi * fx * xx), grid, LAM, f)
    torch.testing.assert_close(tilted, torch.roll(out, shift_px, dims=-1), rtol=0, atol=1e-12)

    s = 3
    moved, _ = fraunhofer(torch.roll(u, s, dims=-2), grid, LAM, f)
    v, _ = out_grid.mesh(torch.float64)
    ramp = torch.exp(-2j * math.pi * (s * grid.pitch_m[0]) * v / (LAM * f))
    torch.testing.assert_close(moved, out * ramp, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_gaussian_beam_width_matches_analytic(dtype):
    w0 = 20e-6
    z_r = math.pi * w0**2 / LAM
    grid = Grid.square(256, 2e-6)
    u = gaussian(grid, w0, dtype)
    for z in (0.5 * z_r, 2 * z_r):
        out = angular_spectrum(u, grid, LAM, z)
        wy, wx = second_moment_width(out.abs() ** 2, grid)
        expected = w0 * math.sqrt(1 + (z / z_r) ** 2)
        assert wy == pytest.approx(expected, rel=0.01)
        assert wx == pytest.approx(expected, rel=0.01)


def test_angular_spectrum_focus_matches_fraunhofer():
    """A lens phase propagated by f with the (non-paraxial) angular spectrum focuses to the same
    intensity as the Fraunhofer transform (NA 0.026, so the paraxial far field is accurate)."""
    grid = Grid.square(256, 2e-6)
    f = 5e-3
    pupil = aperture_mask(grid, "circle", 256e-6, torch.float64)
    field = pupil * torch.exp(1j * lens_phase(grid, LAM, f, torch.float64))
    focus_as = angular_spectrum(field, grid, LAM, f).abs() ** 2
    focus_fr = fraunhofer_to(pupil.to(torch.complex128), grid, LAM, f, grid).abs() ** 2
    peak = focus_fr.max()
    assert float((focus_as - focus_fr).abs().max() / peak) < 0.01
    # Both are energy-normalised in physical units, so even the absolute peak agrees.
    assert float(focus_as.max() / peak) == pytest.approx(1.0, abs=0.01)


def test_fraunhofer_fft_and_matrix_transform_agree():
    grid = Grid((24, 20), (5e-6, 6e-6))
    gen = torch.Generator().manual_seed(3)
    u = torch.randn(2, 24, 20, dtype=torch.complex128, generator=gen)
    out, out_grid = fraunhofer(u, grid, LAM, 0.01, pad_to=(48, 40))
    torch.testing.assert_close(fraunhofer_to(u, grid, LAM, 0.01, out_grid), out)


def test_propagators_gradcheck():
    grid = Grid.square(8, 3e-6)
    amp = aperture_mask(grid, "circle", 20e-6, torch.float64)
    phase = torch.randn(8, 8, dtype=torch.float64, requires_grad=True)

    def through_as(p):
        return angular_spectrum(torch.polar(amp, p), grid, LAM, 20e-6, max_loss=1.0).abs() ** 2

    def through_fraunhofer(p):
        return fraunhofer(torch.polar(amp, p), grid, LAM, 1e-3, pad_to=(12, 12))[0].abs() ** 2

    assert torch.autograd.gradcheck(through_as, (phase,))
    assert torch.autograd.gradcheck(through_fraunhofer, (phase,))


def test_bad_inputs_name_the_parameter():
    grid = Grid.square(64, 2e-6)
    u = gaussian(grid, 20e-6)
    with pytest.raises(ValueError, match="wavelength_m"):
        fraunhofer(u, grid, -LAM, 0.01)
    with pytest.raises(ValueError, match="focal_length_m"):
        fraunhofer(u, grid, LAM, 0.0)
    with pytest.raises(ValueError, match="pitch_m"):
        Grid.square(8, -1e-6)
    with pytest.raises(ValueError, match="shape"):
        Grid((0, 8), 1e-6)
    # Light leaves a 128 um window long before 0.5 m: refuse instead of returning garbage.
    with pytest.raises(ValueError, match="distance_m"):
        angular_spectrum(u, grid, LAM, 0.5)
    # Without the band limit the transfer-function chirp is undersampled at this distance.
    with pytest.raises(ValueError, match="distance_m"):
        angular_spectrum(u, grid, LAM, 5e-3, band_limit=False, max_loss=1.0)
    # 64 samples of 2 um at f = 1 mm: FFT pitch lambda f / (N d) = 3.9 um > a 2 um sensor pitch.
    with pytest.raises(ValueError, match="pad_to"):
        fraunhofer(u, grid, LAM, 1e-3, out_pitch_m=2e-6)
    assert fraunhofer(u, grid, LAM, 1e-3, pad_to=(128, 128), out_pitch_m=2e-6)[1].pitch_m[0] < 2e-6
    # A pupil sampled finer than lambda/2 has no paraxial far field.
    with pytest.raises(ValueError, match="pitch_m"):
        fraunhofer(u, Grid.square(64, 0.2e-6), LAM, 0.01)
    with pytest.raises(ValueError, match="field"):
        angular_spectrum(torch.zeros(3), 1e-6, LAM, 1e-3)
