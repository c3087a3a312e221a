"""GenICam cameras through harvesters and a GenTL producer (``.cti``), as a `Camera`.

* Producers: the config's ``cti`` (files, folders or globs) or every ``*.cti`` on
  ``GENICAM_GENTL64_PATH`` (`find_producers`). The genicam package's ``viky.cti`` simulator
  is a real producer, so this exact code runs in the test suite.
* Device: chosen by serial number and/or model; none or several matching -> `DeviceNotFound`
  listing what is there.
* Settings go through the SFNC node map where the node exists (``ExposureTime`` in us,
  ``Gain`` in dB, ``Width/Height/OffsetX/OffsetY``, ``PixelFormat``,
  ``AcquisitionFrameRate``); a missing node is reported, never faked (exposure is NaN and
  `set_exposure` raises `UnsupportedFeature` on a camera without ``ExposureTime``).
* `capture` returns a frame whose exposure started after the call: queued buffers are handed
  back first, the frame already in flight is skipped, then the next one is COPIED out of the
  driver buffer before the buffer is re-queued (harvesters reuses the memory).
* The whole call honours ``timeout_s`` (harvesters' own ``fetch`` restarts its timer after an
  incomplete buffer, so we loop on ``try_fetch`` against our own deadline) -> `DeviceTimeout`.
  Incomplete buffers (harvesters discards them) and frame-id gaps are counted in `stats()`.
* harvesters installs a SIGINT handler when an acquirer is created on the main thread; we put
  the previous handler back -- signal handling belongs to the application.
"""

from __future__ import annotations

import glob
import math
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from drivers.base import DeviceBase
from drivers.errors import (
    DeviceDisconnected,
    DeviceError,
    DeviceNotFound,
    DeviceTimeout,
    LimitError,
    UnsupportedFeature,
)
from drivers.protocols import DEFAULT_TIMEOUT_S, FLAG_SATURATED, Frame

_BITS = {"Mono8": 8, "Mono10": 10, "Mono12": 12, "Mono14": 14, "Mono16": 16, "RGB8": 8}


def find_producers(cti: str | list[str] | None = None) -> list[str]:
    """GenTL producer files: from `cti` (files, folders, globs) or GENICAM_GENTL64_PATH."""
    if cti is None:
        entries = [p for p in os.environ.get("GENICAM_GENTL64_PATH", "").split(os.pathsep) if p]
    else:
        entries = [cti] if isinstance(cti, str) else list(cti)
    found: list[str] = []
    for entry in entries:
        path = Path(entry).expanduser()
        if path.is_dir():
            found += sorted(str(p) for p in path.glob("*.cti"))
        elif path.is_file():
            found.append(str(path))
        else:
            found += sorted(glob.glob(str(path)))
    return list(dict.fromkeys(found))


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


