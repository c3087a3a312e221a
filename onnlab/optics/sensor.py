"""As-built deviations of an optical frontend and the camera that reads it (paper Eq. 10).

``y = alpha * sum_mn a[i - m + beta, j - n + beta] (k_mn + delta_mn) + eps``: alpha a per-kernel
brightness gain, beta an image-to-kernel misalignment (sub-pixel shift and rotation), delta a
relative PSF fabrication error, eps sensor noise. The sensor adds Poisson shot noise (in
electrons), Gaussian read noise, full-well / ADC saturation and bit-depth quantisation. Every
effect is differentiable (or has a straight-through gradient) so that physics-aware training and
calibration fits can back-propagate through the same code the simulated bench uses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, model_validator

from onnlab.optics.convolution import Method, optical_conv2d

# ----------------------------------------------------------------------------------- noise RNG


def _randn(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal noise shaped like `like`, drawn from `generator` on the generator's device
    (a CPU generator then gives the same numbers whatever device the signal lives on)."""
    if generator is None:
        return torch.randn_like(like)
    z = torch.randn(like.shape, generator=generator, device=generator.device, dtype=like.dtype)
    return z.to(like.device)


def _poisson(rate: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    if generator is None:
        return torch.poisson(rate)
    return torch.poisson(rate.to(generator.device), generator=generator).to(rate.device)


def straight_through(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Value of `y`, gradient of `x` (identity): for rounding and random draws whose true
    derivative is zero or undefined but whose expectation follows `x`."""
    return x + (y - x).detach()


# ----------------------------------------------------------------------------------- sensor


class SensorModel(BaseModel):
    """Camera model: signal electrons -> digital numbers (DN).

    ``full_scale_e`` fixes the photometry: a feature value of 1.0 integrated for exposure_s = 1
    yields that many photo-electrons, so the simulated bench and calibration agree on units.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    full_scale_e: float = 10_000.0
    read_noise_e: float = 3.0
    gain_dn_per_e: float | None = None  # default: max_dn / full_well_e (full well fills the ADC)
    offset_dn: float = 0.0
    bit_depth: int = 12
    full_well_e: float = 12_000.0
    poisson: bool = True
    read_noise: bool = True
    quantize: bool = True
    saturate: bool = True
    noise_model: Literal["poisson", "gaussian"] = "poisson"

    @model_validator(mode="after")
    def _check(self) -> SensorModel:
        for name in ("full_scale_e", "full_well_e"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be positive, got {v!r}")
        if not (math.isfinite(self.read_noise_e) and self.read_noise_e >= 0):
            raise ValueError(f"read_noise_e must be >= 0, got {self.read_noise_e!r}")
        if self.gain_dn_per_e is not None and not (
            math.isfinite(self.gain_dn_per_e) and self.gain_dn_per_e > 0
        ):
            raise ValueError(f"gain_dn_per_e must be positive, got {self.gain_dn_per_e!r}")
        if not 1 <= self.bit_depth <= 24:
            raise ValueError(f"bit_depth must be between 1 and 24, got {self.bit_depth}")
        if not (math.isfinite(self.offset_dn) and 0 <= self.offset_dn < self.max_dn):
            raise ValueError(f"offset_dn must be in [0, {self.max_dn}), got {self.offset_dn!r}")
        return self

    @property
    def max_dn(self) -> int:
        """Largest digital number the ADC can report."""
        return 2**self.bit_depth - 1

    @property
    def gain(self) -> float:
        """Conversion gain in DN per electron (resolved default)."""
        return (
            self.gain_dn_per_e if self.gain_dn_per_e is not None else self.max_dn / self.full_well_e
        )

    def to_electrons(self, signal: torch.Tensor, exposure_s: float = 1.0) -> torch.Tensor:
        """Expected photo-electrons for a feature-intensity map integrated over exposure_s."""
        if not exposure_s > 0:
            raise ValueError(f"exposure_s must be positive, got {exposure_s!r}")
        return signal * (self.full_scale_e * exposure_s)

    def expected_dn(self, signal_e: torch.Tensor) -> torch.Tensor:
        """Noise-free mean DN (before quantisation and saturation)."""
        return signal_e * self.gain + self.offset_dn

    def variance_dn(self, signal_e: torch.Tensor) -> torch.Tensor:
        """Model variance of the DN output (shot + read + uniform quantisation), unsaturated."""
        var_e = torch.zeros_like(signal_e)
        if self.poisson:
            var_e = var_e + signal_e.clamp_min(0)
        if self.read_noise:
            var_e = var_e + self.read_noise_e**2
        var = var_e * self.gain**2
        return var + 1.0 / 12.0 if self.quantize else var

    def apply(
        self, signal_e: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Electrons -> DN: shot noise, full well, read noise, gain/offset, quantise, ADC clamp.

        Gradients: exact Poisson draws pass the gradient of their mean (straight-through); the
        "gaussian" noise_model instead uses e + sqrt(e) * z, a reparameterised, truly
        differentiable approximation for training. Quantisation is straight-through.
        """
        if not isinstance(signal_e, torch.Tensor) or not signal_e.is_floating_point():
            raise ValueError("signal_e must be a floating-point tensor of electrons")
        e = signal_e.clamp_min(0)
        if self.poisson:
            if self.noise_model == "poisson":
                e = straight_through(e, _poisson(e.detach(), generator))
            else:
                e = e + torch.sqrt(e + 1e-12) * _randn(e, generator)
        if self.saturate:
            e = e.clamp(max=self.full_well_e)
        if self.read_noise and self.read_noise_e > 0:
            e = e + self.read_noise_e * _randn(e, generator)
        dn = e * self.gain + self.offset_dn
        if self.quantize:
            dn = straight_through(dn, torch.round(dn))
        if self.saturate:
            dn = dn.clamp(0, self.max_dn)
        return dn

    def forward(
        self,
        signal: torch.Tensor,
        exposure_s: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Feature intensities -> DN frame (to_electrons then apply)."""
        return self.apply(self.to_electrons(signal, exposure_s), generator)

    def dn_to_signal(self, dn: torch.Tensor, exposure_s: float = 1.0) -> torch.Tensor:
        """Invert the mean response: DN -> feature intensity units (for captured frames)."""
        return (dn - self.offset_dn) / (self.gain * self.full_scale_e * exposure_s)


# ----------------------------------------------------------------------------------- geometry


def misalign(
    images: torch.Tensor,
    shift_px: tuple[float, float] | torch.Tensor = (0.0, 0.0),
    rotation_rad: float | torch.Tensor = 0.0,
    *,
    mode: Literal["bilinear", "nearest", "bicubic"] = "bilinear",
) -> torch.Tensor:
    """Shift (dy, dx) in pixels and rotate about the image centre, differentiably (grid_sample).

    Content moves by +shift (positive dy = down, positive dx = right); a positive rotation turns
    the +x axis towards +y (clockwise as displayed with row 0 on top). Outside the image is dark,
    as on a display. shift_px may be (2,) or (B, 2), rotation_rad a scalar or (B,), tensors with
    gradients included (calibration fits these).
    """
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise ValueError("images must be a (B, C, H, W) tensor")
    is_zero = not isinstance(shift_px, torch.Tensor) and not isinstance(rotation_rad, torch.Tensor)
    if is_zero and tuple(shift_px) == (0.0, 0.0) and rotation_rad == 0.0:
        return images
    b, _, h, w = images.shape
    opts = dict(dtype=images.dtype, device=images.device)
    t = torch.as_tensor(shift_px, **opts)
    if t.shape[-1:] != (2,) or t.ndim > 2:
        raise ValueError(f"shift_px must be (dy, dx) or (B, 2), got shape {tuple(t.shape)}")
    t = t.expand(b, 2)
    th = torch.as_tensor(rotation_rad, **opts).reshape(-1).expand(b)
    c, s = torch.cos(th), torch.sin(th)
    ty, tx = t[:, 0], t[:, 1]
    # Output pixel p samples the input at R(-theta) (p - t), written in grid_sample's normalised
    # coordinates (x: W/2 pixels per unit, y: H/2), hence the aspect-ratio factors.
    row_x = torch.stack([c, s * h / w, -(c * tx + s * ty) * 2 / w], dim=-1)
    row_y = torch.stack([-s * w / h, c, -(-s * tx + c * ty) * 2 / h], dim=-1)
    theta = torch.stack([row_x, row_y], dim=1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode=mode, padding_mode="zeros", align_corners=False)


def perturb_psfs(psfs: torch.Tensor, psf_delta: torch.Tensor | None) -> torch.Tensor:
    """Fabrication error delta as a relative multiplicative perturbation ``k * (1 + delta)``.

    Clamped to stay non-negative (intensity), and each kernel rescaled only if its energy would
    exceed 1 (a passive optic cannot transmit more light than it receives).
    """
    if psf_delta is None:
        return psfs
    if psf_delta.shape != psfs.shape:
        raise ValueError(
            f"psf_delta must have the PSF shape {tuple(psfs.shape)}, got {tuple(psf_delta.shape)}"
        )
    out = (psfs * (1 + psf_delta.to(psfs))).clamp_min(0)
    energy = out.sum(dim=(1, 2, 3), keepdim=True)
    return out / energy.clamp_min(1.0)


def defocus_psfs(
    psfs: torch.Tensor, sigma_px: float | torch.Tensor, *, keep_size: bool = True
) -> torch.Tensor:
    """Gaussian blur of each PSF (defocus of the imaging stage), preserving each kernel's energy.

    Args:
        psfs: (K, C, kh, kw).
        sigma_px: blur standard deviation in sensor pixels, scalar or per kernel (K,);
            differentiable when a tensor (a focus fit can optimise it).
        keep_size: True crops back to (kh, kw) and renormalises to the original energy (the
            kernel window is what the frontend models); False returns the full blurred PSF,
            grown by ceil(3 sigma) on each side, whose sum equals the input's exactly.
    """
    if not isinstance(psfs, torch.Tensor) or psfs.ndim != 4:
        raise ValueError("psfs must be a (K, C, kh, kw) tensor")
    k, c, kh, kw = psfs.shape
    sig = torch.as_tensor(sigma_px, dtype=psfs.dtype, device=psfs.device).reshape(-1)
    if sig.numel() not in (1, k):
        raise ValueError(f"sigma_px must be a scalar or have K={k} entries, got {sig.numel()}")
    if bool((sig < 0).any()):
        raise ValueError("sigma_px must be >= 0")
    smax = float(sig.detach().max())
    if smax == 0.0 and not sig.requires_grad:
        return psfs
    r = max(1, math.ceil(3 * smax))
    taps = torch.arange(-r, r + 1, dtype=psfs.dtype, device=psfs.device)
    g = torch.exp(-(taps**2) / (2 * sig.clamp_min(1e-3)[:, None] ** 2))
    g = (g / g.sum(-1, keepdim=True)).expand(k, -1)
    g = g.repeat_interleave(c, dim=0)  # (K*C, 2r+1), one filter per channel of each kernel
    x = F.pad(psfs.reshape(1, k * c, kh, kw), (r, r, r, r))
    x = F.conv2d(x, g[:, None, :, None], padding=(r, 0), groups=k * c)
    x = F.conv2d(x, g[:, None, None, :], padding=(0, r), groups=k * c)
    out = x.reshape(k, c, kh + 2 * r, kw + 2 * r)
    if not keep_size:
        return out
    out = out[..., r : r + kh, r : r + kw]
    before = psfs.sum(dim=(1, 2, 3), keepdim=True)
    after = out.sum(dim=(1, 2, 3), keepdim=True)
    return out * (before / after.clamp_min(torch.finfo(psfs.dtype).tiny))


# ----------------------------------------------------------------------------------- errors


@dataclass
class FabricationErrors:
    """One draw of the as-built deviations: alpha (gain), beta (shift_px, rotation_rad), delta.

    The simulated bench holds one of these as hidden truth; calibration estimates it.
    """

    gain: torch.Tensor  # (K,) brightness alpha per kernel
    shift_px: tuple[float, float] = (0.0, 0.0)  # beta: (dy, dx) image-to-kernel offset, pixels
    rotation_rad: float = 0.0
    psf_delta: torch.Tensor | None = None  # (K, C, kh, kw) relative PSF error
    meta: dict = field(default_factory=dict)

    @classmethod
    def identity(
        cls, n_kernels: int, in_channels: int = 1, kernel_px: int = 7
    ) -> FabricationErrors:
        """No error at all (a perfectly built system)."""
        return cls(
            gain=torch.ones(n_kernels),
            psf_delta=torch.zeros(n_kernels, in_channels, kernel_px, kernel_px),
        )

    @classmethod
    def sample(
        cls,
        n_kernels: int,
        in_channels: int,
        kernel_px: int,
        seed: int,
        strength: float = 1.0,
        *,
        gain_std: float = 0.1,
        shift_std_px: float = 0.5,
        rotation_std_rad: float = 0.01,
        delta_std: float = 0.15,
    ) -> FabricationErrors:
        """Draw errors from a seeded generator; strength scales all deviations (0 = identity).

        Gain is log-normal (always positive); delta is Gaussian clipped at -1 so that
        ``k * (1 + delta)`` stays non-negative.
        """
        if n_kernels < 1 or in_channels < 1 or kernel_px < 1:
            raise ValueError("n_kernels, in_channels and kernel_px must be >= 1")
        if not (math.isfinite(strength) and strength >= 0):
            raise ValueError(f"strength must be >= 0, got {strength!r}")
        gen = torch.Generator().manual_seed(int(seed))
        gain = torch.exp(strength * gain_std * torch.randn(n_kernels, generator=gen))
        shift = strength * shift_std_px * torch.randn(2, generator=gen)
        rot = strength * rotation_std_rad * float(torch.randn(1, generator=gen))
        shape = (n_kernels, in_channels, kernel_px, kernel_px)
        delta = (strength * delta_std * torch.randn(shape, generator=gen)).clamp_min(-1.0)
        return cls(
            gain=gain,
            shift_px=(float(shift[0]), float(shift[1])),
            rotation_rad=rot,
            psf_delta=delta,
            meta={"seed": int(seed), "strength": float(strength)},
        )

    def perturb(self, psfs: torch.Tensor) -> torch.Tensor:
        """The as-built PSFs (design PSFs with delta applied)."""
        return perturb_psfs(psfs, self.psf_delta)

    def apply(
        self, images: torch.Tensor, psfs: torch.Tensor, method: Method = "auto"
    ) -> torch.Tensor:
        """Eq. 10 without noise: alpha * (misaligned image conv perturbed PSF), (B, K, H, W)."""
        feats = optical_conv2d(
            misalign(images, self.shift_px, self.rotation_rad), self.perturb(psfs), method
        )
        if self.gain.shape != (feats.shape[1],):
            raise ValueError(
                f"gain must have K={feats.shape[1]} entries, got {tuple(self.gain.shape)}"
            )
        return feats * self.gain.to(feats)[None, :, None, None]

    def to_dict(self) -> dict:
        """Plain python/list form (JSON-able) for truth files and calibration reports."""
        return {
            "gain": self.gain.tolist(),
            "shift_px": list(self.shift_px),
            "rotation_rad": self.rotation_rad,
            "psf_delta": None if self.psf_delta is None else self.psf_delta.tolist(),
            "meta": dict(self.meta),
        }

    @classmethod
    def from_dict(cls, d: dict) -> FabricationErrors:
        """Inverse of `to_dict`."""
        delta = d.get("psf_delta")
        return cls(
            gain=torch.tensor(d["gain"], dtype=torch.float32),
            shift_px=tuple(float(v) for v in d.get("shift_px", (0.0, 0.0))),
            rotation_rad=float(d.get("rotation_rad", 0.0)),
            psf_delta=None if delta is None else torch.tensor(delta, dtype=torch.float32),
            meta=dict(d.get("meta", {})),
        )
