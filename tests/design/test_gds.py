"""GDSII layout: physical placement by hand, exact re-import, and the PSF round trip."""

from __future__ import annotations

import json
import math

import gdstk
import numpy as np
import pytest
import torch

from onnlab.design.export import export_design
from onnlab.design.gds import LAYER_BASE, MaskGeometry, read_gds, write_gds
from onnlab.models.phase_frontend import PhaseSystem
from onnlab.optics import OpticsConfig
from onnlab.optics.materials import Material, get_material


def _system(n: int = 16) -> PhaseSystem:
    optics = OpticsConfig(
        wavelengths_m=(532e-9,),
        aperture_hw_m=(0.5e-3, 1.1e-3),  # 1 x 2 sub-apertures of 0.5 mm, 0.1 mm apart
        kernel_size_m=0.5e-3,
        spacing_m=0.1e-3,
        focal_length_m=2.5e-3,
        kernel_px=5,
    )
    return PhaseSystem(optics, get_material("SiO2"), n, 3)


def test_one_pixel_lands_at_its_physical_position(tmp_path):
    """Kernel 1 of a 1 x 2 layout is centred at x = +0.3 mm; its pixel (i, j) = (0, 3) of an
    8 x 8 grid at 62.5 um pitch spans x in [300 + (3 - 4 - 0.5) 62.5, + 62.5] um and
    y in [(0 - 4 - 0.5) 62.5, + 62.5] um (origin at the aperture centre, y up with i)."""
    geometry = MaskGeometry(np.array([[0.0, -0.3e-3], [0.0, 0.3e-3]]), 8, 62.5e-6)
    idx = np.zeros((2, 8, 8), dtype=int)
    idx[1, 0, 3] = 1
    write_gds(tmp_path / "m.gds", idx, geometry, levels=2)
    lib = gdstk.read_gds(str(tmp_path / "m.gds"), unit=1e-6)
    polys = [p for p in lib.cells[0].polygons if p.layer == LAYER_BASE + 1]
    assert len(polys) == 1
    (x0, y0), (x1, y1) = polys[0].bounding_box()
    assert (x0, x1) == pytest.approx((300 - 1.5 * 62.5, 300 - 0.5 * 62.5))
    assert (y0, y1) == pytest.approx((-4.5 * 62.5, -3.5 * 62.5))
    # Level 0 covers the other 127 pixels, merged: kernel 0 is a single square polygon.
    level0 = [p for p in lib.cells[0].polygons if p.layer == LAYER_BASE]
    k0 = [p for p in level0 if p.bounding_box()[1][0] < 0]
    assert len(k0) == 1 and len(k0[0].points) == 4


def test_reimport_is_exact_for_any_level_map(tmp_path):
    rng = np.random.default_rng(0)
    geometry = MaskGeometry(np.array([[0.0, -0.3e-3], [0.0, 0.3e-3], [0.6e-3, 0.0]]), 12, 40e-6)
    idx = rng.integers(0, 5, (3, 12, 12))
    info = write_gds(tmp_path / "m.gds", idx, geometry, levels=5)
    assert sorted(info["layers"]) == [str(LAYER_BASE + lv) for lv in range(5)]
    assert np.array_equal(read_gds(tmp_path / "m.gds", geometry, 5), idx)


def test_import_refuses_a_foreign_geometry(tmp_path):
    geometry = MaskGeometry(np.array([[0.0, 0.0]]), 8, 50e-6)
    write_gds(tmp_path / "m.gds", np.zeros((1, 8, 8), dtype=int), geometry, levels=2)
    wider = MaskGeometry(np.array([[0.0, 0.0]]), 8, 60e-6)  # pixel centres outside the mask
    with pytest.raises(ValueError, match="covered by no"):
        read_gds(tmp_path / "m.gds", wider, 2)


def test_export_roundtrip_gds_gives_the_quantised_psfs(tmp_path):
    """GDSII -> raster -> wave model equals the PSFs of the quantised design (<= 1e-3), and
    the files a fab needs are all there with units."""
    system = _system()
    grid_y = torch.linspace(-1, 1, 16, dtype=torch.float64)
    phases = torch.stack(
        [3 * grid_y[:, None] ** 2 + 2 * grid_y[None, :], 5 * grid_y[:, None] * grid_y[None, :]]
    )
    meta = export_design(tmp_path, phases, system, levels=4, provenance={"checkpoint_sha256": "x"})
    assert meta["gds_roundtrip_max_rel_psf_error"] <= 1e-3
    for name in ("design.h5", "metadata.json", "phase.png", "height.png", "mask.gds"):
        assert (tmp_path / name).is_file(), name
    on_disk = json.loads((tmp_path / "metadata.json").read_text())
    assert on_disk["levels"] == 4 and on_disk["material"]["name"] == "SiO2"
    n0 = get_material("SiO2").index(532e-9)
    assert on_disk["level_heights_m"] == pytest.approx(
        [i * 532e-9 / (n0 - 1) / 4 for i in range(4)]
    )
    assert on_disk["provenance"]["checkpoint_sha256"] == "x"
    import h5py

    with h5py.File(tmp_path / "design.h5") as h5:
        assert h5["height_m"].attrs["unit"] == "m"
        h = h5["height_m"][()]
        idx = h5["level_index"][()]
        assert np.allclose(h, idx * 532e-9 / (n0 - 1) / 4)
        # Quantisation really happened: the quantised phase is the nearest level, cyclically.
        err = np.angle(np.exp(1j * (h5["phase_rad"][()] - idx * math.pi / 2)))
        assert np.abs(err).max() <= math.pi / 4 + 1e-9


def test_export_bad_levels_and_material_raise_naming_them(tmp_path):
    system = _system()
    phases = torch.zeros(2, 16, 16, dtype=torch.float64)
    with pytest.raises(ValueError, match="levels"):
        export_design(tmp_path, phases, system, levels=1)
    thin = PhaseSystem(system.optics, Material("thin", 0.95, 0.0), 16, 3)
    with pytest.raises(ValueError, match="thin"):
        export_design(tmp_path, phases, thin, levels=4)
    assert not (tmp_path / "mask.gds").exists()
