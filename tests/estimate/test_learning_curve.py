"""The learning-curve estimate of the trained hybrid (onnlab.estimate.learning_curve)."""

import math

import pytest
import torch

from onnlab.data import load_dataset
from onnlab.estimate.estimator import Architecture, Estimator, Split
from onnlab.estimate.learning_curve import power_law_fit, trained_hybrid_estimate


def test_power_law_fit_recovers_an_exact_power_law():
    sizes = [250, 500, 1000, 2000]
    errors = [0.3 * n**-0.42 for n in sizes]
    a, b = power_law_fit(sizes, errors)
    assert b == pytest.approx(-0.42, abs=1e-12)
    assert math.exp(a) == pytest.approx(0.3, rel=1e-12)
    with pytest.raises(ValueError, match="two"):
        power_law_fit([100], [0.1])


def _estimator(images: torch.Tensor, labels: torch.Tensor, n_train: int) -> Estimator:
    arch = Architecture("classification", 1, (28, 28), 10, 7, 4, (32,))
    train = Split(images[:n_train], labels[:n_train])
    val = Split(images[n_train : n_train + 60], labels[n_train : n_train + 60])
    test = Split(images[n_train + 60 :], labels[n_train + 60 :])
    return Estimator(arch, train, val, test, seed=0)


@pytest.fixture(scope="module")
def digits():
    ds = load_dataset("mnist", "train", None, seed=0, limit=320)
    return ds.images, ds.targets


def test_flip_average_is_the_plain_kernel_on_mirror_symmetric_images(digits):
    """F x = x for every image: the flip-averaged kernel must equal the plain one exactly."""
    images, labels = digits
    symmetric = 0.5 * (images + images.flip(-1))
    est = _estimator(symmetric, labels, 200)
    psfs = est.prior.sample(4, 1, 7, torch.Generator().manual_seed(0))
    plain = trained_hybrid_estimate(est, psfs, 55_000)
    averaged = trained_hybrid_estimate(est, psfs, 55_000, flips=True)
    assert averaged.points == plain.points
    assert averaged.predicted == pytest.approx(plain.predicted, abs=1e-12)
    # on real (asymmetric) digits the mirrored columns change the kernel
    est = _estimator(images, labels, 200)
    assert trained_hybrid_estimate(est, psfs, 55_000, flips=True).points != (
        trained_hybrid_estimate(est, psfs, 55_000).points
    )


def test_curve_is_read_at_the_full_size_and_not_beyond_the_data(digits):
    images, labels = digits
    est = _estimator(images, labels, 200)
    psfs = est.prior.sample(4, 1, 7, torch.Generator().manual_seed(1))
    pred = trained_hybrid_estimate(est, psfs, 55_000)
    assert [p["n"] for p in pred.points] == [12, 25, 50, 100, 200]
    assert [p["subsets"] for p in pred.points] == [16, 8, 4, 2, 1]
    fit = [p for p in pred.points if p["in_fit"]]
    assert [p["n"] for p in fit] == [p["n"] for p in pred.points][-len(fit) :]
    assert len(fit) >= 3
    a, b = power_law_fit([p["n"] for p in fit], [1 - p["test"] for p in fit])
    assert pred.exponent == pytest.approx(b)
    assert 1 - pred.predicted == pytest.approx(math.exp(a) * 55_000**b)
    # a full set no larger than the subset: the measured point, no extrapolation
    assert trained_hybrid_estimate(est, psfs, 200).predicted == pred.points[-1]["test"]


def test_power_law_range_drops_small_n_points_off_the_line_only():
    from onnlab.estimate.learning_curve import power_law_range

    sizes = [62, 125, 250, 500, 1000]
    on_line = [{"n": n, "test": 1 - 2.0 * n**-0.5} for n in sizes]
    assert power_law_range(on_line, 2000) == on_line
    bent = [dict(p) for p in on_line]
    bent[0]["test"] -= 0.05  # the curve still bends at the smallest n: 5 points off
    bent[1]["test"] -= 0.001  # within the noise of 2,000 test images
    assert power_law_range(bent, 2000) == bent[1:]
    assert power_law_range(bent, 10) == bent  # with 10 test images nothing is significant


def test_trainable_psfs_add_the_patch_kernel(digits):
    """The PSF layer's gradient term changes the kernel (frozen PSFs drop it)."""
    images, labels = digits
    est = _estimator(images, labels, 200)
    psfs = est.prior.sample(2, 1, 7, torch.Generator().manual_seed(2))
    frozen = trained_hybrid_estimate(est, psfs, 55_000, trainable_psfs=False)
    trainable = trained_hybrid_estimate(est, psfs, 55_000)
    assert frozen.points != trainable.points


