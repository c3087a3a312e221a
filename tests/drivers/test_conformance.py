"""One contract, every implementation: simulated twins, slmsuite, GenICam (viky.cti), SMC100.

Each implementation is opened by a factory that also knows how to provoke a timeout on it,
so the same tests check protocol shape, lifecycle, timeouts and error mapping everywhere.
A real bench joins with ``ONNLAB_BENCH_CONFIG=path/to/bench.yaml`` (its devices are probed
with small, reversible moves only; skipped when unset).
"""

from __future__ import annotations

import math
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from drivers.errors import (
    DeviceBusy,
    DeviceError,
    DeviceTimeout,
    LimitError,
    UnsupportedFeature,
)
from drivers.protocols import FLAG_TIMESTAMP_WRAPPED, SLM, Camera, Frame, Stage
from drivers.sim import FaultConfig, SimulatedBench, design_psfs

BENCH_ENV = "ONNLAB_BENCH_CONFIG"


@dataclass
class Subject:
    device: object
    provoke_timeout: Callable[[], Callable[[], object]] | None = None  # returns the failing call
    cleanup: Callable[[], None] | None = None


def _viky_cti() -> str:
    import genicam

    return str(Path(genicam.__file__).parent / "viky.cti")


def _tlsimu_cti() -> str:
    from gentl_producers import tlsimu_cti

    return tlsimu_cti()


def _sim_bench(**faults) -> SimulatedBench:
    return SimulatedBench(
        design_psfs("mnist", 4, 5, seed=0),
        (16, 16),
        seed=2,
        faults=FaultConfig(**faults),
    )


def _make(kind: str, impl: str) -> Subject:
    if impl.startswith("bench:"):
        from drivers.registry import open_devices

        devs = open_devices(os.environ[BENCH_ENV], ids=[impl.split(":", 1)[1]])
        return Subject(next(iter(devs.values())), None, devs.close)
    if impl == "sim":
        bench = _sim_bench(schedule={f"{kind}.timeout": [10**6]}, timeout_delay_s=0.02)
        dev = {"slm": bench.slm, "camera": bench.camera, "stage": bench.stage}[kind]

        def provoke() -> Callable[[], object]:
            dev._bench.faults._calls[f"{kind}.timeout"] = 10**6  # next call hits the schedule
            return {
                "slm": lambda: dev.show(np.zeros(dev.shape_hw), timeout_s=0.05),
                "camera": lambda: dev.capture(timeout_s=0.05),
                "stage": lambda: dev.move_relative(1e-6, timeout_s=0.05),
            }[kind]

        return Subject(dev, provoke, bench.close)
    if impl == "slmsuite":
        from drivers.slm_slmsuite import SlmsuiteSLM

        dev = SlmsuiteSLM(
            "slm0",
            "slmsuite.hardware.slms.simulated.SimulatedSLM",
            {"resolution": (40, 24), "bitdepth": 8},
            gamma=2.0,
            settle_s=0.0,
        )
        dev.open()

        def provoke_slm() -> Callable[[], object]:
            slow = dev._slm.set_phase
            dev._slm.set_phase = lambda *a, **k: (time.sleep(0.3), slow(*a, **k))[1]
            return lambda: dev.show(np.zeros(dev.shape_hw), timeout_s=0.05)

        return Subject(dev, provoke_slm, dev.close)
    if impl == "genicam":
        from drivers.camera_genicam import GenicamCamera

        dev = GenicamCamera(
            "cam0",
            cti=_viky_cti(),
            serial="0",
            pixel_format="Mono8",
            roi=(0, 0, 100, 128),
            frame_rate_hz=200.0,
        )
        dev.open()

        def provoke_cam() -> Callable[[], object]:
            dev._ia.remote_device.node_map.AcquisitionFrameRate.value = 1.0
            dev.set_frame_policy("after_call")  # so a frame queued at 200 Hz does not count
            return lambda: dev.capture(timeout_s=0.1)

        return Subject(dev, provoke_cam, dev.close)
    if impl == "genicam-tlsimu":  # a second real producer: software trigger, device clock
        from gentl_producers import TLSIMU_MONO

        from drivers.camera_genicam import GenicamCamera

        dev = GenicamCamera("cam0", cti=_tlsimu_cti(), serial=TLSIMU_MONO)
        dev.open()

        def provoke_tlsimu() -> Callable[[], object]:
            dev.set_trigger("software")
            real = dev._node  # the trigger never reaches the camera: no frame comes
            dev._node = lambda n: (
                SimpleNamespace(execute=lambda: None) if n == "TriggerSoftware" else real(n)
            )  # noqa: E501
            return lambda: dev.capture(timeout_s=0.1)

        return Subject(dev, provoke_tlsimu, dev.close)
    if impl == "smc100":
        from drivers.sim import protocol_sim
        from drivers.stage_smc100 import SMC100Stage

        protocol_sim.register()  # sim:// serial URLs (the real driver does not register them)
        url = f"sim://smc100?velocity=100&id={uuid.uuid4().hex}"
        dev = SMC100Stage("stage0", url, (0.0, 0.025), home_on_open=True)
        dev.open()

        def provoke_stage() -> Callable[[], object]:
            # move_relative: TP (reply n), PR (silent), TE (n+1), TS (n+2) -> the TS never comes
            dev._ser._silent = {dev._ser._replies + 2}
            return lambda: dev.move_relative(1e-5, timeout_s=0.1)

        return Subject(dev, provoke_stage, dev.close)
    raise AssertionError(impl)


