"""Discrepancies between student and teacher NTK Grams (Eq. 8 of the paper, normalised).

Why normalise: the teacher has 10-4000x more parameters than the student, so its raw Gram is
orders of magnitude larger; an unnormalised MSE (the paper's literal Eq. 8) is dominated by
that scale and its gradient asks the student to grow its Jacobian, not to reshape it.

- ``"cka"`` (default): 1 - centred kernel alignment (Kornblith et al. 2019).  Centring removes
  the constant (mean-output) direction that dominates NTKs of positive images, so the loss
  compares *which samples the models treat alike*, invariant to scale.  Measured best (see
  ``onnlab.bench.ntk`` and the distill report).
- ``"trace"``: mean squared difference of ``B * K / tr(K)`` (unit mean diagonal): keeps the
  constant component and the relative diagonal/off-diagonal balance.
- ``"frobenius"``: 1 - uncentred cosine of the Grams (scale-invariant, no centring).
- ``"none"``: raw mean squared difference (the paper's Eq. 8; for reference only).

Every variant is zero when the Grams are equal; "cka"/"frobenius"/"trace" also when they are
proportional.
"""

from __future__ import annotations

import torch
from torch import Tensor

NORMALISATIONS = ("cka", "trace", "frobenius", "none")


def centre_gram(gram: Tensor) -> Tensor:
    """H K H with H = I - 11^T/B, computed by subtracting row/column means (no B x B matmul)."""
    row = gram.mean(dim=0, keepdim=True)
    col = gram.mean(dim=1, keepdim=True)
    return gram - row - col + gram.mean()


def _cosine(a: Tensor, b: Tensor) -> Tensor:
    tiny = torch.finfo(a.dtype).tiny
    return (a * b).sum() / ((a * a).sum() * (b * b).sum()).clamp_min(tiny).sqrt()


def cka(a: Tensor, b: Tensor) -> Tensor:
    """Centred kernel alignment in [0, 1] of two PSD Grams."""
    return _cosine(centre_gram(a), centre_gram(b))


def ntkd_loss(student_gram: Tensor, teacher_gram: Tensor, normalisation: str = "cka") -> Tensor:
    """Scalar discrepancy between two (B, B) Grams; differentiable in both arguments."""
    if normalisation not in NORMALISATIONS:
        raise ValueError(f"normalisation must be one of {NORMALISATIONS}, got {normalisation!r}")
    if student_gram.dim() != 2 or student_gram.shape != teacher_gram.shape:
        raise ValueError(
            "student_gram and teacher_gram must be square and equal-sized, got "
            f"{tuple(student_gram.shape)} and {tuple(teacher_gram.shape)}"
        )
    s, t = student_gram, teacher_gram.to(student_gram)
    if normalisation == "cka":
        return 1.0 - cka(s, t)
    if normalisation == "frobenius":
        return 1.0 - _cosine(s, t)
    if normalisation == "trace":
        tiny = torch.finfo(s.dtype).tiny
        n = s.shape[0]
        s = s * (n / torch.diagonal(s).sum().clamp_min(tiny))
        t = t * (n / torch.diagonal(t).sum().clamp_min(tiny))
    return (s - t).square().mean()
