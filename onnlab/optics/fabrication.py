"""The as-built meta-optic: seeded fabrication errors in the height domain, and the PSFs the
bench really produces (defocus by propagation, source bandwidth, zero order, leakage).

Model (the design's physics, `psf.py`): each of the K sub-apertures carries a thin phase
element, the design phase phi0 at lambda0 (`OpticsConfig.reference_wavelength_m`), made as a
height map h = wrap(phi0) lambda0 / (2 pi (n(lambda0) - 1)) in the material; an ideal focusing
element images it onto the sensor at the focal length f. The fabricated element differs:

* height domain (`as_built_heights`): quantised to L levels (the fab's multi-level process),
  every height scaled by 1 + eps (etch depth: a wafer-wide error plus a per-kernel
  non-uniformity), plus a Gaussian-correlated height-noise field. At wavelength lambda the
  element imposes phi = 2 pi (n(lambda) - 1) h / lambda (dispersion), so at zero error this is
  exactly `psf.dispersed_phase`.
* geometry: the optic (one substrate) is shifted by offset_m and rotated by rotation_rad about
  the aperture centre relative to the sensor, so sub-aperture k's focus moves by
  (R - I) c_k + offset and its PSF turns by the angle; the sensor sits at f + delta_z_m (+ the
  stage position z_offset_m), and the defocused PSF is computed by Fresnel propagation from
  the pupil (`focal_plane.sensor_power`, exact in the paraxial approximation of the design).
* source: each colour channel is a spectrum (FWHM, Gaussian or top-hat), integrated by
  quadrature; each wavelength has its own dispersed phase and lambda z scale.
* zero order: a fraction eta0 of the light passes the meta-optic unmodulated (the part of a
  metasurface / diffractive lens that does not receive the lens phase), is not focused and
  reaches the sensor as the Fresnel shadow of the sub-aperture (`focal_plane.shadow_power`);
  it is added in intensity (for geometric-phase metasurfaces it is the orthogonal polarisation
  and cannot interfere; otherwise the cross term is <= 2 sqrt(eta0) lambda f / D^2 of the peak,
  ~0.2 % for the defaults, and averages out over the bandwidth).
* leakage: PSFs are computed on a window of window_px >= kernel_px pixels (default
  kernel_px + 2 gap_px), so light that misses the kernel window lands where the gap and the
  neighbouring tiles are.

Energy bookkeeping (`energy_budget`): per kernel and channel, of the light incident on the
sub-aperture (share 1/C per channel) a phase-only element transmits all of it; `in_kernel` is
what lands in the central kernel_px window (the feature), `leaked` what lands in the rest of
the window (gap and neighbouring tiles), `lost` the remainder: light beyond the window (the far
part of the zero-order shadow, wide-angle scatter of the height noise, higher diffraction
orders), which reaches the sensor as a broad background or misses it. Nothing is renormalised.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from onnlab.optics.as_built import AsBuilt
from onnlab.optics.fab_sampling import correlated_noise, source_spectrum
from onnlab.optics.focal_plane import sensor_power, shadow_power
from onnlab.optics.grid import Grid
from onnlab.optics.layout import OpticsConfig
from onnlab.optics.materials import Material, get_material
from onnlab.optics.psf import aperture_mask


class FabricationErrors(BaseModel):
    """Tolerances of a fabricated meta-optic and its mounting (SI units); `draw` makes one.

    `strength` multiplies every standard deviation, the source FWHM and the zero-order
    fraction (0 = the perfect optic; the same seed gives the same error pattern at every
    strength, so sweeps are smooth); quantisation, a discrete process choice, applies at any
    strength > 0. Defaults assume a multi-level (or grey-scale) fused-silica element
    (h_2pi = 1.16 um at 532 nm) or an e-beam/etch metasurface of comparable phase accuracy,
    actively aligned on a machine-vision sensor, viewing an OLED display.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    # RIE / ion-beam etch depth is controlled to about +-3-5 % run to run (grey-scale
    # lithography: dose-to-height calibration, similar): one wafer-wide scale error.
    etch_depth_rel_std: float = Field(0.03, ge=0)
    # Etch-rate non-uniformity across a few mm of wafer is ~1 %: a per-sub-aperture scale.
    etch_depth_kernel_rel_std: float = Field(0.01, ge=0)
    # Resist-thickness / dose / level-alignment errors of multi-level and grey-scale processes
    # leave ~20-50 nm rms height error on a 1.16 um profile (for pillar metasurfaces, +-5-10 nm
    # CD errors give the same 0.1-0.3 rad of phase): 40 nm = 0.22 rad at 532 nm in fused
    # silica, scattering 1 - exp(-0.22^2) ~ 5 % of the light out of the designed PSF.
    height_noise_rms_m: float = Field(40e-9, ge=0)
    # Those errors vary over the proximity / writing-field scale of 10-100 um; 20 um scatters
    # the light over lambda f / (pi l) ~ 20 um (6 px) around each focus, i.e. into the window
    # and its neighbours (and is resolved by >= 2.5 phase samples at N = 64).
    height_noise_correlation_m: float = Field(20e-6, gt=0)
    # Three binary masks give 8 levels, the classical multi-level diffractive optic: first
    # order efficiency sinc^2(1/8) = 95 %. None = continuous profile.
    levels: int | None = Field(8, ge=2)
    # Active alignment of an optic on a sensor reaches ~1-3 um and ~0.05 deg.
    lateral_offset_std_m: float = Field(2e-6, ge=0)
    rotation_std_rad: float = Field(1e-3, ge=0)
    # Spacer / adhesive thickness tolerance ~10 um; the depth of focus +-2 lambda F^2 is
    # +-27 um at F/5, 532 nm, so this is a visible but correctable defocus.
    sensor_distance_std_m: float = Field(10e-6, ge=0)
    # OLED primaries have FWHM of 25-40 nm (the paper shows its inputs on an OLED display);
    # one value for every channel or one per channel.
    source_fwhm_m: float | tuple[float, ...] = 30e-9
    spectrum_samples: int = Field(7, ge=1)
    spectrum_shape: Literal["gaussian", "tophat"] = "gaussian"
    # Measured focusing efficiencies of 8-level diffractive lenses and metalenses fall 5-15
    # points below the scalar model; much of the difference is unfocused (zero-order) light.
    zero_order_fraction: float = Field(0.05, ge=0, lt=1)
    # How far beyond the kernel window each PSF is computed (None: gap_px, where the
    # neighbouring tile begins).
    leakage_margin_px: int | None = Field(None, ge=0)
    strength: float = Field(1.0, ge=0)

    @field_validator("source_fwhm_m")
    @classmethod
    def _check_fwhm(cls, v: float | tuple[float, ...]) -> float | tuple[float, ...]:
        vals = (v,) if isinstance(v, (int, float)) else v
        if not vals or not all(math.isfinite(x) and 0 <= x < 1e-6 for x in vals):
            raise ValueError(f"source_fwhm_m must be >= 0 metres (< 1 um), got {v!r}")
        return v

    def draw(self, seed: int, config: OpticsConfig, n_kernels: int, phase_samples: int) -> AsBuilt:
        """The concrete deviations of fabrication run `seed` (pure function of its arguments)."""
        k, n = int(n_kernels), int(phase_samples)
        if k < 1 or n < 2:
            raise ValueError(f"n_kernels >= 1 and phase_samples >= 2 required, got {k}, {n}")
        if self.zero_order_fraction * self.strength >= 1:
            raise ValueError("strength * zero_order_fraction must stay below 1")
        fwhm = self.source_fwhm_m
        fwhms = (fwhm,) * config.in_channels if isinstance(fwhm, (int, float)) else fwhm
        if len(fwhms) != config.in_channels:
            raise ValueError(
                f"source_fwhm_m has {len(fwhms)} values for {config.in_channels} channels"
            )
        s = float(self.strength)
        gen = torch.Generator().manual_seed(int(seed))
        # Every random number is drawn at every strength, in a fixed order.
        eps_wafer = float(torch.randn(1, generator=gen, dtype=torch.float64))
        eps_kernel = torch.randn(k, generator=gen, dtype=torch.float64)
        offset = torch.randn(2, generator=gen, dtype=torch.float64)
        rot = float(torch.randn(1, generator=gen, dtype=torch.float64))
        dz = float(torch.randn(1, generator=gen, dtype=torch.float64))
        noise = correlated_noise(
            (k, n, n),
            config.kernel_size_m / n,
            self.height_noise_rms_m * s,
            self.height_noise_correlation_m,
            gen,
        )
        scale = 1 + s * (
            self.etch_depth_rel_std * eps_wafer + self.etch_depth_kernel_rel_std * eps_kernel
        )
        if bool((scale <= 0).any()):
            raise ValueError("etch-depth errors this large give non-positive heights")
        spectra = tuple(
            source_spectrum(lam, s * w, self.spectrum_samples, self.spectrum_shape)
            for lam, w in zip(config.wavelengths_m, fwhms, strict=True)
        )
        margin = config.gap_px if self.leakage_margin_px is None else self.leakage_margin_px
        return AsBuilt(
            seed=int(seed),
            strength=s,
            height_scale=scale,
            height_noise_m=noise,
            levels=self.levels if s > 0 else None,
            offset_m=(
                s * self.lateral_offset_std_m * float(offset[0]),
                s * self.lateral_offset_std_m * float(offset[1]),
            ),
            rotation_rad=s * self.rotation_std_rad * rot,
            delta_z_m=s * self.sensor_distance_std_m * dz,
            spectra=spectra,
            zero_order_fraction=s * self.zero_order_fraction,
            window_px=config.kernel_px + 2 * margin,
        )


