"""The physical simulated bench: frames rendered through the wave model of the as-built optic.

The as-built optic is the design phase (a phase-trained frontend's ``design_phases()``, or the
realisation of a free frontend's PSFs) fabricated with seeded height-domain errors
(`onnlab.optics.fabrication.FabricationErrors`: etch depth, correlated height noise, L height
levels, lateral / rotational offset, sensor distance, source bandwidth, zero order). It replaces
steps 2-5 of `drivers.sim.model`'s contract:

2'. no separate display misalignment: the optic's offset and rotation move every focus, which
    the effective PSFs already contain;
3'. effective PSFs P_k(z) on a window of W = kernel_px + 2 margin pixels
    (`effective_psfs_stack`, exact Fresnel propagation to the sensor at
    f + delta_z + (z - nominal focus)), cached per stage position;
4'. each kernel's image is convolved with its W-window PSF to the FULL output (H + W - 1 px),
    times the hidden gain alpha_k, and added onto the sensor around its tile, so leaked light
    lands in the gap and the neighbouring tiles;
5'. the part of the zero-order shadow beyond the window (~D / pitch = 145 px wide) is added as
    a broad background: one FFT convolution per channel of the image with the sum over kernels
    of alpha_k times that far shadow centred on the tile (exact, not an approximation).

Display response, registration, per-kernel gain and the sensor (steps 1, 6, 7) are unchanged,
and noise stays a pure function of what is shown (`drivers.sim.noise`).

Beyond the alias-free defocus of the sampled pupil (`focal_plane.check_defocus`; about
+-0.55 mm at F/5 with N = 64), the PSF is the geometric blur: the kernel's in-focus window
energy spread evenly over a square of side D |z - f| / f (an exact limit for many waves of
defocus), so that a stage parked far from focus (e.g. at home) still renders.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from drivers.sim.model import Renderer, SimTruth
from onnlab.optics.as_built import AsBuilt
from onnlab.optics.convolution import optical_conv2d
from onnlab.optics.fabrication import FabricationErrors, effective_psfs_stack, zero_order_psfs
from onnlab.optics.layout import OpticsConfig
from onnlab.optics.seeded_design import OVERSAMPLE, design_kernel_psfs

CACHE_POSITIONS = 64  # stage positions kept (a focus scan visits ~40)


@dataclass
class PhysicalOptic:
    """The hidden as-built optic: design phases, optics, material, the seeded `AsBuilt`.

    ``nominal_focus_m`` is the stage position at which the sensor sits at the designed focal
    distance f (before the as-built sensor-distance error ``as_built.delta_z_m``).
    """

    design_phases: torch.Tensor  # (K, N, N) radians at the reference wavelength
    optics: OpticsConfig
    material: str
    as_built: AsBuilt
    nominal_focus_m: float
    oversample: int = OVERSAMPLE
    exact_rotation: bool = False
    record: dict[str, Any] = field(default_factory=dict)
    _cache: OrderedDict = field(default_factory=OrderedDict, repr=False)

    @property
    def kernel_px(self) -> int:
        return int(self.optics.kernel_px)

    @property
    def window_px(self) -> int:
        return int(self.as_built.window_px)

    @property
    def best_focus_m(self) -> float:
        """Stage position that puts the sensor at f (undoes the sensor-distance error)."""
        return self.nominal_focus_m - self.as_built.delta_z_m

    def _psfs(self, z_offset_m: float) -> torch.Tensor:
        args = (self.design_phases, self.optics, self.material, self.as_built, [z_offset_m])
        kw = dict(oversample=self.oversample, exact_rotation=self.exact_rotation)
        try:
            return effective_psfs_stack(*args, **kw)[0]
        except ValueError as exc:
            if "defocuses" not in str(exc):
                raise
        # Geometric limit: the in-focus window energy spread evenly over the blur square.
        focus = self._psfs(-self.as_built.delta_z_m)
        dz = abs(z_offset_m + self.as_built.delta_z_m)
        side_px = self.optics.kernel_size_m * dz / self.optics.focal_length_m
        side_px /= self.optics.sensor_pitch_m
        w = self.window_px
        frac = min(1.0, (w / max(side_px, 1e-9)) ** 2)
        total = focus.sum(dim=(-2, -1), keepdim=True)
        return (total * frac / (w * w)).expand_as(focus).clone()

    def window_psfs(self, z_m: float) -> torch.Tensor:
        """(K, C, W, W) effective PSFs with the stage at z_m (cached per position)."""
        key = float(z_m)
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit["psfs"]
        psfs = self._psfs(key - self.nominal_focus_m).to(torch.float32)
        self._cache[key] = {"psfs": psfs}
        while len(self._cache) > CACHE_POSITIONS:
            self._cache.popitem(last=False)
        return psfs

    def kernel_psfs(self, z_m: float) -> torch.Tensor:
        """(K, C, k, k) central kernel window of `window_psfs` (what the design calls a PSF)."""
        m = (self.window_px - self.kernel_px) // 2
        p = self.window_psfs(z_m)
        return p[..., m : p.shape[-2] - m, m : p.shape[-1] - m]

    def far_zero_order(self, z_m: float, reach_px: int) -> torch.Tensor:
        """(K, C, R, R) zero-order light beyond the W window (R = 2 reach + 1), cached."""
        key = float(z_m)
        entry = self._cache.get(key)
        if entry is None:
            self.window_psfs(z_m)
            entry = self._cache[key]
        far = entry.get(("far", reach_px))
        if far is None:
            r_px = 2 * int(reach_px) + 1
            far = torch.zeros(self.as_built.n_kernels, len(self.as_built.spectra), r_px, r_px)
            if self.as_built.zero_order_fraction > 0:
                far = zero_order_psfs(
                    self.optics,
                    self.as_built,
                    window_px=r_px,
                    z_offset_m=key - self.nominal_focus_m,
                ).to(torch.float32)
                c0 = reach_px - self.window_px // 2
                far[..., c0 : c0 + self.window_px, c0 : c0 + self.window_px] = 0.0
            entry[("far", reach_px)] = far
        return far


def zero_order_reach_px(optics: OpticsConfig, sensor_hw: tuple[int, int], image_px: int) -> int:
    """Half-width of the zero-order window: the whole shadow (D / pitch, plus 30 % for its
    Fresnel edge), but never more than the sensor plus one image can use."""
    shadow = math.ceil(0.65 * optics.kernel_size_m / optics.sensor_pitch_m)
    return int(min(shadow, max(sensor_hw) + image_px))


class PhysicalRenderer(Renderer):
    """`Renderer` with steps 2'-5' of the module docstring."""

    def __init__(self, truth: SimTruth, optic: PhysicalOptic, method: str = "auto") -> None:
        super().__init__(truth, method)
        self.optic = optic
        lay = truth.layout
        self.reach_px = zero_order_reach_px(optic.optics, lay.sensor_hw, max(lay.tile_hw))
        self._bg_cache: dict[float, torch.Tensor] = {}

    def psfs(self, z_m: float) -> torch.Tensor:
        return self.optic.window_psfs(z_m)

    def _tile_origins(self) -> list[tuple[int, int]]:
        lay = self.truth.layout
        h, w = lay.tile_hw
        k = int(self.truth.gain.shape[0])
        return [
            (
                lay.margin_px + (i // lay.cols) * (h + lay.gap_px),
                lay.margin_px + (i % lay.cols) * (w + lay.gap_px),
            )
            for i in range(k)
        ]

    def _background_fft(self, z_m: float) -> torch.Tensor:
        """rfft2 of G_c(t) = sum_k alpha_k far_kc(t - o_k), t = y - x (sensor minus image px)."""
        key = float(z_m)
        hit = self._bg_cache.get(key)
        if hit is not None:
            return hit
        lay = self.truth.layout
        (h, w), (hs, ws) = lay.tile_hw, lay.sensor_hw
        far = self.optic.far_zero_order(z_m, self.reach_px)  # (K, C, R, R), centre at reach
        r = self.reach_px
        gh, gw = hs + h - 1, ws + w - 1  # t in [-(h-1), hs-1] stored at t + h - 1
        g = torch.zeros(far.shape[1], gh, gw)
        alpha = self.truth.gain.to(torch.float32)
        for k, (oy, ox) in enumerate(self._tile_origins()):
            # far index j <-> d = j - r; t = d + o; stored at t + h - 1 = j - r + o + h - 1
            y0, x0 = oy + h - 1 - r, ox + w - 1 - r
            ys, xs = max(0, y0), max(0, x0)
            ye, xe = min(gh, y0 + 2 * r + 1), min(gw, x0 + 2 * r + 1)
            if ye > ys and xe > xs:
                g[:, ys:ye, xs:xe] += alpha[k] * far[k, :, ys - y0 : ye - y0, xs - x0 : xe - x0]
        size = (gh + h - 1, gw + w - 1)
        spec = torch.fft.rfft2(g, s=size)
        if len(self._bg_cache) >= CACHE_POSITIONS:
            self._bg_cache.pop(next(iter(self._bg_cache)))
        self._bg_cache[key] = spec
        return spec

    @torch.no_grad()
    def signal(self, grey: torch.Tensor, z_m: float) -> torch.Tensor:
        t = self.truth
        lay = t.layout
        (h, w), (hs, ws) = lay.tile_hw, lay.sensor_hw
        intensity = t.display.intensity(grey).to(torch.float32)
        psfs = self.psfs(z_m)
        r = psfs.shape[-1] // 2
        full = optical_conv2d(F.pad(intensity, (r, r, r, r)), psfs, method=self.method)
        full = full * t.gain.to(full)[None, :, None, None]
        b = grey.shape[0]
        canvas = torch.zeros(b, hs + 2 * r, ws + 2 * r, dtype=full.dtype)
        for k, (oy, ox) in enumerate(self._tile_origins()):
            canvas[:, oy : oy + h + 2 * r, ox : ox + w + 2 * r] += full[:, k]
        canvas = canvas[:, r : r + hs, r : r + ws]
        if self.optic.as_built.zero_order_fraction > 0:
            spec = self._background_fft(z_m)
            size = (hs + 2 * h - 2, ws + 2 * w - 2)
            img = torch.fft.rfft2(intensity, s=size)
            bg = torch.fft.irfft2((img * spec[None]).sum(1), s=size)
            canvas = canvas + bg[:, h - 1 : h - 1 + hs, w - 1 : w - 1 + ws]
        if self._grid is None:
            return canvas
        grid = self._grid.to(canvas).expand(b, -1, -1, -1)
        out = F.grid_sample(
            canvas[:, None], grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )
        return out[:, 0]


def build_optic(
    design_phases: torch.Tensor,
    optics: OpticsConfig,
    material: str,
    seed: int,
    errors: FabricationErrors | None = None,
    *,
    nominal_focus_m: float,
    oversample: int = OVERSAMPLE,
) -> PhysicalOptic:
    """Fabricate `design_phases` (K, N, N): draw the as-built deviations of run `seed`."""
    phases = torch.as_tensor(design_phases).detach().to(torch.float32).cpu()
    if phases.ndim != 3 or phases.shape[1] != phases.shape[2]:
        raise ValueError(f"design_phases: expected (K, N, N) radians, got {tuple(phases.shape)}")
    errors = errors if errors is not None else FabricationErrors()
    as_built = errors.draw(int(seed), optics, int(phases.shape[0]), int(phases.shape[-1]))
    record = {
        "seed": int(seed),
        "errors": errors.model_dump(mode="json"),
        "height_scale": as_built.height_scale.tolist(),
        "height_noise_rms_m": float(as_built.height_noise_m.std()),
        "levels": as_built.levels,
        "offset_m": list(as_built.offset_m),
        "rotation_rad": as_built.rotation_rad,
        "delta_z_m": as_built.delta_z_m,
        "zero_order_fraction": as_built.zero_order_fraction,
        "window_px": as_built.window_px,
    }
    return PhysicalOptic(
        phases, optics, material, as_built, float(nominal_focus_m), int(oversample), record=record
    )


__all__ = ["PhysicalOptic", "PhysicalRenderer", "build_optic", "design_kernel_psfs"]
