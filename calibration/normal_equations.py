"""Per-kernel normal equations of the calibration model, from box-only basis responses.

Why a module of its own: the forward model (`calibration.forward`) says what the camera sees;
fitting PSFs needs its *linear* structure instead — for each kernel, the Gram matrix of the
responses to every PSF pixel over that kernel's camera box. Built here without iterating the
model: a one-pixel PSF only shifts the misaligned image, and just the box is resampled.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from calibration.forward import ForwardModel
from onnlab.optics import misalign


def tile_boxes(model: ForwardModel, pad: int = 1) -> list[tuple[int, int, int, int]]:
    """(y0, y1, x0, x1) camera bounding box of each registered tile window, grown by ``pad``
    (bilinear spread); clipped to the frame. Tiles are gap_px apart, so boxes hold exactly
    one kernel's light."""
    t = model.tiles
    h, w = t.image_hw
    corners = np.array([[0, 0], [0, w - 1], [h - 1, 0], [h - 1, w - 1]], np.float64)
    boxes = []
    hh, ww = t.camera_hw
    for o in t.tile_origins_px():
        p = model.geometry.camera_from_canvas(o + corners, t.centre_px)
        y0 = max(int(np.floor(p[:, 0].min())) - pad, 0)
        x0 = max(int(np.floor(p[:, 1].min())) - pad, 0)
        y1 = min(int(np.ceil(p[:, 0].max())) + pad + 1, hh)
        x1 = min(int(np.ceil(p[:, 1].max())) + pad + 1, ww)
        boxes.append((y0, y1, x0, x1))
    return boxes


def register_box(
    grid: torch.Tensor,
    box: tuple[int, int, int, int],
    images: torch.Tensor,
    origin_yx: tuple[int, int],
    camera_hw: tuple[int, int],
) -> torch.Tensor:
    """Registered camera pixels of ``box`` for (M, h, w) images placed alone on the nominal
    camera canvas with their pixel (0, 0) at integer ``origin_yx`` (negative allowed).

    Equal to `ForwardModel.register` of a canvas holding only these images (cut to the
    camera frame, zeros elsewhere) followed by cutting ``box``, but it resamples just the box
    from just the images: per-kernel normal equations need each kernel's basis responses in
    its own box only, and building M full-frame canvases per kernel group cost most of a
    large optic's calibration (56 RGB kernels: 867 basis images of a 0.3-Mpx frame each).
    """
    y0, y1, x0, x1 = box
    hh, ww = camera_hw
    oy, ox = origin_yx
    m, h, w = images.shape
    # the canvas is cut to the camera frame: rows/cols of the images outside it are dark
    rows = torch.arange(oy, oy + h)
    cols = torch.arange(ox, ox + w)
    inside = ((rows >= 0) & (rows < hh))[:, None] & ((cols >= 0) & (cols < ww))[None, :]
    if not bool(inside.all()):
        images = images * inside.to(images)
    g = grid[:, y0:y1, x0:x1].to(images)
    # canvas pixel coordinates (align_corners=False) -> the images' own normalised coordinates
    px = ((g[..., 0] + 1) * ww - 1) / 2 - ox
    py = ((g[..., 1] + 1) * hh - 1) / 2 - oy
    local = torch.stack([(2 * px + 1) / w - 1, (2 * py + 1) / h - 1], dim=-1)
    out = F.grid_sample(
        images[:, None],
        local.expand(m, -1, -1, -1),
        mode="bilinear",
        padding_mode="zeros",
        align_corners=False,
    )
    return out[:, 0]


def psf_normal_equations(
    model: ForwardModel,
    intensity: torch.Tensor,
    target: torch.Tensor,
    kernel_px: int,
    *,
    weights: torch.Tensor | None = None,
    extra: torch.Tensor | None = None,
    chunk: int = 16,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, torch.Tensor | None]:
    """Per-kernel normal equations of  target ≈ model.signal(intensity, psfs)  in the PSFs.

    The chain is linear in the PSFs and a PSF that is a single lit pixel just shifts the
    (misaligned) image, so the response to every PSF pixel ("basis") is one shift + tile +
    register; its Gram matrix restricted to each tile's box gives G_k = A_kᵀA_k and
    b_k = A_kᵀy_k exactly, in a fraction of the time of iterating the full model.
    ``weights`` (N, H, W), e.g. inverse noise variances, give AᵀWA, AᵀWy and yᵀWy instead.
    ``extra`` (N, T, H, W) are further right-hand sides (e.g. the columns of a geometry
    Jacobian) for which AᵀW·extra (K, n, T) is returned as the fifth output (else None).
    Returns G (K, n, n), b (K, n), yᵀy (K,), the number of pixels used per kernel summed
    over frames (n = C·k²), and the extra products.
    """
    gram, rhs, yty, pixels, rhs_x = box_normal_equations(
        model,
        intensity,
        kernel_px,
        tile_boxes(model),
        target=target,
        weights=weights,
        extra=extra,
        chunk=chunk,
        max_rows=1024,
    )
    assert rhs is not None and yty is not None
    return gram, rhs, yty, pixels, rhs_x


