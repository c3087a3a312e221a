"""GenICam cameras through harvesters and a GenTL producer (``.cti``), as a `Camera`.

* Producers: the config's ``cti`` (files, folders or globs) or every ``*.cti`` on
  ``GENICAM_GENTL64_PATH`` (`find_producers`, in `drivers.genicam_harvester`). Cameras naming
  the same producer files share ONE harvesters `Harvester`: a producer loaded twice in a
  process shows its devices to the first loader only, so two cameras could not be open at once.
  The genicam package's ``viky.cti`` and genicam2's ``TLSimu.cti`` are real producers, so
  this exact code runs in the test suite.
* Device: chosen by serial number and/or model; none or several matching -> `DeviceNotFound`
  listing what is there.
* Settings go through the SFNC node map where the node exists (``ExposureTime`` in us,
  ``Gain`` in dB, ``Width/Height/OffsetX/OffsetY``, ``PixelFormat``,
  ``AcquisitionFrameRate``, ``TriggerSelector/TriggerMode/TriggerSource/TriggerActivation/
  TriggerSoftware``); a missing node is reported, never faked.
* Triggers (``trigger``): ``free_run``, ``software`` (each `capture` executes
  ``TriggerSoftware`` after handing back stale buffers, so the exposure starts after the call:
  what a display/exposure-synchronised bench needs) or ``hardware`` (``trigger_source``, e.g.
  Line0). `set_trigger` switches at run time; `trigger_modes` says what the camera supports.
* Latency versus rate in free run (``frame_policy``), an explicit choice: ``full_rate`` (the
  default) returns frames in delivery order, every frame the camera makes, but the frame may
  have started exposing before the call, so it carries ``pattern_id=None`` (the id seen at
  delivery is in ``meta``); ``after_call`` hands back queued buffers and skips the frame in
  flight, so the exposure starts after the call -- at best half the camera's rate.
* Bit depth comes from the DELIVERED buffer's pixel format (`drivers.pixel_formats`: packed
  formats included; an unknown format raises `UnsupportedPixelFormat`), per frame, never from
  the node map; `open` grabs one probe frame (free run / software trigger) to learn it.
* Frame accounting (`drivers.frame_accounting`): drops are counted from real GenTL frame ids
  only; device timestamps that go backwards (wrapping counters) are unwrapped with
  ``timestamp_wrap_s`` or flagged `FLAG_TIMESTAMP_WRAPPED`. `stats()` reports all of it.
* Every blocking call has a deadline: ``update/create/start`` in `open` share the open
  timeout, fetches loop on ``try_fetch`` against the caller's deadline (harvesters' own
  ``fetch`` restarts its timer after an incomplete buffer), stop/destroy run under `close`'s
  deadline (`drivers.base.run_with_deadline`) -> `DeviceTimeout`.
* harvesters installs a SIGINT handler when an acquirer is created on the main thread; the
  acquirer is created on a worker thread (the deadline) and the previous handler is kept --
  signal handling belongs to the application.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from typing import Any

from drivers import genicam_harvester
from drivers.base import DeviceBase, run_with_deadline
from drivers.errors import (
    DeviceDisconnected,
    DeviceError,
    DeviceNotFound,
    DeviceTimeout,
)
from drivers.frame_accounting import FrameAccounting
from drivers.genicam_buffers import buffer_frame_id as _buffer_frame_id
from drivers.genicam_buffers import buffer_timestamp as _buffer_timestamp
from drivers.genicam_buffers import copy_pixels as _copy_pixels
from drivers.genicam_harvester import find_producers
from drivers.genicam_nodes import FRAME_POLICIES, TRIGGER_MODES, GenicamNodes
from drivers.pixel_formats import pixel_format_bits
from drivers.protocols import DEFAULT_TIMEOUT_S, FLAG_SATURATED, Frame

__all__ = ["GenicamCamera", "find_producers"]


def _error_map() -> tuple[tuple[type[BaseException], type[DeviceError]], ...]:
    try:
        from genicam import gentl
    except ImportError:  # pragma: no cover - genicam is a declared dependency
        return DeviceBase.error_map
    return (
        (gentl.TimeoutException, DeviceTimeout),
        (gentl.IoException, DeviceDisconnected),
        (gentl.ClosedException, DeviceDisconnected),
        (gentl.InvalidHandleException, DeviceDisconnected),
        *DeviceBase.error_map,
    )


class GenicamCamera(GenicamNodes, DeviceBase):
    """One GenICam camera (see module docstring)."""

    kind = "camera"
    implementation = "genicam"
    error_map = _error_map()

    def __init__(
        self,
        device_id: str,
        *,
        cti: str | list[str] | None = None,
        serial: str | None = None,
        model: str | None = None,
        exposure_s: float | None = None,
        gain_db: float | None = None,
        roi: tuple[int, int, int, int] | None = None,
        pixel_format: str | None = None,
        frame_rate_hz: float | None = None,
        buffers: int = 4,
        trigger: str = "free_run",
        trigger_source: str | None = None,
        trigger_activation: str | None = None,
        frame_policy: str = "full_rate",
        timestamp_wrap_s: float | None = None,
    ) -> None:
        super().__init__(device_id)
        if trigger not in TRIGGER_MODES:
            raise ValueError(f"trigger: expected one of {TRIGGER_MODES}, got {trigger!r}")
        if frame_policy not in FRAME_POLICIES:
            raise ValueError(
                f"frame_policy: expected one of {FRAME_POLICIES}, got {frame_policy!r}"
            )
        self.cti = cti
        self.serial, self.model = serial, model
        self._settings: dict[str, Any] = {
            "exposure_s": exposure_s,
            "gain_db": gain_db,
            "roi": roi,
            "pixel_format": pixel_format,
            "frame_rate_hz": frame_rate_hz,
            "trigger": trigger,
            "trigger_source": trigger_source,
            "trigger_activation": trigger_activation,
        }
        self.buffers = int(buffers)
        self._frame_policy = frame_policy
        self._accounting = FrameAccounting(timestamp_wrap_s)
        self._h: Any = None
        self._hkey: tuple[str, ...] | None = None
        self._ia: Any = None
        self._producers: list[str] = []
        self._device_info: dict[str, Any] = {}
        self._trigger_modes: tuple[str, ...] = ()
        self._stats = {"delivered": 0, "incomplete": 0, "timeouts": 0, "discarded": 0}
        self._stats_lock = threading.Lock()
        self.shape_hw: tuple[int, int] = (0, 0)
        self.bit_depth = 8
        self._format: dict[str, Any] = {"delivered": None, "node": None, "source": None}
        self.pattern_source: Any = None  # an SLM whose pattern_id is stamped on each frame

    @classmethod
    def from_config(cls, device_id: str, cfg: Any, bench: Any = None) -> GenicamCamera:
        cti = cfg.cti
        if bench is not None and cti is not None:
            cti = [str(bench.resolve(c)) for c in ([cti] if isinstance(cti, str) else cti)]
        return cls(
            device_id,
            cti=cti,
            serial=cfg.serial,
            model=cfg.model,
            exposure_s=cfg.exposure_s,
            gain_db=cfg.gain_db,
            roi=cfg.roi,
            pixel_format=cfg.pixel_format,
            frame_rate_hz=cfg.frame_rate_hz,
            buffers=cfg.buffers,
            trigger=cfg.trigger,
            trigger_source=cfg.trigger_source,
            trigger_activation=cfg.trigger_activation,
            frame_policy=cfg.frame_policy,
            timestamp_wrap_s=cfg.timestamp_wrap_s,
        )

    # ------------------------------------------------------------------ lifecycle
    def _open_hw(self, timeout_s: float) -> None:
        t0 = time.monotonic()

        def left() -> float:
            return max(1e-3, timeout_s - (time.monotonic() - t0))

        self._producers = find_producers(self.cti)
        if not self._producers:
            where = self.cti if self.cti is not None else "GENICAM_GENTL64_PATH"
            raise DeviceNotFound(f"no GenTL producer (.cti) found in {where!r}")
        self._hkey, h = genicam_harvester.acquire(self._producers, left())
        self._h = h
        try:
            key = {k: v for k, v in (("serial_number", self.serial), ("model", self.model)) if v}
            infos = [
                d
                for d in h.device_info_list
                if all(str(getattr(d, k, None)) == str(v) for k, v in key.items())
            ]
            if len(infos) != 1:
                seen = [f"{d.model} serial={d.serial_number}" for d in h.device_info_list]
                what = "no device" if not infos else f"{len(infos)} devices"
                raise DeviceNotFound(f"{what} match {key or 'any'}; found: {seen or 'none'}")
            info = infos[0]
            self._device_info = {
                "vendor": info.vendor,
                "model": info.model,
                "serial": info.serial_number,
                "id": info.id_,
            }
            previous = signal.getsignal(signal.SIGINT) if _on_main_thread() else None
            try:  # on a worker thread: bounded, and harvesters installs no SIGINT handler
                self._ia = run_with_deadline(lambda: h.create(info), left(), "create")
            finally:
                if previous is not None and signal.getsignal(signal.SIGINT) is not previous:
                    signal.signal(signal.SIGINT, previous)
            ia = self._ia
            self._apply_settings()
            self._trigger_modes = self._supported_triggers()
            self._apply_trigger()
            ia.num_buffers = max(self.buffers, ia.min_num_buffers)
            self._add_incomplete_callback()
            self.shape_hw = (int(self._node("Height").value), int(self._node("Width").value))
            node_format = self._node("PixelFormat")
            self._format = {
                "node": str(node_format.value) if node_format is not None else None,
                "delivered": None,
                "source": None,
            }
            run_with_deadline(ia.start, left(), "start")
            self._accounting.restart()
            self._learn_bit_depth(time.monotonic() + left())
        except BaseException:
            run_with_deadline(self._close_hw, 2.0, "close-after-failed-open")
            raise

    def _add_incomplete_callback(self) -> None:
        from harvesters.core import Callback, ImageAcquirer

        camera = self

        class _Incomplete(Callback):
            def emit(self, context: Any = None) -> None:
                with camera._stats_lock:
                    camera._stats["incomplete"] += 1

        self._ia.add_callback(ImageAcquirer.Events.INCOMPLETE_BUFFER, _Incomplete())

    def _learn_bit_depth(self, deadline: float) -> None:
        """One probe frame tells the delivered format; with a hardware trigger none may come,
        so the node map's format stands in until the first frame (``bit_depth_source``)."""
        if self._settings["trigger"] == "hardware":
            if self._format["node"] is not None:
                self.bit_depth = pixel_format_bits(self._format["node"])
                self._format["source"] = "node map (until the first frame)"
            return
        if self._settings["trigger"] == "software":
            self._node("TriggerSoftware").execute()
        buf = self._fetch(deadline, "a probe frame to learn the delivered pixel format")
        try:
            fmt = str(buf.payload.components[0].data_format)
            self._discard(buf)
        finally:
            buf.queue()
        self.bit_depth = pixel_format_bits(fmt)
        self._format.update(delivered=fmt, source="delivered buffer")

    def _close_hw(self) -> None:
        ia, key = self._ia, self._hkey
        self._ia = self._h = self._hkey = None
        try:
            if ia is not None:
                try:
                    ia.stop()
                finally:
                    ia.destroy()
        finally:
            if key is not None:
                genicam_harvester.release(key, DEFAULT_TIMEOUT_S)

    # ------------------------------------------------------------------ exposure
    @property
    def exposure_range_s(self) -> tuple[float, float]:
        node = self._node("ExposureTime") if self._ia is not None else None
        if node is None:
            return (math.nan, math.nan)
        return (float(node.min) * 1e-6, float(node.max) * 1e-6)

    @property
    def exposure_s(self) -> float:
        node = self._node("ExposureTime") if self._ia is not None else None
        return math.nan if node is None else float(node.value) * 1e-6

    @exposure_s.setter
    def exposure_s(self, value: float) -> None:
        self.set_exposure(value)

    def set_exposure(self, exposure_s: float, timeout_s: float = DEFAULT_TIMEOUT_S) -> float:
        def hook(timeout_s: float) -> float:
            self._set_node("ExposureTime", float(exposure_s) * 1e6, "exposure_s")
            self._settings["exposure_s"] = float(exposure_s)  # re-applied on reconnect
            return self.exposure_s

        return self._call("set_exposure", hook, timeout_s=timeout_s)

    # ------------------------------------------------------------------ frames
    def stats(self) -> dict[str, int]:
        """Delivered, dropped (real frame-id gaps), incomplete, timeouts, discarded (stale or
        in-flight frames handed back), id resets, frames without id, timestamp wraps."""
        with self._stats_lock:
            return {**self._stats, **self._accounting.counts}

    def capture(
        self, timeout_s: float = DEFAULT_TIMEOUT_S, *, allow_incomplete: bool = False
    ) -> Frame:
        return self._call("capture", self._capture_hw, allow_incomplete, timeout_s=timeout_s)

    def _fetch(self, deadline: float, what: str = "a frame") -> Any:
        """Next complete buffer before `deadline`, or DeviceTimeout."""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                with self._stats_lock:
                    self._stats["timeouts"] += 1
                raise DeviceTimeout(f"no frame arrived in time (waiting for {what})")
            buf = self._ia.try_fetch(timeout=max(left, 1e-4))
            if buf is not None:
                return buf

    def _discard(self, buf: Any) -> None:
        """Account for a buffer that is handed back without being delivered."""
        self._accounting.note(_buffer_frame_id(buf), _buffer_timestamp(buf))
        with self._stats_lock:
            self._stats["discarded"] += 1

    def _drain(self, deadline: float) -> None:
        """Hand back what was exposed before this call. At most num_buffers can be waiting:
        draining "until empty" would never end when frames arrive faster than we loop."""
        for _ in range(self._ia.num_buffers):
            if time.monotonic() >= deadline:
                break
            stale = self._ia.try_fetch(timeout=1e-4)
            if stale is None:
                break
            try:
                self._discard(stale)
            finally:
                stale.queue()

    def _capture_hw(self, allow_incomplete: bool, timeout_s: float) -> Frame:
        deadline = time.monotonic() + timeout_s
        t_call = time.monotonic()
        trigger = self._settings["trigger"]
        after_call = self._frame_policy == "after_call" or trigger == "software"
        if after_call:
            self._drain(deadline)
        if trigger == "software":
            self._node("TriggerSoftware").execute()  # the exposure starts now: after the call
        elif trigger == "free_run" and self._frame_policy == "after_call":
            buf = self._fetch(deadline, "the frame in flight")  # it started before the call
            try:
                self._discard(buf)
            finally:
                buf.queue()
        source_id = getattr(self.pattern_source, "pattern_id", None)
        known = after_call or trigger == "hardware"  # else: exposure may predate the call
        buf = self._fetch(deadline)
        try:
            return self._frame_from(buf, t_call, source_id if known else None, source_id)
        finally:
            buf.queue()  # only after the copy: the producer reuses this memory

    def _frame_from(self, buf: Any, t_call: float, pattern_id: Any, seen_id: Any) -> Frame:
        comp = buf.payload.components[0]
        fmt = str(comp.data_format)
        bits = pixel_format_bits(fmt)  # UnsupportedPixelFormat: never guess 8 bits
        pixels = _copy_pixels(comp)
        frame_id, stamp, flags, meta = self._accounting.note(
            _buffer_frame_id(buf), _buffer_timestamp(buf)
        )
        if stamp is None:
            stamp, meta["timestamp_source"] = t_call, "host"
        if bits != self.bit_depth or self._format["delivered"] != fmt:
            self.bit_depth = bits
            self._format.update(delivered=fmt, source="delivered buffer")
        meta.update(pixel_format=fmt, bit_depth=bits)
        if pattern_id is None and seen_id is not None:
            meta["pattern_id_at_delivery"] = seen_id
        if pixels.max(initial=0) >= (1 << bits) - 1:
            flags = flags | {FLAG_SATURATED}
        with self._stats_lock:
            self._stats["delivered"] += 1
        return Frame(
            pixels=pixels,
            frame_id=frame_id,
            timestamp_s=stamp,
            exposure_s=self.exposure_s,
            pattern_id=pattern_id,
            flags=frozenset(flags),
            device_id=self.device_id,
            meta=meta,
        )

    # ------------------------------------------------------------------ description
    def _status_hw(self, timeout_s: float) -> dict[str, Any]:
        temp = self._node("DeviceTemperature")
        return {
            "acquiring": bool(self._ia.is_acquiring()),
            "frames": self.stats(),
            "exposure_s": self.exposure_s,
            "temperature_c": None if temp is None else float(temp.value),
            "trigger": self.trigger,
        }

    def _info_extra(self) -> dict[str, Any]:
        return {
            **self._device_info,
            "resolution_hw": list(self.shape_hw),
            "bit_depth": self.bit_depth,
            "bit_depth_source": self._format["source"],
            "pixel_format": self._format["delivered"],
            "pixel_format_node": self._format["node"],
            "trigger": self.trigger,
            "trigger_modes": list(self._trigger_modes),
            "frame_policy": self._frame_policy,
            "producers": self._producers or find_producers(self.cti),
        }


def _on_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()
