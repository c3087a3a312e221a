"""The capture loop: show each requested image on the SLM, grab a frame, commit it to the store.

Why it looks like this: a capture is the step of the lab workflow that runs longest unattended,
so it must (1) pick the same subset every time for the same seed, so a rerun resumes instead of
starting a different run; (2) set an exposure that neither saturates nor starves the sensor
before spending hours on frames; (3) ride out the transient faults every real bench has
(timeouts, partial frames, a USB camera dropping off) with a bound, so a dead bench fails
instead of spinning; (4) never store a frame exposed before its pattern was shown: the camera
uses its software trigger when it has one (`drivers.sync.exposure_after_show`), else skips
the frame in flight; and (5) never lose a committed frame. It installs no signal handler:
Ctrl-C raises KeyboardInterrupt, the store's context manager commits the buffered rows, the
devices' context managers close them, and the same command resumes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from drivers.errors import DeviceDisconnected, DeviceError, DeviceTimeout, FrameIncomplete
from drivers.sync import exposure_after_show
from onnlab.capture.store import CaptureStore
from onnlab.errors import CaptureError

#: Faults worth retrying: they say nothing about the frame content or the bench's geometry.
TRANSIENT = (DeviceTimeout, FrameIncomplete, DeviceDisconnected)


def select_indices(ids: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A seeded, sorted subset of `ids` of size round(fraction * len(ids)) (at least 1).

    Sorted so the capture walks the dataset in order (display caching, readable logs), and
    seeded so the same arguments always ask for the same list - the key to resuming.
    """
    ids = np.asarray(ids, dtype=np.int64)
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if ids.size == 0:
        raise ValueError("ids must not be empty")
    n = max(1, int(round(fraction * ids.size)))
    pick = np.random.default_rng(seed).choice(ids.size, size=n, replace=False)
    return np.sort(ids[pick])


@dataclass
class RetryPolicy:
    """How hard to try before giving up: per frame, per reconnect, and over the whole run."""

    max_attempts: int = 5
    max_total_retries: int = 200
    reconnect_attempts: int = 3
    backoff_s: float = 0.05
    timeout_s: float = 5.0


@dataclass
class ExposurePolicy:
    """Auto-exposure target: the brightest probe frame should peak at `target_peak` of full
    scale; anything from `min_peak` to `max_peak` is accepted as is. `max_peak` < 1 keeps
    headroom: the probes are a few images, and a brighter unprobed image plus shot noise
    must not clip (a probe peaking at 99 % of full scale is "unsaturated" but useless)."""

    target_peak: float = 0.7
    min_peak: float = 0.25
    max_peak: float = 0.85
    max_saturated_fraction: float = 0.0
    max_iterations: int = 8
    n_probe: int = 8


@dataclass
class ExposureReport:
    exposure_s: float
    peak_fraction: float
    saturated_fraction: float
    iterations: int
    adjusted: bool
    ok: bool


@dataclass
class CaptureSummary:
    """What one invocation did; `skipped` are indices already in the store when it started."""

    path: str
    requested: int
    captured: int = 0
    skipped: int = 0
    retried: int = 0
    failed: int = 0
    reconnects: int = 0
    stale_frames: int = 0
    saturated_frames: int = 0
    seconds: float = 0.0
    exposure: dict[str, Any] = field(default_factory=dict)
    camera_sync: str = ""  # how frames were kept after the display: e.g. "software trigger"
    complete: bool = False

    @property
    def frames_per_s(self) -> float:
        return self.captured / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "frames_per_s": self.frames_per_s}


def _peak_stats(frames: list[Any], max_dn: float) -> tuple[float, float]:
    peak = max(float(np.max(f.pixels)) for f in frames)
    saturated = float(np.mean([np.mean(f.pixels >= max_dn) for f in frames]))
    return peak / max_dn, saturated


