"""Incoherent convolution: impulse response, direct == FFT, energy, tiling geometry."""

from __future__ import annotations

import pytest
import torch

from onnlab.optics import cut_tiles, optical_conv2d, sensor_shape, tile_onto_sensor


def physical_psfs(k: int, c: int, kh: int, kw: int, seed: int = 0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    p = torch.rand(k, c, kh, kw, generator=gen, dtype=torch.float64)
    return (0.9 * p / p.sum(dim=(1, 2, 3), keepdim=True)).to(dtype)


@pytest.mark.parametrize("method", ["direct", "fft"])
@pytest.mark.parametrize("kh,kw", [(7, 7), (4, 6), (3, 5)])
def test_point_source_images_the_psf_unflipped(method, kh, kw):
    """Impulse response of an imaging system IS its PSF (true convolution, centre at k // 2)."""
    psfs = physical_psfs(2, 1, kh, kw, dtype=torch.float64)
    img = torch.zeros(1, 1, 20, 22, dtype=torch.float64)
    y0, x0 = 9, 11
    img[0, 0, y0, x0] = 1.0
    out = optical_conv2d(img, psfs, method=method)
    patch = out[0, :, y0 - kh // 2 : y0 - kh // 2 + kh, x0 - kw // 2 : x0 - kw // 2 + kw]
    torch.testing.assert_close(patch, psfs[:, 0])
    assert float(out.sum()) == pytest.approx(float(psfs.sum()))


def test_channels_add_incoherently():
    psfs = physical_psfs(3, 3, 5, 5)
    img = torch.rand(2, 3, 16, 16)
    total = optical_conv2d(img, psfs)
    per_channel = sum(optical_conv2d(img[:, c : c + 1], psfs[:, c : c + 1]) for c in range(3))
    torch.testing.assert_close(total, per_channel)


def test_uniform_scene_gives_transmission_in_the_interior():
    psfs = physical_psfs(4, 3, 7, 7)
    out = optical_conv2d(torch.ones(1, 3, 20, 20), psfs)
    torch.testing.assert_close(out[0, :, 10, 10], psfs.sum(dim=(1, 2, 3)))


@pytest.mark.parametrize("kh,kw", [(7, 7), (3, 3), (8, 5), (21, 21)])
def test_direct_and_fft_agree_float32(kh, kw):
    gen = torch.Generator().manual_seed(1)
    img = torch.rand(8, 3, 32, 30, generator=gen)
    psfs = physical_psfs(16, 3, kh, kw)
    direct = optical_conv2d(img, psfs, method="direct")
    fft = optical_conv2d(img, psfs, method="fft")
    assert direct.shape == (8, 16, 32, 30)
    assert float((direct - fft).abs().max()) < 1e-5
    torch.testing.assert_close(optical_conv2d(img, psfs, method="auto"), direct, atol=1e-5, rtol=0)


def test_float64_and_dtype_promotion():
    for c in (1, 6):  # few channels (unrolled sum) and many (einsum) in the FFT path
        img = torch.rand(2, c, 12, 12, dtype=torch.float64)
        psfs = physical_psfs(3, c, 5, 5, dtype=torch.float64)
        d, f = optical_conv2d(img, psfs, "direct"), optical_conv2d(img, psfs, "fft")
        assert d.dtype == torch.float64
        assert float((d - f).abs().max()) < 1e-13
    assert optical_conv2d(img.float(), psfs).dtype == torch.float64


@pytest.mark.parametrize("method", ["direct", "fft"])
def test_convolution_gradcheck(method):
    img = torch.rand(1, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    psfs = torch.rand(2, 2, 3, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: optical_conv2d(a, b, method=method), (img, psfs))


def test_bad_shapes_name_the_argument():
    psfs = physical_psfs(2, 3, 3, 3)
    with pytest.raises(ValueError, match="images"):
        optical_conv2d(torch.rand(3, 8, 8), psfs)
    with pytest.raises(ValueError, match="psfs"):
        optical_conv2d(torch.rand(1, 3, 8, 8), psfs[0])
    with pytest.raises(ValueError, match="psfs.*channels|channels"):
        optical_conv2d(torch.rand(1, 1, 8, 8), psfs)
    with pytest.raises(ValueError, match="method"):
        optical_conv2d(torch.rand(1, 3, 8, 8), psfs, method="spectral")
    with pytest.raises(ValueError, match="rows"):
        tile_onto_sensor(torch.rand(1, 5, 4, 4), 2, 2, 1)
    with pytest.raises(ValueError, match="sensor"):
        cut_tiles(torch.rand(1, 10, 10), 2, 2, (8, 8), 1)


def test_tiling_geometry_and_round_trip():
    b, k, h, w, rows, cols, gap = 2, 7, 5, 6, 2, 4, 3
    feats = torch.rand(b, k, h, w) + 0.1
    sensor = tile_onto_sensor(feats, rows, cols, gap)
    assert sensor.shape == (b, *sensor_shape((h, w), rows, cols, gap)) == (b, 13, 33)
    # Kernel 5 sits at row 1, column 1 (row-major), offset by tile + gap.
    torch.testing.assert_close(sensor[:, 8:13, 9:15], feats[:, 5])
    assert float(sensor[:, 5:8].abs().sum()) == 0.0  # dark gap rows
    assert float(sensor[:, 8:, 27:].abs().sum()) == 0.0  # unused eighth tile stays dark
    torch.testing.assert_close(cut_tiles(sensor, rows, cols, (h, w), gap, n_kernels=k), feats)
    big = torch.nn.functional.pad(sensor, (4, 1, 2, 3))
    torch.testing.assert_close(
        cut_tiles(big, rows, cols, (h, w), gap, n_kernels=k, origin_px=(2, 4)), feats
    )
