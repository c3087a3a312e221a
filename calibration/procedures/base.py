"""What every calibration procedure shares: the devices, the design, and careful capturing.

Procedures talk to the bench only through the `drivers.protocols` SLM / Camera / Stage
interfaces, so the same code calibrates the simulated twin in CI and the real bench in the
lab. `BenchContext` also carries what earlier steps learned (camera offset, saturation level,
display response, geometry) so later steps can use it, and a progress callback so the CLI can
show what is happening without the procedures knowing about `rich`.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import torch

from calibration.fitting.response import DisplayResponse
from calibration.forward import Geometry, TileGeometry
from drivers.errors import DeviceTimeout, FrameIncomplete
from drivers.protocols import SLM, Camera, Stage
from onnlab.errors import CalibrationError

Progress = Callable[[str, float], None]

_THREADS_LOCK = threading.Lock()


@contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one intra-op thread for the duration (process-wide, restored after).

    Calibration fits are thousands of small tensor operations; torch's parallel regions then
    cost more in thread wake-ups than they save, catastrophically so on shared, busy cores
    (measured: 6 s single-threaded vs 50-100 s with two threads on two loaded cores).
    """
    with _THREADS_LOCK:
        before = torch.get_num_threads()
        torch.set_num_threads(1)
    try:
        yield
    finally:
        with _THREADS_LOCK:
            torch.set_num_threads(before)


F = TypeVar("F", bound=Callable[..., Any])