def _bench_ids(kind: str) -> list[str]:
    path = os.environ.get(BENCH_ENV)
    if not path:
        return ["bench:unset"]
    from drivers.registry import load_bench_config

    config = load_bench_config(path)
    return [f"bench:{i}" for i, d in config.devices.items() if d.kind == kind] or ["bench:unset"]


@pytest.fixture
def subject(request) -> Iterator[Subject]:
    kind, impl = request.param
    if impl == "bench:unset":
        pytest.skip(f"set {BENCH_ENV} to run the conformance suite on a real bench")
    s = _make(kind, impl)
    try:
        yield s
    finally:
        if s.cleanup:
            s.cleanup()


def _params(kind: str, impls: list[str]) -> list:
    return [pytest.param((kind, i), id=f"{kind}-{i}") for i in impls + _bench_ids(kind)]


SLMS = _params("slm", ["sim", "slmsuite"])
CAMERAS = _params("camera", ["sim", "genicam", "genicam-tlsimu"])
STAGES = _params("stage", ["sim", "smc100"])
ALL = SLMS + CAMERAS + STAGES


# ---------------------------------------------------------------------------- every device


@pytest.mark.parametrize("subject", ALL, indirect=True)
def test_lifecycle_close_idempotent_reconnect_and_context(subject: Subject) -> None:
    dev = subject.device
    info = dev.info()
    assert info["device_id"] == dev.device_id and info["kind"] == dev.kind
    assert dev.status()["state"] == "open"
    dev.close()
    dev.close()  # idempotent
    assert not dev.is_open and dev.status()["state"] == "closed"
    with pytest.raises(DeviceError, match="not open"):
        _one_operation(dev)()
    dev.reconnect(timeout_s=10.0)
    assert dev.is_open
    _one_operation(dev)()
    dev.close()
    with dev as again:
        assert again is dev and dev.is_open
        _one_operation(dev)()
    assert not dev.is_open


@pytest.mark.parametrize("subject", ALL, indirect=True)
def test_timeouts_must_be_finite_and_are_honoured(subject: Subject) -> None:
    dev = subject.device
    for bad in (math.inf, math.nan, -1.0, None):
        with pytest.raises(ValueError, match="timeout_s"):
            dev.status(timeout_s=bad)
    if subject.provoke_timeout is None:
        pytest.skip("no safe way to provoke a timeout on a real device")
    call = subject.provoke_timeout()
    t0 = time.monotonic()
    with pytest.raises(DeviceTimeout) as info:
        call()
    assert time.monotonic() - t0 < 1.0  # the 0.05-0.1 s budget plus one poll, not forever
    err = info.value
    assert err.device_id == dev.device_id and err.operation not in ("?", "")
    assert err.elapsed_s is not None and str(dev.device_id) in str(err)


