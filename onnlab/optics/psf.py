"""Meta-optic / phase-mask aperture -> intensity PSF on the sensor, mono- or polychromatic.

Model: a thin phase element (the meta-optic's design phase) in the pupil of a focusing lens of
focal length f; the sensor sits in the focal plane, so the coherent PSF is the Fraunhofer
transform of the pupil field and the incoherent PSF its squared modulus. The PSF is evaluated
directly at sensor sub-pixel centres (matrix Fourier transform, no interpolation), integrated over
each pixel's area and divided by the power incident on the aperture. Hence every PSF is
non-negative and sums to the fraction of light the kernel window receives (<= 1): exactly the
physical constraint the frontend's trainable kernels obey.

Dispersion: a metasurface designed at lambda0 imposes phase phi0 (wrapped to [0, 2 pi), as its
pillars do); at another wavelength a thin element gives phi(lambda) = phi0 * lambda0 / lambda,
optionally times (n(lambda) - 1) / (n(lambda0) - 1) for material dispersion. The focal-plane
scale lambda f also grows with wavelength (red PSFs are larger).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Literal

import torch

from onnlab.optics.grid import Grid, check_positive
from onnlab.optics.propagation import as_grid, fraunhofer_to

if TYPE_CHECKING:
    from onnlab.optics.layout import OpticsConfig

RefractiveIndex = Callable[[float], float]


def aperture_mask(
    grid: Grid,
    shape: Literal["circle", "square"] = "circle",
    size_m: float | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Binary clear aperture (1 inside) of diameter / side size_m (default: the grid extent)."""
    size = min(grid.extent_m) if size_m is None else check_positive("size_m", size_m)
    yy, xx = grid.mesh(torch.float64, device)
    if shape == "circle":
        mask = yy**2 + xx**2 <= (size / 2) ** 2
    elif shape == "square":
        mask = (yy.abs() <= size / 2) & (xx.abs() <= size / 2)
    else:
        raise ValueError(f"shape must be 'circle' or 'square', got {shape!r}")
    return mask.to(dtype)


def cauchy_index(a: float, b_m2: float = 0.0) -> RefractiveIndex:
    """Cauchy dispersion n(lambda) = a + b / lambda^2 (b in m^2), e.g. TiO2 / SiN pillars."""
    if not a >= 1:
        raise ValueError(f"a (the index at long wavelengths) must be >= 1, got {a!r}")
    return lambda lam: a + b_m2 / lam**2


def dispersed_phase(
    phase_rad: torch.Tensor,
    design_wavelength_m: float,
    wavelength_m: float,
    *,
    refractive_index: RefractiveIndex | None = None,
    wrap: bool = True,
) -> torch.Tensor:
    """Phase a thin element designed at design_wavelength_m imposes at wavelength_m.

    phi(lambda) = wrap(phi0) * lambda0 / lambda * (n(lambda) - 1) / (n(lambda0) - 1): the element
    has a fixed optical path (height times index contrast), so its phase scales with 1 / lambda
    and with the material's index contrast. ``wrap`` first folds phi0 into [0, 2 pi) as a
    fabricated metasurface does (its gradient is 1 almost everywhere).
    """
    factor = dispersion_factor(design_wavelength_m, wavelength_m, refractive_index)
    phi0 = torch.remainder(phase_rad, 2 * math.pi) if wrap else phase_rad
    return phi0 * factor


def dispersion_factor(
    design_wavelength_m: float,
    wavelength_m: float,
    refractive_index: RefractiveIndex | None = None,
) -> float:
    """phi(lambda) / phi0 of a thin element (`dispersed_phase`)."""
    lam0 = check_positive("design_wavelength_m", design_wavelength_m)
    lam = check_positive("wavelength_m", wavelength_m)
    factor = lam0 / lam
    if refractive_index is not None:
        n0, n1 = float(refractive_index(lam0)), float(refractive_index(lam))
        if not (n0 > 1 and n1 > 0):
            raise ValueError(f"refractive_index must exceed 1 at the design wavelength, got {n0}")
        factor *= (n1 - 1) / (n0 - 1)
    return factor


def _kernel_hw(kernel_px: int | tuple[int, int]) -> tuple[int, int]:
    kh, kw = (kernel_px, kernel_px) if isinstance(kernel_px, int) else kernel_px
    if int(kh) < 1 or int(kw) < 1:
        raise ValueError(f"kernel_px must be positive, got {kernel_px!r}")
    return int(kh), int(kw)


