"""NTK Gram estimators against closed forms, finite differences and each other."""

from __future__ import annotations

import pytest
import torch
from ntk_toys import ToyCNN, ToyHybrid, rel_err
from torch import nn

from onnlab.distill.ntk import RandomOutputProjection, ntk_gram


@pytest.mark.parametrize("estimator", ["exact", "jacobian", "output"])
def test_linear_layer_closed_form(estimator: str) -> None:
    """f(x) = W x + b with C outputs: Theta = C (X X^T + 1) exactly, whatever W is."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(7, 5, generator=gen, dtype=torch.float64)
    layer = nn.Linear(5, 3).double()
    gram = ntk_gram(layer, x, estimator=estimator)
    expected = 3 * (x @ x.T + 1)
    torch.testing.assert_close(gram, expected, rtol=1e-10, atol=1e-10)


def test_one_hidden_layer_vs_finite_differences() -> None:
    """Exact Gram = J J^T with J from central finite differences of the parameters."""
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2)).double()
    x = torch.randn(6, 4, dtype=torch.float64)
    flat = torch.nn.utils.parameters_to_vector(net.parameters()).detach()
    eps, cols = 1e-6, []
    for k in range(flat.numel()):
        outs = []
        for sign in (1, -1):
            v = flat.clone()
            v[k] += sign * eps
            torch.nn.utils.vector_to_parameters(v, net.parameters())
            with torch.no_grad():
                outs.append(net(x))
        cols.append((outs[0] - outs[1]) / (2 * eps))
    torch.nn.utils.vector_to_parameters(flat, net.parameters())
    J = torch.stack(cols, dim=-1)  # (B, C, P)
    expected = torch.einsum("icp,jcp->ij", J, J)
    gram = ntk_gram(net, x)
    torch.testing.assert_close(gram, expected, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("model_cls", [ToyHybrid, ToyCNN])
def test_structured_exact_matches_jacobian(model_cls: type, images: torch.Tensor) -> None:
    """Kronecker rules (Linear/Conv2d), the vmapped-VJP fallback (frontend, BatchNorm) and the
    in-place ReLU after a conv all reproduce the textbook per-sample-Jacobian Gram."""
    torch.manual_seed(0)
    model = model_cls().double()
    x = images.double()
    ref = ntk_gram(model, x, estimator="jacobian")
    assert rel_err(ntk_gram(model, x, estimator="exact"), ref) < 1e-10
    assert rel_err(ntk_gram(model, x, estimator="output", size=4), ref) < 1e-10  # m = C


def test_estimators_agree_on_params_subset(images: torch.Tensor) -> None:
    model = ToyHybrid().double()
    x = images.double()
    front = list(model.frontend.parameters())
    ref = ntk_gram(model, x, estimator="jacobian", params=front)
    assert rel_err(ntk_gram(model, x, params=front), ref) < 1e-10
    full = ntk_gram(model, x)
    back = ntk_gram(model, x, params=list(model.backend.parameters()))
    torch.testing.assert_close(full, ref + back)  # the NTK is additive over parameter groups


@pytest.mark.parametrize("estimator", ["jvp", "output"])
def test_sketches_converge(estimator: str, images: torch.Tensor) -> None:
    """Random-projection errors fall with the sketch size (~1/sqrt(m)), averaged over seeds."""
    torch.manual_seed(0)
    model = ToyHybrid(n_out=8).double()
    x = images.double()
    ref = ntk_gram(model, x)
    sizes = [2, 32] if estimator == "jvp" else [1, 4]
    means = []
    for m in sizes:
        errs = [
            rel_err(
                ntk_gram(
                    model,
                    x,
                    estimator=estimator,
                    size=m,
                    generator=torch.Generator().manual_seed(s),
                ),
                ref,
            )
            for s in range(8)
        ]
        means.append(sum(errs) / len(errs))
    assert means[1] < 0.6 * means[0]
    if estimator == "jvp":
        assert means[1] < 0.35
    else:
        exact = ntk_gram(model, x, estimator="output", size=8)  # m = C: orthogonal = exact
        assert rel_err(exact, ref) < 1e-10


def test_sketch_deterministic_under_seed(images: torch.Tensor) -> None:
    model = ToyHybrid()
    a = ntk_gram(model, images, estimator="jvp", size=4, generator=torch.Generator().manual_seed(5))
    b = ntk_gram(model, images, estimator="jvp", size=4, generator=torch.Generator().manual_seed(5))
    c = ntk_gram(model, images, estimator="jvp", size=4, generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("estimator", ["exact", "jacobian", "jvp"])
def test_gram_is_differentiable(estimator: str, images: torch.Tensor) -> None:
    """d(sum Theta)/d theta from create_graph matches the oracle's double backward."""
    model = ToyHybrid().double()
    x = images.double()
    params = list(model.parameters())

    def grads_of(gram: torch.Tensor) -> list[torch.Tensor]:
        # the last bias has a constant Jacobian, so the Gram does not depend on it
        grads = torch.autograd.grad(gram.square().sum(), params, allow_unused=True)
        return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params, strict=True)]

    ref_grads = grads_of(ntk_gram(model, x, estimator="jacobian", create_graph=True))
    grads = grads_of(ntk_gram(model, x, estimator=estimator, size=3, create_graph=True))
    if estimator == "jvp":
        assert sum(float(g.abs().sum()) for g in grads) > 0
        return
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-8, atol=1e-10)


