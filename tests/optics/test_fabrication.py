"""The as-built meta-optic: each fabrication error alone against its physics (not the code).

Optics of the tests: the phase frontend's sub-aperture (D = 0.5 mm, f = 2.5 mm, F/5) on a
3.45 um sensor at 532 nm in fused silica. Where a clean spot is needed the pupil is apodised by
a Gaussian exp(-r^2 / W^2), W = 0.1 mm, whose focus is a Gaussian beam (waist
lambda f / (pi W) = 4.2 um) with no diffraction side lobes to contaminate a measuring box.
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from onnlab.optics import Grid, OpticsConfig, psfs_from_phases
from onnlab.optics.as_built import AsBuilt
from onnlab.optics.fab_sampling import FWHM_PER_SIGMA, correlated_noise, source_spectrum
from onnlab.optics.fabrication import (
    FabricationErrors,
    as_built_phases,
    effective_psfs,
    effective_psfs_stack,
    energy_budget,
    zero_order_psfs,
)
from onnlab.optics.focal_plane import shadow_power
from onnlab.optics.materials import get_material

LAM = 532e-9
F = 2.5e-3
D = 0.5e-3
P = 3.45e-6
W_GAUSS = 0.1e-3
MAT = get_material("SiO2")
NO_ERRORS = dict(
    etch_depth_rel_std=0.0,
    etch_depth_kernel_rel_std=0.0,
    height_noise_rms_m=0.0,
    levels=None,
    lateral_offset_std_m=0.0,
    rotation_std_rad=0.0,
    sensor_distance_std_m=0.0,
    source_fwhm_m=0.0,
    zero_order_fraction=0.0,
)


def config(n_kernels: int = 1, gap_px: int = 12, **kw) -> OpticsConfig:
    """1 x n_kernels sub-apertures (centres 0.6 mm apart) on a 3.45 um sensor."""
    width = n_kernels * D + (n_kernels - 1) * 0.1e-3
    base = dict(
        wavelengths_m=(LAM,),
        aperture_hw_m=(D, width),
        kernel_size_m=D,
        spacing_m=0.1e-3,
        kernel_px=7,
        focal_length_m=F,
        sensor_pitch_m=P,
        gap_px=gap_px,
        aperture_shape="square",
    )
    return OpticsConfig(**{**base, **kw})


def gaussian_pupil(n: int) -> torch.Tensor:
    grid = Grid.covering(D, n)
    return torch.exp(-(grid.radius(torch.float64) ** 2) / W_GAUSS**2)


def grating(n: int, period_m: float, k: int = 1) -> torch.Tensor:
    """Blazed grating phase 2 pi x / period along x (offset by half a sample so that no sample
    sits on a quantisation tie), (k, n, n)."""
    grid = Grid.covering(D, n)
    _, x = grid.mesh(torch.float64)
    return (2 * math.pi * (x + grid.pitch_m[1] / 2) / period_m).expand(k, n, n).clone()


def box_sum(psf: torch.Tensor, col: int, half: int = 3) -> torch.Tensor:
    """Power in a (2 half + 1)^2 box centred on row W // 2 and column W // 2 + col."""
    c = psf.shape[-1] // 2
    return psf[..., c - half : c + half + 1, c + col - half : c + col + half + 1].sum((-2, -1))


def moments(psf: torch.Tensor, axis: int, lo: int, hi: int) -> tuple[float, float]:
    """Mean and variance (m, m^2) along `axis` (-1 = x) of pixel columns/rows lo..hi relative
    to the centre pixel, with Sheppard's p^2 / 12 correction for pixel integration."""
    prof = psf.sum(dim=-2 if axis == -1 else -1).double()
    c = psf.shape[-1] // 2
    idx = torch.arange(lo, hi + 1, dtype=torch.float64)
    part = prof[c + lo : c + hi + 1]
    mean = float((idx * part).sum() / part.sum())
    var = float(((idx - mean) ** 2 * part).sum() / part.sum())
    return mean * P, (var - 1 / 12) * P**2


# ------------------------------------------------------------------------- height domain


