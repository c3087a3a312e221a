"""The capture loop on the simulated bench: faults, exposure, Ctrl-C and kill -9 resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from drivers.sim import SimulatedBench, design_psfs
from drivers.sim.faults import FaultConfig
from onnlab.capture.runner import ExposurePolicy, RetryPolicy, select_indices
from onnlab.capture.session import capture_dataset
from onnlab.capture.store import CaptureStore
from onnlab.data.base import ArrayDataset
from onnlab.errors import CaptureError
from onnlab.optics import SensorModel

REPO = Path(__file__).resolve().parents[2]
# Shot + read noise ON everywhere: the simulated sensor's noise is a pure function of what is
# shown (drivers.sim.noise), so "identical frames" below includes the noise.
NOISY = {"poisson": True, "read_noise": True, "read_noise_e": 3.0}


def _dataset(n: int = 60, seed: int = 0) -> ArrayDataset:
    rng = np.random.default_rng(seed)
    images = rng.random((n, 1, 28, 28), dtype=np.float32)
    return ArrayDataset(images, rng.integers(0, 10, n), np.arange(1000, 1000 + n), task="mnist")


def _bench(faults: dict | None = None, **kw) -> SimulatedBench:
    return SimulatedBench(
        design_psfs("mnist", 8, 7, 1, 0),
        (28, 28),
        seed=3,
        faults=FaultConfig(p=faults or {}),
        sensor=SensorModel(**NOISY),
        **kw,
    )


def _capture(
    path: Path,
    bench: SimulatedBench,
    data: ArrayDataset,
    requested,
    *,
    slm=None,
    camera=None,
    **kw,
):
    kw.setdefault("retry", RetryPolicy(backoff_s=0.0))
    return capture_dataset(
        path,
        data,
        requested,
        slm or bench.slm,
        camera or bench.camera,
        meta={"dataset": "synthetic"},
        progress=False,
        chunk_size=7,
        **kw,
    )


def _assert_noisy(bench: SimulatedBench, frames: np.ndarray, images: np.ndarray) -> None:
    """The frames carry the sensor's noise (else "identical" would prove nothing about the
    seeding): their scatter about the noise-free mean matches the sensor model's variance."""
    mean = bench.expected_dn(images).double()
    sensor = bench.truth.sensor
    var = sensor.variance_dn((mean - sensor.offset_dn) / sensor.gain).numpy()
    resid = frames.astype(np.float64) - mean.numpy()
    lit = mean.numpy() > 0.2 * float(mean.max())
    ratio = float((resid[lit] ** 2).mean() / var[lit].mean())
    assert var[lit].mean() > 4.0 and 0.8 < ratio < 1.25, ratio


def test_select_indices_is_seeded_sorted_and_sized() -> None:
    ids = np.arange(100, 600)
    a = select_indices(ids, 0.1, seed=4)
    assert a.size == 50 and np.all(np.diff(a) > 0) and np.isin(a, ids).all()
    np.testing.assert_array_equal(a, select_indices(ids, 0.1, seed=4))
    assert not np.array_equal(a, select_indices(ids, 0.1, seed=5))
    with pytest.raises(ValueError, match="fraction"):
        select_indices(ids, 0.0, 0)


def test_transient_faults_are_retried_and_never_stored(tmp_path: Path) -> None:
    data = _dataset()
    faults = {
        "camera.timeout": 0.08,
        "camera.incomplete": 0.08,
        "camera.disconnect": 0.05,
        "slm.disconnect": 0.03,
        "slm.latency": 0.08,
    }
    reference = _capture(tmp_path / "ref.h5", _bench(), data, data.indices.numpy())
    summary = _capture(tmp_path / "run.h5", _bench(faults), data, data.indices.numpy())
    assert summary.complete and summary.captured == 60 and summary.failed == 0
    assert summary.retried > 5 and summary.reconnects >= 1 and summary.stale_frames >= 1
    assert reference.retried == 0
    with CaptureStore.read(tmp_path / "run.h5") as s, CaptureStore.read(tmp_path / "ref.h5") as r:
        got, ref = s.load(), r.load()
        assert s.completion["summary"]["retried"] == summary.retried
    np.testing.assert_array_equal(got.indices, data.indices.numpy())
    # a latency-stale or partial frame would differ from the fault-free reference
    np.testing.assert_array_equal(got.data, ref.data)
    assert list(got.provenance["pattern_id"]) == [str(i) for i in got.indices]
    assert (got.provenance["attempts"] >= 1).all() and got.provenance["attempts"].max() > 1


def test_dead_camera_fails_cleanly_and_keeps_committed_frames(tmp_path: Path) -> None:
    data = _dataset(20)
    bench = _bench()
    _capture(tmp_path / "run.h5", bench, data, data.indices.numpy()[:10])  # other run, ok
    dead = _bench({"camera.timeout": 1.0})
    with pytest.raises(CaptureError, match="no good frame after 3 attempt"):
        _capture(
            tmp_path / "b.h5",
            dead,
            data,
            data.indices.numpy(),
            retry=RetryPolicy(max_attempts=3, backoff_s=0.0),
        )
    with CaptureStore.read(tmp_path / "b.h5") as s:
        assert s.n_committed == 0 and not s.is_full