def box_normal_equations(
    model: ForwardModel,
    intensity: torch.Tensor,
    kernel_px: int,
    boxes: list[tuple[int, int, int, int]],
    *,
    extension_px: int = 0,
    target: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
    extra: torch.Tensor | None = None,
    chunk: int = 16,
    max_rows: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, int, torch.Tensor | None]:
    """Per-kernel AᵀWA, AᵀWy, yᵀWy and AᵀW·extra over each kernel's camera box.

    A's columns are the basis responses of the C·k² PSF pixels: the misaligned images shifted
    by each pixel's offset (PSF pixel u sits at u - k // 2), grown by ``extension_px`` on every
    side (a window PSF spreads light past its tile), tiled at the kernel's origin and
    registered into its box (`register_box`). Shared by the kernel-window fit
    (`psf_normal_equations`) and the full-support window fit
    (`calibration.fitting.leakage.window_gram`). Basis responses are float32 (accumulated in
    float64): 1e-7 relative error is far below any photon noise, at half the cost. Without
    ``target`` the second and third outputs are None. Returns also the pixels used per kernel
    summed over frames.
    """
    t = model.tiles
    n_c = intensity.shape[1]
    k, e = int(kernel_px), int(extension_px)
    n = n_c * k * k
    dtype, f32 = torch.float64, torch.float32
    gram = torch.zeros(t.n_kernels, n, n, dtype=dtype)
    rhs = None if target is None else torch.zeros(t.n_kernels, n, dtype=dtype)
    yty = None if target is None else torch.zeros(t.n_kernels, dtype=dtype)
    rhs_x = None if extra is None else torch.zeros(t.n_kernels, n, extra.shape[1], dtype=dtype)
    g = model.geometry
    h, w = t.image_hw
    hh, ww = h + 2 * e, w + 2 * e
    before, after = e + k - 1 - k // 2, e + k // 2  # every shift is a plain slice
    origins = t.tile_origins_px().astype(int) - e
    step = max(1, min(chunk, max_rows // n))  # basis canvases per batch: n·step ≤ max_rows
    grid = model._grid.to(f32)
    with torch.no_grad():
        for s in range(0, intensity.shape[0], step):
            x = misalign(
                intensity[s : s + step].to(f32), g.image_shift.to(f32), g.image_rotation.to(f32)
            )
            wt = None if weights is None else weights[s : s + step].to(f32)
            xp = F.pad(x, (before, after, before, after))
            shifted = torch.stack(
                [
                    xp[:, c, k - 1 - u : k - 1 - u + hh, k - 1 - v : k - 1 - v + ww]
                    for c in range(n_c)
                    for u in range(k)
                    for v in range(k)
                ]
            ).reshape(n * x.shape[0], hh, ww)  # basis response of every PSF pixel
            for j, (y0, y1, x0, x1) in enumerate(boxes):
                origin = (int(origins[j][0]), int(origins[j][1]))
                ak = register_box(grid, boxes[j], shifted, origin, t.camera_hw).reshape(n, -1)
                wk = ak if wt is None else ak * wt[:, y0:y1, x0:x1].reshape(1, -1)
                gram[j] += (wk @ ak.T).to(dtype)
                if rhs is not None and yty is not None and target is not None:
                    yk = target[s : s + step, y0:y1, x0:x1].to(f32).reshape(-1)
                    wy = yk if wt is None else yk * wt[:, y0:y1, x0:x1].reshape(-1)
                    rhs[j] += (wk @ yk).to(dtype)
                    yty[j] += (wy @ yk).to(dtype)
                if rhs_x is not None and extra is not None:
                    ex = extra[s : s + step, :, y0:y1, x0:x1].to(f32)
                    ex = ex.permute(0, 2, 3, 1).reshape(-1, ex.shape[1])
                    rhs_x[j] += (wk @ ex).to(dtype)
    per_kernel = int(np.mean([(y1 - y0) * (x1 - x0) for y0, y1, x0, x1 in boxes]))
    return gram, rhs, yty, per_kernel * int(intensity.shape[0]), rhs_x