@pytest.mark.parametrize("subject", ALL, indirect=True)
def test_lock_held_elsewhere_gives_device_busy(subject: Subject) -> None:
    dev = subject.device
    got, release = threading.Event(), threading.Event()

    def hold() -> None:
        with dev._lock:
            got.set()
            release.wait(5)

    t = threading.Thread(target=hold)
    t.start()
    got.wait(5)
    try:
        with pytest.raises(DeviceBusy):
            dev.status(timeout_s=0.05)
    finally:
        release.set()
        t.join()
    dev.status()


def _one_operation(dev) -> Callable[[], object]:
    if dev.kind == "slm":
        return lambda: dev.show(np.zeros(dev.shape_hw, np.uint8), pattern_id="probe")
    if dev.kind == "camera":
        return lambda: dev.capture(timeout_s=5.0)
    return lambda: dev.get_position()


# ---------------------------------------------------------------------------- SLM


@pytest.mark.parametrize("subject", SLMS, indirect=True)
def test_slm_contract(subject: Subject) -> None:
    slm = subject.device
    assert isinstance(slm, SLM)
    h, w = slm.shape_hw
    assert h > 0 and w > 0 and slm.channels in (1, 3) and slm.bit_depth >= 1
    lut = slm.response_lut
    assert lut.shape == (1 << slm.bit_depth,) and np.all(np.diff(lut) >= 0)
    shape = (h, w) if slm.channels == 1 else (h, w, 3)
    slm.show(np.full(shape, 3, np.uint8), pattern_id=1)
    slm.show(np.random.default_rng(0).random(shape), pattern_id="float")
    assert slm.pattern_id == "float"
    for bad in (np.zeros((h + 1, w)), np.full(shape, 1.5), np.full(shape, 999)):
        with pytest.raises(ValueError, match="pattern"):
            slm.show(bad, pattern_id="bad")
    assert slm.pattern_id == "float"  # a rejected pattern changes nothing
    assert slm.settle_s >= 0


# ---------------------------------------------------------------------------- camera


@pytest.mark.parametrize("subject", CAMERAS, indirect=True)
def test_camera_contract(subject: Subject) -> None:
    cam = subject.device
    assert isinstance(cam, Camera)
    frames = [cam.capture(timeout_s=5.0) for _ in range(3)]
    for f in frames:
        assert isinstance(f, Frame) and f.device_id == cam.device_id
        assert f.shape_hw == tuple(cam.shape_hw)
        assert np.issubdtype(f.pixels.dtype, np.integer) and f.pixels.flags.owndata
        assert f.pixels.max() < (1 << cam.bit_depth)
    ids = [f.frame_id for f in frames]
    assert ids == sorted(ids) and len(set(ids)) == 3
    assert [f.timestamp_s for f in frames] == sorted(f.timestamp_s for f in frames)
    before = frames[0].pixels.copy()
    cam.capture()
    assert np.array_equal(frames[0].pixels, before)  # later acquisitions never touch it
    stats = cam.stats()
    assert {"delivered", "dropped", "incomplete", "timeouts"} <= set(stats)
    assert stats["delivered"] >= 4


@pytest.mark.parametrize("subject", CAMERAS, indirect=True)
def test_camera_exposure_roundtrip_or_reported_unsupported(subject: Subject) -> None:
    cam = subject.device
    lo, hi = cam.exposure_range_s
    if math.isnan(cam.exposure_s):
        with pytest.raises(UnsupportedFeature):
            cam.set_exposure(0.01)
        assert math.isnan(cam.capture().exposure_s)
        return
    target = min(max(2 * lo, 1e-3), hi)
    assert cam.set_exposure(target) == pytest.approx(target, rel=0.02)
    assert cam.capture().exposure_s == pytest.approx(target, rel=0.02)
    with pytest.raises(LimitError):
        cam.set_exposure(hi * 10)
    assert cam.exposure_s == pytest.approx(target, rel=0.02)


# ---------------------------------------------------------------------------- stage


