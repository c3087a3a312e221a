"""Per-kernel phase NTK of the PSFs, J_k J_k^T, and its hand-written backward."""

from __future__ import annotations

import pytest
import torch

from onnlab.models.phase_frontend import default_optics
from onnlab.optics.materials import get_material
from onnlab.optics.psf_jacobian import psf_phase_jacobian
from onnlab.optics.psf_phase_gram import psf_phase_kernel_gram


@pytest.mark.parametrize(
    ("task", "shape", "oversample"),
    [("mnist", "square", 3), ("cifar10", "circle", 3), ("cifar10", "square", 2)],
)
def test_kernel_and_its_gradient_equal_autograd_through_the_jacobian(
    task: str, shape: str, oversample: int
) -> None:
    """RGB with dispersion included: the colours share the phases, so the kernel's
    cross-colour blocks and the summed colour gradients are exercised."""
    optics = default_optics(task).model_copy(update={"aperture_shape": shape})
    index = get_material("SiO2").refractive_index
    gen = torch.Generator().manual_seed(0)
    phases = (6.0 * torch.rand(3, 16, 16, generator=gen, dtype=torch.float64)).requires_grad_()
    jac = psf_phase_jacobian(phases, optics, oversample=oversample, refractive_index=index)
    jac = jac.flatten(1, 3).flatten(-2)
    reference = torch.bmm(jac, jac.transpose(1, 2))
    weights = torch.randn(reference.shape, generator=gen, dtype=torch.float64)
    (ref_grad,) = torch.autograd.grad((reference * weights).sum(), phases)

    kernel = psf_phase_kernel_gram(phases, optics, oversample=oversample, refractive_index=index)
    (grad,) = torch.autograd.grad((kernel * weights).sum(), phases)
    assert torch.allclose(kernel, reference, rtol=1e-12, atol=0.0)
    assert float((grad - ref_grad).abs().max()) <= 1e-10 * float(ref_grad.abs().max())


def test_backward_matches_finite_differences() -> None:
    """Independent of the code above: central differences of the kernel itself."""
    optics = default_optics("cifar10")
    gen = torch.Generator().manual_seed(1)
    phases = torch.rand(2, 8, 8, generator=gen, dtype=torch.float64).requires_grad_(True)
    weights = torch.randn(2, 147, 147, generator=gen, dtype=torch.float64)

    def scalar(p: torch.Tensor) -> torch.Tensor:
        return (psf_phase_kernel_gram(p, optics, oversample=2) * weights).sum()

    assert torch.autograd.gradcheck(scalar, (phases,), eps=1e-6, atol=1e-9, rtol=1e-5)


def test_kernel_is_symmetric_positive_semidefinite_and_sees_no_uniform_offset() -> None:
    """Physics: a uniform phase offset changes no intensity, so the all-ones phase direction is
    in the null space of J_k and J_k J_k^T is unchanged by it; a Gram is PSD."""
    optics = default_optics("mnist")
    phases = 5.0 * torch.rand(2, 16, 16, generator=torch.Generator().manual_seed(2))
    phases = phases.double()
    kernel = psf_phase_kernel_gram(phases, optics)
    shifted = psf_phase_kernel_gram(phases + 0.7, optics)
    assert torch.allclose(kernel, kernel.transpose(1, 2), rtol=0, atol=1e-15 * kernel.abs().max())
    assert float(torch.linalg.eigvalsh(kernel).min()) >= -1e-12 * float(kernel.abs().max())
    assert torch.allclose(kernel, shifted, rtol=1e-9, atol=1e-12 * float(kernel.abs().max()))
