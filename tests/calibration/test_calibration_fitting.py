"""The pure fits on synthetic data with known answers (no devices, milliseconds each)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import nnls

from calibration.fitting.deconv import fista_quadratic, solve_psfs_map
from calibration.fitting.focus import blob_sharpness, peak_location
from calibration.fitting.noise import dark_stats, photon_transfer_fit
from calibration.fitting.registration import (
    Similarity,
    fit_similarity,
    psf_centroid_offset,
    window_centroids,
)
from calibration.fitting.response import fit_display_response, gamma_curve, isotonic_increasing
from calibration.forward import ForwardModel, Geometry, TileGeometry
from calibration.normal_equations import psf_normal_equations
from onnlab.errors import CalibrationError
from onnlab.optics import SensorModel, defocus_psfs


def _stack(sensor: SensorModel, signal_e: torch.Tensor, n: int, seed: int) -> np.ndarray:
    gen = torch.Generator().manual_seed(seed)
    return torch.stack([sensor.apply(signal_e.double(), gen) for _ in range(n)]).numpy()


@pytest.mark.parametrize("offset", [0.0, 80.0])
def test_dark_stats_recovers_offset_and_read_noise_even_when_clipped(offset: float) -> None:
    sensor = SensorModel(offset_dn=offset, read_noise_e=3.0)
    dark = _stack(sensor, torch.zeros(40, 60), 16, seed=1)
    stats = dark_stats(dark, sensor.max_dn)
    assert stats.offset_dn == pytest.approx(offset, abs=0.05)
    assert stats.read_noise_dn == pytest.approx(3.0 * sensor.gain, rel=0.05)
    assert (stats.clipped_fraction > 0.3) == (offset == 0.0)  # the clipped path was exercised


def test_photon_transfer_gain_within_half_percent() -> None:
    sensor = SensorModel(offset_dn=20.0, read_noise_e=3.0)
    scene = torch.rand(50, 60, generator=torch.Generator().manual_seed(0)) ** 2
    stacks = [_stack(sensor, scene * 10_000 * e, 12, seed=i) for i, e in enumerate((0.1, 0.3, 0.8))]
    dark = dark_stats(_stack(sensor, torch.zeros(50, 60), 12, seed=9))
    fit = photon_transfer_fit(
        stacks, dark.offset_dn, saturation_dn=4095, read_noise_dn=dark.read_noise_dn
    )
    assert fit.gain_dn_per_e == pytest.approx(sensor.gain, rel=0.005)
    assert fit.residual < 0.05
    lo, hi = fit.linear_range_dn
    assert lo < 30 and hi > 2000


def test_photon_transfer_refuses_a_dark_scene() -> None:
    sensor = SensorModel(offset_dn=20.0)
    stacks = [_stack(sensor, torch.zeros(30, 30), 8, seed=0)]
    with pytest.raises(CalibrationError, match="increase exposure"):
        photon_transfer_fit(stacks, 20.0, read_noise_dn=1.0)


def test_isotonic_regression_is_monotone_and_closest() -> None:
    y = np.array([1.0, 3.0, 2.0, 4.0, 3.5, 5.0])
    iso = isotonic_increasing(y)
    assert np.all(np.diff(iso) >= 0)
    np.testing.assert_allclose(iso, [1, 2.5, 2.5, 3.75, 3.75, 5])


def test_display_response_fit_and_inverse() -> None:
    levels = np.array([0, 8, 16, 32, 64, 96, 128, 160, 192, 224, 255], float)
    rng = np.random.default_rng(0)
    true = gamma_curve(levels, 2.35, 0.02)
    resp = fit_display_response(levels, 700 * true * (1 + 1e-3 * rng.standard_normal(levels.size)))
    assert resp.gamma == pytest.approx(2.35, abs=0.02)
    assert resp.black_level == pytest.approx(0.02, abs=1e-3)
    assert np.all(np.diff(resp.lut) >= 0) and resp.lut[-1] == 1.0
    want = np.array([0.05, 0.3, 0.77])
    np.testing.assert_allclose(resp.apply(resp.inverse(want), quantize=False), want, atol=1e-6)
    with pytest.raises(CalibrationError, match="saturated"):
        fit_display_response(levels, np.full(levels.size, 4000.0))


def test_similarity_fit_and_subpixel_centroids() -> None:
    truth = Similarity(1.003, 0.004, 1.7, -2.2)
    src = np.stack(np.meshgrid(np.arange(5, 60, 9.0), np.arange(5, 90, 9.0)), -1).reshape(-1, 2)
    sim, rms = fit_similarity(src, truth.apply(src))
    assert rms < 1e-9
    assert (sim.scale, sim.rotation_rad, sim.ty, sim.tx) == pytest.approx(
        (truth.scale, truth.rotation_rad, truth.ty, truth.tx), abs=1e-9
    )
    np.testing.assert_allclose(sim.inverse().apply(sim.apply(src)), src, atol=1e-9)
    # A bilinearly shifted blob: its centroid moves by exactly the shift.
    yy, xx = np.mgrid[0:40, 0:40]
    blob = np.exp(-((yy - 20.3) ** 2 + (xx - 17.6) ** 2) / 4.0)
    cen, energy = window_centroids(blob, np.array([[19.0, 19.0]]), radius=7)
    np.testing.assert_allclose(cen[0], [20.3, 17.6], atol=2e-3)
    assert energy[0] > 0


def test_psf_centroid_offset_convention() -> None:
    psf = np.zeros((1, 7, 7))
    psf[0, 3, 5] = 1.0  # two pixels right of the centre pixel (k // 2)
    np.testing.assert_allclose(psf_centroid_offset(psf), [0.0, 2.0])


def test_peak_location_finds_subsample_maximum() -> None:
    z = np.linspace(-1, 1, 11)
    peak, resid = peak_location(z, np.exp(-((z - 0.137) ** 2) / 0.3), n_fit=5)
    assert peak == pytest.approx(0.137, abs=1e-3)
    assert resid < 1e-6


def test_blob_sharpness_falls_with_defocus() -> None:
    psfs = torch.rand(1, 1, 7, 7, generator=torch.Generator().manual_seed(3))
    vals = []
    for sigma in (0.0, 0.5, 1.0, 2.0):
        img = np.pad(defocus_psfs(psfs, sigma)[0, 0].numpy(), 6)
        vals.append(blob_sharpness(img, np.array([[9, 9]]), 2, 4))
    assert all(a > b for a, b in zip(vals, vals[1:], strict=False))


def test_fista_quadratic_matches_exact_nnls() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 200, 25)) * np.linspace(0.05, 1, 25)
    x_true = rng.normal(size=(3, 25))  # half negative: constraints are active
    b = np.einsum("kmn,kn->km", a, x_true)
    h = torch.tensor(np.einsum("kmi,kmj->kij", a, a))
    c = torch.tensor(np.einsum("kmi,km->ki", a, b))
    x, _ = fista_quadratic(h, c, torch.zeros(3, 25), max_iter=20000, tol=1e-13)
    for k in range(3):
        exact, _ = nnls(a[k], b[k])
        np.testing.assert_allclose(x[k].numpy(), exact, atol=1e-6 * max(1, exact.max()))


def _tiles() -> TileGeometry:
    return TileGeometry(
        rows=1, cols=2, gap_px=4, image_hw=(16, 16), camera_hw=(28, 48), n_kernels=2
    )


def test_normal_equations_are_exact_and_map_recovers_psfs() -> None:
    """AᵀA, Aᵀy built from single-pixel responses reproduce the model's misfit exactly, and
    the solve recovers PSFs from noise-free frames through misalignment and registration."""
    gen = torch.Generator().manual_seed(0)
    geom = Geometry.from_values((0.4, -0.3), 0.003, 1.002, (0.25, -0.35), 0.01)
    fm = ForwardModel(_tiles(), geom)
    x = (torch.rand(24, 1, 16, 16, generator=gen) < 0.3).double()
    psfs = torch.rand(2, 1, 5, 5, generator=gen, dtype=torch.float64) / 25
    y = fm.signal(x, psfs).detach()
    gram, rhs, yty, npx, _ = psf_normal_equations(fm, x, y, 5)
    p = psfs.reshape(2, -1)
    misfit = torch.einsum("ki,kij,kj->k", p, gram, p) - 2 * (rhs * p).sum(1) + yty
    assert float(misfit.abs().max() / yty.max()) < 1e-5
    sol = solve_psfs_map(gram, rhs, yty, npx, psfs, 1e-8, prior_rel_std=None)
    rel = (sol.psfs.reshape(psfs.shape) - psfs).norm() / psfs.norm()
    assert float(rel) < 1e-3


def test_principal_pivoting_solves_ill_conditioned_nnqp_exactly() -> None:
    """The exact route: many active constraints, H condition ~1e8 (where FISTA needs
    thousands of iterations), answered without FISTA and equal to scipy's NNLS."""
    rng = np.random.default_rng(1)
    a = rng.normal(size=(4, 300, 60)) * np.logspace(-4, 0, 60)
    b = np.einsum("kmn,kn->km", a, rng.normal(size=(4, 60)))
    h = torch.tensor(np.einsum("kmi,kmj->kij", a, a))
    c = torch.tensor(np.einsum("kmi,km->ki", a, b))
    x, fista_iters = fista_quadratic(h, c, torch.zeros(4, 60))
    assert fista_iters == 0
    for k in range(4):
        exact, _ = nnls(a[k], b[k])
        assert (x[k].numpy() == 0).sum() > 10  # constraints really active
        np.testing.assert_allclose(x[k].numpy(), exact, atol=1e-7 * max(1, exact.max()))


def test_singular_nnqp_still_minimises() -> None:
    """A rank-deficient H (unobserved pixels, no prior): many minimisers; the one returned
    must reach NNLS's residual and be non-negative."""
    rng = np.random.default_rng(2)
    a = rng.normal(size=(2, 10, 16))  # rank 10 < 16 unknowns
    b = np.einsum("kmn,kn->km", a, np.abs(rng.normal(size=(2, 16))))
    h = torch.tensor(np.einsum("kmi,kmj->kij", a, a))
    c = torch.tensor(np.einsum("kmi,km->ki", a, b))
    x, fista_iters = fista_quadratic(h, c, torch.zeros(2, 16), max_iter=20000, tol=1e-13)
    assert bool((x >= 0).all())
    for k in range(2):
        _, res = nnls(a[k], b[k])
        got = np.linalg.norm(a[k] @ x[k].numpy() - b[k])
        assert got <= res + 1e-6 * np.linalg.norm(b[k])
