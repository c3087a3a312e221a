"""Sensor noise statistics, saturation/quantisation, misalignment geometry, PSF errors, defocus."""

from __future__ import annotations

import math

import pytest
import torch

from onnlab.optics import (
    FabricationErrors,
    SensorModel,
    defocus_psfs,
    misalign,
    optical_conv2d,
    perturb_psfs,
)

N = 200_000


@pytest.mark.parametrize("noise_model", ["poisson", "gaussian"])
def test_poisson_gaussian_moments_match_model(noise_model):
    """Mean g*e + offset and variance g^2 (e + sigma_r^2), within 5 sigma of sampling error."""
    sensor = SensorModel(
        read_noise_e=5.0, gain_dn_per_e=0.5, offset_dn=10.0, quantize=False, saturate=False,
        noise_model=noise_model,
    )  # fmt: skip
    e = 400.0
    gen = torch.Generator().manual_seed(0)
    dn = sensor.apply(torch.full((N,), e, dtype=torch.float64), gen)
    var = 0.25 * (e + 25.0)
    assert float(dn.mean()) == pytest.approx(0.5 * e + 10.0, abs=5 * math.sqrt(var / N))
    assert float(dn.var()) == pytest.approx(var, abs=5 * var * math.sqrt(2 / N))
    torch.testing.assert_close(sensor.variance_dn(torch.tensor(e)), torch.tensor(var))