@pytest.mark.parametrize("subject", STAGES, indirect=True)
def test_stage_contract(subject: Subject) -> None:
    stage = subject.device
    assert isinstance(stage, Stage)
    lo, hi = stage.limits_m
    assert lo < hi
    z0 = stage.position_m
    assert lo <= z0 <= hi
    step = 1e-5 if z0 + 1e-5 <= hi else -1e-5
    assert stage.move_relative(step) == pytest.approx(z0 + step, abs=1e-7)
    assert stage.move_absolute(z0) == pytest.approx(z0, abs=1e-7)
    assert not stage.is_moving()
    for target in (hi + 1e-3, lo - 1e-3, math.nan):
        with pytest.raises(LimitError, match="nothing sent"):
            stage.move_absolute(target)
    with pytest.raises(LimitError):
        stage.move_relative(hi - lo + 1e-3)
    assert stage.get_position() == pytest.approx(z0, abs=1e-7)
    stage.stop()
    assert stage.get_position() == pytest.approx(z0, abs=1e-7)


# ---------------------------------------------------------------------------- issue 16


@pytest.mark.parametrize("subject", CAMERAS, indirect=True)
def test_camera_trigger_contract(subject: Subject) -> None:
    """Software trigger: one exposure per capture, started after the call (no id gaps, no
    frames discarded); a camera without it refuses typed and keeps working in free run."""
    cam = subject.device
    modes = tuple(getattr(cam, "trigger_modes", ("free_run",)))
    assert "free_run" in modes and set(modes) <= {"free_run", "software", "hardware"}
    if not hasattr(cam, "set_trigger"):
        pytest.skip("this camera has no trigger control")
    if "software" not in modes:
        with pytest.raises(UnsupportedFeature):
            cam.set_trigger("software")
        assert cam.capture(timeout_s=5.0).pixels.size
        return
    previous = cam.set_trigger("software")
    try:
        before = cam.stats()
        frames = [cam.capture(timeout_s=5.0) for _ in range(4)]
        after = cam.stats()
        ids = [f.frame_id for f in frames]
        assert ids == list(range(ids[0], ids[0] + 4))
        assert after["dropped"] == before["dropped"]
        assert after.get("discarded", 0) == before.get("discarded", 0)
    finally:
        cam.set_trigger(previous)
    assert cam.capture(timeout_s=5.0).pixels.size


@pytest.mark.parametrize("subject", CAMERAS, indirect=True)
def test_camera_timestamps_are_monotonic_or_flagged(subject: Subject) -> None:
    cam = subject.device
    frames = [cam.capture(timeout_s=5.0) for _ in range(8)]
    for prev, f in zip(frames, frames[1:], strict=False):
        assert f.frame_id > prev.frame_id
        assert f.timestamp_s >= prev.timestamp_s or FLAG_TIMESTAMP_WRAPPED in f.flags
    stats = cam.stats()
    assert stats.get("timestamp_wraps", 0) == sum(FLAG_TIMESTAMP_WRAPPED in f.flags for f in frames)


def _two_camera_sets() -> list:
    sets = [pytest.param("viky", id="viky"), pytest.param("tlsimu", id="tlsimu")]
    path = os.environ.get(BENCH_ENV)
    if path:
        from drivers.registry import load_bench_config

        config = load_bench_config(path)
        cams = [i for i, d in config.devices.items() if d.kind == "camera"]
        if len(cams) >= 2:
            sets.append(pytest.param(f"bench:{cams[0]},{cams[1]}", id="bench"))
    return sets


@pytest.mark.parametrize("which", _two_camera_sets())
def test_two_cameras_on_one_producer_stream_together(which: str) -> None:
    from drivers.camera_genicam import GenicamCamera

    if which.startswith("bench:"):
        from drivers.registry import open_devices

        devs = open_devices(os.environ[BENCH_ENV], ids=which[6:].split(","))
        cams = list(devs.values())
    elif which == "viky":
        cams = [GenicamCamera(f"cam{i}", cti=_viky_cti(), serial=str(i)) for i in (0, 1)]
    else:
        from gentl_producers import TLSIMU_MONO, TLSIMU_MONO_2

        serials = (TLSIMU_MONO, TLSIMU_MONO_2)
        cams = [
            GenicamCamera(f"cam{i}", cti=_tlsimu_cti(), serial=s) for i, s in enumerate(serials)
        ]
    try:
        for cam in cams:
            cam.open()
        for _ in range(3):
            frames = [cam.capture(timeout_s=5.0) for cam in cams]
            assert [f.device_id for f in frames] == [c.device_id for c in cams]
    finally:
        for cam in cams:
            cam.close()
