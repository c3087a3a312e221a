"""Honest frame accounting for streaming cameras: drops from REAL frame ids, clock wraps.

Why: a frame id gap is the only evidence that frames were lost between the sensor and us, so
an id must never be invented (a producer without ids gets host-side ids that are marked as
such and never counted as drops). Device timestamps are counters: some wrap, one producer
delivers a sub-second counter that resets every second. A backward step is either unwrapped
with a known period (``timestamp_wrap_s``) or flagged on the frame (`FLAG_TIMESTAMP_WRAPPED`),
and counted either way, so a consumer never silently sorts or differences broken times.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from drivers.protocols import FLAG_TIMESTAMP_WRAPPED


@dataclass
class FrameAccounting:
    """Feed every buffer the transport hands over (delivered or discarded) through `note`."""

    timestamp_wrap_s: float | None = None
    counts: dict[str, int] = field(
        default_factory=lambda: {
            "dropped": 0,
            "id_resets": 0,
            "frames_without_id": 0,
            "timestamp_wraps": 0,
        }
    )

    def __post_init__(self) -> None:
        if self.timestamp_wrap_s is not None and not self.timestamp_wrap_s > 0:
            raise ValueError(f"timestamp_wrap_s: expected > 0, got {self.timestamp_wrap_s!r}")
        self.restart()

    def restart(self) -> None:
        """Forget the last id/time (after a reconnect or an acquisition restart)."""
        self._last_id: int | None = None
        self._last_raw_s: float | None = None
        self._offset_s = 0.0
        self._host_ids = 0

    def note(
        self, device_frame_id: int | None, device_time_s: float | None
    ) -> tuple[int, float | None, frozenset[str], dict[str, Any]]:
        """-> (frame id, timestamp in s or None, flags, meta) for one buffer."""
        flags: set[str] = set()
        meta: dict[str, Any] = {}
        if device_frame_id is None:  # no id from the producer: count, do not invent drops
            self.counts["frames_without_id"] += 1
            frame_id = self._host_ids
            self._host_ids += 1
            meta["frame_id_source"] = "host"
        else:
            frame_id = int(device_frame_id)
            if self._last_id is not None:
                if frame_id > self._last_id + 1:
                    self.counts["dropped"] += frame_id - self._last_id - 1
                elif frame_id <= self._last_id:  # counter wrapped or reset: gap unknowable
                    self.counts["id_resets"] += 1
            self._last_id = frame_id
        stamp = None
        if device_time_s is not None:
            raw = float(device_time_s)
            if self._last_raw_s is not None and raw < self._last_raw_s:
                self.counts["timestamp_wraps"] += 1
                if self.timestamp_wrap_s is not None:
                    self._offset_s += self.timestamp_wrap_s
                else:
                    flags.add(FLAG_TIMESTAMP_WRAPPED)
                    meta["timestamp_wrapped_from_s"] = self._last_raw_s
            self._last_raw_s = raw
            stamp = raw + self._offset_s
            meta["device_timestamp_s"] = raw
        return frame_id, stamp, frozenset(flags), meta