def test_exposure_check_pulls_a_saturated_camera_into_range(tmp_path: Path) -> None:
    data = _dataset(10)
    bench = _bench(exposure_s=8.0)
    summary = _capture(
        tmp_path / "run.h5", bench, data, data.indices.numpy(), exposure=ExposurePolicy()
    )
    report = summary.exposure
    assert report["ok"] and report["adjusted"] and report["exposure_s"] < 8.0
    assert report["saturated_fraction"] == 0.0 and report["peak_fraction"] >= 0.25
    with CaptureStore.read(tmp_path / "run.h5") as s:
        frames = s.load()
    assert frames.data.max() < 4095
    assert np.allclose(frames.provenance["exposure_s"], report["exposure_s"])


class _CtrlC:
    """Proxy raising KeyboardInterrupt (a Ctrl-C) at the n-th call of `show` or `capture`
    (the countdown is shared by the SLM and camera proxies, so it lands on either)."""

    def __init__(self, device, countdown: list[int]) -> None:
        self._device, self._countdown = device, countdown

    def __getattr__(self, name):
        return getattr(self._device, name)

    def _tick(self) -> None:
        self._countdown[0] -= 1
        if self._countdown[0] < 0:
            raise KeyboardInterrupt

    def show(self, *a, **k):
        self._tick()
        return self._device.show(*a, **k)

    def capture(self, *a, **k):
        self._tick()
        return self._device.capture(*a, **k)


def test_ctrl_c_at_random_points_then_resume_with_noise(tmp_path: Path) -> None:
    """Ctrl-C at random show/capture calls (with transport faults and retries in play),
    resumed on a fresh bench (a new process) or on the same one; the store then holds each
    index once with noisy frames bit-identical to an uninterrupted capture."""
    data = _dataset(40)
    path, requested = tmp_path / "run.h5", data.indices.numpy()
    faults = {"camera.incomplete": 0.1, "camera.timeout": 0.05, "slm.latency": 0.05}
    rng = np.random.default_rng(2)
    committed = 0
    bench = _bench(faults)
    for round_ in range(5):
        if round_ % 2 == 0:
            bench = _bench(faults)  # a restarted process; odd rounds resume in-process
        countdown = [int(rng.integers(1, 24))]
        with pytest.raises(KeyboardInterrupt):
            _capture(
                path,
                bench,
                data,
                requested,
                slm=_CtrlC(bench.slm, countdown),
                camera=_CtrlC(bench.camera, countdown),
            )
        with CaptureStore.read(path) as s:
            assert s.n_committed >= committed  # never loses what was committed
            committed = s.n_committed
    assert 0 < committed < 40
    summary = _capture(path, _bench(faults), data, requested)
    assert summary.skipped == committed and summary.captured == 40 - committed
    reference = tmp_path / "ref.h5"
    _capture(reference, _bench(), data, requested)  # fault-free, uninterrupted
    with CaptureStore.read(path) as s, CaptureStore.read(reference) as r:
        got, ref = s.load(), r.load()
    assert len(np.unique(got.indices)) == len(got.indices) == 40  # each index exactly once
    np.testing.assert_array_equal(got.indices, requested)
    np.testing.assert_array_equal(got.data, ref.data)  # noisy frames, bit-identical
    np.testing.assert_array_equal(got.targets, ref.targets)
    _assert_noisy(_bench(), got.data, data.images)


def _bench_yaml(tmp_path: Path) -> Path:
    config = yaml.safe_load((REPO / "configs" / "bench" / "sim.yaml").read_text())
    config["sim"]["sensor"].update(NOISY)
    config["sim"]["faults"] = {"p": {"camera.timeout": 0.03, "camera.incomplete": 0.03}}
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_kill_9_of_the_capture_command_then_resume(tmp_path: Path) -> None:
    """`onnlab capture` killed with SIGKILL mid-run, twice; reruns finish with no dup/gap."""
    bench = _bench_yaml(tmp_path)
    out = tmp_path / "run.h5"
    cmd = [
        sys.executable,
        "-m",
        "onnlab.cli",
        "capture",
        "--config",
        str(bench),
        "--task",
        "mnist",
        "--split",
        "test",
        "--fraction",
        "0.4",
        "--store",
        str(out),
        "--chunk-size",
        "5",
        "--no-progress",
        "--seed0",
        "1",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    rng = np.random.default_rng(11)
    killed = 0
    for _ in range(2):
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if out.exists():
                with CaptureStore.read(out, verify=False) as s:
                    n_before = s.n_committed
                if n_before >= 10:
                    break
            time.sleep(0.05)
        time.sleep(float(rng.uniform(0.0, 0.3)))
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        killed += proc.returncode == -signal.SIGKILL
        with CaptureStore.read(out) as s:
            assert s.n_committed >= n_before and not s.is_full
    assert killed == 2
    done = subprocess.run(cmd + ["--json"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert '"complete": true' in done.stdout
    from onnlab.capture.cli_support import capture_command

    capture_command(
        config=bench,
        dataset="mnist",
        split="test",
        fraction=0.4,
        out=tmp_path / "ref.h5",
        calibration=None,
        seed=1,
        data_root=None,
        limit=None,
        chunk_size=50,
        slm_id=None,
        camera_id=None,
        exposure_check=True,
        max_attempts=5,
        progress=False,
    )
    with CaptureStore.read(out) as s, CaptureStore.read(tmp_path / "ref.h5") as r:
        got, ref = s.load(), r.load()
    assert len(np.unique(got.indices)) == len(got.indices) == 400
    np.testing.assert_array_equal(got.indices, ref.indices)
    np.testing.assert_array_equal(got.data, ref.data)
    np.testing.assert_array_equal(got.targets, ref.targets)
