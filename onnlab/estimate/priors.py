"""Distributions of random physical PSFs and the moments the infinite-width kernel needs.

Why moments: with the PSFs frozen and a linear readout, every kernel of the estimator is a
quadratic form of image patches, ``patch(x)^T M patch(x')``, and the PSF distribution enters
*only* through one (n, n) matrix ``M = E[w(p) p p^T]`` (n = C * k * k entries of a PSF, w the
readout normalisation, 1 without per-kernel scaling). For K random PSFs the empirical kernel uses
the sample average of ``w(p_k) p_k p_k^T``; as K -> infinity the law of large numbers replaces it
by the expectation. Non-negative PSFs have a non-zero mean m, so ``E[p p^T] = m m^T + Cov(p)``:
a mean-PSF term (images blurred by the average PSF) plus a covariance term.

Both priors below are exchangeable over the n entries and have a fixed sum (the transmission t),
so ``E[p p^T] = b 11^T + (a - b) I`` is fixed by two scalars, which are exact (Dirichlet) or a
one-dimensional integral (softmax of Gaussians, the law of `OpticalFrontend`'s random
initialisation).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

# Samples drawn per chunk when a moment has no closed form (memory: chunk * n doubles).
_CHUNK = 8192


@dataclass(frozen=True)
class PsfPrior:
    """Law of one random PSF (C, k, k): non-negative, summing to `transmission`.

    kind "softmax": ``t * softmax(z)``, ``z ~ N(0, logit_std^2 I)`` over all C*k*k entries, the
    exact law of `onnlab.models.frontend.OpticalFrontend` at initialisation (logit_std 1,
    t = init_transmission 0.5). kind "dirichlet": ``t * Dirichlet(alpha)`` (closed-form moments;
    alpha = 1 normalises i.i.d. exponential intensities, a fully developed speckle).
    """

    kind: str = "softmax"
    transmission: float = 0.5
    logit_std: float = 1.0
    alpha: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in ("softmax", "dirichlet"):
            raise ValueError(f"kind must be 'softmax' or 'dirichlet', got {self.kind!r}")
        if not 0.0 < self.transmission <= 1.0:
            raise ValueError(f"transmission must be in (0, 1], got {self.transmission}")
        if not self.logit_std > 0 or not self.alpha > 0:
            raise ValueError("logit_std and alpha must be positive")

    def sample(
        self, n_kernels: int, in_channels: int, kernel_px: int, generator: torch.Generator
    ) -> torch.Tensor:
        """(K, C, k, k) float64 PSFs drawn from the prior."""
        if n_kernels < 1:
            raise ValueError(f"n_kernels must be >= 1, got {n_kernels}")
        n = in_channels * kernel_px * kernel_px
        flat = self._sample_flat(n_kernels, n, generator)
        return flat.view(n_kernels, in_channels, kernel_px, kernel_px)

    def _sample_flat(self, count: int, n: int, generator: torch.Generator) -> torch.Tensor:
        if self.kind == "softmax":
            z = torch.randn(count, n, generator=generator, dtype=torch.float64) * self.logit_std
            return self.transmission * z.softmax(dim=1)
        # Dirichlet(alpha) = normalised Gamma(alpha); torch's Gamma sampler takes no generator,
        # so alpha = 1 (exponential) uses inverse-CDF sampling to stay seeded.
        if self.alpha == 1.0:
            g = -torch.log1p(-torch.rand(count, n, generator=generator, dtype=torch.float64))
        else:
            seed = int(torch.randint(0, 2**62, (1,), generator=generator))
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                conc = torch.full((count, n), self.alpha, dtype=torch.float64)
                g = torch.distributions.Gamma(conc, torch.ones_like(conc)).sample()
        return self.transmission * g / g.sum(dim=1, keepdim=True)

    def exchangeable_moments(self, n: int) -> tuple[float, float]:
        """(a, b) = (E[p_i^2], E[p_i p_j], i != j) for a PSF of n entries.

        The fixed sum gives ``n a + n (n - 1) b = t^2``, so only ``E[p_i^2]`` is needed: closed
        form for Dirichlet, a one-dimensional integral for the softmax law
        (`softmax_square_mean`).
        """
        t2 = self.transmission**2
        if n == 1:
            return t2, 0.0
        if self.kind == "dirichlet":
            a = t2 * (self.alpha + 1.0) / (n * (n * self.alpha + 1.0))
        else:
            a = t2 * softmax_square_mean(n, self.logit_std)
        b = (t2 - n * a) / (n * (n - 1))
        return a, b

    def mean_and_covariance(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean PSF m (n,) and covariance Cov(p) (n, n): the two terms of ``E[p p^T]``."""
        a, b = self.exchangeable_moments(n)
        m = torch.full((n,), self.transmission / n, dtype=torch.float64)
        cov = (b - (self.transmission / n) ** 2) * torch.ones(n, n, dtype=torch.float64)
        cov += (a - b) * torch.eye(n, dtype=torch.float64)
        return m, cov

    def second_moment(self, n: int) -> torch.Tensor:
        """``E[p p^T] = m m^T + Cov(p)`` (n, n)."""
        m, cov = self.mean_and_covariance(n)
        return torch.outer(m, m) + cov

    def weighted_second_moment(
        self, scatter: torch.Tensor, n_samples: int = 1 << 17, seed: int = 0
    ) -> torch.Tensor:
        """``E[p p^T / (p^T S p)]`` for a data scatter matrix S (n, n).

        This is the infinite-width moment when every feature map is divided by its own standard
        deviation over the training set (the backend's ActNorm): ``std(p)^2 = p^T S p``. The
        ratio has no closed form, but it is a fixed (n, n) integral over one PSF, evaluated by
        seeded Monte Carlo (relative error ~ 1/sqrt(n_samples), independent of the data size).
        The transmission cancels.
        """
        n = scatter.shape[0]
        gen = torch.Generator().manual_seed(seed)
        acc = torch.zeros(n, n, dtype=torch.float64)
        done = 0
        while done < n_samples:
            m = min(_CHUNK, n_samples - done)
            p = self._sample_flat(m, n, gen)
            q = torch.einsum("si,ij,sj->s", p, scatter, p).clamp_min(1e-300)
            acc += (p / q[:, None]).T @ p
            done += m
        return acc / n_samples