def sensor_subpixels(
    kh: int, kw: int, sensor_pitch_m: float, oversample: int
) -> tuple[Grid, tuple[float, float]]:
    """Sub-pixel grid of a kh x kw pixel window (oversample^2 per pixel) and its centre offset.

    The optical axis falls on pixel (kh // 2, kw // 2); sub-pixel i = j*m + s has its centre at
    (j - k//2) p + (s + 1/2 - m/2) p / m, while the Grid puts index i at (i - M//2) p / m, hence
    a constant offset per axis.
    """
    m, p = int(oversample), sensor_pitch_m
    if m < 1:
        raise ValueError(f"oversample must be >= 1, got {oversample!r}")
    offset = tuple((0.5 - m / 2 - (k // 2) * m + (k * m) // 2) * p / m for k in (kh, kw))
    return Grid((kh * m, kw * m), p / m), (offset[0], offset[1])


def psf_from_pupil(
    pupil: torch.Tensor,
    pitch_m: float | tuple[float, float] | Grid,
    wavelength_m: float,
    focal_length_m: float,
    sensor_pitch_m: float,
    kernel_px: int | tuple[int, int],
    *,
    oversample: int = 3,
    support: torch.Tensor | None = None,
    check: bool = True,
) -> torch.Tensor:
    """Intensity PSF (..., kh, kw) of a complex pupil field (..., Ny, Nx) on sensor pixels.

    The optical axis falls on pixel (kh // 2, kw // 2) (the convolution centre convention).
    Each pixel holds the power it collects (intensity integrated over oversample^2 sub-pixels)
    divided by the power of a unit plane wave over ``support`` (default: where |pupil| > 0), so
    the PSF sums to the transmitted fraction that lands in the window.
    """
    grid = as_grid(pupil, pitch_m)
    p = check_positive("sensor_pitch_m", sensor_pitch_m)
    kh, kw = _kernel_hw(kernel_px)
    m = int(oversample)
    out_grid, offset = sensor_subpixels(kh, kw, p, m)
    field = fraunhofer_to(
        pupil, grid, wavelength_m, focal_length_m, out_grid, out_center_m=offset, check=check
    )
    power = field.real**2 + field.imag**2
    power = power * out_grid.area_element_m2
    power = power.reshape(*power.shape[:-2], kh, m, kw, m).sum(dim=(-3, -1))
    if support is None:
        support = pupil.detach().abs() > 0
    incident = support.to(power.dtype).sum(dim=(-2, -1)) * grid.area_element_m2
    if bool((incident <= 0).any()):
        raise ValueError("support (the illuminated aperture) is empty: no light enters")
    return power / incident[..., None, None]


def psf_from_phase(
    phase_rad: torch.Tensor,
    pitch_m: float | tuple[float, float] | Grid,
    wavelengths_m: float | Sequence[float],
    focal_length_m: float,
    sensor_pitch_m: float,
    kernel_px: int | tuple[int, int],
    *,
    amplitude: torch.Tensor | None = None,
    design_wavelength_m: float | None = None,
    refractive_index: RefractiveIndex | None = None,
    wrap: bool = True,
    channel_weights: Sequence[float] | None = None,
    oversample: int = 3,
    check: bool = True,
) -> torch.Tensor:
    """Phase profile (..., Ny, Nx) -> intensity PSFs (..., C, kh, kw), one channel per wavelength.

    Args:
        phase_rad: design phase in radians (at design_wavelength_m); differentiable.
        amplitude: aperture transmission (Ny, Nx) in [0, 1] (default: fully open grid).
        design_wavelength_m: enables dispersion (`dispersed_phase`); None = same phase for all.
        channel_weights: share of the source power in each colour (default 1/C each), so that
            the PSF summed over (C, kh, kw) stays <= 1 as the frontend contract requires.
    """
    if not isinstance(phase_rad, torch.Tensor) or phase_rad.ndim < 2 or phase_rad.is_complex():
        raise ValueError("phase_rad must be a real tensor (..., Ny, Nx)")
    lams = [wavelengths_m] if isinstance(wavelengths_m, (int, float)) else list(wavelengths_m)
    if not lams:
        raise ValueError("wavelengths_m must contain at least one wavelength")
    for lam in lams:
        check_positive("wavelengths_m", lam)
    if channel_weights is None:
        weights = [1.0 / len(lams)] * len(lams)
    else:
        weights = [float(w) for w in channel_weights]
        if len(weights) != len(lams) or min(weights) < 0 or sum(weights) > 1 + 1e-6:
            raise ValueError(
                "channel_weights must be one non-negative weight per wavelength, sum <= 1"
            )
    grid = as_grid(phase_rad, pitch_m)
    if amplitude is None:
        amplitude = torch.ones(grid.shape, dtype=phase_rad.dtype, device=phase_rad.device)
    elif tuple(amplitude.shape[-2:]) != grid.shape:
        raise ValueError(f"amplitude must have shape {grid.shape}, got {tuple(amplitude.shape)}")
    support = amplitude.detach() > 0
    out = []
    for lam, w in zip(lams, weights, strict=True):
        phi = phase_rad
        if design_wavelength_m is not None:
            phi = dispersed_phase(
                phase_rad, design_wavelength_m, lam, refractive_index=refractive_index, wrap=wrap
            )
        pupil = torch.polar(amplitude.to(phi.dtype).expand_as(phi), phi)
        psf = psf_from_pupil(
            pupil,
            grid,
            lam,
            focal_length_m,
            sensor_pitch_m,
            kernel_px,
            oversample=oversample,
            support=support,
            check=check,
        )
        out.append(psf * w)
    return torch.stack(out, dim=-3)


def psfs_from_phases(
    phases: torch.Tensor,
    config: OpticsConfig,
    *,
    oversample: int = 3,
    refractive_index: RefractiveIndex | None = None,
    check: bool = True,
) -> torch.Tensor:
    """One phase map per kernel sub-aperture (K, N, N) -> PSF stack (K, C, kernel_px, kernel_px).

    Each kernel is a square (or circular) sub-aperture of side config.kernel_size_m sampled by
    the N x N phase map, imaged by focal_length_m onto its own sensor tile; C follows
    config.wavelengths_m with dispersion about config.reference_wavelength_m.
    """
    if not isinstance(phases, torch.Tensor) or phases.ndim != 3:
        raise ValueError("phases must be a (K, N, N) tensor of radians")
    grid = Grid.covering(config.kernel_size_m, tuple(phases.shape[-2:]))
    amplitude = aperture_mask(
        grid, config.aperture_shape, config.kernel_size_m, phases.dtype, phases.device
    )
    return psf_from_phase(
        phases,
        grid,
        config.wavelengths_m,
        config.focal_length_m,
        config.sensor_pitch_m,
        config.kernel_px,
        amplitude=amplitude,
        design_wavelength_m=config.reference_wavelength_m,
        refractive_index=refractive_index,
        oversample=oversample,
        check=check,
    )
