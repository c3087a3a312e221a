"""The rendering model of the simulated bench and its hidden as-built truth.

Calibration (layer 4) fits exactly the quantities defined here, so the formulas are the
contract. For a batch of displayed grey levels ``g`` (B, C, H, W), integers 0..255:

1. Display response (per pixel, per channel; `DisplayResponse`)::

       I = b + (1 - b) * (g / 255) ** gamma                 # relative intensity in [b, 1]

2. Display-to-optic misalignment (`FabricationErrors.shift_px` / ``rotation_rad``, applied by
   `onnlab.optics.misalign`: content moves by +(dy, dx) px; positive rotation turns +x towards
   +y about the image centre; outside the panel is dark)::

       I' = misalign(I, shift_px, rotation_rad)

3. As-built PSFs, defocused by the stage position z (metres; `Focus`)::

       P(z) = defocus_psfs(perturb_psfs(design, delta), sigma_px(z))
       sigma_px(z) = min(k_defocus_px_per_m * |z - z_focus_m|, max_sigma_px)

   (``max_sigma_px`` = 2 * kernel_px: wider blur is flat across the kernel window anyway and
   would only cost time.)

4. Optical convolution, per-kernel gain, channel sum (`onnlab.optics.optical_conv2d`)::

       F_k = alpha_k * sum_c (I'_c (*) P_kc(z))           # (B, K, H, W), true convolution

5. Tiling on the sensor: row-major ``rows x cols`` tiles of size ``image_hw`` separated by
   ``gap_px`` (`onnlab.optics.tile_onto_sensor`), placed at ``origin_px = (margin, margin)`` of a
   sensor of ``sensor_hw = tiled + 2 * margin``. This is the NOMINAL canvas.

6. Registration (`Registration`): the canvas point ``p_c = (y, x)`` (pixel-index coordinates,
   pixel centres at integers) lands on the sensor at::

       p_s = c + s * R(theta) @ (p_c - c) + t,    c = ((Hs - 1) / 2, (Ws - 1) / 2)
       R(theta) @ (y, x) = (cos*y + sin*x, -sin*y + cos*x)  # +x turns towards +y, as misalign

   rendered by bilinear resampling of the canvas at the inverse map (irradiance per pixel is
   preserved; the tiny s^2 energy change is absorbed by alpha).

7. Sensor (`onnlab.optics.SensorModel`): ``electrons = S * full_scale_e * exposure_s`` (S the
   registered canvas), then Poisson shot noise, full-well clamp, Gaussian read noise,
   ``DN = e * gain_dn_per_e + offset_dn``, rounding and ADC clamp to ``2**bit_depth - 1``.
   Frames are uint16 (uint8 when bit_depth <= 8). Each frame's noise comes from its own
   generator, a pure function of what is displayed (`drivers.sim.noise`).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from onnlab.optics import (
    FabricationErrors,
    SensorModel,
    defocus_psfs,
    misalign,
    optical_conv2d,
    sensor_shape,
    tile_onto_sensor,
)


@dataclass(frozen=True)
class DisplayResponse:
    """Grey level -> relative intensity: ``b + (1 - b) * (g / g_max) ** gamma``."""

    gamma: float = 2.2
    black_level: float = 0.0
    bit_depth: int = 8

    def __post_init__(self) -> None:
        if not (math.isfinite(self.gamma) and self.gamma > 0):
            raise ValueError(f"gamma: expected > 0, got {self.gamma!r}")
        if not 0.0 <= self.black_level < 1.0:
            raise ValueError(f"black_level: expected in [0, 1), got {self.black_level!r}")

    @property
    def max_level(self) -> int:
        return (1 << self.bit_depth) - 1

    def intensity(self, grey: torch.Tensor) -> torch.Tensor:
        """Apply the response to grey levels (any shape, any numeric dtype) -> float tensor."""
        g = grey.to(torch.float32) / self.max_level
        return self.black_level + (1.0 - self.black_level) * g.clamp(0, 1) ** self.gamma

    def lut(self) -> np.ndarray:
        """(2**bit_depth,) float64 table: grey level -> relative intensity."""
        g = np.arange(self.max_level + 1) / self.max_level
        return self.black_level + (1.0 - self.black_level) * g**self.gamma


@dataclass(frozen=True)
class Registration:
    """Where the nominal tile canvas lands on the sensor (offset, rotation, scale)."""

    offset_px: tuple[float, float] = (0.0, 0.0)  # t = (dy, dx)
    rotation_rad: float = 0.0
    scale: float = 1.0
    centre_px: tuple[float, float] = (0.0, 0.0)  # c = ((Hs-1)/2, (Ws-1)/2), set by the bench

    def _rot(self) -> np.ndarray:
        c, s = math.cos(self.rotation_rad), math.sin(self.rotation_rad)
        return np.array([[c, s], [-s, c]])

    def sensor_from_canvas(self, yx: np.ndarray) -> np.ndarray:
        """Map nominal canvas points (..., 2) as (y, x) to sensor pixel coordinates."""
        p = np.asarray(yx, dtype=np.float64) - self.centre_px
        return self.centre_px + self.scale * p @ self._rot().T + np.asarray(self.offset_px)

    def canvas_from_sensor(self, yx: np.ndarray) -> np.ndarray:
        """Inverse of `sensor_from_canvas`."""
        p = np.asarray(yx, dtype=np.float64) - self.centre_px - np.asarray(self.offset_px)
        return self.centre_px + (p @ self._rot()) / self.scale

    @property
    def is_identity(self) -> bool:
        return self.offset_px == (0.0, 0.0) and self.rotation_rad == 0.0 and self.scale == 1.0


@dataclass(frozen=True)
class Focus:
    """Defocus blur versus stage position: ``sigma = min(k * |z - z_focus|, max_sigma_px)``."""

    z_focus_m: float = 12.5e-3
    k_defocus_px_per_m: float = 2.0e4  # 1 px of blur per 50 um of defocus
    max_sigma_px: float = 14.0

    def sigma_px(self, z_m: float) -> float:
        return float(min(self.k_defocus_px_per_m * abs(z_m - self.z_focus_m), self.max_sigma_px))


@dataclass(frozen=True)
class TileLayout:
    """Row-major tiles of `tile_hw` on a sensor of `sensor_hw`, first tile at `origin_px`."""

    rows: int
    cols: int
    gap_px: int
    tile_hw: tuple[int, int]
    margin_px: int

    @property
    def canvas_hw(self) -> tuple[int, int]:
        return sensor_shape(self.tile_hw, self.rows, self.cols, self.gap_px)

    @property
    def sensor_hw(self) -> tuple[int, int]:
        h, w = self.canvas_hw
        return h + 2 * self.margin_px, w + 2 * self.margin_px

    @property
    def origin_px(self) -> tuple[int, int]:
        return self.margin_px, self.margin_px

    def tile_centers_px(self, n_kernels: int) -> np.ndarray:
        """(K, 2) nominal (canvas = unregistered sensor) centres of the tiles as (y, x)."""
        h, w = self.tile_hw
        idx = np.arange(n_kernels)
        r, c = idx // self.cols, idx % self.cols
        y = self.margin_px + r * (h + self.gap_px) + (h - 1) / 2
        x = self.margin_px + c * (w + self.gap_px) + (w - 1) / 2
        return np.stack([y, x], axis=1).astype(np.float64)


@dataclass(frozen=True)
class SimTruth:
    """Hidden as-built values of a simulated bench (tests and benchmarks only)."""

    design_psfs: torch.Tensor  # (K, C, k, k) as designed
    psfs: torch.Tensor  # (K, C, k, k) as built, in focus (perturb_psfs(design, delta))
    gain: torch.Tensor  # (K,) alpha
    errors: FabricationErrors  # the full draw (gain, shift_px, rotation_rad, psf_delta)
    display: DisplayResponse
    registration: Registration
    focus: Focus
    sensor: SensorModel
    layout: TileLayout
    extra: dict[str, Any] = field(default_factory=dict)
    # The as-built optic of a physical bench (`drivers.sim.physical.PhysicalOptic`); None for
    # the legacy bench (per-pixel PSF errors, Gaussian defocus).
    optic: Any = None

    @property
    def misalignment_shift_px(self) -> tuple[float, float]:
        return tuple(self.errors.shift_px)  # type: ignore[return-value]

    @property
    def misalignment_rotation_rad(self) -> float:
        return float(self.errors.rotation_rad)

    def psfs_at(self, z_m: float) -> torch.Tensor:
        """As-built (K, C, k, k) PSFs at stage position z (defocus applied); for a physical
        bench the central kernel window of the effective PSFs."""
        if self.optic is not None:
            return self.optic.kernel_psfs(z_m)
        return defocus_psfs(self.psfs, self.focus.sigma_px(z_m))

    def window_psfs_at(self, z_m: float) -> torch.Tensor:
        """PSFs on the window the bench renders (K, C, W, W); W = k for the legacy bench."""
        if self.optic is not None:
            return self.optic.window_psfs(z_m)
        return self.psfs_at(z_m)

    def tile_centers_px(self) -> np.ndarray:
        """(K, 2) sensor coordinates (y, x) of each tile's centre after registration."""
        nominal = self.layout.tile_centers_px(int(self.psfs.shape[0]))
        return self.registration.sensor_from_canvas(nominal)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (PSFs as nested lists)."""
        return {
            "psfs": self.psfs.tolist(),
            "gain": self.gain.tolist(),
            "misalignment_shift_px": list(self.misalignment_shift_px),
            "misalignment_rotation_rad": self.misalignment_rotation_rad,
            "display": {"gamma": self.display.gamma, "black_level": self.display.black_level},
            "registration": {
                "offset_px": list(self.registration.offset_px),
                "rotation_rad": self.registration.rotation_rad,
                "scale": self.registration.scale,
                "centre_px": list(self.registration.centre_px),
            },
            "focus": {
                "z_focus_m": self.focus.z_focus_m,
                "k_defocus_px_per_m": self.focus.k_defocus_px_per_m,
                "max_sigma_px": self.focus.max_sigma_px,
            },
            "sensor": self.sensor.model_dump(),
            "layout": {
                "rows": self.layout.rows,
                "cols": self.layout.cols,
                "gap_px": self.layout.gap_px,
                "tile_hw": list(self.layout.tile_hw),
                "margin_px": self.layout.margin_px,
                "sensor_hw": list(self.layout.sensor_hw),
            },
            **self.extra,
        }


_THREADS_LOCK = threading.Lock()


@contextmanager
def _few_threads(n_elements: int) -> Iterator[None]:
    """Render small frames on one intra-op thread.

    A 28x28 frame is microseconds of work; torch's parallel regions then cost milliseconds of
    thread wake-up and barrier waiting (60 ms/frame instead of 1.4 ms on two busy cores). The
    setting is process-wide, so it is restored right after and large batches keep all threads.
    """
    if n_elements > 4_000_000 or torch.get_num_threads() == 1:
        yield
        return
    with _THREADS_LOCK:
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(before)


class Renderer:
    """Steps 1-7 of the module docstring, with the defocused PSFs and warp grid cached."""

    def __init__(self, truth: SimTruth, method: str = "auto") -> None:
        self.truth = truth
        self.method = method
        self._psf_cache: tuple[float, torch.Tensor] | None = None
        self._grid = None if truth.registration.is_identity else self._warp_grid()

    def _warp_grid(self) -> torch.Tensor:
        """grid_sample grid (1, Hs, Ws, 2): for each sensor pixel, where to read the canvas."""
        hs, ws = self.truth.layout.sensor_hw
        yy, xx = np.meshgrid(np.arange(hs), np.arange(ws), indexing="ij")
        src = self.truth.registration.canvas_from_sensor(np.stack([yy, xx], axis=-1))
        # align_corners=False: pixel index i sits at normalised (2 i + 1) / n - 1.
        gx = (2 * src[..., 1] + 1) / ws - 1
        gy = (2 * src[..., 0] + 1) / hs - 1
        return torch.from_numpy(np.stack([gx, gy], axis=-1)[None]).to(torch.float32)

    def psfs(self, z_m: float) -> torch.Tensor:
        sigma = self.truth.focus.sigma_px(z_m)
        if self._psf_cache is None or self._psf_cache[0] != sigma:
            self._psf_cache = (sigma, defocus_psfs(self.truth.psfs, sigma))
        return self._psf_cache[1]

    @torch.no_grad()
    def signal(self, grey: torch.Tensor, z_m: float) -> torch.Tensor:
        """Noise-free sensor irradiance S (B, Hs, Ws) in feature units for grey (B, C, H, W)."""
        t = self.truth
        intensity = t.display.intensity(grey).to(t.psfs.dtype)
        intensity = misalign(intensity, t.errors.shift_px, t.errors.rotation_rad)
        feats = optical_conv2d(intensity, self.psfs(z_m), method=self.method)
        feats = feats * t.gain.to(feats)[None, :, None, None]
        canvas = tile_onto_sensor(feats, t.layout.rows, t.layout.cols, t.layout.gap_px)
        m = t.layout.margin_px
        canvas = F.pad(canvas, (m, m, m, m))
        if self._grid is None:
            return canvas
        grid = self._grid.to(canvas).expand(canvas.shape[0], -1, -1, -1)
        out = F.grid_sample(
            canvas[:, None], grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )
        return out[:, 0]

    @torch.no_grad()
    def frames_dn(
        self,
        grey: torch.Tensor,
        z_m: float,
        exposure_s: float,
        generators: Sequence[torch.Generator],
    ) -> np.ndarray:
        """Noisy digital frames (B, Hs, Ws) as uint16 (uint8 for <= 8-bit sensors).

        One generator per frame (see `drivers.sim.noise`), so a frame's noise does not depend
        on which frames were rendered before it or in the same batch.
        """
        if len(generators) != grey.shape[0]:
            raise ValueError(f"generators: expected {grey.shape[0]}, got {len(generators)}")
        sensor = self.truth.sensor
        hs, ws = self.truth.layout.sensor_hw
        with _few_threads(grey.shape[0] * hs * ws):
            electrons = sensor.to_electrons(self.signal(grey, z_m), exposure_s)
            pairs = zip(electrons, generators, strict=True)
            dn = torch.cat([sensor.apply(e[None], g) for e, g in pairs])
            arr = torch.round(dn).clamp(0, sensor.max_dn).numpy()
        dtype = np.uint8 if sensor.bit_depth <= 8 else np.uint16
        return arr.astype(dtype)

    def expected_dn(self, grey: torch.Tensor, z_m: float, exposure_s: float) -> torch.Tensor:
        """Noise-free mean DN (no quantisation, no saturation): for tests of the noise model."""
        sensor = self.truth.sensor
        return sensor.expected_dn(sensor.to_electrons(self.signal(grey, z_m), exposure_s))
