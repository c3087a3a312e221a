"""The bench's image-formation model with fitted (not hidden) parameters, in torch.

One differentiable chain serves three purposes: the PSF deconvolution (linear in the PSFs),
the geometry refinement (differentiable in shift/rotation/scale) and the digital twin
(`calibration.twin`). It is a deliberately simpler model than any bench (real or simulated,
whose model calibration never imports): display response → display-to-optic misalignment
(`onnlab.optics.misalign`) →
`optical_conv2d` with effective PSFs → row-major tiles (`tile_onto_sensor`) on a canvas
placed at ``origin_px`` of the camera frame → similarity registration about the frame centre,
rendered by bilinear resampling → DN = offset + gain · electrons_per_unit · exposure · signal.
What it cannot represent (light beyond the kernel window, a broad background) is learned as
window PSFs and background maps (`calibration.fitting.leakage`) and reported as the fraction
of the captured signal left unexplained.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from onnlab.optics import misalign, optical_conv2d, sensor_shape, tile_onto_sensor


@dataclass(frozen=True)
class TileGeometry:
    """Nominal tile arrangement: rows×cols tiles of image_hw, gap_px apart, at origin_px."""

    rows: int
    cols: int
    gap_px: int
    image_hw: tuple[int, int]
    camera_hw: tuple[int, int]
    n_kernels: int

    @property
    def canvas_hw(self) -> tuple[int, int]:
        return sensor_shape(self.image_hw, self.rows, self.cols, self.gap_px)

    @property
    def origin_px(self) -> tuple[int, int]:
        """Where the nominal canvas starts: centred on the camera frame (as built/designed)."""
        ch, cw = self.canvas_hw
        return (self.camera_hw[0] - ch) // 2, (self.camera_hw[1] - cw) // 2

    @property
    def centre_px(self) -> tuple[float, float]:
        """Registration centre: the camera frame centre, pixel centres at integers."""
        return (self.camera_hw[0] - 1) / 2, (self.camera_hw[1] - 1) / 2

    def tile_origins_px(self) -> np.ndarray:
        """(K, 2) nominal camera coordinates (y, x) of each tile's pixel (0, 0)."""
        h, w = self.image_hw
        k = np.arange(self.n_kernels)
        oy, ox = self.origin_px
        return np.stack(
            [oy + (k // self.cols) * (h + self.gap_px), ox + (k % self.cols) * (w + self.gap_px)],
            axis=1,
        ).astype(np.float64)

    def tile_centers_px(self) -> np.ndarray:
        """(K, 2) nominal camera coordinates of each tile's centre."""
        h, w = self.image_hw
        return self.tile_origins_px() + np.array([(h - 1) / 2, (w - 1) / 2])


@dataclass
class Geometry:
    """Registration + misalignment parameters as tensors (so fits can differentiate them).

    camera = c + scale·R(rotation)·(canvas − c) + offset, R(θ)(y, x) = (cos·y + sin·x,
    −sin·y + cos·x); the display image is shifted by image_shift and rotated by
    image_rotation (misalign conventions) before the optics.
    """

    offset: torch.Tensor  # (2,) (ty, tx) px
    rotation: torch.Tensor  # () rad
    scale: torch.Tensor  # ()
    image_shift: torch.Tensor  # (2,) px
    image_rotation: torch.Tensor  # () rad

    @classmethod
    def identity(cls, dtype: torch.dtype = torch.float64) -> Geometry:
        z = torch.zeros((), dtype=dtype)
        return cls(
            torch.zeros(2, dtype=dtype), z.clone(), z + 1.0, torch.zeros(2, dtype=dtype), z.clone()
        )

    @classmethod
    def from_values(
        cls,
        offset: tuple[float, float],
        rotation: float,
        scale: float,
        image_shift: tuple[float, float],
        image_rotation: float,
        dtype: torch.dtype = torch.float64,
    ) -> Geometry:
        t = lambda v: torch.as_tensor(v, dtype=dtype).clone()  # noqa: E731
        return cls(t(offset), t(rotation), t(scale), t(image_shift), t(image_rotation))

    def params(self) -> list[torch.Tensor]:
        return [self.offset, self.rotation, self.scale, self.image_shift, self.image_rotation]

    def detached(self) -> Geometry:
        return Geometry(*(p.detach().clone() for p in self.params()))

    def values(self) -> dict[str, object]:
        return {
            "offset_px": tuple(float(v) for v in self.offset),
            "rotation_rad": float(self.rotation),
            "scale": float(self.scale),
            "image_shift_px": tuple(float(v) for v in self.image_shift),
            "image_rotation_rad": float(self.image_rotation),
        }

    def camera_from_canvas(self, yx: np.ndarray, centre: tuple[float, float]) -> np.ndarray:
        """Map camera-frame canvas points (N, 2) (nominal) to registered camera points."""
        c, s = float(torch.cos(self.rotation)), float(torch.sin(self.rotation))
        rot = np.array([[c, s], [-s, c]])
        p = np.asarray(yx, np.float64) - np.asarray(centre)
        return np.asarray(centre) + float(self.scale) * p @ rot.T + self.offset.detach().numpy()


def warp_grid(geom: Geometry, camera_hw: tuple[int, int]) -> torch.Tensor:
    """grid_sample grid (1, H, W, 2): for every camera pixel, where to read the canvas.

    Inverse of the registration, differentiable in its parameters; align_corners=False with
    pixel i at normalised (2i + 1)/n − 1, the convention the bench renders with.
    """
    h, w = camera_hw
    dtype = geom.scale.dtype
    cy, cx = (h - 1) / 2, (w - 1) / 2
    yy, xx = torch.meshgrid(
        torch.arange(h, dtype=dtype), torch.arange(w, dtype=dtype), indexing="ij"
    )
    py = yy - cy - geom.offset[0]
    px = xx - cx - geom.offset[1]
    c, s = torch.cos(geom.rotation), torch.sin(geom.rotation)
    # p @ R with R = [[c, s], [-s, c]]: (y, x) -> (c·y − s·x, s·y + c·x), then / scale.
    sy = cy + (c * py - s * px) / geom.scale
    sx = cx + (s * py + c * px) / geom.scale
    gx = (2 * sx + 1) / w - 1
    gy = (2 * sy + 1) / h - 1
    return torch.stack([gx, gy], dim=-1)[None]


class ForwardModel:
    """Linear-intensity images → expected camera signal (feature units, no DN scaling).

    ``grid`` caching: the warp grid depends only on the geometry; callers that change the
    geometry (fits) call `set_geometry`, which rebuilds it (keeping autograd when asked).
    """

    def __init__(self, tiles: TileGeometry, geometry: Geometry, method: str = "auto") -> None:
        self.tiles = tiles
        self.method = method
        self.set_geometry(geometry)

    def set_geometry(self, geometry: Geometry) -> None:
        self.geometry = geometry
        self._grid = warp_grid(geometry, self.tiles.camera_hw)

    def features(
        self, intensity: torch.Tensor, psfs: torch.Tensor, *, full: bool = False
    ) -> torch.Tensor:
        """(B, C, H, W) display intensity → (B, K, H, W) effective features; ``full=True``:
        the full convolution (B, K, H + 2r, W + 2r), r = W_psf // 2, i.e. including the light
        a PSF window larger than the kernel throws beyond the tile (leakage)."""
        g = self.geometry
        x = misalign(intensity, g.image_shift.to(intensity), g.image_rotation.to(intensity))
        if full:
            r = int(psfs.shape[-1]) // 2
            x = F.pad(x, (r, r, r, r))
        return optical_conv2d(x, psfs.to(x), method=self.method)

    def canvas(self, features: torch.Tensor) -> torch.Tensor:
        """(B, K, H, W) → (B, Hcam, Wcam) nominal (unregistered) camera canvas. Features
        larger than the tile by r px on each side (``features(full=True)``) are added around
        their tile, so leaked light lands in the gap and on the neighbouring tiles."""
        t = self.tiles
        h, w = t.image_hw
        r = (int(features.shape[-2]) - h) // 2
        if r <= 0:
            canvas = tile_onto_sensor(features, t.rows, t.cols, t.gap_px)
            oy, ox = t.origin_px
            ch, cw = t.canvas_hw
            hh, ww = t.camera_hw
            return F.pad(canvas, (ox, ww - cw - ox, oy, hh - ch - oy))
        hh, ww = t.camera_hw
        canvas = features.new_zeros(features.shape[0], hh + 2 * r, ww + 2 * r)
        for k, (oy, ox) in enumerate(t.tile_origins_px().astype(int)):
            canvas[:, oy : oy + h + 2 * r, ox : ox + w + 2 * r] += features[:, k]
        return canvas[:, r : r + hh, r : r + ww]

    def register(self, canvas: torch.Tensor) -> torch.Tensor:
        """Resample the canvas at the registered camera pixels (bilinear, zeros outside)."""
        grid = self._grid.to(canvas).expand(canvas.shape[0], -1, -1, -1)
        out = F.grid_sample(
            canvas[:, None], grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )
        return out[:, 0]

    def signal(
        self, intensity: torch.Tensor, psfs: torch.Tensor, *, full: bool = False
    ) -> torch.Tensor:
        """Full chain: (B, C, H, W) intensity → (B, Hcam, Wcam) camera signal (``full``: see
        `features`)."""
        return self.register(self.canvas(self.features(intensity, psfs, full=full)))

    def tile_grid(self) -> torch.Tensor:
        """grid (1, K·H, W, 2) sampling the camera frame at every tile pixel's registered
        position: `grid_sample` with it cuts all K registered tiles in one call."""
        t = self.tiles
        h, w = t.image_hw
        dtype = self.geometry.scale.dtype
        origins = torch.as_tensor(t.tile_origins_px(), dtype=dtype)  # (K, 2)
        yy, xx = torch.meshgrid(
            torch.arange(h, dtype=dtype), torch.arange(w, dtype=dtype), indexing="ij"
        )
        pts = torch.stack([yy, xx], dim=-1)[None] + origins[:, None, None, :]  # (K, H, W, 2)
        g = self.geometry
        cy, cx = t.centre_px
        centre = torch.tensor([cy, cx], dtype=dtype)
        c, s = torch.cos(g.rotation.detach()), torch.sin(g.rotation.detach())
        rot = torch.stack([torch.stack([c, s]), torch.stack([-s, c])])
        p = centre + g.scale.detach() * (pts - centre) @ rot.T + g.offset.detach()
        hh, ww = t.camera_hw
        gx = (2 * p[..., 1] + 1) / ww - 1
        gy = (2 * p[..., 0] + 1) / hh - 1
        return torch.stack([gx, gy], dim=-1).reshape(1, t.n_kernels * h, w, 2)