def test_etch_depth_error_follows_blazed_grating_efficiency():
    """First-order efficiency of a blazed grating of phase depth s * 2 pi is sinc^2(1 - s)
    (scalar theory); at other wavelengths dispersion makes s = lambda0 / lambda *
    (n(lambda) - 1) / (n(lambda0) - 1) with the same law."""
    n, period = 128, 62.5e-6  # 16 samples per period; order 1 at lambda f / period = 6.2 px
    cfg = config()
    phases = grating(n, period)
    amp = gaussian_pupil(n)
    perfect = AsBuilt.perfect(cfg, 1, n)
    u1 = round(LAM * F / period / P)
    ref = float(box_sum(effective_psfs(phases, cfg, MAT, perfect, amplitude=amp)[0, 0], u1))
    transmitted = float((amp**2).mean())  # the apodiser's power transmittance
    assert ref / transmitted > 0.99  # the whole (Gaussian) beam goes into the designed order
    measured = {}
    for s in (0.7, 0.85, 1.15, 1.3):
        ab = dataclasses.replace(perfect, height_scale=torch.tensor([s], dtype=torch.float64))
        psf = effective_psfs(phases, cfg, MAT, ab, amplitude=amp)[0, 0]
        measured[s] = float(box_sum(psf, u1)) / ref
        assert measured[s] == pytest.approx(np.sinc(1 - s) ** 2, rel=2e-3), s
    assert measured[0.85] > measured[0.7] and measured[1.15] > measured[1.3]
    # dispersion: RGB channels of the same grating, design at 532 nm
    rgb = config(wavelengths_m=(630e-9, LAM, 465e-9))
    psf = effective_psfs(phases, rgb, MAT, AsBuilt.perfect(rgb, 1, n), amplitude=amp)[0]
    n0 = MAT.index(LAM)
    for c, lam in enumerate(rgb.wavelengths_m):
        s = LAM / lam * (MAT.index(lam) - 1) / (n0 - 1)
        eff = 3 * float(box_sum(psf[c], round(lam * F / period / P))) / ref
        assert eff == pytest.approx(np.sinc(1 - s) ** 2, rel=3e-3), lam


@pytest.mark.parametrize("levels", [2, 4, 8])
def test_quantised_grating_efficiency_is_sinc_squared_one_over_l(levels):
    """An L-level staircase blazed grating puts sinc^2(1/L) into the first order; with M
    samples per period the sampled staircase gives [sin(pi/L) / (M/L sin(pi/M))]^2."""
    n, m = 256, 32
    period = m * D / n
    cfg = config()
    phases, amp = grating(n, period), gaussian_pupil(n)
    perfect = AsBuilt.perfect(cfg, 1, n)
    u1 = round(LAM * F / period / P)
    ref = float(box_sum(effective_psfs(phases, cfg, MAT, perfect, amplitude=amp)[0, 0], u1))
    ab = dataclasses.replace(perfect, levels=levels)
    eff = float(box_sum(effective_psfs(phases, cfg, MAT, ab, amplitude=amp)[0, 0], u1)) / ref
    sampled = (math.sin(math.pi / levels) / (m / levels * math.sin(math.pi / m))) ** 2
    assert eff == pytest.approx(sampled, rel=1e-3)
    assert eff == pytest.approx(np.sinc(1 / levels) ** 2, rel=5e-3)


def test_correlated_noise_has_requested_rms_and_correlation_length():
    """Gaussian covariance rms^2 exp(-rho^2 / l^2): sample rms ~ rms, autocorrelation e^-1 at
    lag l and e^-4 at lag 2 l."""
    pitch, ell = 4e-6, 16e-6  # l = 4 samples
    gen = torch.Generator().manual_seed(0)
    field = correlated_noise((8, 128, 128), pitch, 2.0, ell, gen)
    assert float(field.std()) == pytest.approx(2.0, rel=0.08)
    var = float((field**2).mean())

    def corr(lag: int) -> float:
        a = (field[..., :, lag:] * field[..., :, :-lag]).mean()
        b = (field[..., lag:, :] * field[..., :-lag, :]).mean()
        return float(a + b) / (2 * var)

    assert corr(4) == pytest.approx(math.exp(-1), abs=0.04)
    assert corr(8) == pytest.approx(math.exp(-4), abs=0.03)


