"""Sampled optical fields with physical units, and the sampling rules that keep them honest.

Conventions (shared by propagation and psf): a field of shape (..., Ny, Nx) sampled at pitch
(dy, dx) has its origin at index (Ny // 2, Nx // 2) — the `fftshift` centre — so that padding,
FFTs and matrix Fourier transforms all agree on where the optical axis is. Frequencies are in
cycles per metre. Checks raise ValueError naming the parameter to change, because an undersampled
propagation kernel does not crash: it silently returns aliased garbage.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def _pair(name: str, value: float | tuple[float, float]) -> tuple[float, float]:
    if isinstance(value, (int, float)):
        value = (value, value)
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a number or a (y, x) pair, got {value!r}") from exc
    if not (math.isfinite(a) and math.isfinite(b) and a > 0 and b > 0):
        raise ValueError(f"{name} must be positive, got {value!r}")
    return a, b


def check_positive(name: str, value: float) -> float:
    """Return float(value) or raise ValueError naming the parameter (used for SI quantities)."""
    v = float(value)
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name} must be positive and finite, got {value!r}")
    return v


@dataclass(frozen=True)
class Grid:
    """A (Ny, Nx) sampling grid with pitch (dy, dx) in metres, origin at (Ny // 2, Nx // 2)."""

    shape: tuple[int, int]
    pitch_m: tuple[float, float]

    def __post_init__(self) -> None:
        shape = tuple(int(n) for n in self.shape)
        if len(shape) != 2 or min(shape) < 1 or shape != tuple(self.shape):
            raise ValueError(f"shape must be two positive integers (Ny, Nx), got {self.shape!r}")
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "pitch_m", _pair("pitch_m", self.pitch_m))

    @classmethod
    def square(cls, n: int, pitch_m: float) -> Grid:
        """An n x n grid with equal pitch."""
        return cls((n, n), (pitch_m, pitch_m))

    @classmethod
    def covering(cls, extent_m: float | tuple[float, float], n: int | tuple[int, int]) -> Grid:
        """n samples spanning extent_m exactly (pitch = extent / n), e.g. one kernel aperture."""
        ey, ex = _pair("extent_m", extent_m)
        ny, nx = (n, n) if isinstance(n, int) else n
        return cls((ny, nx), (ey / ny, ex / nx))

    @property
    def extent_m(self) -> tuple[float, float]:
        """Physical size of the window (N * pitch): the period of its Fourier representation."""
        return self.shape[0] * self.pitch_m[0], self.shape[1] * self.pitch_m[1]

    @property
    def area_element_m2(self) -> float:
        """dy * dx: the weight that turns sum |U|^2 into energy."""
        return self.pitch_m[0] * self.pitch_m[1]

    def axes(
        self, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """1-D coordinates (y, x) in metres, zero at index N // 2."""
        out = []
        for n, d in zip(self.shape, self.pitch_m, strict=True):
            out.append((torch.arange(n, dtype=torch.float64, device=device) - n // 2) * d)
        return out[0].to(dtype), out[1].to(dtype)

    def mesh(
        self, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """2-D coordinates (Y, X) in metres, each (Ny, Nx)."""
        y, x = self.axes(dtype, device)
        return torch.meshgrid(y, x, indexing="ij")

    def radius(
        self, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """Distance from the optical axis in metres, (Ny, Nx)."""
        yy, xx = self.mesh(dtype, device)
        return torch.sqrt(yy**2 + xx**2)

    def freq_axes(
        self,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        centred: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Spatial frequencies (fy, fx) in cycles/m; centred (fftshift order) or FFT order."""
        out = []
        for n, d in zip(self.shape, self.pitch_m, strict=True):
            f = torch.fft.fftfreq(n, d=d, dtype=torch.float64, device=device)
            out.append(torch.fft.fftshift(f) if centred else f)
        return out[0].to(dtype), out[1].to(dtype)

    @property
    def nyquist_m_inv(self) -> tuple[float, float]:
        """Highest representable frequency 1 / (2 pitch) per axis, cycles/m."""
        return 0.5 / self.pitch_m[0], 0.5 / self.pitch_m[1]

    def padded(self, shape: tuple[int, int]) -> Grid:
        """Same pitch, larger window (zero padding keeps the origin at N // 2)."""
        if shape[0] < self.shape[0] or shape[1] < self.shape[1]:
            raise ValueError(f"pad shape {shape} must not be smaller than the grid {self.shape}")
        return Grid(tuple(shape), self.pitch_m)

    def fraunhofer(self, wavelength_m: float, focal_length_m: float) -> Grid:
        """The focal-plane grid of a lens: pitch lambda f / (N d), same shape."""
        return Grid(self.shape, fraunhofer_pitch_m(self, wavelength_m, focal_length_m))


def fraunhofer_pitch_m(
    grid: Grid, wavelength_m: float, focal_length_m: float
) -> tuple[float, float]:
    """Output pitch of an N-point FFT Fraunhofer transform: lambda f / (N d) per axis."""
    lam = check_positive("wavelength_m", wavelength_m)
    f = check_positive("focal_length_m", focal_length_m)
    return tuple(lam * f / e for e in grid.extent_m)  # type: ignore[return-value]


def check_fraunhofer(
    grid: Grid,
    wavelength_m: float,
    focal_length_m: float,
    *,
    out_extent_m: float | tuple[float, float] | None = None,
    out_pitch_m: float | tuple[float, float] | None = None,
) -> None:
    """Refuse Fraunhofer set-ups whose output would alias or is unphysical.

    * pitch_m > lambda / 2 is required for the paraxial far field to contain only propagating
      orders (the output window spans angles up to lambda / (2 pitch));
    * the output window lambda f / pitch must cover out_extent_m, else the periodic replicas of
      the sampled aperture's spectrum fold into the sensor window (aliasing);
    * an FFT's output pitch lambda f / (N pitch) must be no coarser than out_pitch_m, else the
      PSF is undersampled on the sensor: zero-pad (pad_to) to a larger N.
    """
    lam = check_positive("wavelength_m", wavelength_m)
    f = check_positive("focal_length_m", focal_length_m)
    dy, dx = grid.pitch_m
    if min(dy, dx) <= lam / 2:
        raise ValueError(
            f"pitch_m={min(dy, dx):g} is below wavelength_m/2={lam / 2:g}: the Fraunhofer window "
            "would contain evanescent orders; sample the aperture more coarsely"
        )
    if out_extent_m is not None:
        ey, ex = _pair("out_extent_m", out_extent_m)
        wy, wx = lam * f / dy, lam * f / dx
        if ey > wy * (1 + 1e-9) or ex > wx * (1 + 1e-9):
            need = lam * f / max(ey, ex)
            raise ValueError(
                f"pitch_m={max(dy, dx):g} is too coarse: the focal-plane window lambda*f/pitch = "
                f"({wy:g}, {wx:g}) m is smaller than the requested output ({ey:g}, {ex:g}) m, so "
                f"the PSF would alias; use pitch_m <= {need:g} (more aperture samples)"
            )
    if out_pitch_m is not None:
        py, px = _pair("out_pitch_m", out_pitch_m)
        fy, fx = fraunhofer_pitch_m(grid, lam, f)
        if fy > py * (1 + 1e-9) or fx > px * (1 + 1e-9):
            raise ValueError(
                f"pad_to/shape={grid.shape} gives a focal-plane pitch ({fy:g}, {fx:g}) m, coarser "
                f"than out_pitch_m=({py:g}, {px:g}): zero-pad the aperture (pad_to) to a larger N"
            )


def as_band_limit(padded: Grid, wavelength_m: float, distance_m: float) -> tuple[float, float]:
    """Matsushima & Shimobaba (2009) band limit (fy, fx) for angular-spectrum propagation.

    The transfer function's chirp is sampled at du = 1 / (padded extent); frequencies beyond
    u_limit = 1 / (lambda sqrt((2 du z)^2 + 1)) would alias (their light travels outside the
    padded window within distance z), so they are cut.
    """
    lam = check_positive("wavelength_m", wavelength_m)
    z = abs(float(distance_m))
    out = []
    for extent in padded.extent_m:
        du = 1.0 / extent
        out.append(1.0 / (lam * math.sqrt((2 * du * z) ** 2 + 1)))
    return out[0], out[1]


def check_angular_spectrum(
    padded: Grid, wavelength_m: float, distance_m: float, *, band_limit: bool = True
) -> None:
    """Refuse angular-spectrum set-ups that alias when propagated without a band limit.

    Without the band limit the transfer-function chirp must be Nyquist sampled up to the grid's
    highest frequency f_N: |z| <= L/2 * sqrt(1/lambda^2 - f_N^2) / f_N (L = padded extent).
    With the band limit the set-up is always alias-free; whether it loses signal depends on the
    field and is checked on the data by `angular_spectrum(check=True)`.
    """
    lam = check_positive("wavelength_m", wavelength_m)
    z = float(distance_m)
    if not math.isfinite(z):
        raise ValueError(f"distance_m must be finite, got {distance_m!r}")
    if band_limit:
        return
    for axis, (extent, fn) in enumerate(zip(padded.extent_m, padded.nyquist_m_inv, strict=True)):
        fmax = min(fn, (1 - 1e-9) / lam)
        z_crit = extent / 2 * math.sqrt(1 / lam**2 - fmax**2) / fmax
        if abs(z) > z_crit:
            raise ValueError(
                f"distance_m={z:g} exceeds {z_crit:g} m, beyond which the angular-spectrum "
                f"transfer function is undersampled along axis {axis} (pitch_m, padded shape "
                f"{padded.shape}); use band_limit=True, more padding, or fraunhofer"
            )
