"""Layer-by-layer NNGP/NTK composition for the digital backend (neural-tangents' stax, in torch).

A layer maps the pair (nngp, ntk) of kernels of its input to those of its output, in the NTK
parameterisation (``y = sigma_w / sqrt(fan_in) * W x + sigma_b * b`` with W, b ~ N(0, 1)):

- ``Dense``:  nngp' = sigma_w^2 nngp + sigma_b^2;  ntk' = nngp' + sigma_w^2 ntk  (trainable)
- ``Relu``:   nngp' = sqrt(q q') / (2 pi) (sin th + (pi - th) cos th)     (arc-cosine, order 1)
              ntk'  = ntk * (pi - th) / (2 pi),  cos th = nngp / sqrt(q q')  (q = nngp(x, x))

The optical layer is the first layer and is frozen (random PSFs): its output kernel is
(nngp = K0, ntk = 0), with K0 from `onnlab.estimate.features.optical_gram`. Why the Gaussian
rules are exact here even though the PSFs are non-negative and non-Gaussian: every digital
Dense layer sums K * T optical features with zero-mean Gaussian weights, so its outputs are
Gaussian given the PSFs, with covariance K0 — which converges (law of large numbers over the K
independent PSFs) to its expectation. Nothing after the first Dense needs the PSF law.

Kernels are carried as blocks (rows × train) plus the diagonals q of both sides, because the
ReLU needs ``nngp(x, x)``; all float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class KernelPair:
    """nngp and ntk between a row set and a column set, with both sides' nngp diagonals."""

    nngp: torch.Tensor
    ntk: torch.Tensor
    diag_rows: torch.Tensor
    diag_cols: torch.Tensor

    @classmethod
    def frozen_input(
        cls, k0: torch.Tensor, diag_rows: torch.Tensor, diag_cols: torch.Tensor
    ) -> KernelPair:
        """Kernel of a frozen (untrained) first layer: its parameters add no NTK term."""
        return cls(k0, torch.zeros_like(k0), diag_rows, diag_cols)


def dense(
    k: KernelPair, w_var: float = 1.0, b_var: float = 0.0, trainable: bool = True
) -> KernelPair:
    """Fully connected layer (any width; the kernel is its infinite-width limit)."""
    if w_var == 1.0 and b_var == 0.0:  # the NTK default: no full-size copies of the inputs
        nngp = k.nngp
        ntk = k.nngp + k.ntk if trainable else k.ntk
        return KernelPair(nngp, ntk, k.diag_rows, k.diag_cols)
    nngp = w_var * k.nngp + b_var
    ntk = nngp + w_var * k.ntk if trainable else w_var * k.ntk
    return KernelPair(nngp, ntk, w_var * k.diag_rows + b_var, w_var * k.diag_cols + b_var)


def relu(k: KernelPair) -> KernelPair:
    """ReLU on Gaussian pre-activations (Cho & Saul arc-cosine kernels)."""
    norm = torch.outer(k.diag_rows, k.diag_cols).clamp_min_(1e-300).sqrt_()
    cos = torch.div(k.nngp, norm).clamp_(-1.0, 1.0)
    # few passes over full-size matrices, in place: sin(theta), then theta -> (pi - theta) / 2 pi
    theta = torch.arccos(cos)
    sin = torch.sin(theta)
    slope = theta.mul_(-1 / (2 * math.pi)).add_(0.5)
    nngp = sin.mul_(1 / (2 * math.pi)).addcmul_(slope, cos).mul_(norm)
    ntk = k.ntk * slope
    return KernelPair(nngp, ntk, 0.5 * k.diag_rows, 0.5 * k.diag_cols)


def backend_ntk(
    k0: KernelPair, hidden: tuple[int, ...] = (), w_var: float = 1.0, b_var: float = 0.0
) -> torch.Tensor:
    """NTK of [Dense(h) -> ReLU] * len(hidden) -> Dense(out) on top of the optical kernel.

    `hidden` only fixes the depth: each Dense is taken at infinite width (a finite digital
    width adds sampling noise of the backend's own initialisation, not a property of the optics).
    With ``hidden=()`` this is the NTK of the paper's Table 5 readout: ``w_var K0 + b_var``,
    exact at every K because the readout is linear in its parameters.
    """
    k = k0
    for _ in hidden:
        k = relu(dense(k, w_var, b_var))
    return dense(k, w_var, b_var).ntk
