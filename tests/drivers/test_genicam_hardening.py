"""Issue 16, GenICam camera: each fault reproduced against a real GenTL producer where one can
show it (viky.cti, TLSimu.cti), otherwise on the driver's own accounting with fake buffers.

Where a producer cannot show a fault, the test says so: neither producer delivers a format
other than the one its node map reports, nor packed pixels, nor wrapping timestamps. Those
cases lie to the REAL driver through one patched function (the node map's PixelFormat, the
buffer's timestamp) and keep the real frames.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np
import pytest
from gentl_producers import TLSIMU_MONO, TLSIMU_MONO_2, tlsimu_cti, viky_cti

from drivers import camera_genicam, genicam_harvester
from drivers.camera_genicam import GenicamCamera
from drivers.errors import DeviceError, DeviceTimeout, UnsupportedFeature, UnsupportedPixelFormat
from drivers.frame_accounting import FrameAccounting
from drivers.pixel_formats import pixel_format_bits
from drivers.protocols import FLAG_SATURATED, FLAG_TIMESTAMP_WRAPPED

# ---------------------------------------------------------------- two cameras, one producer


def test_two_cameras_on_one_producer_are_open_at_once() -> None:
    """Each camera built its own Harvester; the second one saw 'found: none'."""
    a = GenicamCamera("camA", cti=viky_cti(), serial="0", frame_rate_hz=200)
    b = GenicamCamera("camB", cti=viky_cti(), serial="1", frame_rate_hz=200)
    with a, b:
        assert genicam_harvester.users([viky_cti()]) == 2
        fa, fb = a.capture(timeout_s=5.0), b.capture(timeout_s=5.0)
        assert fa.device_id == "camA" and fb.device_id == "camB"
        a.close()
        assert b.capture(timeout_s=5.0).shape_hw == tuple(b.shape_hw)  # still streaming
    assert genicam_harvester.users([viky_cti()]) == 0  # the last one unloaded the producer


def test_overlapping_producer_sets_are_refused_with_a_fix() -> None:
    with GenicamCamera("camA", cti=viky_cti(), serial="0"):
        other = GenicamCamera("camB", cti=[viky_cti(), tlsimu_cti()], serial=TLSIMU_MONO)
        with pytest.raises(DeviceError, match="same `cti` list"):
            other.open()


# ---------------------------------------------------------------- triggers (TLSimu.cti)


def test_software_trigger_one_exposure_per_capture() -> None:
    with GenicamCamera("cam0", cti=tlsimu_cti(), serial=TLSIMU_MONO, trigger="software") as cam:
        assert cam.trigger_modes == ("free_run", "software")
        frames = [cam.capture(timeout_s=5.0) for _ in range(4)]
        ids = [f.frame_id for f in frames]
        assert ids == list(range(ids[0], ids[0] + 4))  # one trigger, one frame: no gaps
        assert cam._ia.try_fetch(timeout=0.3) is None  # armed: nothing comes untriggered
        stats = cam.stats()
        assert stats["dropped"] == 0 and stats["discarded"] == 1  # the open's probe frame
        assert cam._node("TriggerMode").value == "On"
        assert cam.set_trigger("free_run") == "software"
        assert cam._ia.try_fetch(timeout=2.0) is not None  # free run: frames flow by themselves


def test_trigger_the_camera_lacks_is_refused_typed() -> None:
    with pytest.raises(UnsupportedFeature, match=r"trigger='software'.*supports \['free_run'\]"):
        GenicamCamera("cam0", cti=viky_cti(), serial="0", trigger="software").open()
    with GenicamCamera("cam0", cti=viky_cti(), serial="0") as cam:
        with pytest.raises(UnsupportedFeature, match="TriggerSoftware"):
            cam.set_trigger("software")
        assert cam.trigger == "free_run" and cam.capture(timeout_s=5.0).pixels.size


def test_software_trigger_frames_carry_the_pattern_id() -> None:
    class Panel:
        pattern_id = 17

    with GenicamCamera("cam0", cti=tlsimu_cti(), serial=TLSIMU_MONO, trigger="software") as cam:
        cam.pattern_source = Panel()
        assert cam.capture(timeout_s=5.0).pattern_id == 17  # exposure started after the call


# ---------------------------------------------------------------- latency vs rate


def test_frame_policy_is_explicit_and_full_rate_is_the_default() -> None:
    with GenicamCamera("cam0", cti=viky_cti(), serial="2", frame_rate_hz=200) as cam:
        assert cam.frame_policy == "full_rate" and cam.info()["frame_policy"] == "full_rate"
        for _ in range(5):
            cam.capture(timeout_s=5.0)
        assert cam.stats()["discarded"] <= 2  # no in-flight frame thrown away per call
        cam.set_frame_policy("after_call")
        before = cam.stats()["discarded"]
        for _ in range(5):
            cam.capture(timeout_s=5.0)
        assert cam.stats()["discarded"] - before >= 5  # the frame in flight, every call


# ---------------------------------------------------------------- bit depth from the buffer


def test_bit_depth_comes_from_the_delivered_buffer_not_the_node_map(monkeypatch) -> None:
    """viky delivers 8-bit RGBa8; its node map is made to claim Mono12 (a producer that accepts
    PixelFormat=Mono12 but delivers 8 bits). It used to be reported as 12-bit, so 255 never
    counted as saturated."""
    real_node = GenicamCamera._node

    def lying_node(self, name):
        if name == "PixelFormat":
            return SimpleNamespace(value="Mono12", min=None, max=None)
        return real_node(self, name)

    monkeypatch.setattr(GenicamCamera, "_node", lying_node)
    with GenicamCamera("cam0", cti=viky_cti(), serial="0", frame_rate_hz=200) as cam:
        info = cam.info()
        assert (info["pixel_format_node"], info["pixel_format"]) == ("Mono12", "RGBa8")
        assert cam.bit_depth == 8 and info["bit_depth_source"] == "delivered buffer"
        frames = [cam.capture(timeout_s=5.0) for _ in range(6)]
    for f in frames:
        assert f.meta["bit_depth"] == 8 and f.pixels.dtype == np.uint8
        assert (FLAG_SATURATED in f.flags) == (int(f.pixels.max()) == 255)
    assert any(FLAG_SATURATED in f.flags for f in frames)  # viky draws full-white pixels


@pytest.mark.parametrize(
    ("fmt", "bits"),
    [
        ("Mono8", 8),
        ("Mono10", 10),
        ("Mono10p", 10),
        ("Mono10Packed", 10),
        ("Mono12", 12),
        ("Mono12p", 12),
        ("Mono12Packed", 12),
        ("Mono14", 14),
        ("Mono16", 16),
        ("BayerRG12p", 12),
        ("BayerGB10Packed", 10),
        ("RGB8", 8),
        ("RGBa8", 8),
        ("BGR12", 12),
        ("RGB10p32", 10),
    ],
)
def test_packed_and_unpacked_formats_have_their_real_depth(fmt: str, bits: int) -> None:
    assert pixel_format_bits(fmt) == bits  # packed formats used to map to 8


@pytest.mark.parametrize("fmt", ["Coord3D_ABC32f", "Mono8s", "YCbCr422_8", "Mono12Pakced", ""])
def test_unknown_formats_raise_instead_of_guessing_8_bits(fmt: str) -> None:
    with pytest.raises(UnsupportedPixelFormat, match="not supported"):
        pixel_format_bits(fmt)


def _fake_buffer(fmt: str, data: np.ndarray, frame_id=0, timestamp_ns=1000):
    comp = SimpleNamespace(width=data.shape[1], height=data.shape[0], data=data.ravel(),
                           data_format=fmt)  # fmt: skip
    return SimpleNamespace(
        payload=SimpleNamespace(components=[comp]),
        module=SimpleNamespace(frame_id=frame_id),
        timestamp_ns=timestamp_ns,
    )


def test_packed_buffer_saturates_at_its_own_full_scale_and_unknown_raises() -> None:
    """harvesters unpacks Mono12p to uint16; full scale is 4095, not 255 and not 65535."""
    cam = GenicamCamera("cam0")
    below = np.full((2, 3), 4094, np.uint16)
    frame = cam._frame_from(_fake_buffer("Mono12p", below), 0.0, None, None)
    assert frame.meta["bit_depth"] == 12 and cam.bit_depth == 12
    assert FLAG_SATURATED not in frame.flags
    below[0, 0] = 4095
    assert FLAG_SATURATED in cam._frame_from(_fake_buffer("Mono12p", below, 1), 0, None, None).flags
    with pytest.raises(UnsupportedPixelFormat):
        cam._frame_from(_fake_buffer("Coord3D_ABC32f", below, 2), 0.0, None, None)


# ---------------------------------------------------------------- frame accounting


def test_drops_are_counted_from_real_ids_only() -> None:
    acc = FrameAccounting()
    for fid in (5, 6, 9, 10):  # 7 and 8 lost
        acc.note(fid, None)
    assert acc.counts["dropped"] == 2
    acc = FrameAccounting()
    ids = [acc.note(None, None)[0] for _ in range(3)]  # a producer without frame ids
    assert ids == [0, 1, 2] and acc.counts["dropped"] == 0
    assert acc.counts["frames_without_id"] == 3
    assert acc.note(None, None)[3]["frame_id_source"] == "host"
    acc = FrameAccounting()
    for fid in (65534, 65535, 1, 2):  # a 16-bit block id wrapped: not a drop of 65533
        acc.note(fid, None)
    assert acc.counts["dropped"] == 0 and acc.counts["id_resets"] == 1


def test_sub_second_counter_is_flagged_or_unwrapped() -> None:
    """One producer delivers a sub-second counter that resets every second."""
    raw = [0.2, 0.6, 0.95, 0.3, 0.7, 0.1]
    acc = FrameAccounting()
    out = [acc.note(i, t) for i, t in enumerate(raw)]
    flagged = [FLAG_TIMESTAMP_WRAPPED in flags for _, _, flags, _ in out]
    assert flagged == [False, False, False, True, False, True]
    assert acc.counts["timestamp_wraps"] == 2
    acc = FrameAccounting(timestamp_wrap_s=1.0)
    stamps = [acc.note(i, t)[1] for i, t in enumerate(raw)]
    assert stamps == pytest.approx([0.2, 0.6, 0.95, 1.3, 1.7, 2.1])


def test_wrapping_device_clock_is_flagged_on_real_frames(monkeypatch) -> None:
    """TLSimu's clock does not wrap; give the real frames a counter that resets every 4."""
    monkeypatch.setattr(
        camera_genicam, "_buffer_timestamp", lambda buf: (int(buf.module.frame_id) % 4) * 0.005
    )
    with GenicamCamera("cam0", cti=tlsimu_cti(), serial=TLSIMU_MONO, trigger="software") as cam:
        frames = [cam.capture(timeout_s=5.0) for _ in range(9)]
        assert cam.stats()["timestamp_wraps"] >= 2
    for prev, f in zip(frames, frames[1:], strict=False):
        assert f.timestamp_s >= prev.timestamp_s or FLAG_TIMESTAMP_WRAPPED in f.flags
    assert sum(FLAG_TIMESTAMP_WRAPPED in f.flags for f in frames) >= 2


