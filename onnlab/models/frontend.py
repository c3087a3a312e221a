"""The optical frontend: a bank of incoherent PSFs that convolve the displayed image.

Physical constraints are built into the parameterisation instead of being enforced by clipping
after each step (clipping fights the optimiser and silently breaks energy conservation):

    psf[k] = transmission[k] * softmax(raw[k] over (C, kh, kw), restricted to a support mask)
    transmission[k] = max_transmission * sigmoid(raw_transmission[k])

so every PSF is non-negative and carries at most `max_transmission` <= 1 of the incident light,
for any parameter values an optimiser can reach. A support mask lets one stack hold dilated
kernels (the segmentation system's 3x3 taps at three scales live in one 9x9 stack, which is
what a single meta-optic physically implements).

Pseudo-negative kernels (Chang et al. 2018): the optics can only add light, so a signed kernel
is built from two non-negative PSFs whose outputs are subtracted digitally. With
`pseudo_negative=True` the K physical PSFs form K/2 pairs (k, k + K/2) and the frontend
returns K/2 difference maps.

After fabrication, `load_psfs` replaces the design by the measured PSFs (kept exactly, frozen
by default), which is how captured-bench simulations and post-fabrication fine-tuning see the
as-built optics.
"""

from __future__ import annotations

import torch
from torch import nn

from onnlab.optics.convolution import optical_conv2d


def dilated_support(kernel_px: int, taps: int, dilation: int) -> torch.Tensor:
    """(kernel_px, kernel_px) bool mask of a `taps x taps` kernel spread by `dilation`."""
    extent = (taps - 1) * dilation + 1
    if extent > kernel_px:
        raise ValueError(f"dilation {dilation} of {taps} taps needs kernel_px >= {extent}")
    mask = torch.zeros(kernel_px, kernel_px, dtype=torch.bool)
    start = (kernel_px - extent) // 2
    idx = torch.arange(taps) * dilation + start
    mask[idx[:, None], idx[None, :]] = True
    return mask


def checked_psfs(
    psfs: torch.Tensor, frontend: nn.Module, like: torch.Tensor, tol: float
) -> torch.Tensor:
    """Measured PSFs for `load_psfs` of any frontend: shape (K, C, k, k) of ``frontend``,
    finite, non-negative, each carrying energy in (0, max_transmission + tol]; as ``like``'s
    dtype and device (ValueError naming what is wrong)."""
    psfs = torch.as_tensor(psfs)
    f = frontend
    expected = (f.n_kernels, f.in_channels, f.kernel_px, f.kernel_px)
    if tuple(psfs.shape) != expected:
        raise ValueError(f"psfs must have shape {expected}, got {tuple(psfs.shape)}")
    psfs = psfs.to(like)
    if not torch.isfinite(psfs).all() or (psfs < 0).any():
        raise ValueError("psfs must be finite and non-negative (intensities)")
    energy = psfs.sum(dim=(1, 2, 3))
    if (energy > f.max_transmission + tol).any() or (energy <= 0).any():
        raise ValueError(
            f"each PSF must carry energy in (0, {f.max_transmission}], got "
            f"{energy.min().item():.4g}..{energy.max().item():.4g}"
        )
    return psfs


