"""`DigitalTwin`: the measured bench as a differentiable function, built from an artifact.

Why: fine-tuning and capture need to (a) turn captured camera frames into the feature maps the
backend expects and (b) predict what the bench would show for an image without the bench.
Both are the calibrated forward model (`calibration.forward`) with the artifact's numbers:
display LUT → misalignment → measured effective PSFs (α included) → tiles → registration →
DN = offset + gain · electrons_per_unit · exposure · signal, clipped by the sensor.

Units: images are display values in [0, 1] (what `SLM.show` takes; quantised to 8 bits as
the panel does); features are in the design frontend's output units (feature value 1 = unit
display intensity through a PSF of unit energy); frames are DN.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from calibration.artifact import CalibrationArtifact
from calibration.forward import ForwardModel, Geometry, TileGeometry
from calibration.procedures.base import single_thread
from onnlab.optics import SensorModel


class DigitalTwin:
    """Predicts frames and extracts features for one calibrated bench (batched, torch)."""

    def __init__(
        self,
        artifact: CalibrationArtifact,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.artifact = artifact
        m = artifact.meta
        lay, reg, cam = m.layout, m.registration, m.camera
        self.device = torch.device(device or "cpu")
        self.dtype = dtype
        self.tiles = TileGeometry(
            lay.rows,
            lay.cols,
            lay.gap_px,
            tuple(lay.image_hw),
            tuple(lay.camera_hw),
            lay.n_kernels,
        )
        geom = Geometry.from_values(
            (reg.ty, reg.tx),
            reg.rotation_rad,
            reg.scale,
            reg.image_shift_px,
            reg.image_rotation_rad,
            dtype=torch.float64,
        )
        self.model = ForwardModel(self.tiles, geom)
        self.model._grid = self.model._grid.to(self.device, dtype)
        self.psfs = torch.as_tensor(artifact.psfs, dtype=dtype, device=self.device)
        # Leakage model, when the psf step learned one: PSFs on a window wider than the kernel
        # (light in the gap and on neighbouring tiles) and a broad background per channel.
        arrays = artifact.arrays
        self.window_psfs = (
            torch.as_tensor(arrays["psfs_window"], dtype=dtype, device=self.device)
            if "psfs_window" in arrays
            else None
        )
        self.background = (
            torch.as_tensor(arrays["background_maps"], dtype=dtype, device=self.device)
            if "background_maps" in arrays
            else None
        )
        self.alpha = torch.as_tensor(artifact.alpha, dtype=dtype, device=self.device)
        self.lut = torch.as_tensor(artifact.response_lut, dtype=dtype, device=self.device)
        self._tile_grid = self.model.tile_grid().to(self.device, dtype)
        self.offset_dn = cam.offset_dn
        self.gain = cam.gain_dn_per_e
        self.read_noise_e = cam.read_noise_e
        self.saturation_dn = cam.saturation_dn
        self.electrons_per_unit = cam.electrons_per_unit
        self.exposure_s = cam.exposure_s

    @classmethod
    def load(
        cls, path: str | Path, *, bench_config: Any = None, design: Any = None, **kwargs: Any
    ) -> DigitalTwin:
        """Strictly load an artifact (see `CalibrationArtifact.load`) and build the twin."""
        return cls(
            CalibrationArtifact.load(path, bench_config=bench_config, design=design), **kwargs
        )

    # ---------------------------------------------------------------------------- shapes
    @property
    def n_kernels(self) -> int:
        return self.tiles.n_kernels

    @property
    def image_hw(self) -> tuple[int, int]:
        return self.tiles.image_hw

    @property
    def camera_hw(self) -> tuple[int, int]:
        return self.tiles.camera_hw

    def dn_per_unit(self, exposure_s: float | None = None) -> float:
        """DN per feature unit at ``exposure_s`` (default: the calibration exposure)."""
        exp = self.exposure_s if exposure_s is None else float(exposure_s)
        if not exp > 0:
            raise ValueError(f"exposure_s must be positive, got {exposure_s!r}")
        return self.gain * self.electrons_per_unit * exp

    # ---------------------------------------------------------------------------- forward
    def _images(self, images: Any) -> torch.Tensor:
        x = torch.as_tensor(images, device=self.device)
        if x.ndim == 3:
            x = x[None]
        c = int(self.psfs.shape[1])
        if x.ndim != 4 or tuple(x.shape[1:]) != (c, *self.image_hw):
            raise ValueError(
                f"images: expected (B, {c}, {self.image_hw[0]}, {self.image_hw[1]}), "
                f"got {tuple(x.shape)}"
            )
        return x

    def intensity(self, images: Any) -> torch.Tensor:
        """Display values in [0, 1] (or uint8 grey levels) → emitted relative intensity."""
        x = self._images(images)
        grey = x.long() if not x.is_floating_point() else torch.round(x.clamp(0, 1) * 255).long()
        return self.lut[grey.clamp(0, 255)]

    def features(self, images: Any) -> torch.Tensor:
        """(B, C, H, W) display values → expected (B, K, H, W) features (α included)."""
        with _small_work(self._elements(images)):
            return self.model.features(self.intensity(images), self.psfs)

    def signal(self, images: Any) -> torch.Tensor:
        """Expected camera irradiance in feature units (B, Hc, Wc), noise-free (with the
        learned leakage and background when the artifact has them)."""
        with _small_work(self._elements(images)):
            if self.window_psfs is None:
                return self.model.register(self.model.canvas(self.features(images)))
            x = self.intensity(images)
            out = self.model.signal(x, self.window_psfs, full=True)
            if self.background is not None:
                out = out + torch.einsum("nc,chw->nhw", x.sum(dim=(-2, -1)), self.background)
            return out

    def _elements(self, images: Any) -> int:
        b = len(images) if hasattr(images, "__len__") else 1
        return int(b * self.n_kernels * self.camera_hw[0] * self.camera_hw[1])

    def predict_frame(
        self, images: Any, exposure_s: float | None = None, *, clip: bool = True
    ) -> torch.Tensor:
        """Expected DN frame (B, Hc, Wc).

        ``clip=True`` returns the mean of the *clipped* sensor output (a Gaussian
        approximation of shot + read noise censored at 0 and at saturation), which is what an
        average of many real frames converges to, also in the dark gaps and at saturation.
        """
        with _small_work(self._elements(images)):
            return self._predict(images, exposure_s, clip)

    def _predict(self, images: Any, exposure_s: float | None, clip: bool) -> torch.Tensor:
        mean = self.offset_dn + self.dn_per_unit(exposure_s) * self.signal(images)
        if not clip:
            return mean
        var = (
            self.gain * (mean - self.offset_dn).clamp_min(0) + (self.gain * self.read_noise_e) ** 2
        )
        sd = torch.sqrt(var + 1.0 / 12.0)
        return _censored_mean(mean, sd, 0.0, self.saturation_dn)

    def sample_frame(
        self,
        images: Any,
        exposure_s: float | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """A noisy frame (B, Hc, Wc) in DN: Poisson shot noise, read noise, rounding, clipping
        (`onnlab.optics.SensorModel` with the calibrated numbers)."""
        sat_e = max((self.saturation_dn - self.offset_dn) / self.gain, 1.0)
        bits = max(1, min(24, math.ceil(math.log2(self.saturation_dn + 1))))
        sensor = SensorModel(
            full_scale_e=self.electrons_per_unit,
            read_noise_e=self.read_noise_e,
            gain_dn_per_e=self.gain,
            offset_dn=min(max(self.offset_dn, 0.0), 2**bits - 2),
            bit_depth=bits,
            full_well_e=sat_e,
        )
        exp = self.exposure_s if exposure_s is None else float(exposure_s)
        with _small_work(self._elements(images)):
            dn = sensor.forward(self.signal(images), exposure_s=exp, generator=generator)
            return dn.clamp(max=self.saturation_dn)

    # ---------------------------------------------------------------------------- inverse
    def features_from_frame(
        self,
        frames: Any,
        exposure_s: float | Sequence[float] | None = None,
        *,
        per_kernel_alpha: bool = False,
    ) -> torch.Tensor:
        """Captured frames → (B, K, H, W) features in the design frontend's units.

        ``frames``: (B, Hc, Wc) or (Hc, Wc) array/tensor of DN, or a list of
        `drivers.protocols.Frame` (their own exposures are then used). Every tile is cut at
        its *registered* position (bilinear, one ``grid_sample`` for the whole batch), the
        offset subtracted and DN converted to feature units (undoing gain, electrons per unit
        and exposure). ``per_kernel_alpha=True`` also divides each kernel by its measured
        brightness α, giving features on the design's brightness scale.
        """
        exps: Any = exposure_s
        if isinstance(frames, (list, tuple)) and frames and hasattr(frames[0], "pixels"):
            exps = [f.exposure_s for f in frames] if exposure_s is None else exposure_s
            frames = np.stack([np.asarray(f.pixels) for f in frames])
        x = torch.as_tensor(np.asarray(frames) if not torch.is_tensor(frames) else frames)
        x = x.to(self.device, self.dtype)
        if x.ndim == 2:
            x = x[None]
        if x.ndim != 3 or tuple(x.shape[1:]) != self.camera_hw:
            raise ValueError(
                f"frames: expected (B, {self.camera_hw[0]}, {self.camera_hw[1]}), "
                f"got {tuple(x.shape)}"
            )
        b = x.shape[0]
        if exps is None or np.isscalar(exps):
            scale = torch.full((b,), self.dn_per_unit(exps), dtype=self.dtype, device=self.device)
        else:
            scale = torch.as_tensor(
                [self.dn_per_unit(e) for e in exps], dtype=self.dtype, device=self.device
            )
        sig = (x - self.offset_dn) / scale[:, None, None]
        h, w = self.image_hw
        grid = self._tile_grid.expand(b, -1, -1, -1)
        with _small_work(int(x.numel())):
            cut = torch.nn.functional.grid_sample(
                sig[:, None], grid, mode="bilinear", padding_mode="zeros", align_corners=False
            )
        feats = cut.reshape(b, self.n_kernels, h, w)
        if per_kernel_alpha:
            feats = feats / self.alpha.clamp_min(1e-12)[None, :, None, None]
        return feats


def _small_work(n_elements: int) -> Any:
    """One torch thread for small batches (see `single_thread`: thread wake-ups dominate small
    work, by 10-100x on busy shared cores); large batches keep every thread."""
    return single_thread() if n_elements < 4_000_000 else contextlib.nullcontext()


def _censored_mean(mu: torch.Tensor, sd: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """E[clip(X, lo, hi)] for X ~ N(mu, sd²), elementwise."""
    normal = torch.distributions.Normal(torch.zeros((), dtype=mu.dtype, device=mu.device), 1.0)
    a = (lo - mu) / sd
    b = (hi - mu) / sd
    cdf_a, cdf_b = normal.cdf(a), normal.cdf(b)
    pdf_a, pdf_b = normal.log_prob(a).exp(), normal.log_prob(b).exp()
    inside = mu * (cdf_b - cdf_a) + sd * (pdf_a - pdf_b)
    return inside + lo * cdf_a + hi * (1 - cdf_b)
