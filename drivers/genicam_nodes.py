"""GenICam node-map access for `GenicamCamera`: settings, triggers, the frame policy.

Split from `drivers.camera_genicam` (which does the lifecycle and the frames) so each module
has one job. Everything here talks SFNC node names (``PixelFormat``, ``TriggerMode``, ...);
a node the camera lacks is reported (`UnsupportedFeature`), never faked, and an enumeration is
written only when its value differs (some producers expose fixed entries as read-only).
"""

from __future__ import annotations

import time
from typing import Any

from drivers.base import run_with_deadline
from drivers.errors import LimitError, UnsupportedFeature
from drivers.protocols import DEFAULT_TIMEOUT_S

TRIGGER_MODES = ("free_run", "software", "hardware")
FRAME_POLICIES = ("full_rate", "after_call")


class GenicamNodes:
    """Mixin: needs ``self._ia`` (harvesters ImageAcquirer), ``self._settings``,
    ``self._trigger_modes``, ``self._frame_policy``, ``self._accounting`` and `_call`."""

    _ia: Any
    _settings: dict[str, Any]
    _trigger_modes: tuple[str, ...]
    _frame_policy: str
    _accounting: Any
    _call: Any

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

    def _ensure(self, name: str, value: str) -> None:
        """Write an enumeration only when it differs (some producers make fixed ones RO)."""
        node = self._node(name)
        if str(node.value) != value:
            node.value = value

    def _symbolics(self, name: str) -> tuple[str, ...]:
        node = self._node(name)
        try:
            return tuple(str(v) for v in node.symbolics) if node is not None else ()
        except Exception:  # noqa: BLE001 - not an enumeration
            return ()

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

    # ------------------------------------------------------------------ triggers
    def _supported_triggers(self) -> tuple[str, ...]:
        modes = ["free_run"]
        if self._node("TriggerMode") is None or self._node("TriggerSource") is None:
            return tuple(modes)
        sources = self._symbolics("TriggerSource")
        if "Software" in sources and self._node("TriggerSoftware") is not None:
            modes.append("software")
        if any(src.startswith("Line") for src in sources):
            modes.append("hardware")
        return tuple(modes)

    def _apply_trigger(self) -> None:
        mode = self._settings["trigger"]
        if mode == "free_run":
            if self._node("TriggerMode") is not None:
                self._ensure("TriggerMode", "Off")
            return
        if mode not in self._trigger_modes:
            needs = "TriggerMode, TriggerSource" + (
                " (with 'Software') and TriggerSoftware" if mode == "software" else " (a Line)"
            )
            raise UnsupportedFeature(
                f"trigger={mode!r}: camera lacks {needs}; it supports {list(self._trigger_modes)}"
            )
        if "FrameStart" in self._symbolics("TriggerSelector"):
            self._ensure("TriggerSelector", "FrameStart")
        source = "Software" if mode == "software" else self._settings["trigger_source"] or "Line0"
        if source not in self._symbolics("TriggerSource"):
            raise LimitError(
                f"trigger_source: {source!r} not among {list(self._symbolics('TriggerSource'))}"
            )
        self._ensure("TriggerSource", source)
        if self._settings["trigger_activation"] is not None:
            self._set_node(
                "TriggerActivation", self._settings["trigger_activation"], "trigger_activation"
            )
        self._ensure("TriggerMode", "On")

    @property
    def trigger_modes(self) -> tuple[str, ...]:
        """Trigger modes this camera supports (known once open)."""
        return self._trigger_modes

    @property
    def trigger(self) -> str:
        return str(self._settings["trigger"])

    def set_trigger(self, mode: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> str:
        """Switch trigger mode (acquisition is stopped and restarted); returns the previous one.
        `UnsupportedFeature` when the camera cannot do `mode`; nothing changes then."""
        if mode not in TRIGGER_MODES:
            raise ValueError(f"trigger: expected one of {TRIGGER_MODES}, got {mode!r}")

        def hook(timeout_s: float) -> str:
            previous = self._settings["trigger"]
            if mode == previous:
                return previous
            if mode != "free_run" and mode not in self._trigger_modes:
                self._settings["trigger"] = mode
                try:
                    self._apply_trigger()  # raises UnsupportedFeature with the details
                finally:
                    self._settings["trigger"] = previous
            t0 = time.monotonic()
            run_with_deadline(self._ia.stop, timeout_s, "stop")
            self._settings["trigger"] = mode
            try:
                self._apply_trigger()
            except BaseException:
                self._settings["trigger"] = previous
                self._apply_trigger()
                raise
            finally:
                left = max(1e-3, timeout_s - (time.monotonic() - t0))
                run_with_deadline(self._ia.start, left, "start")
                self._accounting.restart()
            return previous

        return self._call("set_trigger", hook, timeout_s=timeout_s)

    @property
    def frame_policy(self) -> str:
        return self._frame_policy

    def set_frame_policy(self, policy: str) -> str:
        """``full_rate`` or ``after_call`` (see module docstring); returns the previous one."""
        if policy not in FRAME_POLICIES:
            raise ValueError(f"frame_policy: expected one of {FRAME_POLICIES}, got {policy!r}")
        previous, self._frame_policy = self._frame_policy, policy
        return previous
