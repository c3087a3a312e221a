"""The phase NTK of each sub-aperture PSF, J_k J_k^T, with a hand-written backward.

Why: the exact NTK Gram of a phase-mask student needs, per kernel, the PSF-space kernel
K_k = J_k J_k^T (D x D, D = C kh kw PSF values) of the closed-form Jacobian J_k
(`onnlab.optics.psf_jacobian`), and an NTKD step differentiates it. Autograd through J_k
stores and walks back (K, C, kh, kw, N, N) complex intermediates several times; the gradient
in closed form needs three contractions of the same size as the forward. Measured on the
CIFAR-10 student (16 kernels, RGB, 7 x 7, oversample 7, N = 64), one CPU thread:
`onnlab bench ntk --json` (``phase*`` keys).

Given G = dL/dJ (real, per colour c: G_un), with J_un = beta Im(p_n H_un),
H_un = sum_{t in u} conj(E_t) F_tn, E_t = sum_n F_tn p_n and dp_n/dphi_n = i s p_n:

    dL/dphi_m = sum_c beta s [ Re(p_m S_m) - Re(conj(p_m) (F^H Z)_m) ],
    S_m = sum_u G_um H_um,   Z_t = sum_n F_tn p_n G_{u(t) n}   (t a sub-pixel of pixel u(t)).

The first term is the pupil's own phase factor, the second the field E every pixel's H sees.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from onnlab.optics.psf_jacobian import ColourTerms, colour_jacobian, colour_terms, h_matrix

if TYPE_CHECKING:
    from onnlab.optics.layout import OpticsConfig
    from onnlab.optics.psf import RefractiveIndex


def _phase_gradient(
    term: ColourTerms, h: torch.Tensor, grad_j: torch.Tensor, kh: int, kw: int
) -> torch.Tensor:
    """(K, N, N) dL/dphi of one colour from H and G = dL/dJ (K, kh, kw, N, N), as above."""
    pupil, ay, ax = term.pupil, term.ay, term.ax
    k, ny, nx = pupil.shape
    m = ay.shape[0] // kh
    g = grad_j.to(pupil.dtype)
    own = (g * h).sum(dim=(1, 2))  # S (K, N, N)
    # Z: each pixel's p G_u taken to its own sub-pixels (contract j, then i)
    t1 = (pupil[:, None, None] * g) @ ax.reshape(kw, m, nx).transpose(1, 2)  # (K,kh,kw,N,m)
    z = torch.einsum("yai,kyxib->kyaxb", ay.reshape(kh, m, ny), t1).reshape(k, kh * m, kw * m)
    back = ay.conj().transpose(0, 1) @ z @ ax.conj()  # F^H Z (K, N, N)
    return term.beta * term.scale * ((pupil * own).real - (pupil.conj() * back).real)


class _KernelGram(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        phases: torch.Tensor,
        config: OpticsConfig,
        oversample: int,
        refractive_index: RefractiveIndex | None,
    ) -> torch.Tensor:
        kh = kw = config.kernel_px
        terms = colour_terms(phases, config, oversample, refractive_index)
        hs = [h_matrix(t, kh, kw) for t in terms]  # kept: the backward needs them again
        parts = [colour_jacobian(t, h) for t, h in zip(terms, hs, strict=True)]
        jac = torch.stack(parts, dim=1).flatten(1, 3).flatten(-2)  # (K, C kh kw, N N)
        ctx.save_for_backward(jac, *hs)
        ctx.terms, ctx.shape = terms, (phases.dtype, kh, kw, phases.shape[1:])
        return torch.bmm(jac, jac.transpose(1, 2))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_kernel: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        jac, *hs = ctx.saved_tensors
        dtype, kh, kw, phase_hw = ctx.shape
        grad_j = torch.bmm(grad_kernel + grad_kernel.transpose(1, 2), jac)  # (K, D, P)
        per_colour = grad_j.reshape(jac.shape[0], len(hs), kh, kw, *phase_hw)
        grad = sum(
            _phase_gradient(t, h, per_colour[:, c], kh, kw)
            for c, (t, h) in enumerate(zip(ctx.terms, hs, strict=True))
        )
        return grad.to(dtype), None, None, None  # type: ignore[union-attr]


def psf_phase_kernel_gram(
    phases: torch.Tensor,
    config: OpticsConfig,
    *,
    oversample: int = 3,
    refractive_index: RefractiveIndex | None = None,
) -> torch.Tensor:
    """(K, D, D) kernel K_k = J_k J_k^T of each sub-aperture's PSF (D = C kh kw values, in
    ``psfs_from_phases(...)[k].flatten()`` order) w.r.t. its own phases; differentiable once
    in ``phases`` (what an NTKD step needs), by the closed-form backward above."""
    return _KernelGram.apply(phases, config, int(oversample), refractive_index)