class GenicamCamera(DeviceBase):
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
        skip_in_flight: bool = True,
    ) -> None:
        super().__init__(device_id)
        self.cti = cti
        self.serial, self.model = serial, model
        self._settings = {
            "exposure_s": exposure_s,
            "gain_db": gain_db,
            "roi": roi,
            "pixel_format": pixel_format,
            "frame_rate_hz": frame_rate_hz,
        }
        self.buffers = int(buffers)
        self.skip_in_flight = skip_in_flight
        self._h: Any = None
        self._ia: Any = None
        self._producers: list[str] = []
        self._device_info: dict[str, Any] = {}
        self._last_frame_id: int | None = None
        self._stats = {"delivered": 0, "dropped": 0, "incomplete": 0, "timeouts": 0}
        self._stats_lock = threading.Lock()
        self.shape_hw: tuple[int, int] = (0, 0)
        self.bit_depth = 8
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
        )

    # ------------------------------------------------------------------ node helpers
    def _node(self, name: str) -> Any:
        nm = self._ia.remote_device.node_map
        return getattr(nm, name) if nm.has_node(name) else None

    def _set_node(self, name: str, value: Any, what: str) -> None:
        node = self._node(name)
        if node is None:
            raise UnsupportedFeature(f"{what}: camera has no {name} node")
        lo, hi = getattr(node, "min", None), getattr(node, "max", None)
        if lo is not None and hi is not None and not lo <= value <= hi:
            raise LimitError(f"{what}: {value!r} outside [{lo}, {hi}] ({name})")
        node.value = value

    # ------------------------------------------------------------------ lifecycle
    def _open_hw(self, timeout_s: float) -> None:
        from harvesters.core import Callback, Harvester, ImageAcquirer

        self._producers = find_producers(self.cti)
        if not self._producers:
            where = self.cti if self.cti is not None else "GENICAM_GENTL64_PATH"
            raise DeviceNotFound(f"no GenTL producer (.cti) found in {where!r}")
        h = Harvester()
        try:
            for path in self._producers:
                h.add_file(path)
            h.update()
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
            try:
                ia = h.create(info)
            finally:
                if previous is not None:
                    signal.signal(signal.SIGINT, previous)
        except BaseException:
            h.reset()
            raise
        self._h, self._ia = h, ia
        try:
            self._apply_settings()
            ia.num_buffers = max(self.buffers, ia.min_num_buffers)
            camera = self

            class _Incomplete(Callback):
                def emit(self, context: Any = None) -> None:
                    with camera._stats_lock:
                        camera._stats["incomplete"] += 1

            ia.add_callback(ImageAcquirer.Events.INCOMPLETE_BUFFER, _Incomplete())
            self._refresh_geometry()
            ia.start()
            self._last_frame_id = None
        except BaseException:
            self._close_hw()
            raise

    def _apply_settings(self) -> None:
        s = self._settings
        if s["pixel_format"] is not None:
            self._set_node("PixelFormat", s["pixel_format"], "pixel_format")
        if s["roi"] is not None:
            oy, ox, height, width = s["roi"]
            for name, value in (("OffsetX", 0), ("OffsetY", 0)):
                if self._node(name) is not None:
                    self._node(name).value = value  # so the new size is always allowed
            self._set_node("Width", width, "roi width")
            self._set_node("Height", height, "roi height")
            if ox or oy:
                self._set_node("OffsetX", ox, "roi offset x")
                self._set_node("OffsetY", oy, "roi offset y")
        if s["frame_rate_hz"] is not None:
            self._set_node("AcquisitionFrameRate", float(s["frame_rate_hz"]), "frame_rate_hz")
        if s["exposure_s"] is not None:
            self._set_node("ExposureTime", float(s["exposure_s"]) * 1e6, "exposure_s")
        if s["gain_db"] is not None:
            self._set_node("Gain", float(s["gain_db"]), "gain_db")

    def _refresh_geometry(self) -> None:
        self.shape_hw = (int(self._node("Height").value), int(self._node("Width").value))
        fmt = str(self._node("PixelFormat").value) if self._node("PixelFormat") else "Mono8"
        self.bit_depth = _BITS.get(fmt, 8)

    def _close_hw(self) -> None:
        ia, h = self._ia, self._h
        self._ia = self._h = None
        try:
            if ia is not None:
                try:
                    ia.stop()
                finally:
                    ia.destroy()
        finally:
            if h is not None:
                h.reset()

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
        with self._stats_lock:
            return dict(self._stats)

    def capture(
        self, timeout_s: float = DEFAULT_TIMEOUT_S, *, allow_incomplete: bool = False
    ) -> Frame:
        return self._call("capture", self._capture_hw, allow_incomplete, timeout_s=timeout_s)

    def _fetch(self, deadline: float) -> Any:
        """Next complete buffer before `deadline`, or DeviceTimeout."""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                with self._stats_lock:
                    self._stats["timeouts"] += 1
                raise DeviceTimeout("no frame arrived in time")
            buf = self._ia.try_fetch(timeout=max(left, 1e-4))
            if buf is not None:
                return buf

    def _capture_hw(self, allow_incomplete: bool, timeout_s: float) -> Frame:
        deadline = time.monotonic() + timeout_s
        t_call = time.monotonic()
        # Hand back what was exposed before this call. At most num_buffers can be waiting:
        # draining "until empty" would never end when frames arrive faster than we loop.
        for _ in range(self._ia.num_buffers):
            if time.monotonic() >= deadline:
                break
            stale = self._ia.try_fetch(timeout=1e-4)
            if stale is None:
                break
            self._note_frame_id(stale)
            stale.queue()
        if self.skip_in_flight:  # the frame being exposed right now started before the call
            buf = self._fetch(deadline)
            self._note_frame_id(buf)
            buf.queue()
        pattern_id = getattr(self.pattern_source, "pattern_id", None)
        buf = self._fetch(deadline)
        try:
            pixels, meta = self._copy_out(buf)
            frame_id = self._note_frame_id(buf)
            stamp = _buffer_timestamp(buf)
        finally:
            buf.queue()  # only after the copy: the producer reuses this memory
        if stamp is None:
            stamp, meta["timestamp_source"] = t_call, "host"
        flags = {FLAG_SATURATED} if pixels.max(initial=0) >= (1 << self.bit_depth) - 1 else set()
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

    def _note_frame_id(self, buf: Any) -> int:
        """Track GenTL frame ids; a gap means frames were lost before reaching us."""
        try:
            fid = int(buf.module.frame_id)
        except Exception:  # noqa: BLE001 - producers may not report frame ids
            fid = (self._last_frame_id or 0) + 1
        if self._last_frame_id is not None and fid > self._last_frame_id + 1:
            with self._stats_lock:
                self._stats["dropped"] += fid - self._last_frame_id - 1
        self._last_frame_id = fid
        return fid

    def _copy_out(self, buf: Any) -> tuple[np.ndarray, dict[str, Any]]:
        comp = buf.payload.components[0]
        h, w = int(comp.height), int(comp.width)
        data = np.array(comp.data, copy=True)  # OWN the pixels before the buffer is re-queued
        per_px = data.size // max(h * w, 1)
        img = data.reshape(h, w) if per_px == 1 else data.reshape(h, w, per_px)[..., :3]
        return np.ascontiguousarray(img), {"pixel_format": str(comp.data_format)}

    # ------------------------------------------------------------------ description
    def _status_hw(self, timeout_s: float) -> dict[str, Any]:
        temp = self._node("DeviceTemperature")
        return {
            "acquiring": bool(self._ia.is_acquiring()),
            "frames": self.stats(),
            "exposure_s": self.exposure_s,
            "temperature_c": None if temp is None else float(temp.value),
        }

    def _info_extra(self) -> dict[str, Any]:
        return {
            **self._device_info,
            "resolution_hw": list(self.shape_hw),
            "bit_depth": self.bit_depth,
            "producers": self._producers or find_producers(self.cti),
        }


def _buffer_timestamp(buf: Any) -> float | None:
    try:
        return int(buf.timestamp_ns) * 1e-9
    except Exception:  # noqa: BLE001 - NotAvailable on producers without timestamps
        return None


def _on_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()
