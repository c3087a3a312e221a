"""Gram discrepancies: zero at equality, invariances, and what each normalisation ignores."""

from __future__ import annotations

import pytest
import torch

from onnlab.distill.losses import NORMALISATIONS, centre_gram, cka, ntkd_loss


def _psd(n: int, seed: int, rank: int = 4) -> torch.Tensor:
    a = torch.randn(n, rank, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return a @ a.T + 0.1 * torch.eye(n, dtype=torch.float64)


@pytest.mark.parametrize("normalisation", NORMALISATIONS)
def test_zero_when_equal_positive_otherwise(normalisation: str) -> None:
    a, b = _psd(8, 0), _psd(8, 1)
    assert float(ntkd_loss(a, a.clone(), normalisation)) == pytest.approx(0.0, abs=1e-12)
    assert float(ntkd_loss(a, b, normalisation)) > 1e-3


@pytest.mark.parametrize("normalisation", ["cka", "trace", "frobenius"])
def test_scale_invariant(normalisation: str) -> None:
    """Teacher and student differ in size by 100-4000x: only the Gram's shape may matter."""
    a, b = _psd(8, 0), _psd(8, 1)
    torch.testing.assert_close(ntkd_loss(1e3 * a, b, normalisation), ntkd_loss(a, b, normalisation))


def test_cka_ignores_constant_offset_trace_does_not() -> None:
    """Centring removes the shared all-ones direction (mean output) that dominates raw NTKs."""
    a, b = _psd(8, 0), _psd(8, 1)
    shifted = a + 50.0 * torch.ones_like(a)
    torch.testing.assert_close(centre_gram(shifted), centre_gram(a))
    torch.testing.assert_close(ntkd_loss(shifted, b, "cka"), ntkd_loss(a, b, "cka"))
    assert abs(float(ntkd_loss(shifted, b, "trace") - ntkd_loss(a, b, "trace"))) > 1e-3


def test_cka_known_value() -> None:
    """Orthogonal centred rank-1 Grams have CKA 0; a Gram with itself has CKA 1."""
    u = torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=torch.float64)
    v = torch.tensor([1.0, 1.0, -1.0, -1.0], dtype=torch.float64)
    assert float(cka(torch.outer(u, u), torch.outer(v, v))) == pytest.approx(0.0, abs=1e-12)
    assert float(cka(torch.outer(u, u), torch.outer(u, u))) == pytest.approx(1.0)


def test_bad_arguments() -> None:
    a = _psd(4, 0)
    with pytest.raises(ValueError, match="normalisation"):
        ntkd_loss(a, a, "l2")
    with pytest.raises(ValueError, match="square"):
        ntkd_loss(a, _psd(5, 0))