# ----------------------------------------------------------------------------- height domain


def _check_inputs(design_phases: torch.Tensor, as_built: AsBuilt) -> None:
    if not isinstance(design_phases, torch.Tensor) or design_phases.ndim != 3:
        raise ValueError("design_phases must be a (K, N, N) tensor of radians")
    k, n = design_phases.shape[0], design_phases.shape[-1]
    if (k, n) != (as_built.n_kernels, as_built.phase_samples) or design_phases.shape[1] != n:
        raise ValueError(
            f"design_phases {tuple(design_phases.shape)} does not match the as-built optic "
            f"(K={as_built.n_kernels}, N={as_built.phase_samples}); draw it with these sizes"
        )


def as_built_heights(
    design_phases: torch.Tensor, config: OpticsConfig, material: Material | str, as_built: AsBuilt
) -> torch.Tensor:
    """Fabricated height map (K, N, N) in metres: quantise, scale by the etch depth, add noise."""
    _check_inputs(design_phases, as_built)
    mat = get_material(material)
    lam0 = config.reference_wavelength_m
    h2pi = lam0 / (mat.index(lam0) - 1)
    h = torch.remainder(design_phases, 2 * math.pi) * (h2pi / (2 * math.pi))
    if as_built.levels is not None:
        step = h2pi / as_built.levels
        h = torch.remainder(torch.round(h / step), as_built.levels) * step
    dt, dev = design_phases.dtype, design_phases.device
    h = h * as_built.height_scale.to(dt).to(dev)[:, None, None]
    if bool((as_built.height_noise_m != 0).any()):
        h = h + as_built.height_noise_m.to(dt).to(dev)
    return h


