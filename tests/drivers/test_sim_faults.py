"""Every injected fault surfaces as the right typed error, in time, and reconnect() heals it."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from drivers.errors import (
    DeviceDisconnected,
    DeviceError,
    DeviceTimeout,
    FrameIncomplete,
    LimitError,
    MotionError,
)
from drivers.sim import FaultConfig, SimulatedBench, design_psfs

PSFS = design_psfs("mnist", 4, 5, seed=0)
IMG = np.full((16, 16), 128, np.uint8)


def _bench(**faults) -> SimulatedBench:
    return SimulatedBench(PSFS, (16, 16), seed=1, faults=FaultConfig(**faults))


@pytest.mark.parametrize(
    ("fault", "call", "error"),
    [
        ("slm.timeout", lambda b: b.slm.show(IMG, timeout_s=0.05), DeviceTimeout),
        ("camera.timeout", lambda b: b.camera.capture(timeout_s=0.05), DeviceTimeout),
        ("stage.timeout", lambda b: b.stage.move_relative(1e-4, timeout_s=0.05), DeviceTimeout),
        ("camera.incomplete", lambda b: b.camera.capture(timeout_s=0.05), FrameIncomplete),
        ("stage.stall", lambda b: b.stage.move_relative(1e-3, timeout_s=0.05), MotionError),
        ("stage.limit", lambda b: b.stage.move_relative(1e-3, timeout_s=0.05), LimitError),
    ],
)
def test_fault_raises_typed_error_within_timeout(fault, call, error) -> None:
    bench = _bench(schedule={fault: [0]}, timeout_delay_s=0.03)
    t0 = time.monotonic()
    with pytest.raises(error) as info:
        call(bench)
    assert time.monotonic() - t0 < 0.05 + 0.5
    exc = info.value
    assert exc.device_id in ("slm0", "cam0", "stage0") and exc.operation != "?"
    assert exc.elapsed_s is not None and exc.elapsed_s <= 0.05 + 0.5
    call(bench)  # fired once (schedule [0]): the next call works


@pytest.mark.parametrize("kind", ["slm", "camera", "stage"])
def test_disconnect_mid_stream_until_reconnect(kind: str) -> None:
    bench = _bench(schedule={f"{kind}.disconnect": [2]})
    dev = {"slm": bench.slm, "camera": bench.camera, "stage": bench.stage}[kind]
    ops = {
        "slm": lambda: bench.slm.show(IMG),
        "camera": lambda: bench.camera.capture(),
        "stage": lambda: bench.stage.move_relative(1e-5),
    }[kind]
    ops()
    ops()
    with pytest.raises(DeviceDisconnected):
        ops()
    assert not dev.is_open and dev.status()["state"] == "disconnected"
    for _ in range(2):  # stays dead, without touching the (simulated) hardware
        with pytest.raises(DeviceDisconnected, match="reconnect"):
            ops()
    dev.reconnect(timeout_s=1.0)
    assert dev.is_open
    ops()


def test_stall_and_limit_leave_stage_between_start_and_target() -> None:
    bench = _bench(schedule={"stage.stall": [0], "stage.limit": [1]})
    start = bench.stage.position_m
    with pytest.raises(MotionError):
        bench.stage.move_absolute(start + 1e-3)
    mid = bench.stage.position_m
    assert start < mid < start + 1e-3
    with pytest.raises(LimitError, match="limit switch"):
        bench.stage.move_absolute(start)
    assert start < bench.stage.position_m < mid


def test_software_limits_checked_before_anything_moves() -> None:
    bench = _bench()
    lo, hi = bench.stage.limits_m
    z = bench.stage.position_m
    for bad in (hi + 1e-6, lo - 1e-3, float("nan")):
        with pytest.raises(LimitError, match="nothing sent"):
            bench.stage.move_absolute(bad)
    with pytest.raises(LimitError):
        bench.stage.move_relative(hi)
    assert bench.stage.position_m == z
    assert bench.stage.home() == lo


def test_dropped_frames_show_as_id_gaps_and_are_counted() -> None:
    bench = _bench(schedule={"camera.drop": [1, 2]})
    ids = [bench.camera.capture().frame_id for _ in range(4)]
    assert ids == [0, 3, 4, 5]  # transmitted frames 1 and 2 were lost
    assert bench.camera.stats()["dropped"] == 2
    assert bench.camera.stats()["delivered"] == 4


def test_incomplete_frame_can_be_accepted_with_flag() -> None:
    bench = _bench(schedule={"camera.incomplete": [0, 1]})
    with pytest.raises(FrameIncomplete):
        bench.camera.capture()
    frame = bench.camera.capture(allow_incomplete=True)
    assert frame.incomplete and not frame.pixels[-1].any()
    assert bench.camera.stats()["incomplete"] == 2


def test_display_latency_is_reported_honestly() -> None:
    bench = _bench(schedule={"slm.latency": [1]})
    a, b = np.full((16, 16), 50, np.uint8), np.full((16, 16), 250, np.uint8)
    bench.slm.show(a, pattern_id="a")
    fa = bench.camera.capture()
    bench.slm.show(b, pattern_id="b")  # the panel is one frame late
    late = bench.camera.capture()
    fresh = bench.camera.capture()
    assert (fa.pattern_id, late.pattern_id, fresh.pattern_id) == ("a", "a", "b")
    total = [float(f.pixels.astype(float).sum()) for f in (fa, late)]
    assert total[1] == pytest.approx(total[0], rel=0.05)  # still the dim pattern
    assert fresh.pixels.astype(float).sum() > 2 * late.pixels.astype(float).sum()
    assert bench.slm.pattern_id == "b"


def test_probabilistic_faults_are_seeded() -> None:
    def run() -> list[str]:
        bench = _bench(p={"camera.timeout": 0.3, "camera.drop": 0.2})
        out = []
        for _ in range(30):
            try:
                out.append(str(bench.camera.capture().frame_id))
            except DeviceTimeout:
                out.append("T")
        return out

    first = run()
    assert first == run()
    assert "T" in first and any(s.isdigit() for s in first)


def test_fault_config_rejects_unknown_fault_and_bad_probability() -> None:
    with pytest.raises(ValueError, match="unknown fault"):
        FaultConfig(p={"camera.explode": 0.1})
    with pytest.raises(ValueError, match="probability"):
        FaultConfig(p={"camera.drop": 1.5})


def test_errors_chain_and_carry_context_through_base() -> None:
    bench = _bench()

    def boom(timeout_s: float) -> None:
        raise OSError("usb gone")

    with pytest.raises(DeviceError) as info:
        bench.camera._call("capture", boom, timeout_s=0.1)
    assert isinstance(info.value.__cause__, OSError)
    assert "[cam0] capture failed" in str(info.value)
    with pytest.raises(ValueError, match="timeout_s"):
        bench.camera.capture(timeout_s=float("inf"))
    bench.camera.close()
    bench.camera.close()  # idempotent
    with pytest.raises(DeviceError, match="not open"):
        bench.camera.capture()
    with bench.camera as cam:
        assert cam.capture().pixels.shape == cam.shape_hw
    assert not bench.camera.is_open


def test_lock_contention_becomes_device_busy() -> None:
    import threading

    bench = _bench()
    entered, release = threading.Event(), threading.Event()

    def slow(timeout_s: float) -> None:
        entered.set()
        release.wait(2.0)

    t = threading.Thread(target=lambda: bench.camera._call("slow", slow, timeout_s=3.0))
    t.start()
    entered.wait(2.0)
    try:
        with pytest.raises(DeviceTimeout, match="lock"):
            bench.camera.capture(timeout_s=0.05)
    finally:
        release.set()
        t.join()
    assert torch.is_tensor(bench.truth.gain)
