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

Finite K uses the K actual PSFs: for K <= C k^2 their own binned responses, centred and scaled
by ActNorm's training-set statistics, are the features (no patch statistics needed); above that
the moment ``(1/K) sum_k p_k p_k^T / std_k^2`` is factored into <= C k^2 eigen-PSFs. K → infinity
replaces that average by its expectation over the PSF law (`onnlab.estimate.priors`), with the
digital layers composed stax-style (`onnlab.estimate.kernels`). A linear readout is solved on
explicit features, primal or dual, whichever is smaller, one eigendecomposition for the whole
ridge grid (`onnlab.estimate.regression.fit_linear_ridge`); segmentation uses a pixelwise
readout (`onnlab.estimate.segment`).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import torch

from onnlab.estimate.features import (
    OpticalFeatures,
    PatchGeometry,
    binned_response,
    input_metric,
    optical_gram,
    patch_statistics,
)
from onnlab.estimate.kernels import KernelPair, backend_ntk
from onnlab.estimate.priors import PsfPrior, empirical_second_moment, factor_psd, psf_std
from onnlab.estimate.regression import (
    DEFAULT_LAMBDAS,
    accuracy,
    classify,
    fit_linear_ridge,
    one_hot,
    select_ridge,
)
from onnlab.estimate.segment import segment

NORMALISATIONS = ("actnorm", "centre", "none")
# Largest (n_train, D) float64 training-feature matrix kept in memory for the linear readout;
# beyond it the chunked Gram path is used (same predictions, more passes over the images).
FEATURE_BUDGET_BYTES = 1 << 30


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
    cpu_s: float = 0.0

    def as_dict(self) -> dict:
        out = asdict(self)
        out["n_kernels"] = "inf" if self.n_kernels is None else self.n_kernels
        return out