def test_no_graph_leaves_parameters_alone(images: torch.Tensor) -> None:
    model = ToyCNN()
    gram = ntk_gram(model, images)
    assert not gram.requires_grad
    assert all(p.grad is None for p in model.parameters())


def test_batchnorm_uses_eval_statistics_and_restores_mode(images: torch.Tensor) -> None:
    model = ToyCNN().double()
    x = images.double()
    bn = model.body[1]
    bn.running_mean.fill_(0.3)
    bn.running_var.fill_(2.0)
    model.train()
    model.body[4].eval()  # a mixed-mode model: each flag must come back as it was
    stats = {k: v.clone() for k, v in model.state_dict().items()}
    gram = ntk_gram(model, x)
    assert model.training and bn.training and not model.body[4].training
    for k, v in model.state_dict().items():
        assert torch.equal(v, stats[k]), k
    model.eval()
    torch.testing.assert_close(gram, ntk_gram(model, x, estimator="jacobian"))
    # eval statistics, not batch statistics: a different running_var changes the Gram
    bn.running_var.fill_(0.5)
    assert rel_err(ntk_gram(model, x), gram) > 1e-3


def test_segmentation_outputs_are_reduced() -> None:
    """Dense (B, 1, H, W) outputs: pooled to a 4x4 grid by default, or randomly projected."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 1, 1)).double()
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64)
    ref = ntk_gram(net, x, estimator="jacobian")
    assert rel_err(ntk_gram(net, x), ref) < 1e-10
    proj = RandomOutputProjection(5, seed=2)
    ref_p = ntk_gram(net, x, estimator="jacobian", output_fn=proj)
    assert rel_err(ntk_gram(net, x, output_fn=proj), ref_p) < 1e-10


def test_reused_module_falls_back_to_jacobian() -> None:
    lin = nn.Linear(3, 3).double()
    net = nn.Sequential(lin, nn.Tanh(), lin)  # weight sharing: Kronecker rule does not apply
    x = torch.randn(4, 3, dtype=torch.float64)
    with pytest.warns(UserWarning, match="structured NTK unavailable"):
        gram = ntk_gram(net, x)
    torch.testing.assert_close(gram, ntk_gram(net, x, estimator="jacobian"))


def test_bad_arguments() -> None:
    net = nn.Linear(2, 2)
    x = torch.randn(3, 2)
    with pytest.raises(ValueError, match="estimator"):
        ntk_gram(net, x, estimator="nope")
    with pytest.raises(ValueError, match="size"):
        ntk_gram(net, x, estimator="jvp", size=0)
    with pytest.raises(ValueError, match="params"):
        ntk_gram(net, x, params=[torch.nn.Parameter(torch.ones(1))])
    net.requires_grad_(False)
    with pytest.raises(ValueError, match="params"):
        ntk_gram(net, x)


def test_grouped_conv_path_matches_jacobian() -> None:
    """Per-sample conv weight-grads by grouped convolution_backward (one output direction, or
    wide inputs; strided, dilated, 'same') equal the oracle's."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(2, 16, 3, padding=1),
        nn.Tanh(),
        nn.Conv2d(16, 4, 3, stride=2, padding=2, dilation=2),
        nn.Tanh(),
        nn.Conv2d(4, 3, 3, padding="same"),
    ).double()
    x = torch.rand(3, 2, 8, 8, dtype=torch.float64)
    for n_out in (1, 2):  # one pooled output -> M = 1 -> every conv takes the grouped path

        def pool(o: torch.Tensor, n: int = n_out) -> torch.Tensor:
            return o.mean((2, 3))[:, :n]

        ref = ntk_gram(net, x, estimator="jacobian", output_fn=pool)
        assert rel_err(ntk_gram(net, x, output_fn=pool), ref) < 1e-10


def test_frozen_cifarnet_like_teacher_exact_matches_jacobian() -> None:
    """A frozen VGG-style teacher (conv-BN-ReLU in place, max-pool, global max-pool, eval-mode
    BatchNorm with non-trivial running statistics and affine parameters): the structured Gram
    over all its parameters equals the oracle, through both per-sample conv paths (grouped
    kernel for wide layers with many positions, patches + bmm for few positions)."""
    torch.manual_seed(0)

    def block(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )

    teacher = nn.Sequential(
        block(3, 16),  # T = 144 positions, 3 input channels: patches + bmm
        block(16, 16),  # T = 144, wide input, C = 3 directions: grouped kernel
        nn.MaxPool2d(2),
        block(16, 8),  # T = 36: patches + bmm
        nn.AdaptiveMaxPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    ).double()
    for module in teacher.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(module.weight, 0.5, 1.5)
            nn.init.uniform_(module.bias, -0.1, 0.1)
    teacher.eval().requires_grad_(False)
    params = list(teacher.parameters())
    x = torch.rand(5, 3, 12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    ref = ntk_gram(teacher, x, estimator="jacobian", params=params)
    assert rel_err(ntk_gram(teacher, x, params=params), ref) < 1e-10
    one = ntk_gram(teacher, x, params=params, output_fn=lambda o: o[:, :1])  # M = 1 paths
    ref_one = ntk_gram(
        teacher, x, estimator="jacobian", params=params, output_fn=lambda o: o[:, :1]
    )
    assert rel_err(one, ref_one) < 1e-10
