"""Digital backends of the hybrid ONN, and the feature normalisation they start with.

Why a normalisation first: the frontend outputs physical intensities (a fraction of the
displayed light, e.g. 0.05 for MNIST through a PSF of transmission 0.5), and on the bench
the camera reports them times an unknown gain. Every backend therefore begins with `ActNorm`,
a per-feature affine `y = (x - shift_k) * scale_k` initialised from the statistics of the
first training batch (Kingma & Dhariwal 2018) and learned afterwards. It is the one place that
knows the feature units, and it is exactly affine, so a calibration that measured a brightness
gain `alpha_k` of the built optics can fold it in (`scale_k /= alpha_k`) without retraining.
Unlike BatchNorm it has no batch-dependent train-mode behaviour, which keeps per-sample
Jacobians (NTK) well defined.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class ActNorm(nn.Module):
    """Per-channel affine with data-dependent initialisation (see module docstring)."""

    def __init__(self, n_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.shift = nn.Parameter(torch.zeros(n_channels))
        self.log_scale = nn.Parameter(torch.zeros(n_channels))
        self.register_buffer("initialised", torch.tensor(False))
        self.eps = eps

    @torch.no_grad()
    def initialise(self, x: torch.Tensor) -> None:
        """Set shift/scale so this batch leaves with zero mean, unit std per channel."""
        dims = [d for d in range(x.ndim) if d != 1]
        mean = x.mean(dim=dims)
        std = x.std(dim=dims) if x.numel() // x.shape[1] > 1 else torch.ones_like(mean)
        self.shift.copy_(mean)
        self.log_scale.copy_(-torch.log(std.clamp_min(self.eps)))
        self.initialised.fill_(True)

    @torch.no_grad()
    def fold_gain(self, gain: torch.Tensor) -> None:
        """Absorb a measured per-feature brightness gain: features x·gain give the same output."""
        gain = torch.as_tensor(gain, dtype=self.shift.dtype, device=self.shift.device)
        self.shift.mul_(gain)
        self.log_scale.sub_(torch.log(gain))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and not bool(self.initialised):
            self.initialise(x.detach())
        view = (1, -1) + (1,) * (x.ndim - 2)
        return (x - self.shift.view(view)) * self.log_scale.exp().view(view)


class ClassifierBackend(nn.Module):
    """Sensor binning (average pool) → ActNorm → fully connected layers → logits.

    Average pooling is what larger camera pixels (or on-sensor binning) do for free, so it
    costs no digital multiply-accumulates; the FC layers carry the nonlinearity.
    """

    def __init__(
        self,
        n_features: int,
        image_hw: tuple[int, int],
        n_classes: int,
        hidden: Sequence[int] = (120,),
        pool: int = 4,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if pool < 1 or image_hw[0] % pool or image_hw[1] % pool:
            raise ValueError(f"pool must divide image_hw {image_hw}, got {pool}")
        self.pool = nn.AvgPool2d(pool) if pool > 1 else nn.Identity()
        self.norm = ActNorm(n_features)
        width = n_features * (image_hw[0] // pool) * (image_hw[1] // pool)
        layers: list[nn.Module] = [nn.Flatten()]
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, n_classes))
        self.head = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.pool(features)))


def _conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU())


class SegmentationBackend(nn.Module):
    """Up-convolution decoder: mask logits (B, 1, H, W) from optical feature maps.

    The optics is linear, and averaging linear features over a region cancels any texture
    finer than the region, so the decoder first rectifies: a per-pixel 1x1 conv + ReLU turns
    the band-pass optical features into local texture energy (the only full-resolution work,
    as cheap as a camera read-out can be followed by). Rectified and raw features are then read
    at three resolutions (binned 4x, 2x, full), decoded coarse-to-fine with transposed
    convolutions, the finer read-outs concatenated in like U-Net skips — the optics replaces
    the encoder. `width=16` (default, sized for CPU training) gives ≈0.13 M parameters and
    ≈75 M MACs per 64x64 image; `width=52` ≈1.1 M, the size of the paper's decoder.
    """

    def __init__(self, n_features: int, width: int = 16) -> None:
        super().__init__()
        if n_features < 1 or width < 1:
            raise ValueError(f"n_features and width must be >= 1, got {n_features}, {width}")
        w = width
        self.norm = ActNorm(n_features)
        self.rectify = nn.Sequential(nn.Conv2d(n_features, 2 * w, 1), nn.ReLU())
        c = n_features + 2 * w  # channels of every read-out
        self.coarse = nn.Sequential(_conv(c, 4 * w), _conv(4 * w, 4 * w))
        self.up1 = nn.ConvTranspose2d(4 * w, 2 * w, 2, stride=2)
        self.mid = _conv(2 * w + c, 2 * w)
        self.up2 = nn.ConvTranspose2d(2 * w, w, 2, stride=2)
        self.fine = nn.Sequential(nn.Conv2d(w + c, w, 1), nn.ReLU())
        self.out = nn.Conv2d(w, 1, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        h, w = features.shape[-2:]
        if h % 4 or w % 4:
            raise ValueError(f"feature maps must have sides divisible by 4, got {(h, w)}")
        f = self.norm(features)
        f = torch.cat([f, self.rectify(f)], dim=1)
        x = self.coarse(nn.functional.avg_pool2d(f, 4))
        x = self.mid(torch.cat([torch.relu(self.up1(x)), nn.functional.avg_pool2d(f, 2)], dim=1))
        x = self.fine(torch.cat([torch.relu(self.up2(x)), f], dim=1))
        return self.out(x)
