"""Stand-alone design PSFs for a simulated bench, from a task name and a seed.

Drivers may not import the model zoo, so a bench config that names no PSF file gets a seeded,
plausible design instead: smooth random non-negative kernels (a random field low-pass filtered
across the kernel window) with per-kernel transmission in [0.3, 0.6], like a lossy meta-optic.
They are NOT trained kernels; they only make the sim bench self-contained.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

TASK_DEFAULTS: dict[str, dict[str, object]] = {
    # channels and SLM image size per task (mirrors onnlab.models.zoo.TASKS; kept here because
    # drivers may not import layer 2)
    "mnist": {"channels": 1, "image_hw": (28, 28)},
    "cifar10": {"channels": 3, "image_hw": (32, 32)},
    "segmentation": {"channels": 1, "image_hw": (64, 64)},
}


def design_psfs(
    task: str = "mnist",
    kernels: int = 8,
    kernel_px: int = 7,
    channels: int | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Seeded (K, C, k, k) float32 PSFs; `channels` defaults to the task's input channels."""
    if task not in TASK_DEFAULTS:
        raise ValueError(f"task: expected one of {sorted(TASK_DEFAULTS)}, got {task!r}")
    if kernels < 1 or kernel_px < 1:
        raise ValueError("kernels and kernel_px: expected >= 1")
    c = int(channels if channels is not None else TASK_DEFAULTS[task]["channels"])
    if c not in (1, 3):
        raise ValueError(f"channels: expected 1 or 3, got {c}")
    gen = torch.Generator().manual_seed(int(seed) * 7919 + sum(map(ord, task)))
    field = torch.rand(kernels * c, 1, kernel_px + 2, kernel_px + 2, generator=gen) ** 2
    smooth = F.avg_pool2d(field, 3, stride=1).reshape(kernels, c, kernel_px, kernel_px)
    transmission = 0.3 + 0.3 * torch.rand(kernels, generator=gen)
    energy = smooth.sum(dim=(1, 2, 3), keepdim=True)
    return (smooth / energy * transmission[:, None, None, None]).to(torch.float32)