def softmax_square_mean(n: int, sigma: float = 1.0) -> float:
    """``E[s_1^2]`` for ``s = softmax(z)``, ``z ~ N(0, sigma^2 I_n)``, to ~1e-10 relative.

    Monte Carlo is poor here (``e^{2 z}`` is heavy-tailed: ~1 % error at 3e4 draws). Instead
    ``1 / A^2 = int_0^inf u e^{-u A} du`` factorises the expectation over the independent
    logits: ``E[s_1^2] = int_0^inf u g2(u) g0(u)^(n-1) du`` with ``g0(u) = E[exp(-u e^z)]``
    and ``g2(u) = E[e^{2z} exp(-u e^z)]``, each a Gauss-Hermite sum; the outer integral runs
    over log u with the trapezoid rule (smooth, decaying integrand: exponential convergence).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if n == 1:
        return 1.0
    nodes, weights = np.polynomial.hermite.hermgauss(160)
    z = np.sqrt(2.0) * sigma * nodes
    w = weights / np.sqrt(np.pi)
    v = np.linspace(-40.0, 40.0, 8001)
    u = np.exp(v)[:, None]
    ez = np.exp(z)[None, :]
    decay = np.exp(-u * ez)
    g0 = decay @ w
    g2 = (decay * ez**2) @ w
    integrand = u[:, 0] ** 2 * g2 * np.exp((n - 1) * np.log(np.clip(g0, 1e-300, None)))
    return float(np.trapezoid(integrand, v))


def empirical_second_moment(
    psfs: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """``(1/K) sum_k w_k p_k p_k^T`` of K actual PSFs (K, C, k, k): the finite-width moment."""
    flat = psfs.detach().to(torch.float64).flatten(1)
    w = torch.ones(flat.shape[0], dtype=torch.float64) if weights is None else weights
    return (flat * w[:, None]).T @ flat / flat.shape[0]


def psf_std(psfs: torch.Tensor, scatter: torch.Tensor) -> torch.Tensor:
    """(K,) standard deviation of each PSF's feature over the data: sqrt(p^T S p)."""
    flat = psfs.detach().to(torch.float64).flatten(1)
    return torch.einsum("ki,ij,kj->k", flat, scatter, flat).clamp_min(0).sqrt()


def factor_psd(matrix: torch.Tensor, rtol: float = 1e-12) -> torch.Tensor:
    """L (n, r) with ``L L^T = matrix`` for a symmetric PSD matrix, dropping null directions.

    The columns of L are "eigen-PSFs": the kernel of K -> infinity random PSFs equals the kernel
    of r <= n deterministic ones, which is what makes the infinite-width limit cheap.
    """
    sym = 0.5 * (matrix + matrix.T)
    evals, evecs = torch.linalg.eigh(sym)
    keep = evals > rtol * max(float(evals.max()), 1e-300)
    return evecs[:, keep] * evals[keep].sqrt()
