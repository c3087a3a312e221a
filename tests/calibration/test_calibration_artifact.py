"""The artifact round-trips exactly and refuses what it must: another bench, another design,
a newer format, a truncated or edited file."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest
from calib_helpers import sim_config

from calibration.artifact import CalibrationArtifact, config_hash
from onnlab.errors import CalibrationError


@pytest.fixture()
def saved(calibrated, tmp_path):
    cfg, _devices, run = calibrated
    path = run.artifact.save(tmp_path / "cal.h5")
    return cfg, run.artifact, path


def test_round_trip_is_exact(saved) -> None:
    cfg, art, path = saved
    back = CalibrationArtifact.load(path, bench_config=cfg, design=art.design_psfs)
    assert back.meta == art.meta
    assert set(back.arrays) == set(art.arrays)
    for name, arr in art.arrays.items():
        np.testing.assert_array_equal(back.arrays[name], arr)
    m = back.meta
    assert m.format_version == 1 and m.created_utc.endswith("+00:00")
    assert {"slm0", "cam0", "stage0"} <= set(m.devices)
    assert m.devices["cam0"].serial.startswith("SIM-")
    assert {"onnlab", "torch", "numpy"} <= set(m.versions)
    assert set(m.steps) == {"dark", "response", "focus", "registration", "psf"}
    assert [p.name for p in path.parent.iterdir()] == ["cal.h5"]  # no temp file left behind


def test_refuses_another_bench_and_another_design(saved) -> None:
    cfg, art, path = saved
    with pytest.raises(CalibrationError, match="different bench"):
        CalibrationArtifact.load(path, bench_config=sim_config(seed=1))
    with pytest.raises(CalibrationError, match="different design"):
        CalibrationArtifact.load(path, bench_config=cfg, design=art.design_psfs * 1.01)
    # the same bench, read from a copied YAML elsewhere, is the same bench
    assert config_hash(cfg.model_copy(update={"source": "/elsewhere/sim.yaml"})) == (
        art.meta.bench_config_hash
    )


def test_refuses_newer_format(saved) -> None:
    _cfg, _art, path = saved
    with h5py.File(path, "r+") as f:
        f.attrs["format_version"] = 99
    with pytest.raises(CalibrationError, match="newer than this onnlab reads"):
        CalibrationArtifact.load(path)


def test_refuses_truncated_and_edited_files(saved, tmp_path) -> None:
    _cfg, _art, path = saved
    data = path.read_bytes()
    cut = tmp_path / "cut.h5"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CalibrationError, match="corrupt"):
        CalibrationArtifact.load(cut)
    edited = tmp_path / "edited.h5"
    edited.write_bytes(data)
    with h5py.File(edited, "r+") as f:
        f["arrays/alpha"][0] += 0.5
    with pytest.raises(CalibrationError, match="checksum"):
        CalibrationArtifact.load(edited)
    with pytest.raises(FileNotFoundError):
        CalibrationArtifact.load(tmp_path / "missing.h5")


def test_failed_save_keeps_the_previous_file(saved) -> None:
    _cfg, art, path = saved
    before = path.read_bytes()
    bad = CalibrationArtifact(art.meta, {**art.arrays, "junk": np.array([object()])})
    with pytest.raises(TypeError):
        bad.save(path)
    assert path.read_bytes() == before
    assert sorted(os.listdir(path.parent)) == ["cal.h5"]
