"""Estimate of the trained hybrid: NTK regression on training subsets, read off a power law.

What `onnlab train` builds is not a linear readout of random PSFs: it is the task's student
(K PSFs, sensor binning, the task's hidden layers) trained on the whole training set, with the
task's augmentation. This estimate predicts that student's test accuracy from theory, with no
factor fitted to trained answers:

1. **Kernel.** The NTK of the student at infinite backend width (`onnlab.estimate.kernels`,
   depth = the task's hidden layers), on the design's K PSFs drawn from the prior, with the
   PSF layer's own gradient term: the gradient of a binned response w.r.t. its PSF is the
   binned patch, so that term is the isotropic patch kernel (`features.PatchKernel`), put at
   the optical kernel's scale (NTK parameterisation). When the student trains with horizontal
   flips, the kernel is the flip average
   ``½[Θ(x, x') + Θ(x, F x')]``: regression on a group-augmented set is regression with the
   group-averaged kernel (Mei, Misiakiewicz & Montanari 2021, "Learning with invariances in
   random features and kernel models").
2. **Learning curve.** Kernel-regression test error falls as a power law of the training-set
   size n over the range where the kernel's spectrum and the target's spectral power follow
   power laws (Spigler, Geiger & Wyart 2020; Bordelon, Canatar & Pehlevan 2020). Errors at
   n = m/16 ... m (each the mean over the disjoint subsets of that size, ridge chosen on the
   validation split) are fitted by least squares in log-log over the range where one power law
   explains them within their sampling noise (`power_law_range`: small n still bends), and the
   line is read at the full training-set size. The fit sees only the estimator's own subsets.

Known limits (scope): random crops are not modelled (a translation-group average would cost
81 Grams; sampled shifts do not form a group and give an indefinite kernel), the PSFs learn only
through their NTK term (linearised), and the line is read 20-45x beyond the largest subset.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from onnlab.estimate.estimator import Estimator
from onnlab.estimate.features import PatchKernel, binned_patches, optical_gram
from onnlab.estimate.kernels import KernelPair, backend_ntk
from onnlab.estimate.regression import classify

# Subset sizes (fractions of the largest, m) whose errors trace the learning curve: a 16x
# baseline, so the read-out 20-45x beyond m amplifies the points' noise about 1x, not 2x.
SUBSET_FRACTIONS = (1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0)
# A smaller-n point joins the fit while it lies within this many standard errors of the line
# through the larger ones: below that the curve still bends (pre-asymptotic), not a power law.
POWER_LAW_SIGMAS = 2.0
MIN_FIT_POINTS = 3
# (m, validation, test) images per task: m^2 Grams and m^3 solves set the cost; validated
# against trained students in `onnlab bench estimate --opt against=trained` (README).
CURVE_SIZES = {"mnist": (1000, 1000, 2000), "cifar10": (2000, 1000, 2000)}
# Precision of the two kernels' large products (the optical features', the patch kernel's C H W;
# diagonals and everything after stay float64): float32 cuts a CIFAR-10 estimate by 13-25 %. Its
# ~1e-7 rounding moves a point of the curve by <= 0.1 (one or two of the 2,000 test images flip)
# and a prediction by <= 0.04 points on 16 estimates (MNIST, CIFAR-10, K = 4..32, seeds 0-1),
# against seed-to-seed stds of 0.1 (MNIST) and 1 point (CIFAR-10) of the estimate itself.
PRODUCT_DTYPE = torch.float32


@dataclass
class CurvePrediction:
    """Accuracy read off the power-law learning curve at ``n_full``, with its evidence."""

    n_kernels: int
    n_full: int
    predicted: float  # accuracy in [0, 1] at n_full
    exponent: float  # d log(error) / d log(n)
    points: list[dict] = field(default_factory=list)  # {"n", "test", "val", "lambda_rel"}
    flips: bool = False
    time_s: float = 0.0
    cpu_s: float = 0.0
    details: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "n_kernels": self.n_kernels,
            "n_full": self.n_full,
            "predicted": 100 * self.predicted,
            "exponent": self.exponent,
            "points": self.points,
            "flips": self.flips,
            "time_s": self.time_s,
            "cpu_s": self.cpu_s,
            **self.details,
        }


def power_law_fit(sizes: list[int], errors: list[float]) -> tuple[float, float]:
    """Least squares of log(error) = a + b log(n): returns (a, b)."""
    if len(sizes) < 2:
        raise ValueError("a learning curve needs at least two training-set sizes")
    xs = [math.log(n) for n in sizes]
    ys = [math.log(max(e, 1e-12)) for e in errors]
    xb, yb = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - xb) ** 2 for x in xs)
    b = sum((x - xb) * (y - yb) for x, y in zip(xs, ys, strict=True)) / sxx
    return yb - b * xb, b


def power_law_range(points: list[dict], n_test: int) -> list[dict]:
    """The largest-n points that one power law explains within their test-sampling noise.

    Starts from the ``MIN_FIT_POINTS`` largest sizes and adds smaller ones while each lies within
    ``POWER_LAW_SIGMAS`` standard errors of the line fitted to the points already taken; the
    standard error combines the point's own (binomial on ``n_test`` images, in log error) and
    the fitted line's at that n (propagated from the chosen points' errors). Uses only the
    estimator's own curve.
    """

    def log_sigma(point: dict) -> float:
        error = min(max(1.0 - point["test"], 1e-12), 1.0 - 1e-12)
        return math.sqrt(error * (1.0 - error) / n_test) / error

    chosen = points[-MIN_FIT_POINTS:]
    for point in reversed(points[:-MIN_FIT_POINTS]):
        xs = [math.log(p["n"]) for p in chosen]
        a, b = power_law_fit([p["n"] for p in chosen], [1.0 - p["test"] for p in chosen])
        x, mean = math.log(point["n"]), sum(xs) / len(xs)
        sxx = sum((xi - mean) ** 2 for xi in xs)
        line_var = sum(
            (1 / len(xs) + (x - mean) * (xi - mean) / sxx) ** 2 * log_sigma(p) ** 2
            for xi, p in zip(xs, chosen, strict=True)
        )
        sigma = math.sqrt(log_sigma(point) ** 2 + line_var)
        residual = math.log(max(1.0 - point["test"], 1e-12)) - (a + b * x)
        if abs(residual) > POWER_LAW_SIGMAS * sigma:
            break
        chosen = [point, *chosen]
    return chosen


def _flip_width(images: torch.Tensor) -> torch.Tensor:
    return images.flip(-1)


def trained_hybrid_estimate(
    est: Estimator,
    psfs: torch.Tensor,
    n_full: int,
    *,
    flips: bool = False,
    trainable_psfs: bool = True,
    fractions: tuple[float, ...] = SUBSET_FRACTIONS,
) -> CurvePrediction:
    """Predicted test accuracy of the trained student at ``n_full`` training images.

    ``est`` holds the architecture (with the task's hidden layers) and the splits; its train
    split (a seeded random draw) is the largest subset m, and each smaller size n is scored on
    every disjoint block of n consecutive images of it.
    """
    if est.arch.kind != "classification":
        raise ValueError("the learning-curve estimate is for classification tasks")
    start, cpu0 = time.perf_counter(), time.process_time()
    train, val, test = est.train, est.val, est.test
    features = est.psf_features(psfs)
    hidden = est.arch.hidden

    # the PSF layer's own NTK term: the gradient of a binned response w.r.t. its PSF is the
    # binned patch, so Θ_psf(x, x') = the isotropic patch kernel, carried on the NTK side
    geom = est.arch.geometry
    mean_image = train.images.to(torch.float64).mean(0, keepdim=True)
    centre = binned_patches(mean_image, geom).mean(-1)[0]  # mean binned patch (linear in x)
    patches = PatchKernel.build(geom, None if est.arch.normalise == "none" else centre)
    sets = {"train": train.images, "val": val.images, "test": test.images}
    patch_rows = (
        {name: patches.features(x, PRODUCT_DTYPE) for name, x in sets.items()}
        if trainable_psfs
        else {}
    )

    def kernels(mirror: bool) -> tuple[torch.Tensor, ...]:
        """Θ(train, C), Θ(val, C), Θ(test, C) for columns C = train images (or mirrored)."""
        columns = _flip_width(train.images) if mirror else train.images
        names = ["val", "test"] + (["train"] if mirror else [])
        g = optical_gram(
            columns,
            [sets[n] for n in names],
            features,
            square=not mirror,
            product_dtype=PRODUCT_DTYPE,
        )
        rows = [] if mirror else [(g.train, g.diag_train)]  # mirror: the train rows come last
        rows += list(zip(g.cross, g.diag_cross, strict=True))
        if trainable_psfs:
            cols = patches.features(columns, PRODUCT_DTYPE) if mirror else patch_rows["train"]
            # NTK parameterisation: the PSF layer's gradient kernel at the scale of its output's
            # (both means over the column images: K0(x, x) and the patch kernel's diagonal)
            scale = float(g.diag_train.mean() / patches.diagonal(cols).mean())
            ntk0 = [] if mirror else [patches.block(cols, cols, scale, PRODUCT_DTYPE)]
            ntk0 += [patches.block(patch_rows[n], cols, scale, PRODUCT_DTYPE) for n in names]
        else:
            ntk0 = [torch.zeros_like(k) for k, _ in rows]
        pairs = [KernelPair(k, n0, d, g.diag_train) for (k, d), n0 in zip(rows, ntk0, strict=True)]
        if mirror:  # rows: train (against mirrored columns), val, test
            pairs = [pairs[2], pairs[0], pairs[1]]
        return tuple(backend_ntk(kp, hidden) for kp in pairs)

    k_train, k_val, k_test = kernels(mirror=False)
    if flips:  # the flip-averaged kernel: columns against the mirrored training images
        f_train, f_val, f_test = kernels(mirror=True)
        k_train = 0.5 * (k_train + 0.5 * (f_train + f_train.T))
        k_val, k_test = 0.5 * (k_val + f_val), 0.5 * (k_test + f_test)
    m = train.images.shape[0]
    sizes = sorted({max(2, round(m * fr)) for fr in fractions})
    points = []
    for n in sizes:
        # every disjoint subset of size n in the m images (m / n of them): their mean error is
        # the point, so the smaller sizes (cheap to solve) carry less training-draw noise
        runs = []
        for lo in range(0, m - n + 1, n):
            rows = slice(lo, lo + n)
            runs.append(
                classify(
                    k_train[rows, rows],
                    train.targets[rows],
                    k_val[:, rows],
                    val.targets,
                    k_test[:, rows],
                    test.targets,
                    est.arch.n_outputs,
                    est.lambdas,
                )
            )
        points.append(
            {
                "n": n,
                "subsets": len(runs),
                "test": sum(r.score for r in runs) / len(runs),
                "val": sum(r.val_score for r in runs) / len(runs),
                "lambda": [r.lambda_rel for r in runs],
            }
        )
    fit = power_law_range(points, test.images.shape[0])
    for p in points:
        p["in_fit"] = p in fit
    a, b = power_law_fit([p["n"] for p in fit], [1.0 - p["test"] for p in fit])
    predicted = 1.0 - math.exp(a + b * math.log(n_full)) if n_full > m else points[-1]["test"]
    return CurvePrediction(
        n_kernels=psfs.shape[0],
        n_full=n_full,
        predicted=max(predicted, 0.0),
        exponent=b,
        points=points,
        flips=flips,
        time_s=time.perf_counter() - start,
        cpu_s=time.process_time() - cpu0,
    )