def test_height_noise_scatters_out_of_the_focus_as_gaussian_phase_screen():
    """A Gaussian phase screen of rms sigma (correlation l << D) leaves exp(-sigma^2) of the
    light in the diffraction-limited focus (the exact coherent fraction; Marechal for small
    sigma); the rest is scattered over lambda f / (pi l). Peak ratio = Strehl."""
    n, ell = 128, 8e-6
    cfg = config()
    flat = torch.zeros(1, n, n, dtype=torch.float64)
    ideal = effective_psfs(flat, cfg, MAT, AsBuilt.perfect(cfg, 1, n))[0, 0]
    c = ideal.shape[-1] // 2
    n0 = MAT.index(LAM)
    windows = []
    for sigma in (0.3, 0.6, 0.9, 1.2):
        rms = sigma * LAM / (2 * math.pi * (n0 - 1))
        errs = FabricationErrors(
            **{**NO_ERRORS, "height_noise_rms_m": rms}, height_noise_correlation_m=ell
        )
        strehl, inside = [], []
        for seed in range(3):
            psf = effective_psfs(flat, cfg, MAT, errs.draw(seed, cfg, 1, n))[0, 0]
            strehl.append(float(psf[c, c] / ideal[c, c]))
            inside.append(float(box_sum(psf, 0)))
        # One draw's Strehl scatters by ~0.0065 (12 seeds at sigma = 0.6): 4 std of a 3-mean.
        assert np.mean(strehl) == pytest.approx(math.exp(-(sigma**2)), abs=0.015), sigma
        windows.append(np.mean(inside))
    assert all(a > b for a, b in zip(windows, windows[1:], strict=False))


# ------------------------------------------------------------------------- sensor distance


def test_defocus_widens_gaussian_focus_as_gaussian_beam_optics():
    """Gaussian pupil (1/e^2 radius W) through the F/5 focus: the spot's 1/e^2 radius at
    sensor distance z follows the Gaussian-beam q-parameter (ABCD) law, i.e.
    w(z) = w0 sqrt(1 + ((z - z_w) / z_R)^2); per-axis std is w / 2."""
    n = 128
    cfg = config(gap_px=10)
    flat = torch.zeros(1, n, n, dtype=torch.float64)
    offsets = [-150e-6, -75e-6, 0.0, 75e-6, 150e-6, 250e-6]
    stack = effective_psfs_stack(
        flat,
        cfg,
        MAT,
        AsBuilt.perfect(cfg, 1, n),
        offsets,
        amplitude=gaussian_pupil(n),
        oversample=5,
    )
    q0 = 1j * math.pi * W_GAUSS**2 / LAM
    q1 = 1 / (1 / q0 - 1 / F)
    widths = []
    for dz, psf in zip(offsets, stack[:, 0, 0], strict=True):
        w = math.sqrt(-LAM / (math.pi * (1 / (q1 + F + dz)).imag))
        for axis in (-1, -2):
            _, var = moments(psf, axis, -13, 13)
            assert math.sqrt(var) == pytest.approx(w / 2, rel=0.01), (dz, axis)
        widths.append(w)
    assert widths[5] > widths[4] > widths[2] and widths[0] > widths[2]
    # an as-built sensor-distance error is undone by moving the stage back by the same amount
    ab = dataclasses.replace(AsBuilt.perfect(cfg, 1, n), delta_z_m=75e-6)
    refocused = effective_psfs(
        flat, cfg, MAT, ab, z_offset_m=-75e-6, amplitude=gaussian_pupil(n), oversample=5
    )
    torch.testing.assert_close(refocused[0, 0], stack[2, 0, 0], rtol=1e-12, atol=1e-18)