def auto_exposure(
    camera: Any,
    grab: Callable[[np.ndarray, Any], Any],
    patterns: list[np.ndarray],
    policy: ExposurePolicy | None = None,
    *,
    start_s: float | None = None,
    timeout_s: float = 5.0,
) -> ExposureReport:
    """Show probe patterns, scale the exposure until the peak is unsaturated and bright enough.

    Exposure is a ratio knob (signal is linear in it below saturation), so one multiplicative
    step per iteration converges fast; halving on saturation handles the clipped case, whose
    true peak is unknown. Stays within `camera.exposure_range_s`.
    """
    policy = policy or ExposurePolicy()
    lo, hi = camera.exposure_range_s
    max_dn = float(2**camera.bit_depth - 1)
    exposure = float(np.clip(start_s if start_s else camera.exposure_s, lo, hi))
    exposure = camera.set_exposure(exposure, timeout_s=timeout_s)
    first = exposure
    peak = saturated = 0.0
    for iteration in range(1, policy.max_iterations + 1):
        frames = []
        for k, pattern in enumerate(patterns[: policy.n_probe]):
            frames.append(grab(pattern, f"exposure-probe-{k}"))
        peak, saturated = _peak_stats(frames, max_dn)
        too_bright = saturated > policy.max_saturated_fraction
        if not too_bright and policy.min_peak <= peak <= policy.max_peak:
            return ExposureReport(exposure, peak, saturated, iteration, exposure != first, True)
        wanted = exposure * 0.5 if too_bright else exposure * policy.target_peak / max(peak, 1e-3)
        wanted = float(np.clip(wanted, lo, hi))
        if wanted == exposure:  # pinned at a bound: report, let the caller decide
            break
        exposure = camera.set_exposure(wanted, timeout_s=timeout_s)
    # pinned at a bound: unsaturated and bright enough still passes (headroom is a wish)
    ok = saturated <= policy.max_saturated_fraction and peak >= policy.min_peak
    return ExposureReport(exposure, peak, saturated, policy.max_iterations, exposure != first, ok)


class _Devices:
    """Retry/reconnect bookkeeping around the SLM and camera of one capture run."""

    def __init__(self, slm: Any, camera: Any, policy: RetryPolicy, summary: CaptureSummary):
        self.slm, self.camera, self.policy, self.summary = slm, camera, policy, summary

    def _reconnect(self, exc: DeviceDisconnected) -> None:
        devices = [d for d in (self.slm, self.camera) if d.device_id == exc.device_id]
        for device in devices or [self.slm, self.camera]:
            for attempt in range(1, self.policy.reconnect_attempts + 1):
                try:
                    device.reconnect(timeout_s=self.policy.timeout_s)
                    self.summary.reconnects += 1
                    break
                except DeviceError:
                    if attempt == self.policy.reconnect_attempts:
                        raise
                    time.sleep(self.policy.backoff_s * attempt)

    def frame(self, pattern: np.ndarray, pattern_id: Any) -> Any:
        """`grab` without the attempt count (for probes)."""
        return self.grab(pattern, pattern_id)[0]

    def grab(self, pattern: np.ndarray, index: Any) -> tuple[Any, int]:
        """Show + capture one index with bounded retries; returns (frame, attempts)."""
        last: BaseException | None = None
        for attempt in range(1, self.policy.max_attempts + 1):
            try:
                self.slm.show(pattern, pattern_id=index, timeout_s=self.policy.timeout_s)
                frame = self.camera.capture(timeout_s=self.policy.timeout_s)
                if frame.pattern_id is not None and frame.pattern_id != index:
                    # display latency: the frame shows an older pattern -- never store it
                    self.summary.stale_frames += 1
                    raise DeviceTimeout(
                        f"frame shows pattern {frame.pattern_id!r}, expected {index}",
                        device_id=getattr(self.slm, "device_id", "slm"),
                        operation="show",
                    )
                return frame, attempt
            except TRANSIENT as exc:
                last = exc
                self.summary.retried += 1
                if self.summary.retried > self.policy.max_total_retries:
                    break
                if isinstance(exc, DeviceDisconnected):
                    self._reconnect(exc)
                time.sleep(self.policy.backoff_s * attempt)
        self.summary.failed += 1
        raise CaptureError(
            f"index {index}: no good frame after {attempt} attempt(s) ({last}); committed "
            "frames are safe - fix the bench and rerun the same command to resume"
        ) from last


