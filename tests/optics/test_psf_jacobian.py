"""Closed-form PSF Jacobian w.r.t. the design phases against autograd through the wave model."""

from __future__ import annotations

import pytest
import torch

from onnlab.models.phase_frontend import default_optics
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
