"""Scalar diffraction: Fraunhofer (lens focal plane) and band-limited angular spectrum.

Both propagators use a physically scaled, energy-conserving discretisation: with field U sampled
at pitch d, ``sum |U|^2 dy dx`` (the power through the plane) is the same before and after,
exactly for Fraunhofer (Parseval) and for every band-limited, window-contained field in the
angular spectrum. Fields are complex tensors (..., Ny, Nx), any leading batch dims, origin at
(Ny // 2, Nx // 2) (see `onnlab.optics.grid`). Everything is differentiable.
"""

from __future__ import annotations

import cmath
import math

import torch
import torch.nn.functional as F

from onnlab.optics.grid import (
    Grid,
    as_band_limit,
    check_angular_spectrum,
    check_fraunhofer,
    check_positive,
)


def as_grid(field: torch.Tensor, pitch_m: float | tuple[float, float] | Grid) -> Grid:
    """The Grid of a field given its pitch (or validate a given Grid against its shape)."""
    if not isinstance(field, torch.Tensor) or field.ndim < 2:
        raise ValueError("field must be a tensor (..., Ny, Nx)")
    if isinstance(pitch_m, Grid):
        if pitch_m.shape != tuple(field.shape[-2:]):
            raise ValueError(f"pitch_m grid {pitch_m.shape} does not match field {field.shape}")
        return pitch_m
    return Grid(tuple(field.shape[-2:]), pitch_m)


def _complex(field: torch.Tensor) -> torch.Tensor:
    if field.is_complex():
        return field
    return field.to(torch.complex128 if field.dtype == torch.float64 else torch.complex64)


