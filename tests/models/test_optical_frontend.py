"""Physics of the optical frontend: true convolution, energy bounds, measured PSFs."""

from __future__ import annotations

import pytest
import torch

from onnlab.models.frontend import OpticalFrontend, dilated_support
from onnlab.models.zoo import build_student


def test_point_source_images_the_psf_and_energy_is_conserved():
    fe = OpticalFrontend(4, 3, 5).double()
    psfs = fe.psfs().detach()
    x = torch.zeros(1, 3, 21, 21, dtype=torch.float64)
    x[0, 1, 10, 10] = 1.0  # a green point source
    out = fe(x).detach()
    # incoherent imaging of a point: the (unmirrored) PSF of that colour, centred on the point
    assert torch.allclose(out[0, :, 8:13, 8:13], psfs[:, 1], atol=1e-12)
    # an image away from the border loses exactly (1 - transmission) of its light
    img = torch.zeros(1, 3, 21, 21, dtype=torch.float64)
    img[0, :, 5:16, 5:16] = torch.rand(3, 11, 11, dtype=torch.float64)
    per_colour = psfs.sum(dim=(2, 3))  # (K, C)
    expected = (per_colour * img.sum(dim=(2, 3))).sum(1)
    assert torch.allclose(fe(img).detach().sum(dim=(2, 3))[0], expected, rtol=1e-10)


def test_constraints_survive_an_optimizer_that_wants_more_light():
    fe = OpticalFrontend(6, 1, 7)
    opt = torch.optim.SGD(fe.parameters(), lr=50.0)
    x = torch.rand(4, 1, 16, 16)
    for _ in range(20):
        opt.zero_grad()
        (-fe(x).sum() + 3 * fe(x)[:, 0].square().sum()).backward()  # push energy up, reshape
        opt.step()
    psfs = fe.psfs()
    assert bool((psfs >= 0).all())
    energy = psfs.sum(dim=(1, 2, 3))
    assert bool((energy <= 1.0 + 1e-6).all())
    assert energy.max() > 0.9  # the optimiser really did push against the bound


def test_pseudo_negative_pairs_subtract():
    fe = OpticalFrontend(4, 1, 3, pseudo_negative=True)
    x = torch.rand(2, 1, 10, 10)
    full = torch.nn.functional.conv2d(x, fe.psfs().flip(-2, -1), padding=1)
    out = fe(x)
    assert out.shape == (2, 2, 10, 10)
    assert torch.allclose(out, full[:, :2] - full[:, 2:], atol=1e-6)
    assert (out < 0).any()  # signed features from non-negative optics
    with pytest.raises(ValueError, match="n_kernels"):
        OpticalFrontend(3, 1, 3, pseudo_negative=True)


def test_load_measured_psfs_exact_frozen_or_trainable():
    fe = OpticalFrontend(3, 1, 5)
    measured = torch.rand(3, 1, 5, 5)
    measured[:, :, 0] = 0.0
    measured = (
        measured
        / measured.sum(dim=(1, 2, 3), keepdim=True)
        * torch.tensor([0.3, 0.6, 0.9]).view(3, 1, 1, 1)
    )
    fe.load_psfs(measured)
    assert torch.equal(fe.psfs(), measured)
    assert not any(p.requires_grad for p in fe.parameters())
    fe2 = OpticalFrontend(3, 1, 5)
    fe2.load_psfs(measured, trainable=True)
    assert torch.allclose(fe2.psfs(), measured, atol=1e-6)
    assert all(p.requires_grad for p in fe2.parameters())
    with pytest.raises(ValueError, match="energy"):
        fe2.load_psfs(measured * 2)
    with pytest.raises(ValueError, match="non-negative"):
        fe2.load_psfs(-measured)


def test_segmentation_kernels_are_dilated_3x3_taps():
    model = build_student("segmentation")
    psfs = model.frontend.psfs().detach()
    assert psfs.shape == (56, 3, 9, 9)
    nonzero = (psfs.sum(1) > 0).flatten(1).sum(1)
    assert nonzero.tolist() == [9] * 56  # three groups of 3x3 taps (8 + 16 + 32)
    assert torch.equal(psfs[8:24].sum((0, 1)) > 0, dilated_support(9, 3, 2))
    assert torch.equal(psfs[24:].sum((0, 1)) > 0, dilated_support(9, 3, 4))