# ---------------------------------------------------------------- deadlines


def _hang(*args, **kwargs):
    time.sleep(3.0)


@pytest.mark.parametrize(
    "target",
    [
        "harvesters.core.Harvester.update",
        "harvesters.core.Harvester.create",
        "harvesters.core.ImageAcquirer.start",
    ],  # fmt: skip
    ids=["update", "create", "start"],
)
def test_open_honours_its_timeout_in_every_blocking_call(monkeypatch, target) -> None:
    monkeypatch.setattr(target, _hang)
    cam = GenicamCamera("cam0", cti=tlsimu_cti(), serial=TLSIMU_MONO_2)
    t0 = time.monotonic()
    with pytest.raises(DeviceTimeout, match="did not return within"):
        cam.open(timeout_s=0.3)
    assert time.monotonic() - t0 < 1.5
    assert not cam.is_open


def test_close_of_a_hung_camera_is_bounded(monkeypatch) -> None:
    cam = GenicamCamera("cam0", cti=tlsimu_cti(), serial=TLSIMU_MONO_2)
    cam.open()
    monkeypatch.setattr(cam._ia, "stop", _hang)
    t0 = time.monotonic()
    cam.close(timeout_s=0.3)  # used to block (holding the device lock) until stop returned
    assert time.monotonic() - t0 < 1.0 and not cam.is_open


