"""Phase-mask frontend against analytic diffraction: Airy spots, blazed-grating dispersion,
energy bookkeeping (Parseval), gradients, pseudo-negative pairs, frozen measured PSFs, and the
physical systems of the experiment configs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from scipy.special import j1

from onnlab.models.phase_frontend import (
    PhaseMaskFrontend,
    check_sampling,
    default_optics,
)
from onnlab.models.zoo import build_student, student_system
from onnlab.optics.layout import OpticsConfig
from onnlab.optics.materials import get_material
from onnlab.optics.propagation import energy, fraunhofer
from onnlab.training.checkpoint import load_checkpoint, save_checkpoint

REPO = Path(__file__).resolve().parents[2]


def pixel_integral(fun, k: int, pitch: float, q: int = 14) -> np.ndarray:
    """(k, k) integrals of intensity fun(y, x) (1/m^2) over sensor pixels centred on pixel
    (k // 2, k // 2) (q x q midpoint rule per pixel)."""
    centres = (np.arange(k) - k // 2) * pitch
    sub = (np.arange(q) + 0.5) / q * pitch - pitch / 2
    y = (centres[:, None] + sub[None, :]).ravel()
    vals = fun(y[:, None], y[None, :])
    return vals.reshape(k, q, k, q).mean(axis=(1, 3)) * pitch**2


def single(optics: OpticsConfig, n: int, material: str = "SiO2", **kw) -> PhaseMaskFrontend:
    return PhaseMaskFrontend(1, optics, material, n, **kw).double()


def test_flat_phase_over_a_circular_sub_aperture_gives_the_airy_pattern():
    """A flat design phase leaves only the focusing lens f: the PSF is the Airy pattern
    I(r) = P A / (lambda f)^2 [2 J1(v) / v]^2, v = pi D r / (lambda f), integrated over pixels
    (MNIST system: F/5 at 532 nm, Airy radius 3.2 um on 3.45 um pixels)."""
    lam, d, f, p, k = 532e-9, 0.5e-3, 2.5e-3, 3.45e-6, 7
    optics = OpticsConfig(
        wavelengths_m=(lam,),
        aperture_hw_m=(d, d),
        kernel_size_m=d,
        spacing_m=0.0,
        kernel_px=k,
        focal_length_m=f,
        sensor_pitch_m=p,
        aperture_shape="circle",
    )
    fe = single(optics, 128, oversample=9)
    fe.set_phases(torch.zeros(1, 128, 128))
    psf = fe.psfs().detach()[0, 0].numpy()

    def airy(y, x):
        v = np.maximum(np.pi * d * np.hypot(y, x) / (lam * f), 1e-12)
        return (np.pi * d**2 / 4) / (lam * f) ** 2 * (2 * j1(v) / v) ** 2

    expected = pixel_integral(airy, k, p, q=24)
    assert np.abs(psf - expected).max() < 5e-3 * expected.max()
    # window energy = Airy encircled energy within the 24 um square (~0.96): light is lost
    assert float(fe.efficiency().detach()) == pytest.approx(expected.sum(), abs=1e-3)
    assert float(fe.efficiency().detach()) < 0.97


def test_dispersion_of_a_blazed_grating_follows_the_grating_equation_and_material():
    """A blazed grating (period L = D / 4) designed for 532 nm in TiO2: at wavelength lambda
    its phase step is 2 pi alpha, alpha = lambda0 / lambda (n(lambda) - 1) / (n0 - 1), so the
    field is sum_m c_m sinc(D (x - m lambda f / L) / (lambda f)) with c_m = e^{i pi (alpha-m)}
    sinc(alpha - m): order positions scale with lambda (grating equation), efficiencies with
    the material's dispersion. Compared per colour channel (weight 1/3) on 1 um pixels."""
    lams, d, f, p, k, n, periods = (630e-9, 532e-9, 465e-9), 1e-3, 10e-3, 1e-6, 61, 64, 4
    tio2 = get_material("TiO2")
    optics = OpticsConfig(
        wavelengths_m=lams,
        aperture_hw_m=(d, d),
        kernel_size_m=d,
        spacing_m=0.0,
        kernel_px=k,
        focal_length_m=f,
        sensor_pitch_m=p,
    )
    fe = single(optics, n, tio2, oversample=7)
    x = (torch.arange(n, dtype=torch.float64) - n // 2) * d / n
    period = d / periods
    fe.set_phases((2 * math.pi * torch.remainder(x / period, 1.0)).expand(n, n)[None])
    psfs = fe.psfs().detach()[0].numpy()

    def grating(lam, alpha):
        def fun(y, xx):
            u = np.zeros(np.broadcast(y, xx).shape, dtype=complex)
            for m in range(-30, 31):
                c_m = np.exp(1j * np.pi * (alpha - m)) * np.sinc(alpha - m)
                u = u + c_m * np.sinc(d * (xx - m * lam * f / period) / (lam * f))
            return d**2 / (lam * f) ** 2 * np.abs(u) ** 2 * np.sinc(d * y / (lam * f)) ** 2

        return fun

    n0 = tio2.index(532e-9)
    for c, lam in enumerate(lams):
        alpha = 532e-9 / lam * (tio2.index(lam) - 1) / (n0 - 1)
        expected = pixel_integral(grating(lam, alpha), k, p) / 3
        assert np.abs(psfs[c] - expected).max() < 5e-3 * expected.max(), lam
        # without the material factor the efficiencies differ visibly (a test that can fail)
        no_material = pixel_integral(grating(lam, 532e-9 / lam), k, p) / 3
        if lam != 532e-9:
            assert np.abs(psfs[c] - no_material).max() > 3e-2 * expected.max()
        # the first order sits at lambda f / L: 25.2, 21.3, 18.6 um for R, G, B
        first = int(np.argmax(psfs[c, k // 2])) - k // 2
        assert first == round(lam * f / period / p)


def test_flat_phase_peak_scales_as_one_over_lambda_squared_across_channels():
    """Dispersion scales the focal plane with lambda: the on-axis irradiance of a focused
    spot is A / (lambda f)^2, so the channel peaks (fine pixels) go as (lambda0 / lambda)^2."""
    lams = (630e-9, 532e-9, 465e-9)
    optics = OpticsConfig(
        wavelengths_m=lams,
        aperture_hw_m=(1e-3, 1e-3),
        kernel_size_m=1e-3,
        spacing_m=0.0,
        kernel_px=9,
        focal_length_m=10e-3,
        sensor_pitch_m=0.5e-6,
    )
    fe = single(optics, 32, oversample=3)
    fe.set_phases(torch.zeros(1, 32, 32))
    peaks = fe.psfs().detach()[0, :, 4, 4].numpy()
    area = 1e-3**2
    expected = area * 0.5e-6**2 / (np.array(lams) * 10e-3) ** 2 / 3
    assert peaks == pytest.approx(expected, rel=1e-2)
    assert peaks / peaks[1] == pytest.approx((532e-9 / np.array(lams)) ** 2, rel=1e-2)


def test_window_light_plus_light_outside_is_the_transmitted_power():
    """Efficiency bookkeeping: the window sum plus the light outside the window (the rest of
    the focal-plane period lambda f / pitch, from a 50 px window that spans exactly one period)
    equals the transmitted power, which an FFT Fraunhofer transform (Parseval) also gives."""
    lam, d, f, n, p = 500e-9, 0.5e-3, 2.5e-3, 64, 3.2e-6  # period lambda f n / d = 160 um
    common = dict(
        wavelengths_m=(lam,),
        aperture_hw_m=(d, d),
        kernel_size_m=d,
        spacing_m=0.0,
        focal_length_m=f,
        sensor_pitch_m=p,
    )
    fe = single(OpticsConfig(kernel_px=7, **common), n, max_transmission=0.9, oversample=3)
    phase = fe.phase.detach().clone()
    window = fe.efficiency().detach()
    big = PhaseMaskFrontend(
        1, OpticsConfig(kernel_px=50, **common), "SiO2", n, max_transmission=0.9, oversample=3
    )
    big = big.double()
    big.set_phases(phase)
    full = big.psfs().detach()[0, 0]
    outside = full.sum() - full[25 - 3 : 25 + 4, 25 - 3 : 25 + 4].sum()
    assert float(window + outside) == pytest.approx(0.9, rel=1e-9)
    assert 0.1 < float(window) < 0.9  # real light really is lost from this random design
    field, out_grid = fraunhofer(torch.polar(torch.ones_like(phase[0]), phase[0]), d / n, lam, f)
    assert float(energy(field, out_grid)) == pytest.approx(d * d, rel=1e-9)  # incident power


def test_gradients_reach_the_phase():
    """gradcheck (float64, N = 8) of the features w.r.t. the design phase through the wave
    model with dispersion and a material index."""
    optics = default_optics("cifar10", kernel_px=3, aperture_hw_m=(0.5e-3, 1.1e-3))
    fe = PhaseMaskFrontend(2, optics, "TiO2", 8, oversample=2).double()
    x = torch.rand(1, 3, 5, 5, dtype=torch.float64)

    def features(phase):
        return torch.func.functional_call(fe, {"phase": phase}, (x,))

    phase = (fe.phase.detach() + 0.1).requires_grad_(True)
    assert torch.autograd.gradcheck(features, (phase,), eps=1e-6, atol=1e-8)
    out = features(phase).sum()
    (grad,) = torch.autograd.grad(out, phase)
    assert grad.abs().max() > 0


def test_pseudo_negative_pairs_subtract_and_need_an_even_count():
    fe = PhaseMaskFrontend(4, default_optics("mnist"), phase_samples=32, pseudo_negative=True)
    x = torch.rand(2, 1, 12, 12)
    full = F.conv2d(x, fe.psfs().detach().flip(-2, -1), padding=3)
    out = fe(x).detach()
    assert out.shape == (2, 2, 12, 12) and fe.n_features == 2
    assert torch.allclose(out, full[:, :2] - full[:, 2:], atol=1e-6)
    assert (out < 0).any()
    with pytest.raises(ValueError, match="n_kernels"):
        PhaseMaskFrontend(3, default_optics("mnist"), pseudo_negative=True)


def test_load_psfs_freezes_the_frontend_and_refuses_trainable():
    fe = PhaseMaskFrontend(2, default_optics("mnist"), phase_samples=32)
    measured = torch.rand(2, 1, 7, 7)
    measured = measured / measured.sum(dim=(1, 2, 3), keepdim=True) * 0.7
    fe.load_psfs(measured)
    assert torch.equal(fe.psfs(), measured)
    assert torch.allclose(fe.efficiency(), torch.full((2,), 0.7))
    assert not any(p.requires_grad for p in fe.parameters())
    with pytest.raises(ValueError, match="trainable"):
        fe.load_psfs(measured, trainable=True)
    with pytest.raises(ValueError, match="energy"):
        fe.load_psfs(measured * 2)
    with pytest.raises(ValueError, match="shape"):
        fe.load_psfs(measured[:1])


def test_psfs_are_non_negative_and_lose_light_outside_the_window():
    fe = build_student("cifar10", frontend="phase").frontend
    psfs = fe.psfs().detach()
    assert psfs.shape == (16, 3, 7, 7) and bool((psfs >= 0).all())
    eff = fe.efficiency().detach()
    assert bool((eff < 1).all()) and bool((eff > 0.5).all())  # a spread start, mostly inside
    # distinct kernels from the start (a flat phase would give 16 identical Airy spots)
    flat = psfs.flatten(1)
    assert float(torch.cdist(flat, flat).topk(2, largest=False).values[:, 1].min()) > 1e-3


def test_checkpoint_round_trip_rebuilds_the_phase_student(tmp_path):
    model = build_student("mnist", frontend="phase", material="TiO2", phase_samples=48)
    path = save_checkpoint(tmp_path / "model.pt", model)
    loaded, meta = load_checkpoint(path)
    fe = loaded.frontend
    assert isinstance(fe, PhaseMaskFrontend)
    assert fe.material.name == "TiO2" and fe.phase_samples == 48
    assert fe.optics == model.frontend.optics
    assert torch.equal(fe.psfs(), model.frontend.psfs())
    x = torch.rand(3, 1, 28, 28)
    assert torch.allclose(loaded(x), model(x))
    assert meta["architecture"]["frontend"] == "phase"


def test_bad_physics_is_refused_naming_the_parameter():
    with pytest.raises(ValueError, match="phase_samples"):
        check_sampling(default_optics("cifar10"), 4)  # lambda f / pitch < the 24 um window
    with pytest.raises(ValueError, match="material must be one of"):
        build_student("mnist", frontend="phase", material="unobtainium")
    with pytest.raises(ValueError, match="frontend must be one of"):
        build_student("mnist", frontend="holographic")
    with pytest.raises(ValueError, match="wavelength"):
        build_student("cifar10", frontend="phase", optics={"wavelengths_m": [532e-9]})
    with pytest.raises(ValueError, match="aperture_hw_m"):
        PhaseMaskFrontend(9, default_optics("mnist"))
    with pytest.raises(ValueError, match="optics.focal_lenght_m"):
        build_student("mnist", frontend="phase", optics={"focal_lenght_m": 1e-3})
    with pytest.raises(ValueError, match="refractive index"):
        build_student(
            "mnist",
            frontend="phase",
            material={"name": "low", "cauchy_a": 1.0, "cauchy_b_m2": 0.0},
        )


@pytest.mark.parametrize("task", ["mnist", "cifar10", "segmentation"])
def test_experiment_configs_hold_the_default_physical_systems(task):
    """The YAML's optics are the code's defaults, pass the sampling checks, and their PSF band
    limit D / (lambda f) resolves the sensor's pixel scale (Nyquist 1 / (2 p)) in every colour."""
    cfg = yaml.safe_load((REPO / "configs" / "experiments" / f"{task}.yaml").read_text())
    arch = cfg["student"]["architecture"]
    assert arch.get("frontend", "free") in ("free", "phase")
    system = student_system(task, **arch)
    assert system == student_system(task)
    o = system.optics
    check_sampling(o, system.phase_samples)
    for lam in o.wavelengths_m:
        assert o.kernel_size_m / (lam * o.focal_length_m) > 1 / (2 * o.sensor_pitch_m)
    # a lens-free (flat) design keeps most of its light inside the kernel window
    fe = PhaseMaskFrontend(1, o.model_copy(update={"aperture_hw_m": (5e-3, 5e-3)}), "SiO2", 64)
    fe.set_phases(torch.zeros(1, 64, 64))
    assert 0.9 < float(fe.efficiency().detach()) < 1.0


def test_step_time_measurement_reports_both_frontends():
    """The bench helper runs both students on one batch (no timing threshold here: the number
    goes to `onnlab bench design --json`)."""
    from onnlab.bench.design_step import measure_phase_over_free_step_time

    out = measure_phase_over_free_step_time("mnist", batch_size=4, repeats=1, warmup=0)
    assert out["phase_frontend_over_free_step_time"] > 0
    assert out["free_step_s"] > 0 and out["phase_step_s"] > 0
    assert out["phase_system"]["phase_samples"] == 64
    with pytest.raises(ValueError, match="classification"):
        measure_phase_over_free_step_time("segmentation", repeats=1)