class Estimator:
    """Kernel-regression estimates for one architecture and one train/val/test draw.

    The patch statistics of the training set (ActNorm's mean/covariance for any PSF) are
    needed by the K -> infinity moment (and K > C k^2, where the moment's eigen-PSFs are the
    smaller basis); they are computed once, on first use, and their cost (`setup_s`, `setup_cpu_s`)
    is added to the time of every prediction that uses them, so each reported time is that of
    a stand-alone estimate. A finite design with K <= C k^2 needs no patch statistics at all:
    its features are the K PSFs' own binned responses, normalised like ActNorm.
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
        self._stats: tuple[torch.Tensor, torch.Tensor] | None = None
        self.setup_s = self.setup_cpu_s = 0.0

    # -- training-set patch statistics (lazy) ------------------------------------------------
    def _statistics(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._stats is None:
            start, cpu0 = time.perf_counter(), time.process_time()
            self._stats = patch_statistics(self.train.images, self.arch.geometry)
            self.setup_s = time.perf_counter() - start
            self.setup_cpu_s = time.process_time() - cpu0
        return self._stats

    @property
    def centre(self) -> torch.Tensor:
        """Mean binned patch abar (n,) over the training set."""
        return self._statistics()[0]

    @property
    def scatter(self) -> torch.Tensor:
        """Covariance S (n, n) of binned patches over the training set."""
        return self._statistics()[1]

    # -- moments ---------------------------------------------------------------------------
    def _check_psfs(self, psfs: torch.Tensor) -> None:
        expected = (self.arch.in_channels, self.arch.kernel_px, self.arch.kernel_px)
        if psfs.ndim != 4 or tuple(psfs.shape[1:]) != expected:
            raise ValueError(f"psfs must be (K, {expected}), got {tuple(psfs.shape)}")

    def moment_of(self, psfs: torch.Tensor) -> torch.Tensor:
        """Finite-width moment of the given PSFs (K, C, k, k) under the readout normalisation."""
        self._check_psfs(psfs)
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

    def psf_features(self, psfs: torch.Tensor) -> OpticalFeatures:
        """The network's own features for K PSFs: binned responses, ActNorm from the train set.

        Row k is PSF k with offset = its training mean and scale 1 / (std_k sqrt(K T)) — the
        (1/K)(1/T) normalisation of K0, so K0 = Theta / (C K T) as for the moment form.
        """
        self._check_psfs(psfs)
        geom, flat = self.arch.geometry, psfs.detach().to(torch.float64).flatten(1)
        k = flat.shape[0]
        total = torch.zeros(k, dtype=torch.float64)
        square = torch.zeros(k, dtype=torch.float64)
        images = self.train.images
        step = geom.chunk_images(k * geom.n_cells + images[0].numel())
        for i in range(0, images.shape[0], step):
            out = binned_response(images[i : i + step], flat, geom)
            total += out.sum(dim=(0, 2))
            square += out.square().sum(dim=(0, 2))
        count = images.shape[0] * geom.n_cells
        mean = total / count
        scale = torch.full((k,), (k * geom.n_cells) ** -0.5, dtype=torch.float64)
        if self.arch.normalise == "actnorm":  # unbiased std, as ActNorm.initialise
            var = (square - count * mean.square()) / max(count - 1, 1)
            scale = scale / var.clamp_min(0).sqrt().clamp_min(1e-12)
        if self.arch.normalise == "none":
            mean = torch.zeros_like(mean)
        return OpticalFeatures(flat, mean, scale, geom)

    # -- predictions -----------------------------------------------------------------------
    def predict_psfs(self, psfs: torch.Tensor) -> Prediction:
        """Estimate for this design with these K PSFs (exact empirical NTK of the network)."""
        start, cpu0 = time.perf_counter(), time.process_time()
        self._check_psfs(psfs)
        direct = self.arch.kind == "classification" and psfs.shape[0] <= self.arch.geometry.n_psf
        if direct:  # K <= C k^2: the K PSFs are the smaller basis, no patch statistics needed
            features, uses_stats = self.psf_features(psfs), False
        else:
            features, uses_stats = self._moment_features(self.moment_of(psfs)), True
        return self._predict(features, psfs.shape[0], (start, cpu0), uses_stats)

    def predict_random(self, n_kernels: int, seed: int | None = None) -> Prediction:
        """Estimate for K PSFs drawn from the prior (what an untrained design of K gives)."""
        gen = torch.Generator().manual_seed(self.seed if seed is None else seed)
        g = self.arch
        return self.predict_psfs(self.prior.sample(n_kernels, g.in_channels, g.kernel_px, gen))

    def predict_infinite(self) -> Prediction:
        """Estimate for infinitely many random PSFs (the NTK limit of the same architecture)."""
        start, cpu0 = time.perf_counter(), time.process_time()
        features = self._moment_features(self.infinite_moment())
        return self._predict(features, None, (start, cpu0), True)

    def _moment_features(self, moment: torch.Tensor) -> OpticalFeatures:
        centre = None if self.arch.normalise == "none" else self.centre
        return OpticalFeatures.from_factor(factor_psd(moment), self.arch.geometry, centre)

    def _predict(
        self,
        features: OpticalFeatures,
        n_kernels: int | None,
        started: tuple[float, float],
        uses_stats: bool,
    ) -> Prediction:
        """Solve, score, and time: wall and CPU since `started`, plus the statistics if used."""
        start, cpu0 = started
        details: dict = {"rank": features.rank}
        if self.arch.kind == "segmentation":
            score, val_score, lam, details["threshold"] = self._segment(features)
            metric = "miou"
        else:
            score, val_score, lam, details["solver"] = self._classify(features)
            metric = "accuracy"
        extra, extra_cpu = (self.setup_s, self.setup_cpu_s) if uses_stats else (0.0, 0.0)
        return Prediction(
            n_kernels,
            metric,
            score,
            val_score,
            lam,
            time.perf_counter() - start + extra,
            self.train.images.shape[0],
            self.test.images.shape[0],
            details,
            time.process_time() - cpu0 + extra_cpu,
        )

    def _use_primal(self, features: OpticalFeatures) -> bool:
        """Pixel-space primal solve when it is cheaper (linear readout only; same predictions).

        Rough multiply-accumulate counts of the two routes (eigendecompositions ~10 m^3): the
        feature route computes D = r * T features of every image and solves in min(n, D)
        dimensions; the pixel route builds the (d, d) pixel metric from d basis images.
        """
        if self.solver != "auto":
            return self.solver == "primal"
        geom = self.arch.geometry
        n = self.train.images.shape[0]
        n_all = n + self.val.images.shape[0] + self.test.images.shape[0]
        outputs = self.arch.n_outputs * len(self.lambdas)
        d = geom.in_channels * geom.image_hw[0] * geom.image_hw[1] + 1
        f = features.dim

        def solve(dim: int) -> float:
            small, large = min(n, dim), max(n, dim)
            return small * small * large + 10.0 * small**3 + n_all * dim * outputs

        feature_route = n_all * f * geom.n_psf + solve(f)
        pixel_route = d * f * geom.n_psf + d * d * f + 10.0 * d**3 + n_all * d * d + solve(d)
        return pixel_route < feature_route

    def _classify(self, features: OpticalFeatures) -> tuple:
        """(test accuracy, val accuracy, lambda_rel, solver) of the kernel regression."""
        if not self.arch.hidden:
            if self._use_primal(features):
                # K0(x, x') = [x, 1]^T A [x', 1]: explicit features [x, 1] @ sqrt(A)
                lift = factor_psd(input_metric(features))

                def pixels(x: torch.Tensor) -> torch.Tensor:
                    flat = x.flatten(1).to(torch.float64)
                    ones = torch.ones(len(flat), 1, dtype=torch.float64)
                    return torch.cat([flat, ones], 1) @ lift

                return (*self._linear(pixels, lift.shape[1]), "pixel-primal")
            n = self.train.images.shape[0]
            if 8 * n * features.dim <= FEATURE_BUDGET_BYTES:
                solver = "primal" if features.dim <= n else "dual"
                return (*self._linear(features, features.dim), f"feature-{solver}")
        g = optical_gram(self.train.images, [self.val.images, self.test.images], features)
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
        return res.score, res.val_score, res.lambda_rel, "kernel-dual"

    def _linear(self, phi, dim: int) -> tuple[float, float, float]:
        """Linear readout on explicit features: fit every lambda at once, predict in chunks."""
        step = max(1, (1 << 26) // (8 * max(dim, 1)))  # <= 64 MiB of features per chunk

        def chunks(images: torch.Tensor):
            return (phi(images[i : i + step]) for i in range(0, images.shape[0], step))

        def predict(images: torch.Tensor, lams: tuple[float, ...]) -> dict[float, torch.Tensor]:
            parts = [model.predict(f, lams) for f in chunks(images)]
            return {lam: torch.cat([p[lam] for p in parts]) for lam in lams}

        targets = one_hot(self.train.targets, self.arch.n_outputs)
        model = fit_linear_ridge(torch.cat(list(chunks(self.train.images))), targets, self.lambdas)
        val = select_ridge(predict(self.val.images, model.lambdas), self.val.targets, {}, None)
        # test labels enter only here, after lambda is fixed; one lambda costs 1/L of the grid
        lam = val.lambda_rel
        score = accuracy(predict(self.test.images, (lam,))[lam], self.test.targets)
        return score, val.val_score, lam

    def _segment(self, features: OpticalFeatures) -> tuple:
        centre = None if self.arch.normalise == "none" else self.centre
        factor = features.weights.T
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