def test_bench_compares_with_every_trained_reference(tmp_path):
    from onnlab.bench.estimate import run
    from onnlab.bench.estimate_trained import load_references, validate_trained

    out = run(quick=True, against="trained", estimate_seeds=2)  # bundled MNIST, tiny subsets
    refs = load_references()["tasks"]["mnist"]["references"]
    assert [r["n_kernels"] for r in out["per_k"]] == [r["n_kernels"] for r in refs]
    for row, ref in zip(out["per_k"], refs, strict=True):
        assert row["trained"] == ref["test_mean"]
        assert row["abs_error_points"] == pytest.approx(abs(row["predicted"] - row["trained"]))
        assert row["speedup_vs_training"] == pytest.approx(
            ref["train_time_s"] / row["estimate_wall_s"]
        )
        assert row["predicted"] == pytest.approx(sum(p["predicted"] for p in row["per_seed"]) / 2)
    assert out["max_abs_error_points"] == max(r["abs_error_points"] for r in out["per_k"])
    with pytest.raises(ValueError, match="against"):
        run(quick=True, against="paper")
    bad = load_references()
    bad["tasks"]["mnist"]["references"] = [{**refs[0], "n_kernels": 5}]
    path = tmp_path / "refs.json"
    path.write_text(__import__("json").dumps(bad))
    with pytest.raises(ValueError, match="holds 4 kernels"):
        validate_trained("mnist", n_train=100, n_val=50, n_test=50, references=path)


@pytest.mark.parametrize(
    "channels, hw, kernel_px, pool",
    [(1, (12, 12), 3, 2), (3, (8, 12), 4, 2), (2, (9, 9), 5, 1), (1, (28, 28), 7, 4)],
)
def test_patch_kernel_in_pixels_equals_the_isotropic_moment_features(channels, hw, kernel_px, pool):
    """The separable pixel form of the patch kernel is the C k^2 eigen-PSF Gram, exactly
    (odd and even kernels, binning, several channels, ActNorm's centring)."""
    from onnlab.estimate.features import (
        OpticalFeatures,
        PatchGeometry,
        PatchKernel,
        optical_gram,
        patch_statistics,
    )
    from onnlab.estimate.priors import factor_psd

    torch.manual_seed(0)
    geom = PatchGeometry(channels, hw, kernel_px, pool)
    x = torch.rand(7, channels, *hw, dtype=torch.float64)
    y = torch.rand(5, channels, *hw, dtype=torch.float64)
    centre, _ = patch_statistics(x, geom)
    eye = torch.eye(geom.n_psf, dtype=torch.float64)
    isotropic = OpticalFeatures.from_factor(factor_psd(eye), geom, centre)
    reference = optical_gram(x, [y], isotropic)
    # float32 feature products: ~1e-6 of the kernel's scale, the diagonals still float64
    low = optical_gram(x, [y], isotropic, product_dtype=torch.float32)
    scale_tol = {"atol": 1e-5 * float(reference.train.abs().max()), "rtol": 0.0}
    torch.testing.assert_close(low.train, reference.train, **scale_tol)
    torch.testing.assert_close(low.cross[0], reference.cross[0], **scale_tol)
    assert low.train.dtype == torch.float64
    torch.testing.assert_close(low.diag_cross[0], reference.diag_cross[0], rtol=1e-12, atol=0)
    kernel = PatchKernel.build(geom, centre)
    fx, fy = kernel.features(x), kernel.features(y)
    tol = {"atol": 1e-12 * float(reference.train.abs().max()), "rtol": 0.0}
    torch.testing.assert_close(kernel.block(fx, fx), reference.train, **tol)
    torch.testing.assert_close(kernel.block(fy, fx), reference.cross[0], **tol)
    torch.testing.assert_close(kernel.diagonal(fx), reference.diag_train, **tol)
    # the learning curve's reduced-precision product: float64 out, ~1e-6 relative, scaled
    scale = 0.37
    low = kernel.block(fy, fx, scale, torch.float32)
    assert low.dtype == torch.float64
    torch.testing.assert_close(
        low,
        scale * reference.cross[0],
        atol=1e-5 * scale * float(reference.train.abs().max()),
        rtol=0,
    )