def pad_centred(field: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Zero-pad (..., ny, nx) to `shape` keeping the origin at index N // 2."""
    ny, nx = field.shape[-2:]
    my, mx = shape
    if my < ny or mx < nx:
        raise ValueError(f"pad_to={shape} must not be smaller than the field {(ny, nx)}")
    top, left = my // 2 - ny // 2, mx // 2 - nx // 2
    return F.pad(field, (left, mx - nx - left, top, my - ny - top))


def crop_centred(field: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Inverse of `pad_centred`."""
    ny, nx = shape
    my, mx = field.shape[-2:]
    top, left = my // 2 - ny // 2, mx // 2 - nx // 2
    return field[..., top : top + ny, left : left + nx]


def energy(field: torch.Tensor, pitch_m: float | tuple[float, float] | Grid) -> torch.Tensor:
    """Power through the plane: sum |U|^2 dy dx over the last two dims."""
    grid = as_grid(field, pitch_m)
    return (field.abs() ** 2).sum(dim=(-2, -1)) * grid.area_element_m2


def lens_phase(
    grid: Grid,
    wavelength_m: float,
    focal_length_m: float,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Paraxial thin-lens phase -pi r^2 / (lambda f), radians (Ny, Nx)."""
    lam = check_positive("wavelength_m", wavelength_m)
    f = check_positive("focal_length_m", focal_length_m)
    r = grid.radius(torch.float64, device)
    return (-math.pi * r**2 / (lam * f)).to(dtype)


def fraunhofer(
    field: torch.Tensor,
    pitch_m: float | tuple[float, float] | Grid,
    wavelength_m: float,
    focal_length_m: float,
    *,
    pad_to: tuple[int, int] | None = None,
    out_pitch_m: float | tuple[float, float] | None = None,
    check: bool = True,
) -> tuple[torch.Tensor, Grid]:
    """Field in the back focal plane of a lens: U(u) = 1/(i lambda f) * FT[U](u / (lambda f)).

    Zero-pads to `pad_to` (finer output pitch lambda f / (N d)), then one centred FFT. The
    physical prefactor makes the transform unitary in the L2 (energy) sense. The quadratic
    phase present when the object is not in the front focal plane is omitted (no effect on
    intensity). With ``out_pitch_m`` (e.g. the sensor pitch) the call is refused unless the
    padded FFT samples the focal plane at least that finely.

    Returns:
        (output field (..., My, Mx), output Grid with pitch lambda f / (M d)).
    """
    grid = as_grid(field, pitch_m)
    lam = check_positive("wavelength_m", wavelength_m)
    f = check_positive("focal_length_m", focal_length_m)
    if check:
        check_fraunhofer(grid, lam, f)
    u = _complex(field)
    if pad_to is not None:
        u = pad_centred(u, tuple(pad_to))
        grid = grid.padded(tuple(pad_to))
    if check and out_pitch_m is not None:
        check_fraunhofer(grid, lam, f, out_pitch_m=out_pitch_m)
    out_grid = grid.fraunhofer(lam, f)
    spec = torch.fft.fftshift(
        torch.fft.fft2(torch.fft.ifftshift(u, dim=(-2, -1)), norm="ortho"), dim=(-2, -1)
    )
    # sqrt(dA_in / dA_out) = dy dx sqrt(Ny Nx) / (lambda f); the 1/i of the Fresnel integral.
    scale = math.sqrt(grid.area_element_m2 / out_grid.area_element_m2)
    return spec * (scale * -1j), out_grid


def fraunhofer_to(
    field: torch.Tensor,
    pitch_m: float | tuple[float, float] | Grid,
    wavelength_m: float,
    focal_length_m: float,
    out_grid: Grid,
    *,
    out_center_m: tuple[float, float] = (0.0, 0.0),
    check: bool = True,
) -> torch.Tensor:
    """Fraunhofer field sampled on an arbitrary focal-plane grid (matrix Fourier transform).

    Why: a sensor's pitch is fixed by hardware and the FFT's lambda f / (N d) changes with
    wavelength; evaluating the Fourier integral directly at the sensor (sub)pixel centres avoids
    interpolation and costs only (My Ny + Mx Nx) N per field for a small PSF window.
    """
    grid = as_grid(field, pitch_m)
    lam = check_positive("wavelength_m", wavelength_m)
    f = check_positive("focal_length_m", focal_length_m)
    if check:
        check_fraunhofer(grid, lam, f, out_extent_m=out_grid.extent_m)
    u = _complex(field)
    ay, ax, factor = fraunhofer_matrices(grid, lam, f, out_grid, out_center_m, u.dtype, u.device)
    return (ay @ u @ ax.transpose(0, 1)) * factor


def fraunhofer_matrices(
    grid: Grid,
    wavelength_m: float,
    focal_length_m: float,
    out_grid: Grid,
    out_center_m: tuple[float, float] = (0.0, 0.0),
    dtype: torch.dtype = torch.complex64,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, complex]:
    """The separable operator of `fraunhofer_to`: out = factor * ay @ field @ ax^T.

    ay (My, Ny) and ax (Mx, Nx) are the Fourier kernels along each axis, factor the constant
    dA / (i lambda f); explicit, so that derivatives of a PSF (`onnlab.optics.psf_jacobian`) can
    be formed from the same operator.
    """
    lam, f = wavelength_m, focal_length_m
    y, x = grid.axes(torch.float64, device)
    v, w = out_grid.axes(torch.float64, device)
    v, w = v + out_center_m[0], w + out_center_m[1]
    ay = torch.exp(torch.outer(v, y) * (-2j * math.pi / (lam * f))).to(dtype)  # (My, Ny)
    ax = torch.exp(torch.outer(w, x) * (-2j * math.pi / (lam * f))).to(dtype)  # (Mx, Nx)
    return ay, ax, grid.area_element_m2 / (lam * f) * -1j


def transfer_function(
    padded: Grid,
    wavelength_m: float,
    distance_m: float | torch.Tensor,
    *,
    band_limit: bool = True,
    dtype: torch.dtype = torch.complex64,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Angular-spectrum transfer function H(fy, fx) in FFT order, without the carrier e^{ikz}.

    H = exp(i 2 pi z (sqrt(1/lambda^2 - f^2) - 1/lambda)), written in the cancellation-free form
    -f^2 / (1/lambda + sqrt(...)) so float32 keeps its precision at long distances; evanescent
    and (optionally) Matsushima-band-limited frequencies are zeroed.
    """
    lam = check_positive("wavelength_m", wavelength_m)
    real = torch.float64 if dtype == torch.complex128 else torch.float32
    fy, fx = padded.freq_axes(real, device, centred=False)
    f2 = fy[:, None] ** 2 + fx[None, :] ** 2
    k2 = 1.0 / lam**2 - f2
    propagating = k2 > 0
    dkz = -f2 / (1.0 / lam + torch.sqrt(k2.clamp_min(0)))
    z = torch.as_tensor(distance_m, dtype=real, device=fy.device)
    h = torch.polar(propagating.to(real), 2 * math.pi * z * dkz)
    if band_limit:
        ly, lx = as_band_limit(padded, lam, float(z.detach()))
        keep = (fy.abs()[:, None] <= ly) & (fx.abs()[None, :] <= lx)
        h = h * keep
    return h.to(dtype)


def angular_spectrum(
    field: torch.Tensor,
    pitch_m: float | tuple[float, float] | Grid,
    wavelength_m: float,
    distance_m: float | torch.Tensor,
    *,
    pad_factor: float = 2.0,
    band_limit: bool = True,
    carrier: bool = True,
    check: bool = True,
    max_loss: float = 1e-2,
) -> torch.Tensor:
    """Propagate a field by distance_m in free space (band-limited angular spectrum).

    Zero-pads by pad_factor (2 = the linear-convolution requirement of Matsushima & Shimobaba
    2009), multiplies the orthonormal FFT spectrum by the band-limited transfer function and
    crops back, so the output is on the input grid. With ``check`` the set-up is validated and
    the fraction of the field's power removed by the band limit / evanescent cut is measured;
    above ``max_loss`` a ValueError names distance_m (the field would leave the window).
    """
    grid = as_grid(field, pitch_m)
    lam = check_positive("wavelength_m", wavelength_m)
    if not (math.isfinite(pad_factor) and pad_factor >= 1):
        raise ValueError(f"pad_factor must be >= 1, got {pad_factor!r}")
    u = _complex(field)
    ny, nx = grid.shape
    padded = grid.padded((math.ceil(ny * pad_factor), math.ceil(nx * pad_factor)))
    z_val = float(torch.as_tensor(distance_m).detach())
    if check:
        check_angular_spectrum(padded, lam, z_val, band_limit=band_limit)
    up = pad_centred(u, padded.shape)
    spec = torch.fft.fft2(up, norm="ortho")
    h = transfer_function(
        padded, lam, distance_m, band_limit=band_limit, dtype=u.dtype, device=u.device
    )
    if check and z_val != 0.0:
        with torch.no_grad():
            total = (spec.abs() ** 2).sum()
            kept = ((spec * h).abs() ** 2).sum()
            loss = float(1 - kept / total) if total > 0 else 0.0
        if loss > max_loss:
            raise ValueError(
                f"distance_m={z_val:g} is too long for this window (shape {grid.shape}, pitch_m "
                f"{grid.pitch_m}): the band limit removes {100 * loss:.1f}% of the power; enlarge "
                "pad_factor or the grid, or use fraunhofer for the far field"
            )
    out = crop_centred(torch.fft.ifft2(spec * h, norm="ortho"), grid.shape)
    if carrier:
        # The common phase e^{i 2 pi z / lambda}, computed in double precision as a scalar.
        phase = 2 * math.pi * math.fmod(z_val / lam, 1.0)
        out = out * cmath.exp(1j * phase)
    return out