class OpticalFrontend(nn.Module):
    """K trainable (or measured) incoherent PSFs over C colour channels, 'same'-size output.

    Args:
        n_kernels: K, number of physical PSFs (even when `pseudo_negative`).
        in_channels: C, colour channels of the displayed image (1 mono, 3 for R, G, B).
        kernel_px: side of the PSF stack in pixels.
        pseudo_negative: pair PSFs and subtract them digitally (returns K/2 features).
        method: convolution path passed to `optical_conv2d` ("auto", "direct", "fft").
        support: optional (K, kernel_px, kernel_px) bool mask of where light may land.
        max_transmission: upper bound on each PSF's energy (<= 1, lens efficiency).
        init_transmission: starting energy fraction per kernel.
    """

    def __init__(
        self,
        n_kernels: int,
        in_channels: int,
        kernel_px: int,
        pseudo_negative: bool = False,
        method: str = "auto",
        *,
        support: torch.Tensor | None = None,
        max_transmission: float = 1.0,
        init_transmission: float = 0.5,
    ) -> None:
        super().__init__()
        if n_kernels < 1:
            raise ValueError(f"n_kernels must be >= 1, got {n_kernels}")
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        if kernel_px < 1:
            raise ValueError(f"kernel_px must be >= 1, got {kernel_px}")
        if pseudo_negative and n_kernels % 2:
            raise ValueError(f"pseudo_negative needs an even n_kernels, got {n_kernels}")
        if not 0.0 < max_transmission <= 1.0:
            raise ValueError(f"max_transmission must be in (0, 1], got {max_transmission}")
        if not 0.0 < init_transmission < max_transmission:
            raise ValueError(
                f"init_transmission must be in (0, max_transmission={max_transmission}), "
                f"got {init_transmission}"
            )
        if method not in ("auto", "direct", "fft"):
            raise ValueError(f"method must be 'auto', 'direct' or 'fft', got {method!r}")
        self.n_kernels, self.in_channels, self.kernel_px = n_kernels, in_channels, kernel_px
        self.pseudo_negative, self.method = pseudo_negative, method
        self.max_transmission = max_transmission
        shape = (n_kernels, in_channels, kernel_px, kernel_px)
        if support is None:
            support = torch.ones(n_kernels, kernel_px, kernel_px, dtype=torch.bool)
        support = torch.as_tensor(support, dtype=torch.bool)
        if (
            tuple(support.shape) != (n_kernels, kernel_px, kernel_px)
            or not support.flatten(1).any(1).all()
        ):
            raise ValueError(
                f"support must be ({n_kernels}, {kernel_px}, {kernel_px}) with a True per kernel"
            )
        self.register_buffer("support", support)
        # Random logits: distinct kernels from the start (a uniform PSF is a blur, and K equal
        # blurs give the backend K copies of one feature).
        self.raw = nn.Parameter(torch.randn(shape))
        ratio = torch.tensor(init_transmission / max_transmission)
        self.raw_transmission = nn.Parameter(torch.logit(ratio).repeat(n_kernels))
        # Measured PSFs, used instead of the design when `measured_active` is set.
        self.register_buffer("measured", torch.zeros(shape))
        self.register_buffer("measured_active", torch.tensor(False))

    @property
    def n_features(self) -> int:
        """Feature maps produced per image (K, or K/2 with pseudo-negative pairs)."""
        return self.n_kernels // 2 if self.pseudo_negative else self.n_kernels

    def transmission(self) -> torch.Tensor:
        """(K,) energy fraction of each PSF (<= max_transmission <= 1)."""
        if bool(self.measured_active):
            return self.measured.sum(dim=(1, 2, 3))
        return self.max_transmission * torch.sigmoid(self.raw_transmission)

    def psfs(self) -> torch.Tensor:
        """(K, C, k, k) physical PSFs: non-negative, each summing to its transmission <= 1."""
        if bool(self.measured_active):
            return self.measured
        k = self.n_kernels
        logits = self.raw.masked_fill(~self.support[:, None], float("-inf"))
        shape = logits.flatten(1).softmax(dim=1).view_as(self.raw)
        t = self.max_transmission * torch.sigmoid(self.raw_transmission)
        return shape * t.view(k, 1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) image intensities → (B, K', H, W) sensor intensities (K' = n_features)."""
        out = optical_conv2d(x, self.psfs().to(x.dtype), method=self.method)
        if self.pseudo_negative:
            half = self.n_kernels // 2
            out = out[:, :half] - out[:, half:]
        return out

    @torch.no_grad()
    def load_psfs(self, psfs: torch.Tensor, *, trainable: bool = False, tol: float = 1e-4) -> None:
        """Use measured PSFs (K, C, k, k) instead of the design.

        `trainable=False` keeps them exactly and freezes the frontend (post-fabrication the
        optics cannot change). `trainable=True` re-expresses them in the constrained
        parameterisation (zeros become ~1e-12 of the peak) so training can continue from them.
        """
        psfs = checked_psfs(psfs, self, self.raw, tol)
        energy = psfs.sum(dim=(1, 2, 3))
        if not trainable:
            self.measured.copy_(psfs)
            self.measured_active.fill_(True)
            for p in (self.raw, self.raw_transmission):
                p.requires_grad_(False)
            return
        self.measured_active.fill_(False)
        self.support.fill_(True)
        shape = psfs / energy.view(-1, 1, 1, 1)
        floor = 1e-12 * shape.flatten(1).amax(1).view(-1, 1, 1, 1)
        self.raw.copy_(torch.log(shape.clamp_min(floor)))
        ratio = (energy / self.max_transmission).clamp(1e-6, 1 - 1e-6)
        self.raw_transmission.copy_(torch.logit(ratio))
        for p in (self.raw, self.raw_transmission):
            p.requires_grad_(True)

    def extra_repr(self) -> str:
        return (
            f"n_kernels={self.n_kernels}, in_channels={self.in_channels}, "
            f"kernel_px={self.kernel_px}, pseudo_negative={self.pseudo_negative}"
        )