def as_built_phases(
    design_phases: torch.Tensor,
    config: OpticsConfig,
    material: Material | str,
    as_built: AsBuilt,
    wavelengths_m: Sequence[float] | None = None,
) -> torch.Tensor:
    """Phases (K, L, N, N) the fabricated element imposes at each wavelength (default: the
    channel centres), phi = 2 pi (n(lambda) - 1) h / lambda with the material's dispersion."""
    mat = get_material(material)
    h = as_built_heights(design_phases, config, mat, as_built)
    lams = config.wavelengths_m if wavelengths_m is None else tuple(wavelengths_m)
    return torch.stack([h * (2 * math.pi * (mat.index(lam) - 1) / lam) for lam in lams], dim=1)


# ----------------------------------------------------------------------------- sensor plane


def _shifts(config: OpticsConfig, as_built: AsBuilt) -> torch.Tensor:
    """(K, 2) displacement of each focus: (R(theta) - I) c_k + offset (rotation about the
    aperture centre; a positive angle turns +x towards +y)."""
    k = as_built.n_kernels
    lay = config.layout()
    if k > lay.count:
        raise ValueError(f"{k} kernels do not fit the aperture (Eq. 1 holds {lay.count})")
    c = torch.as_tensor(lay.centers_m[:k], dtype=torch.float64)
    th = as_built.rotation_rad
    cy, cx = c[:, 0], c[:, 1]
    ry = math.cos(th) * cy + math.sin(th) * cx
    rx = math.cos(th) * cx - math.sin(th) * cy
    off = torch.tensor(as_built.offset_m, dtype=torch.float64)
    return torch.stack([ry - cy, rx - cx], dim=1) + off


