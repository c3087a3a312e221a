"""Physical description of the optical frontend and where its kernels sit on the aperture.

`OpticsConfig` is the single validated record of the frontend's physics (wavelengths, aperture,
kernel size/spacing, focal length, sensor pitch, bit depth). `kernel_layout` answers the design
question of the paper's Eq. 1 (inferred form): how many square kernels of side k with minimum edge
spacing d fit on an h x w aperture, ``floor((h + d) / (k + d)) * floor((w + d) / (k + d))``, and
where their centres are (a symmetric grid centred on the aperture, so the unused margin is split
evenly and the optical axis stays at the aperture centre).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Relative slack for Eq. 1: (h + d) / (k + d) is often an exact integer that floating point
# renders as 1.9999999999; without slack a design that fits exactly would lose a row.
_FIT_RTOL = 1e-9


@dataclass(frozen=True)
class KernelLayout:
    """Result of Eq. 1: a rows x cols grid of kernels, centres in metres relative to the
    aperture centre as (y, x), row-major (the same order `tile_onto_sensor` uses)."""

    rows: int
    cols: int
    count: int
    centers_m: np.ndarray = field(repr=False)
    kernel_size_m: float = 0.0
    spacing_m: float = 0.0
    aperture_hw_m: tuple[float, float] = (0.0, 0.0)

    @property
    def pitch_m(self) -> float:
        """Centre-to-centre distance of neighbouring kernels (k + d)."""
        return self.kernel_size_m + self.spacing_m

    @property
    def fill_factor(self) -> float:
        """Fraction of the aperture area covered by kernels (how much light is used)."""
        h, w = self.aperture_hw_m
        return self.count * self.kernel_size_m**2 / (h * w) if h * w > 0 else 0.0


def _positive(name: str, value: float) -> float:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number of metres, got {value!r}")
    return float(value)


def kernel_layout(
    aperture_hw_m: tuple[float, float] | OpticsConfig,
    kernel_size_m: float | None = None,
    spacing_m: float | None = None,
) -> KernelLayout:
    """How many kernels fit on the aperture and where (paper Eq. 1, symmetric grid).

    Accepts either the three physical sizes or an `OpticsConfig` (DESIGN.md calls
    ``kernel_layout(config)``). Raises ValueError naming the parameter when an input is not a
    positive length or when not even one kernel fits.
    """
    if isinstance(aperture_hw_m, OpticsConfig):
        cfg = aperture_hw_m
        aperture_hw_m, kernel_size_m, spacing_m = (
            cfg.aperture_hw_m,
            cfg.kernel_size_m,
            cfg.spacing_m,
        )
    if kernel_size_m is None or spacing_m is None:
        raise ValueError("kernel_size_m and spacing_m are required unless an OpticsConfig is given")
    try:
        h, w = (float(v) for v in aperture_hw_m)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"aperture_hw_m must be (height, width) in metres, got {aperture_hw_m!r}"
        ) from exc
    _positive("aperture_hw_m[0] (height)", h)
    _positive("aperture_hw_m[1] (width)", w)
    k = _positive("kernel_size_m", kernel_size_m)
    if not (math.isfinite(spacing_m) and spacing_m >= 0):
        raise ValueError(f"spacing_m must be a non-negative finite length, got {spacing_m!r}")
    d = float(spacing_m)
    rows = math.floor((h + d) / (k + d) * (1 + _FIT_RTOL))
    cols = math.floor((w + d) / (k + d) * (1 + _FIT_RTOL))
    if rows < 1 or cols < 1:
        raise ValueError(
            f"no kernel fits: kernel_size_m={k:g} is larger than the aperture_hw_m=({h:g}, {w:g})"
        )
    p = k + d
    ys = (np.arange(rows) - (rows - 1) / 2.0) * p
    xs = (np.arange(cols) - (cols - 1) / 2.0) * p
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    centers = np.stack([yy.ravel(), xx.ravel()], axis=1)
    return KernelLayout(rows, cols, rows * cols, centers, k, d, (h, w))


_PRESETS: dict[str, dict] = {
    # 2 x 4 = 8 mono kernels (paper: MNIST, 8 kernels 7x7).
    "mnist": dict(aperture_hw_m=(1.1e-3, 2.3e-3), kernel_px=7, wavelengths_m=(532e-9,)),
    # 4 x 4 = 16 RGB kernels (paper: CIFAR-10, 16 kernels 7x7, polychromatic).
    "cifar10": dict(
        aperture_hw_m=(2.3e-3, 2.3e-3), kernel_px=7, wavelengths_m=(630e-9, 532e-9, 465e-9)
    ),
    # 7 x 8 = 56 RGB kernels 3x3 (paper: Carvana masking).
    "segmentation": dict(
        aperture_hw_m=(4.1e-3, 4.7e-3), kernel_px=3, wavelengths_m=(630e-9, 532e-9, 465e-9)
    ),
}


class OpticsConfig(BaseModel):
    """Validated physical parameters of the optical frontend (SI units).

    Why validated here: every later stage (PSF design, simulated bench, calibration) trusts
    these numbers; a negative wavelength or a kernel wider than the aperture must fail at load
    time with the field's name, not as a NaN three modules later.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    wavelengths_m: tuple[float, ...] = Field((532e-9,), description="one per colour channel")
    design_wavelength_m: float | None = Field(
        None, description="wavelength the meta-optic phase was designed for (default: middle one)"
    )
    aperture_hw_m: tuple[float, float] = (1.1e-3, 2.3e-3)
    kernel_size_m: float = 0.5e-3
    spacing_m: float = 0.1e-3
    kernel_px: int = 7
    focal_length_m: float = 10e-3
    sensor_pitch_m: float = 3.45e-6
    gap_px: int = Field(4, description="dark sensor pixels between neighbouring feature tiles")
    bit_depth: int = 8
    aperture_shape: Literal["square", "circle"] = "square"

    @field_validator("wavelengths_m")
    @classmethod
    def _check_wavelengths(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if len(v) == 0:
            raise ValueError("wavelengths_m must contain at least one wavelength")
        for lam in v:
            if not (math.isfinite(lam) and 0 < lam < 1e-3):
                raise ValueError(f"wavelengths_m must be positive (metres, < 1 mm), got {lam!r}")
        return tuple(float(x) for x in v)

    @field_validator("design_wavelength_m")
    @classmethod
    def _check_design(cls, v: float | None) -> float | None:
        if v is not None and not (math.isfinite(v) and 0 < v < 1e-3):
            raise ValueError(f"design_wavelength_m must be positive (metres), got {v!r}")
        return v

    @field_validator("aperture_hw_m")
    @classmethod
    def _check_aperture(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(math.isfinite(x) and x > 0 for x in v):
            raise ValueError(f"aperture_hw_m must be two positive lengths in metres, got {v!r}")
        return v

    @field_validator("kernel_size_m", "focal_length_m", "sensor_pitch_m")
    @classmethod
    def _check_positive(cls, v: float, info) -> float:
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"{info.field_name} must be a positive length in metres, got {v!r}")
        return v

    @field_validator("spacing_m")
    @classmethod
    def _check_spacing(cls, v: float) -> float:
        if not (math.isfinite(v) and v >= 0):
            raise ValueError(f"spacing_m must be a non-negative length in metres, got {v!r}")
        return v

    @field_validator("kernel_px")
    @classmethod
    def _check_kernel_px(cls, v: int) -> int:
        if v < 1 or v > 1025:
            raise ValueError(f"kernel_px must be between 1 and 1025 sensor pixels, got {v}")
        return v

    @field_validator("gap_px")
    @classmethod
    def _check_gap(cls, v: int) -> int:
        if v < 0:
            raise ValueError(f"gap_px must be >= 0, got {v}")
        return v

    @field_validator("bit_depth")
    @classmethod
    def _check_bits(cls, v: int) -> int:
        if not 1 <= v <= 24:
            raise ValueError(f"bit_depth must be between 1 and 24, got {v}")
        return v

    @model_validator(mode="after")
    def _check_fit(self) -> OpticsConfig:
        if self.kernel_size_m > min(self.aperture_hw_m) * (1 + _FIT_RTOL):
            raise ValueError(
                f"kernel_size_m={self.kernel_size_m:g} is larger than the aperture "
                f"aperture_hw_m={self.aperture_hw_m}; no kernel fits"
            )
        return self

    @property
    def in_channels(self) -> int:
        """Number of colour channels (one PSF per wavelength)."""
        return len(self.wavelengths_m)

    @property
    def reference_wavelength_m(self) -> float:
        """The design wavelength, defaulting to the middle listed wavelength (green for RGB)."""
        if self.design_wavelength_m is not None:
            return self.design_wavelength_m
        return self.wavelengths_m[len(self.wavelengths_m) // 2]

    @property
    def kernel_extent_m(self) -> float:
        """Physical side of one PSF window on the sensor (kernel_px * sensor_pitch_m)."""
        return self.kernel_px * self.sensor_pitch_m

    def layout(self) -> KernelLayout:
        """Eq. 1 for this configuration."""
        return kernel_layout(self.aperture_hw_m, self.kernel_size_m, self.spacing_m)

    @property
    def n_kernels(self) -> int:
        """How many kernels this aperture holds (Eq. 1)."""
        return self.layout().count

    @classmethod
    def preset(cls, name: str, **overrides) -> OpticsConfig:
        """The paper's systems ("mnist", "cifar10", "segmentation") with plausible physics."""
        if name not in _PRESETS:
            raise ValueError(f"name must be one of {sorted(_PRESETS)}, got {name!r}")
        return cls(**{**_PRESETS[name], **overrides})
