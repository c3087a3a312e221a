"""All-digital teachers: LeNet (MNIST), a small VGG-style CNN (CIFAR-10), U-Net (segmentation).

They only have to be good and cheap enough to train on a CPU: the teacher is trained once and
then queried for logits (KD) or Jacobians (NTKD) at every student step, so its size directly
sets the cost of distillation.
"""

from __future__ import annotations

import torch
from torch import nn


class LeNet(nn.Module):
    """LeNet-5 layout with Caffe's widths (20, 50, 500): ≈0.43 M params, ≥99 % on MNIST."""

    def __init__(
        self, in_channels: int = 1, n_classes: int = 10, image_hw: tuple[int, int] = (28, 28)
    ):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 20, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(20, 50, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        h, w = ((image_hw[0] - 4) // 2 - 4) // 2, ((image_hw[1] - 4) // 2 - 4) // 2
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(50 * h * w, 500), nn.ReLU(), nn.Linear(500, n_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _conv_bn(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class CifarNet(nn.Module):
    """VGG-style CNN with BatchNorm, sized for CPU training (≈40 M MACs per image at width 32).

    Stem at full resolution, then three stages of (max-pool, conv, conv) doubling the width,
    global max-pool and one linear layer — the airbench/ResNet-9 recipe without residuals.

    `flip_tta`: no-grad inference (evaluation, KD soft labels) averages the logits over the image
    and its mirror image (test-time augmentation: +1.5 points for the width-16 net). Training
    and Jacobians see one view, so the teacher's NTK is that of the network itself.
    Training and no-grad inference run channels-last, ≈25 % faster in oneDNN's CPU convolutions.
    """

    def __init__(
        self, in_channels: int = 3, n_classes: int = 10, width: int = 32, flip_tta: bool = False
    ):
        super().__init__()
        self.flip_tta = flip_tta
        w = width
        self.body = nn.Sequential(
            _conv_bn(in_channels, w),
            nn.MaxPool2d(2),
            _conv_bn(w, 2 * w),
            _conv_bn(2 * w, 2 * w),
            nn.MaxPool2d(2),
            _conv_bn(2 * w, 4 * w),
            _conv_bn(4 * w, 4 * w),
            nn.MaxPool2d(2),
            _conv_bn(4 * w, 8 * w),
            _conv_bn(8 * w, 8 * w),
            nn.AdaptiveMaxPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(8 * w, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training and torch.is_grad_enabled():
            # Jacobians (the teacher's NTK): the network itself, one view, and the default
            # layout, because functorch's vmap cannot clone into channels-last
            return self.head(self.body(x))
        x = x.contiguous(memory_format=torch.channels_last)
        logits = self.head(self.body(x))
        if self.flip_tta and not self.training:
            logits = 0.5 * (logits + self.head(self.body(x.flip(-1))))
        return logits


class UNet(nn.Module):
    """U-Net (Ronneberger 2015) with BatchNorm; `depth` poolings, widths base·2^i.

    base 8, depth 3 (default): ≈0.12 M parameters, ≈37 M MACs per 64x64 image.
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 1, base: int = 16, depth: int = 3):
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        widths = [base * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList()
        cin = in_channels
        for w in widths:
            self.down.append(nn.Sequential(_conv_bn(cin, w), _conv_bn(w, w)))
            cin = w
        self.ups = nn.ModuleList()
        self.up_convs = nn.ModuleList()
        for w_hi, w_lo in zip(widths[:0:-1], widths[-2::-1], strict=True):
            self.ups.append(nn.ConvTranspose2d(w_hi, w_lo, 2, stride=2))
            self.up_convs.append(nn.Sequential(_conv_bn(2 * w_lo, w_lo), _conv_bn(w_lo, w_lo)))
        self.out = nn.Conv2d(widths[0], out_channels, 1)
        self.depth = depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        factor = 2**self.depth
        if x.shape[-2] % factor or x.shape[-1] % factor:
            raise ValueError(
                f"image sides must be divisible by {factor}, got {tuple(x.shape[-2:])}"
            )
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else nn.functional.max_pool2d(x, 2))
            skips.append(x)
        x = skips.pop()
        for up, conv in zip(self.ups, self.up_convs, strict=True):
            x = conv(torch.cat([up(x), skips.pop()], dim=1))
        return self.out(x)
