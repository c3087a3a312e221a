"""Exact NTK Gram of a phase-mask student (PSFs through the wave model) against autograd."""

from __future__ import annotations

import pytest
import torch
from ntk_toys import rel_err
from torch.func import functional_call, jacrev, vmap

import onnlab.distill.lifted as lifted
from onnlab.distill.ntk import ntk_gram
from onnlab.models.zoo import build_student


def _phase_student(
    task: str, channels: int, hw: int, batch: int, **arch: object
) -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = build_student(task, frontend="phase", n_kernels=4, hidden=(16,), **arch).double()
    x = torch.rand(batch, channels, hw, hw, dtype=torch.float64)
    with torch.no_grad():
        model(x)  # data-dependent initialisation of the backend's normalisation
    return model.eval(), x


def _oracle_gram(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """sum_c J_c J_c^T from per-sample Jacobians (vmap + jacrev), differentiable."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}

    def f(p: dict[str, torch.Tensor], xi: torch.Tensor) -> torch.Tensor:
        return functional_call(model, p, (xi[None],))[0]

    jac = vmap(jacrev(f), in_dims=(None, 0))(params, x)
    rows = torch.cat([j.flatten(2) for j in jac.values()], dim=2)  # (B, C, P)
    return torch.einsum("bcp,dcp->bd", rows, rows)


def _counting(monkeypatch: pytest.MonkeyPatch, name: str) -> list[int]:
    used: list[int] = []
    original = getattr(lifted, name)

    def counted(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        used.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(lifted, name, counted)
    return used


# batch: the closed form runs when one kernel's C x 7 x 7 PSF values (49 for MNIST, 147 for
# CIFAR-10) are no more than the 10 outputs x batch gradient rows
# (MNIST also with a lossy element and paired PSFs: max_transmission scales the Jacobian, and
# pseudo-negative features subtract two convolutions of the same weight call)
# route: the module's kernel_grams (J_k J_k^T with a closed-form backward), or, without it,
# its kernel_jacobians differentiated by autograd
@pytest.mark.parametrize("route", ["kernel_grams", "kernel_jacobians"])
@pytest.mark.parametrize(
    ("task", "channels", "hw", "batch", "arch"),
    [
        ("mnist", 1, 28, 5, {}),
        ("mnist", 1, 28, 5, {"max_transmission": 0.8, "pseudo_negative": True}),
        ("cifar10", 3, 32, 16, {}),
    ],
)
def test_phase_student_gram_and_its_gradient_match_autograd(
    task: str,
    channels: int,
    hw: int,
    batch: int,
    arch: dict,
    route: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The closed-form PSF route is taken, and both the Gram and the gradient of a loss on it
    equal the autograd oracle's (vmap + jacrev through the wave model)."""
    model, x = _phase_student(task, channels, hw, batch, **arch)
    used = _counting(monkeypatch, "_psf_block_gram")
    cls = type(model.frontend)
    if route == "kernel_jacobians":
        monkeypatch.delattr(cls, "kernel_grams")
    calls: list[int] = []
    original = getattr(cls, route)
    monkeypatch.setattr(cls, route, lambda self, p: calls.append(1) or original(self, p))
    weights = torch.randn(
        batch, batch, dtype=torch.float64, generator=torch.Generator().manual_seed(2)
    )
    phase = model.frontend.phase

    gram = ntk_gram(model, x, create_graph=True)
    (grad,) = torch.autograd.grad((gram * weights).sum(), phase)
    oracle = _oracle_gram(model, x)
    (oracle_grad,) = torch.autograd.grad((oracle * weights).sum(), phase)

    assert used and calls, f"the phase frontend should use its closed-form {route}"
    assert rel_err(gram.detach(), oracle.detach()) < 1e-10
    assert rel_err(grad, oracle_grad) < 1e-8


def test_autograd_block_rule_without_closed_form(monkeypatch: pytest.MonkeyPatch) -> None:
    """Independent kernels without a closed form: the Jacobian from D VJPs, same Gram."""
    model, x = _phase_student("mnist", 1, 28, 6)  # 60 rows > 49 PSF values: block rule pays
    monkeypatch.delattr(type(model.frontend), "kernel_jacobians")
    monkeypatch.delattr(type(model.frontend), "kernel_grams")
    used = _counting(monkeypatch, "_block_gram")
    gram = ntk_gram(model, x)
    assert used
    assert rel_err(gram, _oracle_gram(model, x).detach()) < 1e-10


def test_few_rows_are_pulled_back_through_the_wave_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fewer gradient rows (40) than PSF values per kernel (49): pulling the rows back is the
    cheaper exact route, and is taken."""
    model, x = _phase_student("mnist", 1, 28, 4)
    monkeypatch.setattr(lifted, "_block_gram", None)  # would raise if it were reached
    monkeypatch.setattr(lifted, "_psf_block_gram", None)
    assert rel_err(ntk_gram(model, x), _oracle_gram(model, x).detach()) < 1e-10


def test_block_rules_need_the_declaration(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without ``independent_kernels`` the row pull-back is used, with the same Gram."""
    model, x = _phase_student("mnist", 1, 28, 6)
    with_blocks = ntk_gram(model, x)
    monkeypatch.setattr(type(model.frontend), "independent_kernels", False)
    monkeypatch.setattr(lifted, "_block_gram", None)  # would raise if it were reached
    monkeypatch.setattr(lifted, "_psf_block_gram", None)
    assert rel_err(ntk_gram(model, x), with_blocks) < 1e-10


def test_autograd_block_rule_with_per_kernel_vectors(monkeypatch: pytest.MonkeyPatch) -> None:
    """The free frontend (softmax shape (K, C, k, k) and transmission (K,) per kernel) is
    kernel-independent too: declared so, the block rule handles its 1-D parameter."""
    torch.manual_seed(0)
    model = build_student("mnist", n_kernels=4, hidden=(16,)).double()
    x = torch.rand(6, 1, 28, 28, dtype=torch.float64)
    with torch.no_grad():
        model(x)
    model.eval()
    reference = ntk_gram(model, x)
    monkeypatch.setattr(type(model.frontend), "independent_kernels", True, raising=False)
    used = _counting(monkeypatch, "_block_gram")
    assert rel_err(ntk_gram(model, x), reference) < 1e-10
    assert used
