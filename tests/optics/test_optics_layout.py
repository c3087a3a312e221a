"""Kernel layout (paper Eq. 1) and OpticsConfig validation."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from onnlab.optics import OpticsConfig, kernel_layout


@pytest.mark.parametrize(
    "h,w,k,d,rows,cols",
    [
        (1.1e-3, 2.3e-3, 0.5e-3, 0.1e-3, 2, 4),  # exact fit: (h + d) / (k + d) = 2
        (1.09e-3, 2.3e-3, 0.5e-3, 0.1e-3, 1, 4),  # 10 um short of two rows
        (3.0e-3, 3.0e-3, 0.7e-3, 0.0, 4, 4),  # touching kernels
        (0.5e-3, 0.5e-3, 0.5e-3, 0.2e-3, 1, 1),
    ],
)
def test_eq1_counts_and_symmetric_physical_grid(h, w, k, d, rows, cols):
    lay = kernel_layout((h, w), k, d)
    assert (lay.rows, lay.cols, lay.count) == (rows, cols, rows * cols)
    c = lay.centers_m
    assert c.shape == (rows * cols, 2)
    np.testing.assert_allclose(c.mean(axis=0), 0.0, atol=1e-15)  # centred on the aperture
    # Every kernel lies inside the aperture, and no two are closer than k + d edge-to-edge.
    assert np.all(np.abs(c[:, 0]) + k / 2 <= h / 2 + 1e-12)
    assert np.all(np.abs(c[:, 1]) + k / 2 <= w / 2 + 1e-12)
    for a, b in itertools.combinations(range(lay.count), 2):
        gap = np.max(np.abs(c[a] - c[b])) - k
        assert gap >= d - 1e-12
    # Row-major: x increases along a row, then y steps down.
    if cols > 1:
        assert c[1, 1] > c[0, 1] and c[1, 0] == c[0, 0]


def test_paper_systems_fit_expected_kernel_counts():
    assert OpticsConfig.preset("mnist").n_kernels == 8
    assert OpticsConfig.preset("cifar10").n_kernels == 16
    cfg = OpticsConfig.preset("segmentation")
    assert cfg.n_kernels == 56 and cfg.in_channels == 3 and cfg.kernel_px == 3
    assert kernel_layout(cfg).count == 56


def test_layout_errors_name_the_parameter():
    with pytest.raises(ValueError, match="kernel_size_m"):
        kernel_layout((1e-3, 1e-3), 2e-3, 0.0)
    with pytest.raises(ValueError, match="kernel_size_m"):
        kernel_layout((1e-3, 1e-3), -1e-4, 0.0)
    with pytest.raises(ValueError, match="spacing_m"):
        kernel_layout((1e-3, 1e-3), 1e-4, -1e-5)
    with pytest.raises(ValueError, match="aperture_hw_m"):
        kernel_layout((0.0, 1e-3), 1e-4, 0.0)


@pytest.mark.parametrize(
    "field,value",
    [
        ("wavelengths_m", (-532e-9,)),
        ("wavelengths_m", ()),
        ("kernel_size_m", 5e-3),  # larger than the aperture
        ("focal_length_m", 0.0),
        ("sensor_pitch_m", -3e-6),
        ("kernel_px", 0),
        ("bit_depth", 0),
        ("spacing_m", -1e-6),
        ("aperture_hw_m", (1e-3, -1e-3)),
    ],
)
def test_config_rejects_bad_fields_by_name(field, value):
    with pytest.raises(ValueError, match=field):
        OpticsConfig(**{field: value})


def test_config_defaults_and_reference_wavelength():
    cfg = OpticsConfig()
    assert cfg.in_channels == 1 and cfg.n_kernels == 8
    rgb = OpticsConfig.preset("cifar10")
    assert rgb.reference_wavelength_m == 532e-9
    assert rgb.kernel_extent_m == pytest.approx(7 * rgb.sensor_pitch_m)
    with pytest.raises(ValueError, match="name"):
        OpticsConfig.preset("imagenet")
