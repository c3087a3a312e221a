"""Calibration patterns shown on the SLM: dot grids, random binary patterns, textures.

Kept in one place so that every step (and the report) agrees on what was displayed, and so
tests can regenerate exactly the same patterns from the same seeds.
"""

from __future__ import annotations

import numpy as np


def dot_positions(
    image_hw: tuple[int, int],
    kernel_px: int,
    pitch: int,
    phase: tuple[int, int] = (0, 0),
    dot_px: int = 1,
) -> np.ndarray:
    """(N, 2) integer (y, x) top-left corners of ``dot_px``-square dots on a grid of ``pitch``
    shifted by ``phase``, kept kernel_px // 2 + 1 pixels from the panel edge so that no blob
    is cut by the tile window. A dot's centre is corner + (dot_px − 1) / 2."""
    h, w = image_hw
    m = kernel_px // 2 + 1
    ys = np.arange(m + phase[0], h - m - dot_px + 1, pitch)
    xs = np.arange(m + phase[1], w - m - dot_px + 1, pitch)
    if ys.size == 0 or xs.size == 0:
        raise ValueError(
            f"image_hw {image_hw} too small for dots {m} px from the edge; use a larger panel"
        )
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    return np.stack([yy.ravel(), xx.ravel()], axis=1)


def dot_image(
    image_hw: tuple[int, int], dots: np.ndarray, level: int = 255, dot_px: int = 1
) -> np.ndarray:
    """(H, W) uint8 black panel with ``dot_px``-square bright dots at ``dots`` (corners)."""
    img = np.zeros(image_hw, dtype=np.uint8)
    for dy in range(dot_px):
        for dx in range(dot_px):
            img[dots[:, 0] + dy, dots[:, 1] + dx] = level
    return img


def dot_phases(pitch: int, n: int) -> list[tuple[int, int]]:
    """``n`` grid phases spread over one pitch (more fiducials from the same panel)."""
    side = int(np.ceil(np.sqrt(n)))
    steps = [int(round(i * pitch / side)) for i in range(side)]
    return [(a, b) for a in steps for b in steps][:n]


def random_binary(
    n: int, channels: int, image_hw: tuple[int, int], seed: int, fill: float = 0.25
) -> np.ndarray:
    """(n, C, H, W) uint8 patterns of independent 0/255 pixels, a fraction ``fill`` lit.

    Binary on purpose: only the two ends of the display response (black level and white)
    matter, which are its best-measured points, so a small gamma error cannot leak into PSFs.
    Sparse (fill ≈ 0.25) on purpose: a pixel's information about the PSF grows with the
    pattern variance fill·(1 − fill) while its shot noise grows with the mean light, and
    dimmer frames allow a longer exposure; at 0.25 the PSF error is half that at 0.5.
    """
    if not 0.0 < fill < 1.0:
        raise ValueError(f"fill: expected a fraction in (0, 1), got {fill!r}")
    rng = np.random.default_rng(seed)
    return ((rng.random((n, channels, *image_hw)) < fill) * 255).astype(np.uint8)
