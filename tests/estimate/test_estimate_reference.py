"""The trained reference IS the kernel-gradient-descent path of the estimator's kernel.

Kernel regression describes a network only if training that network moves along the kernel's
path: frozen optics and ActNorm, MSE from a zero readout (bias at the target mean), full-batch
gradient descent. Here the reference is trained for a fixed number of steps and its test
accuracy compared with the same Nesterov-GD recursion run in closed form on the estimator's
kernel, eigenmode by eigenmode (no autograd, no model). A different kernel, loss, start or
optimiser would not match.
"""

from __future__ import annotations

import torch

from onnlab.data import load_dataset
from onnlab.estimate.estimator import Architecture, Estimator, Split
from onnlab.estimate.features import optical_gram
from onnlab.estimate.reference import train_reference
from onnlab.estimate.regression import accuracy, one_hot


def _split(name: str, n: int) -> Split:
    ds = load_dataset("mnist", name, limit=n)
    return Split(ds.images, ds.targets)


def _gd_path_accuracy(est: Estimator, psfs: torch.Tensor, steps: int) -> float:
    """Test accuracy after `steps` of Nesterov GD (momentum 0.9, step 1/lambda_max) in closed form.

    Readout parameters theta = A^T c with A = [h, 1] the training features, so the iteration
    lives in the eigenbasis of A A^T = K T K0 + 1 (weights + bias).
    """
    feats = est.psf_features(psfs)
    k, t, n = psfs.shape[0], est.arch.geometry.n_cells, len(est.train.images)
    g = optical_gram(est.train.images, [est.test.images], feats)
    gram, cross = k * t * g.train + 1.0, k * t * g.cross[0] + 1.0
    evals, evecs = torch.linalg.eigh(gram)
    curv = evals.clamp_min(0) / n  # Hessian eigenvalues of the MSE (mean over samples)
    y = one_hot(est.train.targets, 10)
    mean = y.mean(0, keepdim=True)
    target = evecs.T @ (y - mean)
    coef, buf = torch.zeros_like(target), torch.zeros_like(target)
    lr = 1.0 / float(curv.max())
    for _ in range(steps):
        grad = -(target - (n * curv)[:, None] * coef) / n
        buf = 0.9 * buf + grad
        coef = coef - lr * (grad + 0.9 * buf)
    return accuracy(cross @ evecs @ coef + mean, est.test.targets)


def test_trained_reference_follows_the_kernel_gradient_descent_path():
    train, val, test = _split("train", 120), _split("val", 40), _split("test", 300)
    arch = Architecture("classification", 1, (28, 28), 10, 7, pool=4)
    est = Estimator(arch, train, val, test)
    psfs = est.prior.sample(6, 1, 7, torch.Generator().manual_seed(2)).float()
    scores = []
    for steps in (10, 60):
        ref = train_reference(
            "mnist", arch, psfs, train, val, test, max_steps=steps, eval_every=steps
        )
        assert ref.best_step == steps  # one checkpoint: the network after exactly `steps`
        expected = _gd_path_accuracy(est, psfs.double(), steps)
        assert abs(ref.score - expected) <= 1.5 / len(test.images), (steps, ref.score, expected)
        scores.append(ref.score)
    assert scores[1] > scores[0] + 0.05  # training moved: the match is not two chance levels
