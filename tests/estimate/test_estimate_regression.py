"""Kernel regression and the estimator's solvers: exact recovery, dual = primal, segmentation."""

from __future__ import annotations

import torch

from onnlab.data import load_dataset
from onnlab.estimate.estimator import Architecture, Estimator, Split
from onnlab.estimate.regression import IoUCounter, feature_ridge, fit_linear_ridge, kernel_ridge


def test_kernel_regression_recovers_a_linear_target_exactly():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(80, 6, generator=gen, dtype=torch.float64)
    xt = torch.randn(20, 6, generator=gen, dtype=torch.float64)
    w = torch.randn(6, 3, generator=gen, dtype=torch.float64)
    b = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    y, yt = x @ w + b, xt @ w + b
    aug = torch.cat([x, torch.ones(80, 1, dtype=torch.float64)], 1)
    augt = torch.cat([xt, torch.ones(20, 1, dtype=torch.float64)], 1)
    dual = kernel_ridge(aug @ aug.T, y, augt @ aug.T, lambdas=(1e-12, 1.0))
    primal = feature_ridge(aug, y, augt, lambdas=(1e-12, 1.0))
    torch.testing.assert_close(dual[1e-12], yt, rtol=0, atol=1e-7)
    torch.testing.assert_close(primal[1e-12], yt, rtol=0, atol=1e-9)
    # a real ridge shrinks: the fit is no longer exact, and both solvers agree on it
    assert (dual[1.0] - yt).abs().max() > 1e-3
    torch.testing.assert_close(dual[1.0], primal[1.0], rtol=1e-9, atol=1e-9)


def test_primal_and_dual_feature_solvers_equal_the_kernel_solver():
    """More features than samples (dual) and fewer (primal): one prediction per lambda."""
    gen = torch.Generator().manual_seed(1)
    y = torch.randn(40, 2, generator=gen, dtype=torch.float64)
    for dim in (15, 90):
        phi = torch.randn(40, dim, generator=gen, dtype=torch.float64)
        phi_eval = torch.randn(7, dim, generator=gen, dtype=torch.float64)
        lambdas = (1e-3, 0.1, 10.0)
        ref = kernel_ridge(phi @ phi.T, y, phi_eval @ phi.T, lambdas)
        fit = fit_linear_ridge(phi, y, lambdas)
        assert fit.weights.shape == (dim, 2 * len(lambdas))
        for lam, pred in fit.predict(phi_eval).items():
            torch.testing.assert_close(pred, ref[lam], rtol=1e-8, atol=1e-10)
        # and the ridge really is (G + lam * mean diag G I)^-1: solve it directly
        g = phi @ phi.T
        scale = float(torch.diagonal(g).mean())
        direct = phi_eval @ phi.T @ torch.linalg.solve(
            g + 0.1 * scale * torch.eye(40, dtype=torch.float64), y - y.mean(0)
        ) + y.mean(0)
        torch.testing.assert_close(ref[0.1], direct, rtol=1e-8, atol=1e-10)


def _mnist(n_train=150, n_val=60, n_test=100):
    def split(name, n):
        ds = load_dataset("mnist", name, limit=n)
        return Split(ds.images, ds.targets)

    return split("train", n_train), split("val", n_val), split("test", n_test)


def test_dual_and_pixel_space_primal_solvers_give_the_same_predictions():
    train, val, test = _mnist()
    arch = Architecture("classification", 1, (28, 28), 10, 7, pool=4)
    psfs = None
    scores = {}
    for solver in ("dual", "primal"):
        est = Estimator(arch, train, val, test, solver=solver, mc_samples=1 << 12)
        if psfs is None:
            psfs = est.prior.sample(12, 1, 7, torch.Generator().manual_seed(5))
        p = est.predict_psfs(psfs)
        scores[solver] = (p.score, p.val_score, p.lambda_rel)
    assert scores["dual"] == scores["primal"]
    assert scores["dual"][0] > 0.5  # ten classes: chance is 0.1


def test_segmentation_estimate_beats_the_all_background_mask():
    def split(name, n):
        ds = load_dataset("segmentation", name, limit=n)
        return Split(ds.images, ds.targets)

    train, val, test = split("train", 12), split("val", 2), split("test", 4)
    arch = Architecture("segmentation", 3, (64, 64), 1, 3, hidden=(64,))
    lambdas = (1e-3, 1e-1, 10.0)
    est = Estimator(arch, train, val, test, lambdas=lambdas, mc_samples=1 << 12, n_pixels=400)
    finite = est.predict_random(8)
    infinite = est.predict_infinite()
    background = IoUCounter()
    background.update(torch.zeros_like(test.targets), test.targets)
    assert finite.metric == "miou"
    for p in (finite, infinite):
        assert background.miou() + 0.05 < p.score <= 1.0


def test_iou_counter_by_hand():
    c = IoUCounter()
    c.update(torch.tensor([0.9, 0.9, 0.1, 0.1]), torch.tensor([1.0, 0.0, 0.0, 0.0]))
    # foreground: inter 1, union 2; background: inter 2, union 3
    assert abs(c.miou() - (0.5 + 2 / 3) / 2) < 1e-12