def test_shot_noise_alone_is_poisson_and_seeded():
    """Pure shot noise at 3 electrons: integer counts, P(0) = e^-3, same seed -> same frame."""
    sensor = SensorModel(read_noise=False, gain_dn_per_e=1.0, quantize=False, saturate=False)
    signal = torch.full((N,), 3.0)
    a = sensor.apply(signal, torch.Generator().manual_seed(7))
    b = sensor.apply(signal, torch.Generator().manual_seed(7))
    c = sensor.apply(signal, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(a, a.round())
    p0 = math.exp(-3)
    assert float((a == 0).float().mean()) == pytest.approx(p0, abs=5 * math.sqrt(p0 * (1 - p0) / N))


def test_quantisation_saturation_and_straight_through_gradient():
    sensor = SensorModel(bit_depth=8, full_well_e=1000.0, read_noise_e=2.0)
    gain = sensor.gain
    assert gain == pytest.approx(255 / 1000)
    signal = torch.tensor([0.0, 100.0, 500.0, 5000.0], requires_grad=True)
    dn = sensor.apply(signal, torch.Generator().manual_seed(0))
    assert torch.equal(dn, dn.round())
    assert float(dn.detach()[-1]) == 255.0  # full well / ADC saturation
    assert float(dn.detach().min()) >= 0.0
    dn.sum().backward()
    # Straight-through: unsaturated pixels pass d(DN)/d(e) = gain, saturated ones pass nothing.
    torch.testing.assert_close(signal.grad[1:3], torch.full((2,), gain))
    assert float(signal.grad[-1]) == 0.0
    ideal = SensorModel(poisson=False, read_noise=False, quantize=False, saturate=False)
    x = torch.tensor([0.3, 2.0])
    torch.testing.assert_close(ideal.dn_to_signal(ideal.forward(x, exposure_s=0.5), 0.5), x)


def test_sensor_rejects_bad_parameters():
    with pytest.raises(ValueError, match="read_noise_e"):
        SensorModel(read_noise_e=-1.0)
    with pytest.raises(ValueError, match="bit_depth"):
        SensorModel(bit_depth=0)
    with pytest.raises(ValueError, match="exposure_s"):
        SensorModel().to_electrons(torch.ones(2), exposure_s=0.0)


def test_misalign_shift_and_rotation_geometry():
    img = torch.rand(2, 3, 9, 11, dtype=torch.float64)
    moved = misalign(img, (2.0, -3.0))
    torch.testing.assert_close(moved[..., 2:, : 11 - 3], img[..., : 9 - 2, 3:])
    assert float(moved[..., :2, :].abs().max()) == 0.0  # dark display outside
    # Half-pixel shift of a linear ramp: bilinear sampling is exact, value moves by half a step.
    ramp = torch.arange(11, dtype=torch.float64).expand(1, 1, 9, 11)
    half = misalign(ramp, (0.0, 0.5))
    torch.testing.assert_close(half[..., 1:], ramp[..., 1:] - 0.5)
    # A quarter turn of a square image is an exact pixel permutation: +x goes to +y.
    sq = torch.rand(1, 1, 8, 8, dtype=torch.float64)
    turned = misalign(sq, (0.0, 0.0), math.pi / 2)
    torch.testing.assert_close(turned, torch.rot90(sq, k=-1, dims=(-2, -1)), atol=1e-12, rtol=0)
    assert misalign(img) is img


def test_misalign_gradcheck_in_shift_and_rotation():
    img = torch.rand(1, 1, 6, 7, dtype=torch.float64, requires_grad=True)
    shift = torch.tensor([0.3, -0.2], dtype=torch.float64, requires_grad=True)
    rot = torch.tensor(0.05, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(misalign, (img, shift, rot))


def test_perturbed_psfs_stay_physical():
    gen = torch.Generator().manual_seed(0)
    psfs = torch.rand(4, 3, 5, 5, generator=gen)
    psfs = 0.95 * psfs / psfs.sum(dim=(1, 2, 3), keepdim=True)
    delta = 2.0 * torch.randn(psfs.shape, generator=gen)
    out = perturb_psfs(psfs, delta)
    assert float(out.min()) >= 0.0
    assert float(out.sum(dim=(1, 2, 3)).max()) <= 1.0 + 1e-6
    small = perturb_psfs(psfs, 0.01 * torch.ones_like(psfs))
    torch.testing.assert_close(small, psfs * 1.01)
    with pytest.raises(ValueError, match="psf_delta"):
        perturb_psfs(psfs, delta[:2])


def test_defocus_is_a_gaussian_of_variance_sigma_squared_and_keeps_energy():
    psfs = torch.zeros(2, 1, 5, 5, dtype=torch.float64)
    psfs[:, 0, 2, 2] = torch.tensor([0.8, 0.5])
    sigma = 1.5
    grown = defocus_psfs(psfs, sigma, keep_size=False)
    torch.testing.assert_close(grown.sum(dim=(1, 2, 3)), psfs.sum(dim=(1, 2, 3)))
    k = grown.shape[-1]
    x = torch.arange(k, dtype=torch.float64) - k // 2
    profile = grown[0, 0].sum(0) / grown[0, 0].sum()
    assert float((profile * x**2).sum()) == pytest.approx(sigma**2, rel=0.02)
    kept = defocus_psfs(psfs, torch.tensor([0.5, 2.0], dtype=torch.float64))
    assert kept.shape == psfs.shape
    torch.testing.assert_close(kept.sum(dim=(1, 2, 3)), psfs.sum(dim=(1, 2, 3)))
    assert float(kept[1, 0, 2, 2]) < float(kept[0, 0, 2, 2] * 0.5 / 0.8)  # more blur, lower peak
    assert defocus_psfs(psfs, 0.0) is psfs


def test_fabrication_errors_sample_and_apply_eq10():
    a = FabricationErrors.sample(8, 1, 7, seed=3)
    b = FabricationErrors.sample(8, 1, 7, seed=3)
    assert torch.equal(a.gain, b.gain) and a.shift_px == b.shift_px
    assert float(a.gain.min()) > 0 and a.psf_delta.shape == (8, 1, 7, 7)
    none = FabricationErrors.sample(8, 1, 7, seed=3, strength=0.0)
    img = torch.rand(2, 1, 16, 16)
    psfs = torch.rand(8, 1, 7, 7) / 60
    torch.testing.assert_close(none.apply(img, psfs), optical_conv2d(img, psfs))
    # Gain alone scales each kernel's features (alpha in Eq. 10).
    g = FabricationErrors(gain=torch.arange(1, 9, dtype=torch.float32) / 8)
    torch.testing.assert_close(
        g.apply(img, psfs), optical_conv2d(img, psfs) * g.gain[:, None, None]
    )
    assert FabricationErrors.from_dict(a.to_dict()).shift_px == a.shift_px
