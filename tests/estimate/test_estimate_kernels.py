"""The estimator's kernels against independent computations.

- patches reproduce the optics (`optical_conv2d`, binning),
- PSF-law moments match samples, and the fixed transmission makes Cov(p) 1 = 0,
- the finite-K kernel IS the empirical NTK of the zoo network (autograd, `ntk_gram`),
- the analytic K -> infinity kernel is approached by very wide random frontends, with an error
  that shrinks like 1/sqrt(K),
- the stax-style digital composition is approached by wide MLPs (autograd Jacobians).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.func import jacrev, vmap

from onnlab.data import load_dataset
from onnlab.estimate.estimator import Architecture, Estimator, Split
from onnlab.estimate.features import (
    OpticalFeatures,
    PatchGeometry,
    binned_patches,
    binned_response,
    optical_gram,
    patch_statistics,
)
from onnlab.estimate.kernels import KernelPair, backend_ntk
from onnlab.estimate.priors import (
    PsfPrior,
    empirical_second_moment,
    factor_psd,
    psf_std,
    softmax_square_mean,
)
from onnlab.optics.convolution import optical_conv2d


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    """48 real MNIST digits (bundled), binned to 14 x 14 to keep wide networks cheap."""
    return F.avg_pool2d(load_dataset("mnist", "train", limit=48).images.double(), 2)


@pytest.mark.parametrize(("c", "k", "pool", "hw"), [(1, 7, 4, (28, 28)), (3, 4, 2, (8, 12))])
def test_binned_patches_reproduce_the_optical_convolution(c, k, pool, hw):
    geom = PatchGeometry(c, hw, k, pool)
    x = torch.rand(3, c, *hw, dtype=torch.float64)
    psfs = torch.rand(5, c, k, k, dtype=torch.float64)
    ref = F.avg_pool2d(optical_conv2d(x, psfs), pool)
    out = torch.einsum("kn,bnt->bkt", psfs.flatten(1), binned_patches(x, geom))
    torch.testing.assert_close(out.reshape(ref.shape), ref, rtol=1e-12, atol=1e-12)
    # the patch-free strided-convolution route used for features gives the same numbers
    direct = binned_response(x, psfs.flatten(1), geom)
    torch.testing.assert_close(direct.reshape(ref.shape), ref, rtol=1e-12, atol=1e-12)


def test_softmax_square_mean_is_exact_for_two_entries():
    # n = 2: s_1 = sigmoid(z_1 - z_2), z_1 - z_2 ~ N(0, 2): a 1-D integral done independently
    nodes, weights = np.polynomial.hermite.hermgauss(200)
    exact = float((weights / np.sqrt(np.pi) / (1 + np.exp(-2.0 * nodes)) ** 2).sum())
    assert abs(softmax_square_mean(2) - exact) < 1e-12
    assert softmax_square_mean(1) == 1.0


@pytest.mark.parametrize("prior", [PsfPrior("softmax", 0.5), PsfPrior("dirichlet", 0.8)])
def test_prior_moments_match_samples_and_conserve_energy(prior):
    n = 12
    m, cov = prior.mean_and_covariance(n)
    assert torch.allclose(m.sum(), torch.tensor(prior.transmission, dtype=torch.float64))
    # every PSF carries exactly t: its fluctuations cannot change the total
    assert cov.sum(1).abs().max() < 1e-12
    draws = prior._sample_flat(40_000, n, torch.Generator().manual_seed(3))
    sample = draws.T @ draws / len(draws)
    assert (draws >= 0).all()
    rel = (sample - prior.second_moment(n)).norm() / prior.second_moment(n).norm()
    assert rel < 0.01


def test_finite_kernel_is_the_empirical_ntk_of_the_zoo_network():
    from onnlab.distill.ntk import ntk_gram
    from onnlab.models.zoo import build_student

    torch.manual_seed(0)
    model = build_student("mnist", n_kernels=6, hidden=[], pool=4).double().eval()
    x = load_dataset("mnist", "train", limit=24).images.double()
    with torch.no_grad():
        model.backend.norm.initialise(model.backend.pool(model.frontend(x)))
    fc = model.backend.head[-1]
    theta = ntk_gram(model, x[:8], params=[fc.weight])  # sum over 10 logits of h . h'
    geom = PatchGeometry(1, (28, 28), 7, 4)
    centre, scatter = patch_statistics(x, geom)
    psfs = model.frontend.psfs().detach()
    moment = empirical_second_moment(psfs, psf_std(psfs, scatter) ** -2)
    eigen = OpticalFeatures.from_factor(factor_psd(moment, rtol=0.0), geom, centre)
    k0 = optical_gram(x[:8], [], eigen).train
    # standard parameterisation: Theta = C * (K * T) * K0
    torch.testing.assert_close(theta, 10 * 6 * 49 * k0, rtol=1e-8, atol=1e-8)
    # the estimator's direct route (the PSFs' own responses, ActNorm from the training set,
    # no patch statistics) is the same kernel
    split = Split(x, torch.zeros(len(x), dtype=torch.long))
    est = Estimator(Architecture("classification", 1, (28, 28), 10, 7, pool=4), split, split, split)
    direct = est.psf_features(psfs)
    torch.testing.assert_close(theta, 10 * 6 * 49 * optical_gram(x[:8], [], direct).train)


def _wide_kernel(x, train, psfs, pool, actnorm):
    """K0 of K actual PSFs, straight from the optics: conv, bin, ActNorm from the features."""
    f_train = F.avg_pool2d(optical_conv2d(train, psfs), pool)
    f = F.avg_pool2d(optical_conv2d(x, psfs), pool)
    mean = f_train.mean(dim=(0, 2, 3), keepdim=True)
    h = f - mean
    if actnorm:
        h = h / f_train.std(dim=(0, 2, 3), keepdim=True)
    h = h.flatten(1)
    return h @ h.T / h.shape[1]


@pytest.mark.parametrize("normalise", ["actnorm", "centre"])
def test_infinite_width_kernel_is_the_limit_of_wide_random_frontends(digits, normalise):
    prior, k, pool = PsfPrior("softmax", 0.5), 5, 2
    geom = PatchGeometry(1, (14, 14), k, pool)
    centre, scatter = patch_statistics(digits, geom)
    if normalise == "actnorm":
        moment = prior.weighted_second_moment(scatter, n_samples=1 << 17)
    else:
        moment = prior.second_moment(geom.n_psf)  # = m m^T + Cov(p): mean + covariance terms
    x = digits[:10]
    limit = optical_gram(x, [], OpticalFeatures.from_factor(factor_psd(moment), geom, centre)).train
    errors = {}
    for width in (4, 64, 1024):
        errs = []
        for seed in range(4):
            psfs = prior.sample(width, 1, k, torch.Generator().manual_seed(100 * width + seed))
            emp = _wide_kernel(x, digits, psfs, pool, normalise == "actnorm")
            errs.append(float((emp - limit).norm() / limit.norm()))
        errors[width] = sum(errs) / len(errs)
    # Monte Carlo over K PSFs: error ~ 1/sqrt(K), i.e. 4x smaller per 16x more kernels
    assert errors[64] < errors[4] / 2.5, errors
    assert errors[1024] < errors[64] / 2.5, errors
    assert errors[1024] < 0.005, errors


def _mlp_ntk(z: torch.Tensor, width: int, seed: int) -> torch.Tensor:
    """Empirical NTK of Dense(width) -> ReLU -> Dense(1), NTK parameterisation, no biases."""
    gen = torch.Generator().manual_seed(seed)
    d = z.shape[1]
    params = {
        "w": torch.randn(width, d, generator=gen, dtype=torch.float64),
        "v": torch.randn(1, width, generator=gen, dtype=torch.float64),
    }

    def f(p, x):
        hidden = torch.relu(p["w"] @ x / math.sqrt(d))
        return (p["v"] @ hidden / math.sqrt(width))[0]

    jac = vmap(jacrev(f), in_dims=(None, 0))(params, z)
    flat = torch.cat([j.reshape(len(z), -1) for j in jac.values()], dim=1)
    return flat @ flat.T


def test_digital_composition_is_the_limit_of_wide_mlps(digits):
    """The backend rules (Dense, ReLU arc-cosine) on the optical features of real digits."""
    geom = PatchGeometry(1, (14, 14), 5, 2)
    prior = PsfPrior("softmax", 0.5)
    psfs = prior.sample(2, 1, 5, torch.Generator().manual_seed(1))
    centre, scatter = patch_statistics(digits, geom)
    h = (
        F.avg_pool2d(optical_conv2d(digits[:8], psfs), 2)
        - (psfs.flatten(1) @ centre)[None, :, None, None]
    )
    z = (h / psf_std(psfs, scatter)[None, :, None, None]).flatten(1)
    k0 = z @ z.T / z.shape[1]
    diag = torch.diagonal(k0)
    limit = backend_ntk(KernelPair.frozen_input(k0, diag, diag), hidden=(1,), b_var=0.0)
    errors, means = {}, {}
    for width in (64, 4096):
        emps = [_mlp_ntk(z, width, seed) for seed in range(3)]
        errors[width] = sum(float((e - limit).norm() / limit.norm()) for e in emps) / 3
        means[width] = float((sum(emps) / 3 - limit).norm() / limit.norm())
    assert errors[4096] < errors[64] / 4, errors  # ~ 1/sqrt(width): 8x expected
    assert errors[4096] < 0.06, errors
    assert means[4096] < 0.04, means  # three nets averaged: an effective width of 12288


def test_analytic_ntk_is_the_limit_of_the_autograd_ntk_of_wide_zoo_networks():
    """The 'Done when' check, literally: `ntk_gram` (autograd) of the zoo's random-PSF network
    at growing K against the analytic K -> infinity kernel, relative error falling with K."""
    from onnlab.distill.ntk import ntk_gram
    from onnlab.models.zoo import build_student

    train = load_dataset("mnist", "train", limit=24).images
    x = train[:6]
    geom = PatchGeometry(1, (28, 28), 7, 4)
    centre, scatter = patch_statistics(train.double(), geom)
    moment = PsfPrior().weighted_second_moment(scatter, n_samples=1 << 17)  # zoo's init law
    limit = optical_gram(
        x.double(), [], OpticalFeatures.from_factor(factor_psd(moment), geom, centre)
    ).train
    errors = {}
    for width in (4, 64, 1024):
        errs = []
        for seed in range(3):
            torch.manual_seed(1000 * width + seed)
            model = build_student("mnist", n_kernels=width, hidden=[], pool=4).eval()
            with torch.no_grad():
                model.backend.norm.initialise(model.backend.pool(model.frontend(train)))
            theta = ntk_gram(model, x, params=[model.backend.head[-1].weight]).double()
            emp = theta / (10 * width * geom.n_cells)  # standard parameterisation: C K T K0
            errs.append(float((emp - limit).norm() / limit.norm()))
        errors[width] = sum(errs) / len(errs)
    assert errors[64] < errors[4] / 2.5, errors  # ~ 1/sqrt(K): 4x per 16x more kernels
    assert errors[1024] < errors[64] / 2.5, errors
    assert errors[1024] < 0.003, errors
