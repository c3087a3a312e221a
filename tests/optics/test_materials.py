"""Material dispersion against the literature formulas the Cauchy fits were taken from."""

from __future__ import annotations

import math

import pytest
import torch

from onnlab.optics.materials import MATERIALS, Material, get_material
from onnlab.optics.psf import dispersed_phase

VISIBLE_M = (450e-9, 486.13e-9, 532e-9, 587.56e-9, 656.27e-9, 700e-9)


def _sellmeier(lam_m: float, terms: list[tuple[float, float]]) -> float:
    lam2 = (lam_m * 1e6) ** 2
    return math.sqrt(1 + sum(b * lam2 / (lam2 - c**2) for b, c in terms))


def test_fused_silica_matches_malitson_and_the_fraunhofer_lines():
    """n_F, n_d, n_C of fused silica (Malitson 1965) are 1.4632, 1.4585, 1.4564."""
    sio2 = get_material("SiO2")
    for lam, n in ((486.13e-9, 1.4632), (587.56e-9, 1.4585), (656.27e-9, 1.4564)):
        assert sio2.index(lam) == pytest.approx(n, abs=2e-4)
    terms = [(0.6961663, 0.0684043), (0.4079426, 0.1162414), (0.8974794, 9.896161)]
    for lam in VISIBLE_M:
        assert sio2.index(lam) == pytest.approx(_sellmeier(lam, terms), abs=1e-4)


def test_silicon_nitride_and_rutile_match_their_sellmeier_laws():
    si3n4, tio2 = get_material("Si3N4"), get_material("TiO2")
    for lam in VISIBLE_M:
        luke = _sellmeier(lam, [(3.0249, 0.1353406), (40314.0, 1239.842)])
        assert si3n4.index(lam) == pytest.approx(luke, abs=3e-4)
        devore = math.sqrt(5.913 + 0.2441 / ((lam * 1e6) ** 2 - 0.0803))
        assert tio2.index(lam) == pytest.approx(devore, abs=5e-3)


@pytest.mark.parametrize("name", sorted(MATERIALS))
def test_every_material_has_normal_dispersion_and_index_above_one(name):
    m = MATERIALS[name]
    values = [m.index(lam) for lam in VISIBLE_M]
    assert all(1.3 < n < 3.0 for n in values)
    assert all(a > b for a, b in zip(values, values[1:], strict=False))  # blue bends more


def test_lookup_is_case_insensitive_and_lists_names_on_error():
    assert get_material("sio2") is MATERIALS["SiO2"]
    assert get_material("su8") is MATERIALS["SU-8"]
    assert get_material(MATERIALS["TiO2"]) is MATERIALS["TiO2"]
    with pytest.raises(ValueError, match="material must be one of .*SiO2"):
        get_material("unobtainium")


def test_index_at_or_below_one_is_refused_naming_the_parameter():
    low = Material("air-like", 1.0, 0.0)
    with pytest.raises(ValueError, match="wavelength_m"):
        low.index(532e-9)
    with pytest.raises(ValueError, match="cauchy_a"):
        Material("bad", float("nan"), 0.0)
    with pytest.raises(ValueError, match="wavelength_m"):
        MATERIALS["SiO2"].index(-1.0)
    with pytest.raises(ValueError, match="wavelength_m"):
        low.check_wavelengths((630e-9, 532e-9))


def test_refractive_index_plugs_into_the_dispersion_model():
    """A thin SiO2 element's phase at 465 nm vs its 532 nm design: lambda0/lambda times the
    index-contrast ratio, which for fused silica is (1.4645 - 1) / (1.4607 - 1) = 1.0082."""
    sio2 = get_material("SiO2")
    phi = dispersed_phase(
        torch.tensor([1.0], dtype=torch.float64),
        532e-9,
        465e-9,
        refractive_index=sio2.refractive_index,
        wrap=False,
    )
    expected = 532 / 465 * (sio2.index(465e-9) - 1) / (sio2.index(532e-9) - 1)
    assert float(phi) == pytest.approx(expected, rel=1e-12)
    assert (sio2.index(465e-9) - 1) / (sio2.index(532e-9) - 1) == pytest.approx(1.0082, abs=2e-4)
