"""Light on a (possibly displaced) sensor plane: Fresnel diffraction from the meta-optic's pupil
and the unfocused shadow of a sub-aperture, sampled on rotated / shifted sensor sub-pixels.

Geometry: a sub-aperture of the meta-optic (pupil field P(x), origin on its axis) focuses at
distance f (`psf.py`'s model: the design phase in the pupil of an ideal focusing element); the
sensor sits at distance z = f + dz. The Fresnel integral from the pupil to the sensor is

    U(u) = e^{i pi u^2 / (lambda z)} / (i lambda z) *
           sum_x P(x) exp(i pi |x|^2 (1/z - 1/f) / lambda) exp(-2 pi i u.x / (lambda z)) dA,

i.e. the Fraunhofer transform at scale lambda z of the pupil times the defocus phase. Why this
and not an angular-spectrum step from the focal plane: `psf.py` computes the focal-plane field
without its quadratic phase (irrelevant for the intensity at focus, essential for propagating
on), and an angular-spectrum step would need a window holding the whole defocused blur plus
padding; the pupil form is the same paraxial physics as the in-focus PSF (so dz = 0 reproduces
`psf_from_phase` to rounding), includes the change of scale lambda f -> lambda z, and costs one
matrix Fourier transform. It is exact within the Fresnel approximation, which for the meta-optics
here (NA ~ 0.1, Fresnel number a^2 / (lambda f) ~ 50) errs by far less than the fabrication
effects it serves.

Sensor samples: pixel j of a W-pixel window spans [(j - W//2) - 1/2, (j - W//2) + 1/2] pitches,
so the optical axis falls on the centre of pixel W//2 (the convention of `psf_from_pupil`); each
pixel is integrated over oversample^2 sub-pixels. The optic may be shifted (shift_m, in sensor
coordinates) and rotated (rotation_rad, a positive angle turns +x towards +y as in
`sensor.misalign`) relative to the sensor: the field at sensor point s is the unrotated field at
R(-theta) (s - shift).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from onnlab.optics.grid import Grid, check_fraunhofer, check_positive


def subpixel_axis(window_px: int, pitch_m: float, oversample: int) -> torch.Tensor:
    """Sub-pixel centres (W * m,) in metres along one axis, axis on the centre of pixel W // 2."""
    w, m = int(window_px), int(oversample)
    if w < 1 or m < 1:
        raise ValueError(f"window_px and oversample must be >= 1, got {window_px}, {oversample}")
    i = torch.arange(w * m, dtype=torch.float64)
    return ((i // m - w // 2) + ((i % m) + 0.5) / m - 0.5) * pitch_m


def sample_points(
    axis_m: torch.Tensor, shift_m: torch.Tensor, rotation_rad: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Optic-frame coordinates (B, M, M) of sensor sub-pixels: R(-theta) (s - shift_b)."""
    c, s = math.cos(rotation_rad), math.sin(rotation_rad)
    sy, sx = axis_m[None, :, None], axis_m[None, None, :]
    dy, dx = shift_m[:, 0, None, None], shift_m[:, 1, None, None]
    ry, rx = sy - dy, sx - dx
    return c * ry - s * rx, s * ry + c * rx


def check_defocus(
    grid: Grid,
    wavelength_m: float,
    focal_length_m: float,
    distance_m: float,
    reach_m: float,
    *,
    name: str = "distance_m",
) -> None:
    """Refuse sensor distances whose defocused light would alias into the window.

    The sampled pupil's field repeats every lambda z / pitch on the sensor. Light of the design
    reaches up to `reach_m` from the axis along each axis (window half-width plus the optic's
    shift) and the defocus spreads it by the geometric blur r_max |z - f| / f (r_max: half the
    pupil's side); both must stay within half a period, or a replica would fold into the
    window. At z = f this is `check_fraunhofer`'s condition on the output extent.
    """
    z = check_positive(name, distance_m)
    f = check_positive("focal_length_m", focal_length_m)
    check_fraunhofer(grid, wavelength_m, z)
    half_period = wavelength_m * z / (2 * max(grid.pitch_m))
    r_max = 0.5 * max(grid.extent_m)
    blur = r_max * abs(z - f) / f
    if reach_m + blur > half_period * (1 + 1e-9):
        raise ValueError(
            f"{name}={z:g} m defocuses by {z - f:+g} m: the blur radius {blur:g} m plus the window "
            f"reach {reach_m:g} m exceeds half the alias-free period lambda z / pitch / 2 = "
            f"{half_period:g} m at wavelength_m={wavelength_m:g}; use more phase samples or a "
            "smaller sensor offset"
        )


def _cis(phase: torch.Tensor) -> torch.Tensor:
    """exp(i phase) for a real float64 tensor."""
    return torch.polar(torch.ones_like(phase), phase)


def _mft(u: torch.Tensor, a_y: torch.Tensor, a_x: torch.Tensor) -> torch.Tensor:
    """Separable matrix Fourier transform (B, N, N) -> (B, M, M)."""
    return a_y @ u @ a_x.transpose(0, 1)


def sensor_power(
    pupil: torch.Tensor,
    grid: Grid,
    wavelength_m: float,
    focal_length_m: float,
    distance_m: float,
    pitch_m: float,
    window_px: int,
    *,
    oversample: int = 3,
    shift_m: torch.Tensor | None = None,
    rotation_rad: float = 0.0,
    check: bool = True,
) -> torch.Tensor:
    """Power per sensor pixel (B, W, W) of pupil fields (B, N, N) after Fresnel propagation.

    The field is normalised so that the power through any plane is sum |P|^2 dA (Parseval); the
    caller divides by the incident power. shift_m (B, 2) (y, x) metres moves each optic
    relative to the sensor; rotation_rad rotates all of them about their own axes (callers add
    the displacement of off-centre sub-apertures to shift_m).
    """
    if pupil.ndim != 3 or not pupil.is_complex():
        raise ValueError("pupil must be a complex (B, N, N) tensor")
    b = pupil.shape[0]
    lam = check_positive("wavelength_m", wavelength_m)
    f = check_positive("focal_length_m", focal_length_m)
    z = check_positive("distance_m", distance_m)
    cdt = pupil.dtype
    dev = pupil.device
    shift = torch.zeros(b, 2, dtype=torch.float64) if shift_m is None else shift_m.double().cpu()
    if shift.shape != (b, 2):
        raise ValueError(f"shift_m must be (B, 2) = ({b}, 2), got {tuple(shift.shape)}")
    axis = subpixel_axis(window_px, pitch_m, oversample)
    if check:
        reach = (window_px / 2) * pitch_m + float(shift.abs().max())
        check_defocus(grid, lam, f, z, reach)
    y, x = grid.axes(torch.float64)
    k = 2 * math.pi / (lam * z)
    u = pupil
    if z != f:
        r2 = y[:, None] ** 2 + x[None, :] ** 2
        u = u * _cis(math.pi * r2 * (1 / z - 1 / f) / lam).to(cdt).to(dev)
    c, s = math.cos(rotation_rad), math.sin(rotation_rad)
    # Sensor point t maps to optic point v = R(-theta)(t - shift) = R(-theta) t + o, with the
    # per-optic offset o = -R(-theta) shift folded into the pupil as a linear phase.
    oy = -(c * shift[:, 0] - s * shift[:, 1])
    ox = -(s * shift[:, 0] + c * shift[:, 1])
    if bool((shift != 0).any()):
        lin = -k * (oy[:, None, None] * y[None, :, None] + ox[:, None, None] * x[None, None, :])
        u = u * _cis(lin).to(cdt).to(dev)
    if s == 0.0:
        a_y = _cis(-k * c * torch.outer(axis, y)).to(cdt).to(dev)
        a_x = _cis(-k * c * torch.outer(axis, x)).to(cdt).to(dev)
        field = _mft(u, a_y, a_x)
    else:
        # v_y(i, j) = c t_i - s t_j, v_x(i, j) = s t_i + c t_j: four separable factors.
        def e(a: torch.Tensor, bb: torch.Tensor, coef: float) -> torch.Tensor:
            return _cis(-k * coef * torch.outer(a, bb)).to(cdt).to(dev)

        a1, a2 = e(axis, y, c), e(axis, y, -s)  # (i, p), (j, p)
        a3, a4 = e(axis, x, s), e(axis, x, c)  # (i, q), (j, q)
        field = torch.einsum("bpq,iq,jq,ip,jp->bij", u, a3, a4, a1, a2)
    scale = grid.area_element_m2 / (lam * z)
    sub = pitch_m / oversample
    power = (field.real**2 + field.imag**2) * (scale**2 * sub**2)
    m = int(oversample)
    return power.reshape(b, window_px, m, window_px, m).sum(dim=(-3, -1))


# ----------------------------------------------------------------------------- unfocused light


def _gauss_legendre(lo: float, hi: float, panels: int, nodes: int = 16) -> tuple[np.ndarray, ...]:
    t, w = np.polynomial.legendre.leggauss(nodes)
    edges = np.linspace(lo, hi, panels + 1)
    half = 0.5 * (edges[1:] - edges[:-1])
    mid = 0.5 * (edges[1:] + edges[:-1])
    return (mid[:, None] + half[:, None] * t).ravel(), (half[:, None] * w).ravel()


def _chirp_integral(t: np.ndarray, lam: float, z: float) -> np.ndarray:
    """F(t) = int_0^t exp(i pi s^2 / (lambda z)) ds at ascending points t (a Fresnel integral):
    one composite Gauss-Legendre integral up to t[0], then exact 6-node panels between points."""
    c = math.pi / (lam * z)
    panels = int(math.ceil(t[0] ** 2 / (lam * z))) + 4
    s0, w0 = _gauss_legendre(0.0, float(t[0]), panels)
    start = np.exp(1j * c * s0**2) @ w0
    g, gw = np.polynomial.legendre.leggauss(6)
    half = 0.5 * np.diff(t)
    mid = 0.5 * (t[1:] + t[:-1])
    nodes = mid[:, None] + half[:, None] * g[None, :]
    steps = (np.exp(1j * c * nodes**2) * gw[None, :]).sum(axis=1) * half
    return start + np.concatenate([[0.0], np.cumsum(steps)])


def _slit_field(x: np.ndarray, half_m: float, lam: float, z: float) -> np.ndarray:
    """Fresnel field of a unit plane wave through the slit |xi| <= half_m, at ascending x:
    int_{x-a}^{x+a} exp(i pi s^2 / (lambda z)) ds / sqrt(i lambda z) = (F(a + x) + F(a - x)) / .."""
    plus = _chirp_integral(half_m + x, lam, z)
    minus = _chirp_integral((half_m - x)[::-1], lam, z)[::-1]
    return (plus + minus) / np.sqrt(1j * lam * z)


def _disc_field(rho: np.ndarray, radius_m: float, lam: float, z: float) -> np.ndarray:
    """Fresnel field of a unit plane wave through a disc of radius_m, at radii rho (Hankel)."""
    reach = float(rho.max()) + radius_m
    panels = int(math.ceil(radius_m * reach / (lam * z))) + 4
    r, w = _gauss_legendre(0.0, radius_m, panels)
    arg = torch.from_numpy(2 * math.pi * rho[:, None] * r[None, :] / (lam * z))
    j0 = torch.special.bessel_j0(arg).numpy()
    integrand = np.exp(1j * math.pi * r**2 / (lam * z))[None, :] * j0 * r[None, :]
    return (2 * math.pi / (lam * z)) * (integrand @ w)


def shadow_power(
    aperture_shape: str,
    size_m: float,
    wavelength_m: float,
    distance_m: float,
    pitch_m: float,
    window_px: int,
    *,
    oversample: int = 3,
    shift_m: torch.Tensor | None = None,
    rotation_rad: float = 0.0,
) -> torch.Tensor:
    """Fraction of the incident power per pixel (B, W, W) that an unfocused plane wave through
    the sub-aperture (square of side / disc of diameter size_m) deposits at distance_m.

    Fresnel diffraction of the aperture (1-D Fresnel integrals for the square, a Hankel
    integral for the disc, composite Gauss-Legendre quadrature), evaluated on a 1-D grid fine
    enough for linear interpolation to resolve the edge ripples (32 samples per shortest ripple
    period), then at each rotated / shifted sub-pixel. Deep inside the shadow the intensity is
    the incident one, so a pixel receives about pitch^2 / area of the light.
    """
    lam = check_positive("wavelength_m", wavelength_m)
    z = check_positive("distance_m", distance_m)
    size = check_positive("size_m", size_m)
    half = size / 2
    shift = torch.zeros(1, 2, dtype=torch.float64) if shift_m is None else shift_m.double().cpu()
    axis = subpixel_axis(window_px, pitch_m, oversample)
    vy, vx = sample_points(axis, shift, rotation_rad)
    if aperture_shape == "square":
        coords = [vy.numpy(), vx.numpy()]
        area = size**2
    elif aperture_shape == "circle":
        coords = [np.sqrt(vy.numpy() ** 2 + vx.numpy() ** 2)]
        area = math.pi * half**2
    else:
        raise ValueError(f"aperture_shape must be 'square' or 'circle', got {aperture_shape!r}")
    intensity = np.ones(vy.shape)
    for v in coords:
        lo, hi = float(v.min()), float(v.max())
        step = lam * z / (32 * (half + max(abs(lo), abs(hi))))
        fine = np.linspace(lo, hi, max(2, int(math.ceil((hi - lo) / step)) + 1))
        if aperture_shape == "square":
            field = _slit_field(fine, half, lam, z)
        else:
            field = _disc_field(fine, half, lam, z)
        intensity = intensity * np.interp(v, fine, np.abs(field) ** 2)
    sub = pitch_m / oversample
    power = torch.from_numpy(intensity) * (sub**2 / area)
    m = int(oversample)
    return power.reshape(-1, window_px, m, window_px, m).sum(dim=(-3, -1))
