"""Pre-fabrication accuracy estimate: kernel regression with the NTK of the designed network.

Architecture (the paper's Table 5, "random PSFs + one FC layer", in onnlab's backend form):
K random physical PSFs (frozen) → sensor binning (``pool``) → ActNorm (per-kernel centring and
scaling, frozen at its training-set initialisation) → [FC → ReLU] * len(hidden) → FC.

Choice: the PSFs are NOT trainable in the NTK. Table 5 measures what *random* optics support,
the physical parameterisation of a PSF (non-negative, energy-bounded) makes its gradient depend
on an arbitrary reparameterisation, and with frozen optics and a linear readout (hidden=()) the
network is linear in its trainable parameters: its empirical NTK never changes during training,
and gradient descent on the MSE from a zero output follows the kernel-regression path exactly
(lambda -> 0 at convergence; the ridge lambda stands for early stopping / weight decay). No
linearisation error. The trained reference (`onnlab.estimate.reference`) therefore trains the
readout only, on the same PSFs.

Physics consequence worth knowing: optics, binning and ActNorm are linear/affine in the image,
so with a linear readout the whole network is a linear classifier of the pixels whatever K is;
K only changes the kernel's metric, and its rank (<= K * cells) when binning is coarse. The
estimate is therefore nearly flat in K once K * cells exceeds the useful pixel dimension; a
digital backend that mixes all features first (``hidden``) inherits the same behaviour.

Finite K uses the K actual PSFs (moment ``(1/K) sum_k p_k p_k^T / std_k^2``); K → infinity
replaces that average by its expectation over the PSF law (`onnlab.estimate.priors`), with the
digital layers composed stax-style (`onnlab.estimate.kernels`). Segmentation uses a pixelwise
readout (`onnlab.estimate.segment`).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import torch

from onnlab.estimate.features import (
    PatchGeometry,
    input_metric,
    optical_gram,
    patch_statistics,
)
from onnlab.estimate.kernels import KernelPair, backend_ntk
from onnlab.estimate.priors import PsfPrior, empirical_second_moment, factor_psd, psf_std
from onnlab.estimate.regression import DEFAULT_LAMBDAS, classify
from onnlab.estimate.segment import segment

NORMALISATIONS = ("actnorm", "centre", "none")


@dataclass(frozen=True)
class Architecture:
    """The network whose accuracy is estimated (everything except the PSF values)."""

    kind: str  # "classification" | "segmentation"
    in_channels: int
    image_hw: tuple[int, int]
    n_outputs: int
    kernel_px: int
    pool: int = 1
    hidden: tuple[int, ...] = ()
    normalise: str = "actnorm"

    def __post_init__(self) -> None:
        if self.kind not in ("classification", "segmentation"):
            raise ValueError(f"kind must be 'classification' or 'segmentation', got {self.kind!r}")
        if self.normalise not in NORMALISATIONS:
            raise ValueError(f"normalise must be one of {NORMALISATIONS}, got {self.normalise!r}")
        if self.kind == "segmentation" and self.pool != 1:
            raise ValueError(
                f"segmentation uses a pixelwise readout: pool must be 1, got {self.pool}"
            )
        if any(h < 1 for h in self.hidden):
            raise ValueError(f"hidden widths must be >= 1, got {self.hidden}")
        _ = self.geometry  # validates kernel_px and pool against the image size

    @property
    def geometry(self) -> PatchGeometry:
        return PatchGeometry(self.in_channels, self.image_hw, self.kernel_px, self.pool)


@dataclass
class Split:
    """Images (N, C, H, W) and targets (labels (N,) or masks (N, 1, H, W))."""

    images: torch.Tensor
    targets: torch.Tensor


@dataclass
class Prediction:
    """One estimate: metric on the test split, the selected ridge, and what it cost."""

    n_kernels: int | None  # None: the infinite-width limit
    metric: str
    score: float
    val_score: float
    lambda_rel: float
    time_s: float
    n_train: int
    n_test: int = 0
    details: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        out = asdict(self)
        out["n_kernels"] = "inf" if self.n_kernels is None else self.n_kernels
        return out


class Estimator:
    """Kernel-regression estimates for one architecture and one train/val/test draw.

    The patch statistics of the training set (ActNorm's mean/covariance for any PSF) are
    computed once here; `setup_s` is added to every prediction's time so that each reported
    time is that of a stand-alone estimate.
    """

    def __init__(
        self,
        arch: Architecture,
        train: Split,
        val: Split,
        test: Split,
        prior: PsfPrior | None = None,
        *,
        lambdas: tuple[float, ...] = DEFAULT_LAMBDAS,
        mc_samples: int = 1 << 17,
        seed: int = 0,
        solver: str = "auto",
        n_pixels: int = 4000,
    ) -> None:
        if solver not in ("auto", "dual", "primal"):
            raise ValueError(f"solver must be 'auto', 'dual' or 'primal', got {solver!r}")
        if solver == "primal" and (arch.hidden or arch.kind != "classification"):
            raise ValueError("solver='primal' needs a linear classification readout (hidden=())")
        for name, split in (("train", train), ("val", val), ("test", test)):
            if split.images.shape[0] < 1:
                raise ValueError(f"{name} split is empty")
            if tuple(split.images.shape[1:]) != (arch.in_channels, *arch.image_hw):
                raise ValueError(
                    f"{name} images have shape {tuple(split.images.shape[1:])}, the architecture "
                    f"expects {(arch.in_channels, *arch.image_hw)}"
                )
        self.arch, self.train, self.val, self.test = arch, train, val, test
        self.prior = prior or PsfPrior()
        self.lambdas, self.mc_samples, self.seed = lambdas, mc_samples, seed
        self.solver, self.n_pixels = solver, n_pixels
        start = time.perf_counter()
        self.centre, self.scatter = patch_statistics(train.images, arch.geometry)
        self.setup_s = time.perf_counter() - start

    # -- moments ---------------------------------------------------------------------------
    def moment_of(self, psfs: torch.Tensor) -> torch.Tensor:
        """Finite-width moment of the given PSFs (K, C, k, k) under the readout normalisation."""
        expected = (self.arch.in_channels, self.arch.kernel_px, self.arch.kernel_px)
        if psfs.ndim != 4 or tuple(psfs.shape[1:]) != expected:
            raise ValueError(f"psfs must be (K, {expected}), got {tuple(psfs.shape)}")
        weights = None
        if self.arch.normalise == "actnorm":
            weights = psf_std(psfs, self.scatter).clamp_min(1e-12) ** -2
        return empirical_second_moment(psfs, weights)

    def infinite_moment(self) -> torch.Tensor:
        """K → infinity moment: E[p p^T] (= m m^T + Cov p), or E[p p^T / p^T S p] with ActNorm."""
        n = self.arch.geometry.n_psf
        if self.arch.normalise == "actnorm":
            return self.prior.weighted_second_moment(self.scatter, self.mc_samples, self.seed)
        return self.prior.second_moment(n)

    # -- predictions -----------------------------------------------------------------------
    def predict_psfs(self, psfs: torch.Tensor) -> Prediction:
        """Estimate for this design with these K PSFs (exact empirical NTK of the network)."""
        start = time.perf_counter()
        moment = self.moment_of(psfs)
        return self._predict(moment, psfs.shape[0], start)

    def predict_random(self, n_kernels: int, seed: int | None = None) -> Prediction:
        """Estimate for K PSFs drawn from the prior (what an untrained design of K gives)."""
        start = time.perf_counter()
        gen = torch.Generator().manual_seed(self.seed if seed is None else seed)
        g = self.arch
        psfs = self.prior.sample(n_kernels, g.in_channels, g.kernel_px, gen)
        return self._predict(self.moment_of(psfs), n_kernels, start)

    def predict_infinite(self) -> Prediction:
        """Estimate for infinitely many random PSFs (the NTK limit of the same architecture)."""
        start = time.perf_counter()
        return self._predict(self.infinite_moment(), None, start)

    def _predict(self, moment: torch.Tensor, n_kernels: int | None, start: float) -> Prediction:
        factor = factor_psd(moment)
        centre = None if self.arch.normalise == "none" else self.centre
        details: dict = {"rank": int(factor.shape[1])}
        if self.arch.kind == "segmentation":
            score, val_score, lam, details["threshold"] = self._segment(factor, centre)
            metric = "miou"
        else:
            score, val_score, lam = self._classify(factor, centre)
            metric = "accuracy"
        elapsed = time.perf_counter() - start + self.setup_s
        return Prediction(
            n_kernels,
            metric,
            score,
            val_score,
            lam,
            elapsed,
            self.train.images.shape[0],
            self.test.images.shape[0],
            details,
        )

    def _use_primal(self, rank: int) -> bool:
        """Pixel-space primal solve when it is cheaper (linear readout only; same predictions)."""
        if self.solver != "auto":
            return self.solver == "primal"
        if self.arch.hidden:
            return False
        geom = self.arch.geometry
        n = self.train.images.shape[0]
        n_all = n + self.val.images.shape[0] + self.test.images.shape[0]
        d = geom.in_channels * geom.image_hw[0] * geom.image_hw[1] + 1
        d_f = geom.n_cells * rank
        dual = n_all * n * d_f + 10 * n**3
        primal = d * d * d_f + n_all * d * d + 10 * d**3
        return primal < dual

    def _classify(self, factor: torch.Tensor, centre: torch.Tensor | None) -> tuple:
        if self._use_primal(factor.shape[1]):
            # K0(x, x') = [x, 1]^T A [x', 1]: explicit features [x, 1] @ sqrt(A)
            lift = factor_psd(input_metric(factor, self.arch.geometry, centre))

            def phi(x: torch.Tensor) -> torch.Tensor:
                flat = x.flatten(1).to(torch.float64)
                return torch.cat([flat, torch.ones(len(flat), 1, dtype=torch.float64)], 1) @ lift

            res = classify(
                phi(self.train.images),
                self.train.targets,
                phi(self.val.images),
                self.val.targets,
                phi(self.test.images),
                self.test.targets,
                self.arch.n_outputs,
                self.lambdas,
                features=True,
            )
            return res.score, res.val_score, res.lambda_rel
        g = optical_gram(
            self.train.images,
            [self.val.images, self.test.images],
            factor,
            self.arch.geometry,
            centre,
        )
        hidden = self.arch.hidden
        train_k = backend_ntk(KernelPair.frozen_input(g.train, g.diag_train, g.diag_train), hidden)
        evals = [
            backend_ntk(KernelPair.frozen_input(c, d, g.diag_train), hidden)
            for c, d in zip(g.cross, g.diag_cross, strict=True)
        ]
        res = classify(
            train_k,
            self.train.targets,
            evals[0],
            self.val.targets,
            evals[1],
            self.test.targets,
            self.arch.n_outputs,
            self.lambdas,
        )
        return res.score, res.val_score, res.lambda_rel

    def _segment(self, factor: torch.Tensor, centre: torch.Tensor | None) -> tuple:
        score, val_score, lam, thr = segment(
            self.arch.geometry,
            factor,
            centre,
            (self.train.images, self.train.targets),
            (self.val.images, self.val.targets),
            (self.test.images, self.test.targets),
            self.lambdas,
            self.arch.hidden,
            self.n_pixels,
            self.seed,
        )
        return score, val_score, lam, thr