def run_capture(
    store: CaptureStore,
    slm: Any,
    camera: Any,
    pattern_for: Callable[[int], np.ndarray],
    target_for: Callable[[int], Any],
    row_for: Callable[[Any], np.ndarray],
    *,
    retry: RetryPolicy | None = None,
    exposure: ExposurePolicy | None = None,
    progress: bool = True,
    description: str = "capturing",
) -> CaptureSummary:
    """Capture every index the store still lacks, in order, and finalize the store.

    Args:
        pattern_for: dataset index -> SLM pattern (what to display).
        target_for: dataset index -> label / mask stored next to the frame.
        row_for: Frame -> stored row (the raw pixels, or feature tiles cut out with the
            calibration's registration).
        exposure: None skips the exposure check (e.g. the calibration fixed it).
    The store is NOT closed here; the caller's `with CaptureStore.open(...)` does that, so a
    Ctrl-C anywhere still commits what was captured.
    """
    retry = retry or RetryPolicy()
    summary = CaptureSummary(path=str(store.path), requested=store.n_requested)
    with exposure_after_show(camera) as how:
        summary.camera_sync = how
        devices = _Devices(slm, camera, retry, summary)
        _capture_all(
            store, camera, pattern_for, target_for, row_for, retry, exposure, progress,
            description, summary, devices,
        )  # fmt: skip
    store.commit()
    summary.complete = store.is_full
    if summary.complete and store.completion is None:
        store.finalize(summary.to_dict())
    return summary


def _capture_all(
    store: CaptureStore,
    camera: Any,
    pattern_for: Callable[[int], np.ndarray],
    target_for: Callable[[int], Any],
    row_for: Callable[[Any], np.ndarray],
    retry: RetryPolicy,
    exposure: ExposurePolicy | None,
    progress: bool,
    description: str,
    summary: CaptureSummary,
    devices: _Devices,
) -> None:
    """The exposure check and the frame loop of `run_capture` (camera already synchronised)."""
    summary.skipped = store.n_committed
    todo = [int(i) for i in store.pending_indices]
    started = time.perf_counter()
    if todo and exposure is not None:
        probes = [pattern_for(i) for i in todo[: exposure.n_probe]]
        report = auto_exposure(
            camera,
            devices.frame,
            probes,
            exposure,
            start_s=store.last_exposure_s(),
            timeout_s=retry.timeout_s,
        )
        summary.exposure = asdict(report)
        if not report.ok:
            raise CaptureError(
                f"exposure check failed: peak {report.peak_fraction:.0%} of full scale, "
                f"{report.saturated_fraction:.2%} saturated at {report.exposure_s:g} s "
                f"(range {camera.exposure_range_s}); adjust the illumination or exposure limits"
            )
    with _progress(progress, description, store.n_requested, store.n_committed) as advance:
        try:
            for index in todo:
                try:
                    frame, attempts = devices.grab(pattern_for(index), index)
                except CaptureError as exc:
                    raise CaptureError(
                        f"{exc} [this run: captured {summary.captured}, retried "
                        f"{summary.retried}, failed {summary.failed}]"
                    ) from exc.__cause__
                if "saturated" in getattr(frame, "flags", ()):
                    summary.saturated_frames += 1
                store.append(
                    row_for(frame),
                    index=index,
                    target=target_for(index),
                    frame_id=frame.frame_id,
                    timestamp_s=frame.timestamp_s,
                    exposure_s=frame.exposure_s,
                    pattern_id=frame.pattern_id if frame.pattern_id is not None else index,
                    attempts=attempts,
                )
                summary.captured += 1
                advance()
        finally:
            summary.seconds = time.perf_counter() - started


class _progress:
    """A rich progress bar with frames/s and ETA (a no-op when disabled)."""

    def __init__(self, enabled: bool, description: str, total: int, done: int):
        self.enabled, self.description, self.total, self.done = enabled, description, total, done
        self._bar: Any = None

    def __enter__(self) -> Callable[[], None]:
        if not self.enabled:
            return lambda: None
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            transient=False,
        )
        self._bar.__enter__()
        task = self._bar.add_task(self.description, total=self.total, completed=self.done, rate="")

        def advance() -> None:
            self._bar.advance(task)
            speed = self._bar.tasks[task].speed
            self._bar.update(task, rate=f"{speed:6.1f} frames/s" if speed else "")

        return advance

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