def test_close_of_a_hung_slm_is_bounded() -> None:
    from drivers.slm_slmsuite import SlmsuiteSLM

    slm = SlmsuiteSLM(
        "slm0", "slmsuite.hardware.slms.simulated.SimulatedSLM", {"resolution": (8, 4)}
    )
    slm.open()
    slm._slm.close = _hang
    t0 = time.monotonic()
    slm.close(timeout_s=0.3)
    assert time.monotonic() - t0 < 1.0 and not slm.is_open


def test_onnlab_devices_reports_the_achieved_frame_rate(tmp_path) -> None:
    from onnlab.commands.devices import probe_devices

    path = tmp_path / "bench.yaml"
    path.write_text(
        "devices:\n"
        f"  cam0: {{kind: camera, driver: genicam, cti: '{viky_cti()}', serial: '2',"
        " frame_rate_hz: 200}\n"
        f"  cam1: {{kind: camera, driver: genicam, cti: '{viky_cti()}', serial: '1',"
        " frame_rate_hz: 200, frame_policy: after_call}\n"
    )
    rows = {r["id"]: r for r in probe_devices(path)["devices"]}
    assert all(r["ok"] for r in rows.values()), rows
    assert rows["cam0"]["frame_rate_hz"] > 0 and rows["cam1"]["frame_rate_hz"] > 0
    assert rows["cam1"]["info"]["frame_policy"] == "after_call"
    assert rows["cam0"]["status"]["frames"]["delivered"] >= 2