def with_single_thread(fn: F) -> F:
    """Decorator form of `single_thread` for procedures callable on their own."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with single_thread():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


@dataclass
class BenchContext:
    """Devices + design + what has been measured so far (filled in step by step).

    ``electrons_per_unit`` is the photometric scale (electrons per feature unit per second,
    the sensor's ``full_scale_e``) when the bench config knows it; None means relative
    radiometry (the PSF step then normalises the mean brightness α to 1).
    """

    slm: SLM
    camera: Camera
    stage: Stage | None
    tiles: TileGeometry
    design_psfs: torch.Tensor  # (K, C, k, k)
    electrons_per_unit: float | None = None
    timeout_s: float = 5.0
    max_retries: int = 3
    progress: Progress | None = None
    # learned so far -------------------------------------------------------------------
    offset_dn: float | None = None
    read_noise_dn: float | None = None
    gain_dn_per_e: float | None = None
    saturation_dn: float | None = None
    response: DisplayResponse | None = None
    geometry: Geometry | None = None
    composite_offset: tuple[float, float] | None = None  # t + sR·β from fiducials
    focus_position_m: float | None = None
    frames_captured: int = 0
    extras: dict[str, Any] = field(default_factory=dict)

    # conveniences -----------------------------------------------------------------------
    @property
    def image_hw(self) -> tuple[int, int]:
        return self.tiles.image_hw

    @property
    def channels(self) -> int:
        return int(self.design_psfs.shape[1])

    @property
    def offset(self) -> float:
        return 0.0 if self.offset_dn is None else self.offset_dn

    @property
    def saturation(self) -> float:
        """Measured saturation level, else the ADC maximum."""
        if self.saturation_dn is not None:
            return self.saturation_dn
        return float((1 << int(getattr(self.camera, "bit_depth", 16))) - 1)

    def report(self, message: str, fraction: float) -> None:
        if self.progress is not None:
            self.progress(message, float(fraction))

    def pattern(self, values: np.ndarray) -> np.ndarray:
        """(H, W) or (C, H, W) grey levels → what `SLM.show` expects for this panel."""
        arr = np.asarray(values)
        if self.channels == 1:
            return arr if arr.ndim == 2 else arr[0]
        if arr.ndim == 2:
            arr = np.repeat(arr[None], self.channels, axis=0)
        return np.moveaxis(arr, 0, -1)

    def uniform(self, level: int) -> np.ndarray:
        """A uniform pattern of one grey level."""
        return self.pattern(np.full(self.image_hw, int(level), dtype=np.uint8))

    def capture(self, pattern: np.ndarray, n: int = 1, pattern_id: str = "cal") -> np.ndarray:
        """Show ``pattern`` and return ``n`` frames as float64 (n, H, W).

        Frames whose ``pattern_id`` is not the one just shown (display latency) are
        discarded and re-taken, so a late panel can never poison a fit; a timed-out or
        incomplete frame is retried a few times (transport hiccups are normal on real links).
        """
        self.slm.show(pattern, pattern_id=pattern_id, timeout_s=self.timeout_s)
        out = []
        retries = 0
        while len(out) < n:
            try:
                frame = self.camera.capture(timeout_s=self.timeout_s)
            except (DeviceTimeout, FrameIncomplete):
                retries += 1
                if retries > self.max_retries + n:
                    raise
                continue
            self.frames_captured += 1
            if frame.pattern_id is not None and frame.pattern_id != pattern_id:
                retries += 1
                if retries > self.max_retries + n:
                    raise CalibrationError(
                        f"camera keeps seeing pattern {frame.pattern_id!r} instead of "
                        f"{pattern_id!r}; increase the SLM settle time"
                    )
                continue
            px = np.asarray(frame.pixels, dtype=np.float64)
            out.append(px.mean(axis=-1) if px.ndim == 3 else px)
        return np.stack(out)

    def capture_mean(self, pattern: np.ndarray, n: int = 1, pattern_id: str = "cal") -> np.ndarray:
        """Mean of ``n`` frames (H, W)."""
        return self.capture(pattern, n, pattern_id).mean(axis=0)

    def set_exposure(self, exposure_s: float) -> float:
        """Clip into the camera's range, apply, return what was applied."""
        lo, hi = self.camera.exposure_range_s
        return float(self.camera.set_exposure(float(np.clip(exposure_s, lo, hi))))

    def auto_expose(
        self, pattern: np.ndarray, target: float = 0.6, pattern_id: str = "autoexpose"
    ) -> float:
        """Set the exposure so the brightest pixels of ``pattern`` reach ``target`` of range.

        Saturated frames cut the exposure by 4; otherwise it is scaled proportionally.
        Raises CalibrationError if even the longest exposure shows no signal.
        """
        sat, off = self.saturation, self.offset
        span = sat - off
        lo, hi = self.camera.exposure_range_s
        exp = float(self.camera.exposure_s)
        for _ in range(12):
            frame = self.capture_mean(pattern, 1, pattern_id)
            peak = float(np.percentile(frame, 99.95)) - off
            if frame.max() >= sat - 0.5:
                new = max(exp / 4, lo)
            elif peak <= 0.02 * span:
                new = min(exp * 20, hi)
            else:
                new = float(np.clip(exp * target * span / peak, lo, hi))
            if abs(new / exp - 1) < 0.05 or (new == exp and exp in (lo, hi)):
                break
            exp = self.set_exposure(new)
        frame = self.capture_mean(pattern, 1, pattern_id)
        if frame.max() >= sat - 0.5 and exp <= lo * 1.0001:
            raise CalibrationError(
                "saturated even at the shortest exposure; dim the display or add an ND filter"
            )
        if float(np.percentile(frame, 99.95)) - off < 0.02 * span:
            raise CalibrationError(
                "no signal even at the longest exposure; check that the display is on, the "
                "optic is in the beam and the camera sees the tiles"
            )
        return exp


@dataclass(frozen=True)
class StepResult:
    """Base of all procedure results: a residual (the trust number) and bookkeeping."""

    residual: float
    n_frames: int
    seconds: float


def lit_mask(white: np.ndarray, offset: float, fraction: float = 0.2) -> np.ndarray:
    """Pixels receiving at least ``fraction`` of the brightest signal (inside the tiles)."""
    sig = white - offset
    return sig > fraction * float(np.percentile(sig, 99.9))