def _window(config: OpticsConfig, as_built: AsBuilt, window_px: int | None) -> int:
    w = as_built.window_px if window_px is None else int(window_px)
    if w < config.kernel_px or (w - config.kernel_px) % 2:
        raise ValueError(
            f"window_px={w} must be >= kernel_px={config.kernel_px} with an even difference "
            "(the kernel window sits at its centre)"
        )
    return w


def effective_psfs_stack(
    design_phases: torch.Tensor,
    config: OpticsConfig,
    material: Material | str,
    as_built: AsBuilt,
    z_offsets_m: Sequence[float],
    *,
    window_px: int | None = None,
    oversample: int = 3,
    amplitude: torch.Tensor | None = None,
    exact_rotation: bool = True,
    check: bool = True,
) -> torch.Tensor:
    """PSFs (S, K, C, W, W) the fabricated optic produces with the sensor at each stage
    position f + delta_z_m + z_offsets_m[s] (the bench caches them per position).

    Each channel's PSF is (1/C) sum_j w_j [(1 - eta0) P_mod(lambda_j) + eta0 P_zero(lambda_j)]:
    P_mod the Fresnel-propagated as-built pupil, P_zero the unfocused shadow, both fractions of
    the light incident on the sub-aperture, integrated over sensor pixels; the kernel window is
    the central kernel_px x kernel_px. `amplitude` (N, N) or (K, N, N) apodises the pupil
    (default: the config's clear aperture).

    Cost: one matrix Fourier transform per (wavelength, position) for all K, about
    C * spectrum_samples of them; a rotated optic needs the non-separable transform, ~10x
    dearer. ``exact_rotation=False`` keeps the rotation's displacement of every focus
    ((R - I) c_k, exact) but not the turn of each PSF about its own focus, which moves no
    sample by more than |rotation_rad| * the window's half-diagonal (0.04 um = 1 % of a pixel
    for 1 mrad and a 15 px window).
    """
    mat = get_material(material)
    heights = as_built_heights(design_phases, config, mat, as_built)
    k, n = heights.shape[0], heights.shape[-1]
    w_px = _window(config, as_built, window_px)
    grid = Grid.covering(config.kernel_size_m, (n, n))
    rdt = design_phases.dtype
    clear = aperture_mask(grid, config.aperture_shape, config.kernel_size_m, rdt, heights.device)
    amp = clear if amplitude is None else amplitude.to(rdt).to(heights.device)
    # psf.py's normalisation: the power of a unit plane wave over the illuminated support.
    support = (amp.detach().abs() > 0).to(rdt).sum(dim=(-2, -1)) * grid.area_element_m2
    incident = support.reshape(-1, 1, 1) if support.ndim else support
    shifts = _shifts(config, as_built)
    theta = as_built.rotation_rad if exact_rotation else 0.0
    f = config.focal_length_m
    zs = [f + as_built.delta_z_m + float(z) for z in z_offsets_m]
    if not zs:
        raise ValueError("z_offsets_m must hold at least one stage position")
    eta0 = as_built.zero_order_fraction
    n_ch = len(as_built.spectra)
    if n_ch != config.in_channels:
        raise ValueError(f"as_built has {n_ch} channel spectra, config {config.in_channels}")
    out = torch.zeros(len(zs), k, n_ch, w_px, w_px, dtype=rdt, device=heights.device)
    for c, (lams, weights) in enumerate(as_built.spectra):
        for lam, wt in zip(lams, weights, strict=True):
            phase = heights * (2 * math.pi * (mat.index(lam) - 1) / lam)
            pupil = torch.polar(amp.expand_as(phase).contiguous(), phase)
            for si, z in enumerate(zs):
                p = sensor_power(
                    pupil,
                    grid,
                    lam,
                    f,
                    z,
                    config.sensor_pitch_m,
                    w_px,
                    oversample=oversample,
                    shift_m=shifts,
                    rotation_rad=theta,
                    check=check,
                )
                out[si, :, c] += (wt * (1 - eta0)) * p / incident
                if eta0 > 0:
                    bg = shadow_power(
                        config.aperture_shape,
                        config.kernel_size_m,
                        lam,
                        z,
                        config.sensor_pitch_m,
                        w_px,
                        oversample=oversample,
                        shift_m=shifts,
                        rotation_rad=theta,
                    )
                    out[si, :, c] += (wt * eta0) * bg.to(out)
    return out / n_ch


