"""Layout from physical constraints: hand-computed cases of Eq. 1 and the implied network."""

from __future__ import annotations

import pytest

from onnlab.estimate.design import design_network

MM = 1e-3


def test_mnist_preset_is_two_by_four_with_hand_computed_network():
    # floor((1.1 + 0.1) / 0.6) = 2 rows, floor((2.3 + 0.1) / 0.6) = 4 cols
    d = design_network("mnist", (1.1 * MM, 2.3 * MM), 0.5 * MM, 0.1 * MM)
    assert (d.layout.rows, d.layout.cols, d.n_kernels) == (2, 4, 8)
    # 8 maps of 28x28 binned 4x -> 8 * 7 * 7 = 392 features -> FC 10 with bias
    assert d.n_readout_features == 392
    assert d.n_trainable == (392 + 1) * 10
    # tiles of 28 px with 4 px gaps: 2 * 28 + 4, 4 * 28 + 3 * 4
    assert d.sensor_px == (60, 124)
    # symmetric grid: centres at +-0.3 mm (rows) and +-0.3, +-0.9 mm (cols)
    ys = sorted({round(c[0] / MM, 6) for c in d.layout.centers_m})
    xs = sorted({round(c[1] / MM, 6) for c in d.layout.centers_m})
    assert ys == [-0.3, 0.3] and xs == [-0.9, -0.3, 0.3, 0.9]
    assert any("2 x 4 = 8" in line for line in d.describe())


def test_exact_fit_counts_the_last_row_and_colour_network():
    # (1.05 + 0.05) / (0.3 + 0.05) = 3 exactly (floating point gives 2.999...): 3 x 3
    d = design_network("cifar10", (1.0 * MM, 1.0 * MM), 0.3 * MM, 0.05 * MM)
    assert d.n_kernels == 9
    arch = d.architecture
    assert (arch.in_channels, arch.pool, arch.kernel_px) == (3, 2, 7)
    assert d.n_trainable == (9 * 16 * 16 + 1) * 10


def test_zero_spacing_and_hidden_layers_and_segmentation():
    d = design_network("mnist", (1.0 * MM, 1.0 * MM), 0.25 * MM, 0.0, hidden=(120,))
    assert d.n_kernels == 16
    assert d.n_trainable == (16 * 49 + 1) * 120 + (120 + 1) * 10
    s = design_network("segmentation", (4.1 * MM, 4.7 * MM), 0.5 * MM, 0.1 * MM)
    assert (s.layout.rows, s.layout.cols) == (7, 8)  # the paper's 56 kernels
    # default pixelwise MLP readout 56 -> 64 -> 1; a single 1x1 readout has 56 + 1
    assert s.n_trainable == (56 + 1) * 64 + (64 + 1)
    lin = design_network("segmentation", (4.1 * MM, 4.7 * MM), 0.5 * MM, 0.1 * MM, hidden=())
    assert lin.n_trainable == 56 + 1


@pytest.mark.parametrize(
    ("args", "kwargs", "name"),
    [
        (((1.0 * MM, 1.0 * MM), 2.0 * MM, 0.1 * MM), {}, "kernel_size_m"),
        (((-1.0 * MM, 1.0 * MM), 0.5 * MM, 0.1 * MM), {}, "aperture_hw_m"),
        (((1.0 * MM, 1.0 * MM), -0.5 * MM, 0.1 * MM), {}, "kernel_size_m"),
        (((1.0 * MM, 1.0 * MM), 0.5 * MM, -0.1 * MM), {}, "spacing_m"),
        (((1.0 * MM, 1.0 * MM), 0.5 * MM, 0.1 * MM), {"wavelengths_m": (532e-9,)}, "wavelengths_m"),
        (((1.0 * MM, 1.0 * MM), 0.5 * MM, 0.1 * MM), {"pool": 5}, "pool"),
    ],
)
def test_impossible_constraints_raise_value_error_naming_the_parameter(args, kwargs, name):
    task = "cifar10" if "wavelengths_m" in kwargs else "mnist"
    with pytest.raises(ValueError, match=name):
        design_network(task, *args, **kwargs)


def test_kernel_larger_than_the_aperture_says_why_nothing_fits():
    # 2 mm kernels in a 1 mm aperture: Eq. 1 gives floor(1.1 / 2.1) = 0 rows
    with pytest.raises(ValueError, match="no kernel fits") as info:
        design_network("mnist", (1.0 * MM, 3.0 * MM), 2.0 * MM, 0.1 * MM)
    message = str(info.value).lower()
    assert "kernel_size_m" in message and "aperture" in message
    # one row fits but the spacing pushes the second column out: 1 x 1, not an error
    d = design_network("mnist", (1.0 * MM, 1.9 * MM), 1.0 * MM, 0.2 * MM)
    assert (d.layout.rows, d.layout.cols) == (1, 1)
