"""The digital twin predicts held-out frames to the noise level and reads features back."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from calib_helpers import sim_config

from calibration.twin import DigitalTwin
from onnlab.data import load_dataset
from onnlab.errors import CalibrationError


@pytest.fixture()
def twin_and_bench(calibrated):
    _cfg, devices, run = calibrated
    art = run.artifact
    bench = devices.sim_bench
    bench.camera.set_exposure(art.meta.camera.exposure_s)
    return DigitalTwin(art), bench


def _held_out() -> dict[str, torch.Tensor]:
    """Images never shown during calibration: MNIST test digits and uniform noise."""
    rng = np.random.default_rng(777)
    return {
        "mnist": torch.as_tensor(load_dataset("mnist", "test", limit=16).images),
        "noise": torch.as_tensor(rng.random((16, 1, 28, 28)), dtype=torch.float32),
    }


def _capture(bench, images: torch.Tensor) -> np.ndarray:
    return np.stack([f.pixels for f in bench.render(images)]).astype(np.float64)


def test_twin_fidelity_on_held_out_images(twin_and_bench) -> None:
    twin, bench = twin_and_bench
    for name, x in _held_out().items():
        c1, c2 = _capture(bench, x), _capture(bench, x)
        noise = np.sqrt(np.mean((c1 - c2) ** 2) / 2)
        fidelity = np.sqrt(np.mean((twin.predict_frame(x).double().numpy() - c1) ** 2)) / noise
        assert fidelity < 1.2, (name, fidelity)


def test_features_from_frames_match_the_optics(twin_and_bench) -> None:
    twin, bench = twin_and_bench
    x = _held_out()["noise"][:8]
    frames = bench.render(x)
    feats = twin.features_from_frame(frames)  # list of Frame: their exposures are used
    assert feats.shape == (8, twin.n_kernels, 28, 28)
    expected = twin.features(x)
    rel = float((feats - expected).norm() / expected.norm())
    assert rel < 0.05  # shot noise (~2 %) + resampling, nothing systematic
    # same numbers from a plain (B, H, W) array with an explicit exposure, and batched
    arr = np.stack([f.pixels for f in frames])
    same = twin.features_from_frame(arr, exposure_s=frames[0].exposure_s)
    torch.testing.assert_close(same, feats)
    one = twin.features_from_frame(arr[3])
    torch.testing.assert_close(one[0], feats[3])
    # per-kernel alpha divides out the measured brightness
    norm = twin.features_from_frame(arr, per_kernel_alpha=True)
    torch.testing.assert_close(norm * twin.alpha[None, :, None, None], feats)


def test_features_are_exposure_independent(twin_and_bench) -> None:
    twin, bench = twin_and_bench
    x = _held_out()["noise"][:4] * 0.5
    exp = twin.exposure_s
    f1 = twin.features_from_frame(bench.render(x))
    bench.camera.set_exposure(exp * 1.8)
    try:
        f2 = twin.features_from_frame(bench.render(x))
    finally:
        bench.camera.set_exposure(exp)
    assert float((f1 - f2).norm() / f1.norm()) < 0.05


def test_sample_frame_has_the_calibrated_noise(twin_and_bench) -> None:
    twin, _bench = twin_and_bench
    x = _held_out()["noise"][:4]
    gen = torch.Generator().manual_seed(0)
    mean = twin.predict_frame(x, clip=False).double()
    draws = torch.stack([twin.sample_frame(x, generator=gen).double() for _ in range(6)])
    lit = mean > 500
    var_model = twin.gain * (mean - twin.offset_dn) + (twin.gain * twin.read_noise_e) ** 2
    ratio = float(((draws - mean) ** 2).mean(0)[lit].mean() / var_model[lit].mean())
    assert ratio == pytest.approx(1.0, abs=0.1)


def test_twin_load_is_strict(calibrated, tmp_path) -> None:
    cfg, _devices, run = calibrated
    path = run.artifact.save(tmp_path / "cal.h5")
    twin = DigitalTwin.load(path, bench_config=cfg)
    assert twin.camera_hw == tuple(run.artifact.meta.layout.camera_hw)
    with pytest.raises(CalibrationError, match="different bench"):
        DigitalTwin.load(path, bench_config=sim_config(seed=5))
