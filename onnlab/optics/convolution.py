"""Incoherent optical convolution and the sensor tiling of its feature maps.

An incoherent imaging system maps an intensity image to ``image * psf`` (a TRUE convolution: the
PSF is mirrored relative to PyTorch's cross-correlating ``conv2d``). Every colour channel's
intensity lands on the same monochrome sensor pixels, so the channels are summed. Two numerically
equivalent paths exist because their costs scale differently: the direct path (one ``conv2d`` call
for all K kernels, cost ~ k^2) wins for the paper's 3x3/7x7 kernels, the FFT path (cost ~ log N,
independent of k) wins for large PSFs such as measured, defocused ones.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

Method = Literal["auto", "direct", "fft"]

# Largest kernel side for which "auto" uses the direct path. Measured on CPU (forward+backward,
# 8 kernels x 3 channels, 28 and 64 px images): direct wins up to 9-11 px, they tie at 13, the FFT
# path is 3-6x faster from 17 px on.
FFT_KERNEL_THRESHOLD = 11


def _fast_len(n: int) -> int:
    """Smallest 2-3-5-smooth integer >= n: FFT libraries are several times faster on those."""
    best = n
    while True:
        m = best
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1:
            return best
        best += 1


def _check_pair(images: torch.Tensor, psfs: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images)
        raise ValueError(f"images must be a (B, C, H, W) tensor, got shape {shape}")
    if not isinstance(psfs, torch.Tensor) or psfs.ndim != 4:
        shape = tuple(psfs.shape) if isinstance(psfs, torch.Tensor) else type(psfs)
        raise ValueError(f"psfs must be a (K, C, kh, kw) tensor, got shape {shape}")
    if psfs.shape[1] != images.shape[1]:
        raise ValueError(
            f"psfs has {psfs.shape[1]} channels but images has {images.shape[1]}: "
            "psfs must be (K, C, kh, kw) with C equal to the image channels"
        )
    if images.device != psfs.device:
        raise ValueError(f"psfs is on {psfs.device} but images is on {images.device}")
    if images.is_complex() or psfs.is_complex():
        raise ValueError("images and psfs must be real intensities (incoherent imaging)")


def _same_pads(k: int) -> tuple[int, int]:
    """(before, after) padding so that the output is 'same' size with the PSF centre at k // 2.

    For odd k this is symmetric; for even k the centre convention matches the FFT path.
    """
    before = k - 1 - k // 2
    return before, k - 1 - before


def conv2d_direct(images: torch.Tensor, psfs: torch.Tensor) -> torch.Tensor:
    """True 'same' convolution via a single ``conv2d`` call over all kernels (flipped weights)."""
    kh, kw = psfs.shape[-2:]
    top, bottom = _same_pads(kh)
    left, right = _same_pads(kw)
    weight = psfs.flip(-2, -1)
    if top == bottom and left == right:
        return F.conv2d(images, weight, padding=(top, left))
    return F.conv2d(F.pad(images, (left, right, top, bottom)), weight)


def conv2d_fft(images: torch.Tensor, psfs: torch.Tensor) -> torch.Tensor:
    """True 'same' convolution via real FFTs, zero-padded to at least the full linear size, so
    the circular convolution never wraps."""
    h, w = images.shape[-2:]
    kh, kw = psfs.shape[-2:]
    fh, fw = _fast_len(h + kh - 1), _fast_len(w + kw - 1)
    spec_x = torch.fft.rfft2(images, s=(fh, fw))  # (B, C, fh, fw//2+1)
    spec_k = torch.fft.rfft2(psfs, s=(fh, fw))  # (K, C, fh, fw//2+1)
    if images.shape[1] <= 4:
        # Few colour channels: an unrolled channel sum of broadcast products is ~1.5x faster
        # (forward+backward, CPU) than einsum's batched complex matmul of tiny matrices.
        spec = spec_x[:, None, 0] * spec_k[None, :, 0]
        for c in range(1, images.shape[1]):
            spec = spec + spec_x[:, None, c] * spec_k[None, :, c]
    else:
        spec = torch.einsum("bcij,kcij->bkij", spec_x, spec_k)
    full = torch.fft.irfft2(spec, s=(fh, fw))
    cy, cx = kh // 2, kw // 2
    return full[..., cy : cy + h, cx : cx + w]


def optical_conv2d(
    images: torch.Tensor, psfs: torch.Tensor, method: Method = "auto"
) -> torch.Tensor:
    """Incoherent image formation: ``out[b, k] = sum_c images[b, c] * psfs[k, c]``.

    Args:
        images: (B, C, H, W) intensities.
        psfs: (K, C, kh, kw) intensity PSFs (the physical kernels, not mirrored).
        method: "direct" (conv2d), "fft" (rfft2) or "auto" (direct for kernels up to
            ``FFT_KERNEL_THRESHOLD`` pixels, FFT beyond). Both give the same numbers (zero
            boundary, PSF centre at index (kh // 2, kw // 2)).

    Returns:
        (B, K, H, W) feature maps, same spatial size as the input, differentiable in both inputs.
    """
    _check_pair(images, psfs)
    if method not in ("auto", "direct", "fft"):
        raise ValueError(f"method must be 'auto', 'direct' or 'fft', got {method!r}")
    dtype = torch.promote_types(images.dtype, psfs.dtype)
    images, psfs = images.to(dtype), psfs.to(dtype)
    if method == "auto":
        method = "direct" if max(psfs.shape[-2:]) <= FFT_KERNEL_THRESHOLD else "fft"
    if method == "direct":
        return conv2d_direct(images, psfs)
    return conv2d_fft(images, psfs)


def _check_grid(rows: int, cols: int, gap_px: int) -> None:
    if int(rows) != rows or rows < 1:
        raise ValueError(f"rows must be a positive integer, got {rows!r}")
    if int(cols) != cols or cols < 1:
        raise ValueError(f"cols must be a positive integer, got {cols!r}")
    if int(gap_px) != gap_px or gap_px < 0:
        raise ValueError(f"gap_px must be a non-negative integer, got {gap_px!r}")


def sensor_shape(tile_hw: tuple[int, int], rows: int, cols: int, gap_px: int) -> tuple[int, int]:
    """Sensor (Hs, Ws) occupied by rows x cols tiles of tile_hw separated by gap_px dark pixels."""
    h, w = tile_hw
    return rows * h + (rows - 1) * gap_px, cols * w + (cols - 1) * gap_px


def tile_onto_sensor(features: torch.Tensor, rows: int, cols: int, gap_px: int) -> torch.Tensor:
    """Place K feature maps row-major on one sensor, as the optics images each kernel's output
    onto its own patch of a single camera (unused tiles stay dark).

    Args:
        features: (B, K, h, w) with K <= rows * cols.
    Returns:
        (B, Hs, Ws) with Hs = rows*h + (rows-1)*gap_px, Ws = cols*w + (cols-1)*gap_px.
    """
    if not isinstance(features, torch.Tensor) or features.ndim != 4:
        raise ValueError("features must be a (B, K, h, w) tensor")
    _check_grid(rows, cols, gap_px)
    b, k, h, w = features.shape
    if k > rows * cols:
        raise ValueError(f"rows*cols = {rows * cols} tiles cannot hold K = {k} features")
    # Pad the kernel axis to a full grid and every tile by a trailing gap, then fold with
    # reshape/permute: no Python loop, a single differentiable copy.
    x = F.pad(features, (0, gap_px, 0, gap_px, 0, rows * cols - k))
    x = x.reshape(b, rows, cols, h + gap_px, w + gap_px).permute(0, 1, 3, 2, 4)
    x = x.reshape(b, rows * (h + gap_px), cols * (w + gap_px))
    hs, ws = sensor_shape((h, w), rows, cols, gap_px)
    return x[:, :hs, :ws]


def cut_tiles(
    sensor: torch.Tensor,
    rows: int,
    cols: int,
    tile_hw: tuple[int, int],
    gap_px: int,
    *,
    n_kernels: int | None = None,
    origin_px: tuple[int, int] = (0, 0),
) -> torch.Tensor:
    """Inverse of `tile_onto_sensor`: cut the row-major tiles back out of a sensor frame.

    Args:
        sensor: (B, Hs, Ws) frame (a larger camera frame is fine: tiles start at origin_px).
        n_kernels: keep only the first K tiles (default rows * cols).
    Returns:
        (B, K, h, w).
    """
    if not isinstance(sensor, torch.Tensor) or sensor.ndim != 3:
        raise ValueError("sensor must be a (B, Hs, Ws) tensor")
    _check_grid(rows, cols, gap_px)
    h, w = (int(v) for v in tile_hw)
    if h < 1 or w < 1:
        raise ValueError(f"tile_hw must be two positive sizes, got {tile_hw!r}")
    k = rows * cols if n_kernels is None else int(n_kernels)
    if not 1 <= k <= rows * cols:
        raise ValueError(f"n_kernels must be in 1..{rows * cols}, got {n_kernels!r}")
    oy, ox = origin_px
    hs, ws = sensor_shape((h, w), rows, cols, gap_px)
    if oy < 0 or ox < 0 or sensor.shape[1] < oy + hs or sensor.shape[2] < ox + ws:
        raise ValueError(
            f"sensor of shape {tuple(sensor.shape[1:])} is too small for {rows}x{cols} tiles "
            f"of tile_hw={tile_hw} with gap_px={gap_px} at origin_px={origin_px}"
        )
    x = sensor[:, oy : oy + hs, ox : ox + ws]
    x = F.pad(x, (0, gap_px, 0, gap_px))
    b = x.shape[0]
    x = x.reshape(b, rows, h + gap_px, cols, w + gap_px).permute(0, 1, 3, 2, 4)
    x = x[..., :h, :w].reshape(b, rows * cols, h, w)
    return x[:, :k]
