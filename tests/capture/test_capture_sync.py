"""Issue 16: a capture keeps only frames exposed after their pattern was shown -- with the
camera's software trigger when it has one (TLSimu.cti), else by skipping the frame in flight
(viky.cti) -- and gives the camera back as it was configured."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from drivers.camera_genicam import GenicamCamera
from onnlab.capture.runner import RetryPolicy, run_capture
from onnlab.capture.schema import CaptureSpec
from onnlab.capture.store import CaptureStore

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "drivers"))
from gentl_producers import TLSIMU_MONO, tlsimu_cti, viky_cti  # noqa: E402


class _Panel:
    """An SLM stand-in: remembers the id of the last pattern shown."""

    device_id = "slm0"
    pattern_id = None

    def show(self, pattern, pattern_id=None, timeout_s: float = 5.0) -> None:
        self.pattern_id = pattern_id

    def reconnect(self, timeout_s: float = 5.0) -> None:
        """Nothing to reconnect."""


def _run(tmp_path: Path, camera: GenicamCamera) -> tuple[object, list]:
    panel = _Panel()
    camera.pattern_source = panel
    indices = np.arange(6)
    spec = CaptureSpec(indices, "frames", camera.shape_hw, "uint8")
    seen = []

    def row_for(frame):
        seen.append(frame)
        return frame.pixels

    with CaptureStore.open(tmp_path / "run.h5", spec, chunk_size=3) as store:
        summary = run_capture(
            store,
            panel,
            camera,
            lambda i: np.zeros((2, 2)),
            lambda i: int(i),
            row_for,
            retry=RetryPolicy(backoff_s=0.0),
            progress=False,
        )
    return summary, seen


def test_capture_uses_the_software_trigger_and_restores_free_run(tmp_path: Path) -> None:
    with GenicamCamera("cam0", cti=tlsimu_cti(), serial=TLSIMU_MONO) as cam:
        assert cam.trigger == "free_run"
        summary, frames = _run(tmp_path, cam)
        assert summary.camera_sync == "software trigger" and summary.complete
        assert [f.pattern_id for f in frames] == list(range(6))  # exposed after each show
        ids = [f.frame_id for f in frames]
        assert ids == list(range(ids[0], ids[0] + 6))  # one trigger, one frame
        assert cam.trigger == "free_run"  # given back as configured


def test_capture_without_a_trigger_skips_the_frame_in_flight(tmp_path: Path) -> None:
    with GenicamCamera(
        "cam0", cti=viky_cti(), serial="2", pixel_format="Mono8", roi=(0, 0, 100, 128),
        frame_rate_hz=200,
    ) as cam:  # fmt: skip
        assert cam.frame_policy == "full_rate"
        summary, frames = _run(tmp_path, cam)
        assert summary.camera_sync == "after_call frame policy"
        assert [f.pattern_id for f in frames] == list(range(6))
        assert cam.frame_policy == "full_rate"


def test_simulated_camera_is_triggered_too(tmp_path: Path) -> None:
    from drivers.sim import SimulatedBench, design_psfs

    bench = SimulatedBench(design_psfs("mnist", 4, 5, seed=0), (16, 16), seed=1)
    spec = CaptureSpec(np.arange(3), "frames", bench.camera.shape_hw, "uint16")
    with CaptureStore.open(tmp_path / "sim.h5", spec) as store:
        summary = run_capture(
            store, bench.slm, bench.camera, lambda i: np.zeros((16, 16)), int,
            lambda f: f.pixels, progress=False,
        )  # fmt: skip
    assert summary.camera_sync == "software trigger" and bench.camera.trigger == "free_run"


@pytest.mark.parametrize("policy", ["full_rate", "after_call"])
def test_a_hardware_triggered_camera_is_left_alone(policy) -> None:
    from drivers.sync import exposure_after_show

    class Wired:
        trigger = "hardware"
        trigger_modes = ("free_run", "hardware")
        frame_policy = policy

        def set_trigger(self, mode, timeout_s=5.0):
            raise AssertionError("must not be touched")

    with exposure_after_show(Wired()) as how:
        assert how == "hardware trigger"