def test_large_defocus_gives_the_geometric_blur_square():
    """Many waves of defocus: the PSF of a square pupil fills the geometric shadow of the
    converging cone, a square of side D |z - f| / f with irradiance ~ 1 / side^2."""
    n, dz = 128, 400e-6
    cfg = config(gap_px=14)
    flat = torch.zeros(1, n, n, dtype=torch.float64)
    psf = effective_psfs(flat, cfg, MAT, AsBuilt.perfect(cfg, 1, n), z_offset_m=dz)[0, 0]
    side = D * dz / F  # 80 um = 23.2 px
    half = int(side / 2 / P)  # pixels fully inside: |j| <= 11
    c = psf.shape[-1] // 2
    inside = psf[c - half : c + half + 1, c - half : c + half + 1]
    assert float(inside.sum()) / float(psf.sum()) > 0.9
    assert float(inside.mean()) == pytest.approx(P**2 / side**2, rel=0.1)
    assert float(psf[c, c + half + 3]) < 0.1 * float(inside.mean())


# ------------------------------------------------------------------------- bandwidth


def test_bandwidth_smear_grows_with_distance_from_the_axis():
    """A grating order sits at lambda f / period: a spectrum of std sigma_l spreads it
    radially by offset * sigma_l / lambda0 (variance adds), while an on-axis focus only
    scales its width by lambda; tangentially nothing smears."""
    n, period = 128, 62.5e-6
    cfg = config(n_kernels=3, gap_px=14)
    phases = torch.cat(
        [torch.zeros(1, n, n, dtype=torch.float64), grating(n, period), grating(n, period / 2)]
    )
    amp = gaussian_pupil(n)
    fwhm = 40e-9
    mono = AsBuilt.perfect(cfg, 3, n)
    broad = dataclasses.replace(mono, spectra=(source_spectrum(LAM, fwhm, 9),))
    p_mono = effective_psfs(phases, cfg, MAT, mono, amplitude=amp)[:, 0]
    p_broad = effective_psfs(phases, cfg, MAT, broad, amplitude=amp)[:, 0]
    rel = (fwhm / FWHM_PER_SIGMA / LAM) ** 2
    spot_var = (LAM * F / (math.pi * W_GAUSS) / 2) ** 2
    excess = []
    for k, order in enumerate((0.0, LAM * F / period, 2 * LAM * F / period)):
        col = round(order / P)
        _, v0 = moments(p_mono[k], -1, col - 4, col + 4)
        _, v1 = moments(p_broad[k], -1, col - 4, col + 4)
        _, t0 = moments(p_mono[k], -2, -4, 4)
        _, t1 = moments(p_broad[k], -2, -4, 4)
        predicted = (order**2 + spot_var) * rel
        assert v1 - v0 == pytest.approx(predicted, rel=0.05, abs=0.02 * P**2), k
        assert t1 - t0 == pytest.approx(spot_var * rel, abs=0.02 * P**2)
        excess.append(v1 - v0)
    assert excess[2] / excess[1] == pytest.approx(4.0, rel=0.03)
    assert excess[0] < 0.05 * excess[1]


# ------------------------------------------------------------------------- zero order


def test_zero_order_is_a_background_proportional_to_its_fraction():
    """Unmodulated light is not focused: it adds eta0 times the shadow of the sub-aperture,
    ~ p^2 / D^2 of the light per pixel, and (1 - eta0) of the designed PSF remains."""
    n = 64
    cfg = config(gap_px=4)
    flat = torch.zeros(1, n, n, dtype=torch.float64)
    perfect = AsBuilt.perfect(cfg, 1, n)
    base = effective_psfs(flat, cfg, MAT, perfect)[0, 0]
    shapes = []
    for eta in (0.05, 0.2):
        psf = effective_psfs(flat, cfg, MAT, dataclasses.replace(perfect, zero_order_fraction=eta))[
            0, 0
        ]
        shapes.append((psf - (1 - eta) * base) / eta)
    torch.testing.assert_close(shapes[0], shapes[1], rtol=1e-9, atol=1e-15)
    assert float(shapes[0].min()) > 0
    assert float(shapes[0].mean()) == pytest.approx(P**2 / D**2, rel=0.2)
    # over a window covering the whole shadow it carries all of eta0
    wide = zero_order_psfs(
        cfg, dataclasses.replace(perfect, zero_order_fraction=0.2), window_px=181, oversample=2
    )
    assert float(wide.sum()) == pytest.approx(0.2, rel=0.01)


