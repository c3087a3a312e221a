"""Batched, seeded data augmentation on tensors (no per-sample Python loop).

Random crops are done by gathering a per-sample window out of a zero-padded batch, which is
the same as translating each image by up to `pad` pixels. Masks (segmentation) get exactly
the same geometric transform as their images.
"""

from __future__ import annotations

import torch


def random_translate(
    x: torch.Tensor, pad: int, generator: torch.Generator, y: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Shift every image by its own random offset in [-pad, pad] (zero fill)."""
    if pad <= 0:
        return x, y
    b, _, h, w = x.shape
    offsets = torch.randint(0, 2 * pad + 1, (2, b), generator=generator).to(x.device)
    rows = offsets[0][:, None] + torch.arange(h, device=x.device)  # (B, H)
    cols = offsets[1][:, None] + torch.arange(w, device=x.device)  # (B, W)
    batch = torch.arange(b, device=x.device)[:, None, None]

    def crop(t: torch.Tensor) -> torch.Tensor:
        padded = torch.nn.functional.pad(t, (pad, pad, pad, pad))
        out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
        return out.permute(0, 3, 1, 2).contiguous()

    return crop(x), (crop(y) if y is not None and y.ndim == 4 else y)


def random_hflip(
    x: torch.Tensor, generator: torch.Generator, y: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Mirror a random half of the images left-right."""
    flip = (torch.rand(x.shape[0], generator=generator) < 0.5).to(x.device)
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    if y is not None and y.ndim == 4:
        y = torch.where(flip[:, None, None, None], y.flip(-1), y)
    return x, y


def augment_batch(
    kind: str, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply an augmentation policy: "none", "shift" (±2 px), "crop_flip" (±4 px + flip), "flip"."""
    if kind == "none":
        return x, y
    if kind == "shift":
        x, y2 = random_translate(x, 2, generator, y)
    elif kind == "crop_flip":
        x, y2 = random_translate(x, 4, generator, y)
        x, y2 = random_hflip(x, generator, y2)
    elif kind == "flip":
        x, y2 = random_hflip(x, generator, y)
    else:
        raise ValueError(f"augment must be 'none', 'shift', 'crop_flip' or 'flip', got {kind!r}")
    return x, y2 if y2 is not None else y
