"""Closed-form PSF Jacobian w.r.t. the design phases against autograd through the wave model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from onnlab.models.phase_frontend import default_optics
from onnlab.optics.grid import Grid
from onnlab.optics.materials import get_material
from onnlab.optics.psf import psfs_from_phases
from onnlab.optics.psf_jacobian import psf_phase_jacobian


@pytest.mark.parametrize(
    ("task", "shape", "oversample"),
    [("mnist", "square", 3), ("cifar10", "square", 2), ("cifar10", "circle", 3)],
)
def test_jacobian_matches_autograd_and_kernels_are_independent(
    task: str, shape: str, oversample: int
) -> None:
    """Every entry of dPSF/dphase, with dispersion (fused silica) and RGB colour shares, and
    zero dependence of kernel k's PSF on another kernel's phases."""
    optics = default_optics(task).model_copy(update={"aperture_shape": shape})
    index = get_material("SiO2").refractive_index
    gen = torch.Generator().manual_seed(0)
    phases = 6.0 * torch.rand(3, 16, 16, generator=gen, dtype=torch.float64)

    def psfs(p: torch.Tensor) -> torch.Tensor:
        return psfs_from_phases(
            p, optics, oversample=oversample, refractive_index=index, check=False
        )

    full = torch.autograd.functional.jacobian(psfs, phases)  # (K, C, kh, kw, K, N, N)
    closed = psf_phase_jacobian(phases, optics, oversample=oversample, refractive_index=index)
    for k in range(3):
        expected = full[k, :, :, :, k]
        assert (closed[k] - expected).abs().max() <= 1e-10 * expected.abs().max()
        others = [j for j in range(3) if j != k]
        assert float(full[k][:, :, :, others].abs().max()) == 0.0


def test_jacobian_is_differentiable() -> None:
    """Its own derivative (the NTK loss differentiates the Gram) matches finite differences."""
    optics = default_optics("mnist")
    gen = torch.Generator().manual_seed(1)
    phases = torch.rand(1, 8, 8, generator=gen, dtype=torch.float64).requires_grad_(True)
    weights = torch.randn(1, 1, 7, 7, 8, 8, generator=gen, dtype=torch.float64)

    def scalar(p: torch.Tensor) -> torch.Tensor:
        return (psf_phase_jacobian(p, optics, oversample=2) * weights).sum()

    assert torch.autograd.gradcheck(scalar, (phases,), eps=1e-6, atol=1e-9, rtol=1e-5)


def test_a_uniform_phase_offset_changes_no_intensity() -> None:
    """Physics: adding the same phase to every sample of a sub-aperture multiplies its field by
    a constant of modulus 1, so each Jacobian row sums to zero over the phase samples."""
    optics = default_optics("cifar10")
    gen = torch.Generator().manual_seed(2)
    phases = 5.0 * torch.rand(2, 16, 16, generator=gen, dtype=torch.float64)
    index = get_material("SiO2").refractive_index
    jac = psf_phase_jacobian(phases, optics, oversample=3, refractive_index=index)
    row_sums = jac.sum(dim=(-2, -1))  # (K, C, kh, kw)
    assert float(row_sums.abs().max()) <= 1e-12 * float(jac.abs().sum(dim=(-2, -1)).max())


def test_a_phase_tilt_moves_the_analytic_psf() -> None:
    """Physics: a linear phase 2 pi xi a / (lambda f) across the pupil moves the PSF by a. For a
    flat square sub-aperture of side D the PSF is sinc^2(D x / lambda f) sinc^2(D y / lambda f)
    summed over each pixel's sub-pixels; the Jacobian along the tilt must be its analytic
    derivative in a (the wave model samples the pupil, hence the 1e-3 tolerance)."""
    optics = default_optics("mnist")  # one wavelength: no dispersion
    lam, f, side = optics.wavelengths_m[0], optics.focal_length_m, optics.kernel_size_m
    pitch, k, m, n = optics.sensor_pitch_m, optics.kernel_px, 5, 128
    phases = torch.zeros(1, n, n, dtype=torch.float64)
    jac = psf_phase_jacobian(phases, optics, oversample=m)[0, 0]  # (k, k, n, n)
    psf = psfs_from_phases(phases, optics, oversample=m, check=False)[0, 0]
    xi = Grid.covering(side, (n, n)).axes(torch.float64, None)[1]  # pupil x (m)
    along_tilt = (jac * (2 * math.pi * xi / (lam * f))).sum((-2, -1)).numpy()  # dPSF / da

    centres = (np.arange(k * m) + 0.5 - m / 2 - (k // 2) * m) * pitch / m  # sub-pixel x = y

    def pixels(shift_m: float) -> np.ndarray:
        sx = np.sinc(side * (centres - shift_m) / (lam * f)) ** 2
        sy = np.sinc(side * centres / (lam * f)) ** 2
        return np.outer(sy, sx).reshape(k, m, k, m).sum(axis=(1, 3))

    scale = float(psf.sum()) / pixels(0.0).sum()
    assert np.abs(psf.numpy() - scale * pixels(0.0)).max() <= 1e-3 * float(psf.max())
    h = 1e-9
    expected = scale * (pixels(h) - pixels(-h)) / (2 * h)
    assert np.linalg.norm(along_tilt - expected) <= 1e-3 * np.linalg.norm(expected)