def _fresnel_cs(v: float) -> tuple[float, float]:
    """Fresnel integrals C(v), S(v) for large v (asymptotic series, error ~ v^-7)."""
    x = math.pi * v**2 / 2
    f = (1 - 3 / (math.pi**2 * v**4)) / (math.pi * v)
    g = (1 - 15 / (math.pi**2 * v**4)) / (math.pi**2 * v**3)
    return 0.5 + f * math.sin(x) - g * math.cos(x), 0.5 - f * math.cos(x) - g * math.sin(x)


def test_shadow_centre_matches_fresnel_integrals():
    """On-axis Fresnel diffraction of a plane wave: square of side 2a -> [2 (C^2 + S^2)]^2
    with v = a sqrt(2 / (lambda z)); disc of radius a -> 4 sin^2(pi a^2 / (2 lambda z))."""
    tiny = 1e-8  # a 10 nm "pixel" samples the intensity at one point
    for z in (2.5e-3, 2.53e-3):
        c, s = _fresnel_cs(D / 2 * math.sqrt(2 / (LAM * z)))
        sq = float(shadow_power("square", D, LAM, z, tiny, 1, oversample=1)) * D**2 / tiny**2
        assert sq == pytest.approx((2 * (c**2 + s**2)) ** 2, rel=1e-5)
        disc = float(shadow_power("circle", D, LAM, z, tiny, 1, oversample=1))
        disc *= math.pi * (D / 2) ** 2 / tiny**2
        expect = 4 * math.sin(math.pi * (D / 2) ** 2 / (2 * LAM * z)) ** 2
        assert disc == pytest.approx(expect, rel=1e-4, abs=1e-6)


# ------------------------------------------------------------------------- geometry


def test_lateral_offset_and_rotation_move_the_psf_rigidly():
    """The optic shifted by one pixel shifts each PSF by one pixel; rotated by 90 deg a
    centred kernel's PSF turns (+x -> +y); a small rotation moves an off-centre focus by
    (R - I) c_k."""
    n = 64
    cfg = config(gap_px=6)
    phases = grating(n, 4 * D / 64 * 4)  # an off-axis spot at +x
    perfect = AsBuilt.perfect(cfg, 1, n)
    base = effective_psfs(phases, cfg, MAT, perfect)[0, 0]
    moved = effective_psfs(phases, cfg, MAT, dataclasses.replace(perfect, offset_m=(0.0, P)))
    torch.testing.assert_close(moved[0, 0, :, 1:], base[:, :-1], rtol=1e-9, atol=1e-14)
    turned = effective_psfs(
        phases, cfg, MAT, dataclasses.replace(perfect, rotation_rad=math.pi / 2)
    )[0, 0]
    torch.testing.assert_close(turned, torch.rot90(base, -1, dims=(0, 1)), rtol=1e-9, atol=1e-14)
    c = base.shape[-1] // 2
    iy, ix = divmod(int(base.argmax()), base.shape[-1])
    jy, jx = divmod(int(turned.argmax()), base.shape[-1])
    assert ix > c and iy == c and jy == c + (ix - c) and jx == c
    # small rotation of a 1 x 3 optic: the right kernel (x = +0.6 mm) moves by ~ theta * 0.6 mm
    cfg3 = config(n_kernels=3, gap_px=6)
    flat = torch.zeros(3, 128, 128, dtype=torch.float64)
    amp = gaussian_pupil(128)
    p3 = AsBuilt.perfect(cfg3, 3, 128)
    theta = 5e-3
    psf0 = effective_psfs(flat, cfg3, MAT, p3, amplitude=amp)[2, 0]
    psf1 = effective_psfs(
        flat, cfg3, MAT, dataclasses.replace(p3, rotation_rad=theta), amplitude=amp
    )[2, 0]
    y0, _ = moments(psf0, -2, -9, 9)
    y1, _ = moments(psf1, -2, -9, 9)
    assert y1 - y0 == pytest.approx(math.sin(theta) * 0.6e-3, rel=0.01)
    # without the turn about its own focus the displacement is the same, the shape nearly so
    psf2 = effective_psfs(
        flat,
        cfg3,
        MAT,
        dataclasses.replace(p3, rotation_rad=theta),
        amplitude=amp,
        exact_rotation=False,
    )[2, 0]
    y2, _ = moments(psf2, -2, -9, 9)
    assert y2 - y0 == pytest.approx(math.sin(theta) * 0.6e-3, rel=0.01)
    assert float((psf2 - psf1).norm() / psf1.norm()) < 0.01


