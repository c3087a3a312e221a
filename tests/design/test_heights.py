"""Phase <-> height and quantisation against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from onnlab.design.heights import (
    height_2pi_m,
    height_to_phase,
    level_heights_m,
    level_phases,
    phase_to_height,
    quantise_phase,
)
from onnlab.optics.materials import get_material


def test_height_formula_by_hand():
    # n = 1.5 at 600 nm: one wave of delay is 600 nm / 0.5 = 1.2 um.
    lam, n = 600e-9, 1.5
    assert height_2pi_m(lam, n) == pytest.approx(1.2e-6)
    phi = torch.tensor([0.0, math.pi / 2, math.pi, -math.pi / 2, 2 * math.pi + math.pi / 2])
    h = phase_to_height(phi, lam, n)
    expected = torch.tensor([0.0, 0.3e-6, 0.6e-6, 0.9e-6, 0.3e-6])  # wrapped to [0, 2 pi)
    assert torch.allclose(h, expected, atol=1e-15)
    assert torch.allclose(height_to_phase(h, lam, n), torch.remainder(phi, 2 * math.pi))


def test_fused_silica_two_pi_height():
    """SiO2 at 532 nm (n = 1.4607, Malitson): lambda / (n - 1) = 1.1548 um."""
    n = get_material("SiO2").index(532e-9)
    assert height_2pi_m(532e-9, n) == pytest.approx(532e-9 / 0.4607, rel=1e-3)


def test_quantisation_rounds_cyclically_to_levels():
    step = 2 * math.pi / 4
    phi = np.array([0.1, step - 0.1, 1.5 * step + 0.01, 2 * math.pi - 0.1, -0.1, 3 * step])
    idx = quantise_phase(phi, 4)
    assert idx.tolist() == [0, 1, 2, 0, 0, 3]  # just below 2 pi is level 0, not level 3
    assert np.allclose(level_phases(idx, 4), np.array([0, 1, 2, 0, 0, 3]) * step)
    t = quantise_phase(torch.from_numpy(phi), 4)
    assert t.tolist() == idx.tolist()
    # Rounding error is at most half a step (cyclically).
    rng = np.random.default_rng(0)
    phi = rng.uniform(-10, 10, 1000)
    err = np.angle(np.exp(1j * (phi - level_phases(quantise_phase(phi, 8), 8))))
    assert np.abs(err).max() <= math.pi / 8 + 1e-12


def test_level_heights_by_hand():
    assert np.allclose(level_heights_m(4, 600e-9, 1.5), [0, 0.3e-6, 0.6e-6, 0.9e-6])


@pytest.mark.parametrize("levels", [1, 0, -3, 2.5, True])
def test_fewer_than_two_levels_raise_naming_levels(levels):
    with pytest.raises(ValueError, match="levels"):
        quantise_phase(np.zeros(3), levels)
    with pytest.raises(ValueError, match="levels"):
        level_heights_m(levels, 600e-9, 1.5)


@pytest.mark.parametrize("index", [1.0, 0.8, float("nan")])
def test_index_not_above_one_raises_naming_it(index):
    with pytest.raises(ValueError, match="refractive_index"):
        phase_to_height(np.zeros(3), 600e-9, index)