def effective_psfs(
    design_phases: torch.Tensor,
    config: OpticsConfig,
    material: Material | str,
    as_built: AsBuilt,
    *,
    window_px: int | None = None,
    z_offset_m: float = 0.0,
    oversample: int = 3,
    amplitude: torch.Tensor | None = None,
    exact_rotation: bool = True,
    check: bool = True,
) -> torch.Tensor:
    """PSFs (K, C, W, W) the fabricated optic produces with the stage at z_offset_m (see
    `effective_psfs_stack`)."""
    return effective_psfs_stack(
        design_phases,
        config,
        material,
        as_built,
        [z_offset_m],
        window_px=window_px,
        oversample=oversample,
        amplitude=amplitude,
        exact_rotation=exact_rotation,
        check=check,
    )[0]


def zero_order_psfs(
    config: OpticsConfig,
    as_built: AsBuilt,
    *,
    window_px: int,
    z_offset_m: float = 0.0,
    oversample: int = 1,
) -> torch.Tensor:
    """The unfocused zero-order light alone (K, C, W, W) on any window, e.g. one covering the
    whole shadow of a sub-aperture (~D / pitch pixels) for a bench that renders it as a broad
    background: eta0 / C sum_j w_j P_zero(lambda_j). Sums to ~eta0 / C on a covering window."""
    w_px = int(window_px)
    shifts = _shifts(config, as_built)
    z = config.focal_length_m + as_built.delta_z_m + float(z_offset_m)
    out = torch.zeros(as_built.n_kernels, len(as_built.spectra), w_px, w_px, dtype=torch.float64)
    for c, (lams, weights) in enumerate(as_built.spectra):
        for lam, wt in zip(lams, weights, strict=True):
            out[:, c] += wt * shadow_power(
                config.aperture_shape,
                config.kernel_size_m,
                lam,
                z,
                config.sensor_pitch_m,
                w_px,
                oversample=oversample,
                shift_m=shifts,
                rotation_rad=as_built.rotation_rad,
            )
    return out * (as_built.zero_order_fraction / len(as_built.spectra))


@dataclass(frozen=True)
class EnergyBudget:
    """Fractions (K, C) of each channel's light incident on a sub-aperture: in the kernel
    window, leaked into the rest of the PSF window (gap, neighbouring tiles), lost beyond it."""

    in_kernel: torch.Tensor
    leaked: torch.Tensor
    lost: torch.Tensor


def energy_budget(
    psfs: torch.Tensor, kernel_px: int, transmitted: float | torch.Tensor = 1.0
) -> EnergyBudget:
    """Split window PSFs (K, C, W, W) (channel share 1/C each) into in-kernel / leaked / lost;
    `transmitted` is the element's power transmittance (1 for a phase-only element)."""
    if psfs.ndim != 4:
        raise ValueError("psfs must be (K, C, W, W)")
    n_ch, w = psfs.shape[1], psfs.shape[-1]
    m = (w - int(kernel_px)) // 2
    if m < 0 or (w - int(kernel_px)) % 2:
        raise ValueError(f"kernel_px={kernel_px} does not sit centred in a {w}-px window")
    window = psfs.sum(dim=(-2, -1)) * n_ch
    core = psfs[..., m : w - m, m : w - m].sum(dim=(-2, -1)) * n_ch
    return EnergyBudget(core, window - core, transmitted - window)