# ------------------------------------------------------------------------- draws, bookkeeping


def test_draw_is_a_pure_function_of_the_seed_and_strength_zero_is_the_design():
    cfg = config(n_kernels=2, gap_px=4, wavelengths_m=(630e-9, LAM, 465e-9))
    errs = FabricationErrors()
    a, b = errs.draw(7, cfg, 2, 32), errs.draw(7, cfg, 2, 32)
    assert a.equals(b) and AsBuilt.from_dict(json.loads(json.dumps(a.to_dict()))).equals(a)
    other = errs.draw(8, cfg, 2, 32)
    assert not other.equals(a)
    assert not torch.equal(other.height_scale, a.height_scale)
    half = FabricationErrors(strength=0.5).draw(7, cfg, 2, 32)
    assert half.offset_m[1] == pytest.approx(0.5 * a.offset_m[1], rel=1e-12)
    torch.testing.assert_close(half.height_noise_m, 0.5 * a.height_noise_m)
    zero = FabricationErrors(strength=0.0).draw(7, cfg, 2, 32)
    assert zero.equals(dataclasses.replace(AsBuilt.perfect(cfg, 2, 32), seed=7))
    gen = torch.Generator().manual_seed(3)
    design = 6 * torch.rand(2, 32, 32, generator=gen, dtype=torch.float64)
    eff = effective_psfs(design, cfg, MAT, zero)
    m = (eff.shape[-1] - cfg.kernel_px) // 2
    ref = psfs_from_phases(design, cfg, refractive_index=MAT.index)
    torch.testing.assert_close(eff[..., m:-m, m:-m], ref, rtol=1e-10, atol=1e-16)
    torch.testing.assert_close(
        as_built_phases(design, cfg, MAT, zero)[:, 1], torch.remainder(design, 2 * math.pi)
    )


def test_energy_budget_closes_with_every_error_on():
    """Phase-only element: kernel window + leaked + lost = 1 per channel, all parts >= 0,
    and every default error moves light out of the kernel window."""
    cfg = config(n_kernels=2, gap_px=4, wavelengths_m=(630e-9, LAM, 465e-9))
    gen = torch.Generator().manual_seed(0)
    design = 6 * torch.rand(2, 64, 64, generator=gen, dtype=torch.float64)
    ab = FabricationErrors().draw(1, cfg, 2, 64)
    fab = energy_budget(effective_psfs(design, cfg, MAT, ab), cfg.kernel_px)
    ideal = energy_budget(
        effective_psfs(design, cfg, MAT, AsBuilt.perfect(cfg, 2, 64)), cfg.kernel_px
    )
    for budget in (fab, ideal):
        total = budget.in_kernel + budget.leaked + budget.lost
        torch.testing.assert_close(total, torch.ones_like(total))
        assert float(budget.lost.min()) >= 0 and float(budget.leaked.min()) >= 0


def test_bad_inputs_name_the_parameter():
    cfg = config()
    ab = AsBuilt.perfect(cfg, 1, 32)
    with pytest.raises(ValueError, match="design_phases"):
        effective_psfs(torch.zeros(2, 32, 32), cfg, MAT, ab)
    with pytest.raises(ValueError, match="window_px"):
        effective_psfs(torch.zeros(1, 32, 32), cfg, MAT, ab, window_px=10)
    with pytest.raises(ValueError, match="distance_m"):
        effective_psfs(torch.zeros(1, 32, 32), cfg, MAT, ab, z_offset_m=2e-3)
    with pytest.raises(ValueError, match="levels"):
        FabricationErrors(levels=1)
    with pytest.raises(ValueError, match="zero_order_fraction"):
        dataclasses.replace(ab, zero_order_fraction=1.0)
    with pytest.raises(ValueError, match="height_scale"):
        dataclasses.replace(ab, height_scale=torch.tensor([-1.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="source_fwhm_m"):
        FabricationErrors(source_fwhm_m=-1e-9)
