"""The real GenICam driver streaming from the genicam package's GenTL simulator (viky.cti)."""

from __future__ import annotations

import signal
from pathlib import Path

import numpy as np
import pytest

from drivers.camera_genicam import GenicamCamera, find_producers
from drivers.errors import DeviceNotFound, LimitError

genicam = pytest.importorskip("genicam")
VIKY = str(Path(genicam.__file__).parent / "viky.cti")


def test_find_producers_from_files_folders_and_env(monkeypatch, tmp_path) -> None:
    assert find_producers(VIKY) == [VIKY]
    assert find_producers(str(Path(VIKY).parent)) == [VIKY]
    monkeypatch.setenv("GENICAM_GENTL64_PATH", f"{tmp_path}:{Path(VIKY).parent}")
    assert find_producers(None) == [VIKY]
    monkeypatch.setenv("GENICAM_GENTL64_PATH", str(tmp_path))
    with pytest.raises(DeviceNotFound, match="GENICAM_GENTL64_PATH"):
        GenicamCamera("cam0").open()


def test_harvesters_streams_real_frames_from_viky() -> None:
    previous = signal.getsignal(signal.SIGINT)
    cam = GenicamCamera(
        "cam0", cti=VIKY, serial="2", pixel_format="Mono8", roi=(0, 0, 120, 160), frame_rate_hz=200
    )
    with cam:
        assert signal.getsignal(signal.SIGINT) is previous  # harvesters' handler was removed
        info = cam.info()
        assert (info["model"], info["serial"], info["resolution_hw"]) == ("Viky", "2", [120, 160])
        frames = [cam.capture(timeout_s=5.0) for _ in range(12)]
        stats = cam.stats()
    assert not cam.is_open
    stack = np.stack([f.pixels for f in frames])
    assert stack.shape == (12, 120, 160) and stack.dtype == np.uint8
    assert stack.std() > 0  # an actual rendered image, not zeros
    assert len({f.pixels.tobytes() for f in frames}) > 1  # the scene moves between frames
    ids = [f.frame_id for f in frames]
    assert all(b > a for a, b in zip(ids, ids[1:], strict=False))
    assert stats["delivered"] == 12 and stats["timeouts"] == 0
    assert frames[0].meta["pixel_format"] == "Mono8"
    assert frames[0].pixels.flags.owndata  # still valid after the camera was closed


def test_rgb_pixel_format_gives_hw3_frames_and_bad_settings_fail_typed() -> None:
    with GenicamCamera(
        "cam0", cti=VIKY, serial="0", pixel_format="RGBa8", frame_rate_hz=200
    ) as cam:
        frame = cam.capture(timeout_s=5.0)
        assert frame.pixels.shape == (*cam.shape_hw, 3)
    with pytest.raises(LimitError, match="roi width"):
        GenicamCamera("cam0", cti=VIKY, serial="0", roi=(0, 0, 100, 5000)).open()
    with pytest.raises(DeviceNotFound, match="3 devices"):
        GenicamCamera("cam0", cti=VIKY, model="Viky").open()


def test_frames_carry_the_paired_slm_pattern_id_only_when_exposed_after_the_call() -> None:
    class Panel:
        pattern_id = "digit-7"

    with GenicamCamera(
        "cam0", cti=VIKY, serial="1", frame_rate_hz=200, frame_policy="after_call"
    ) as cam:
        cam.pattern_source = Panel()
        assert cam.capture(timeout_s=5.0).pattern_id == "digit-7"
        cam.set_frame_policy("full_rate")  # the frame may predate the pattern: not claimed
        frame = cam.capture(timeout_s=5.0)
        assert frame.pattern_id is None and frame.meta["pattern_id_at_delivery"] == "digit-7"
