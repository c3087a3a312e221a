"""What every SLM, camera and stage looks like to the rest of onnlab.

Calibration and capture code is written against these `typing.Protocol` classes only, so a
simulated twin (`drivers.sim`) and a real instrument are interchangeable. The semantics every
implementation must honour (checked by `tests/drivers/test_conformance.py`):

* Every blocking call takes ``timeout_s`` with a finite default and raises
  `drivers.errors.DeviceTimeout` when it runs out -- never hangs, never returns stale data.
* Errors are `drivers.errors.DeviceError` subclasses carrying device id, operation and elapsed
  time, raised ``from`` the vendor exception.
* Devices are context managers; ``close()`` is idempotent; after `DeviceDisconnected` the
  device refuses work until ``reconnect()`` succeeds.
* One `threading.RLock` per device serialises calls; no implementation installs signal
  handlers (that is the application's business).
* A `Frame` owns its pixels: they are copied out of any driver buffer before the buffer is
  handed back, so frames stay valid after later acquisitions.

Shared behaviour (timing, locking, error mapping, open/close state) lives in `drivers.base`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

PatternId = int | str
"""Identifies what the SLM showed: a dataset index (capture) or a calibration pattern name."""

DEFAULT_TIMEOUT_S = 5.0
"""Default for every blocking call: long enough for a real USB/serial round trip, finite."""

DEFAULT_MOVE_TIMEOUT_S = 30.0
"""Default for stage moves and homing, which physically take seconds."""

FLAG_INCOMPLETE = "incomplete"
"""Frame flag: the transport delivered only part of the image (missing packets/lines)."""

FLAG_SATURATED = "saturated"
"""Frame flag: at least one pixel reached the maximum digital value."""

FLAG_TIMESTAMP_WRAPPED = "timestamp_wrapped"
"""Frame flag: the device clock went backwards at this frame (a counter that wrapped or reset,
e.g. a sub-second counter) and no wrap period was configured to unwrap it: `timestamp_s` is
not comparable with the frames before it."""


@dataclass(frozen=True)
class Frame:
    """One camera image plus the provenance needed to trust it.

    Attributes:
        pixels: (H, W) or (H, W, 3) array owned by this frame (never a view into a driver
            buffer); integer DN as delivered by the sensor (uint8/uint16).
        frame_id: the device's monotonically increasing frame counter. Gaps mean frames were
            dropped on the way -- count them rather than guess.
        timestamp_s: device-side timestamp of the exposure (seconds; the epoch is device
            specific, only differences are meaningful).
        exposure_s: exposure time actually used.
        pattern_id: id of the pattern the SLM displayed DURING the exposure (None if unknown).
            An honest implementation reports a late display here, so latency is detectable.
        flags: e.g. `FLAG_INCOMPLETE`, `FLAG_SATURATED`.
        device_id: which camera took it.
        meta: implementation extras (stage position, pixel format, ...), JSON-able.
    """

    pixels: np.ndarray
    frame_id: int
    timestamp_s: float
    exposure_s: float
    pattern_id: PatternId | None = None
    flags: frozenset[str] = frozenset()
    device_id: str = ""
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.pixels.ndim not in (2, 3) or (self.pixels.ndim == 3 and self.pixels.shape[2] != 3):
            raise ValueError(f"pixels: expected (H, W) or (H, W, 3), got {self.pixels.shape}")
        if not self.pixels.flags.owndata:  # a view could alias a driver buffer: own a copy
            object.__setattr__(self, "pixels", self.pixels.copy())
        object.__setattr__(self, "flags", frozenset(self.flags))
        object.__setattr__(self, "meta", dict(self.meta))  # a copy: never alias driver state

    @property
    def incomplete(self) -> bool:
        """True when the transport delivered only part of the image."""
        return FLAG_INCOMPLETE in self.flags

    @property
    def shape_hw(self) -> tuple[int, int]:
        """(height, width) of the image."""
        return int(self.pixels.shape[0]), int(self.pixels.shape[1])


@runtime_checkable
class Device(Protocol):
    """What every device has: identity, lifecycle and a cheap self-description."""

    device_id: str
    kind: str  # "slm" | "camera" | "stage"

    @property
    def is_open(self) -> bool: ...

    def open(self, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        """Connect (idempotent). Raises DeviceNotFound / DeviceTimeout."""

    def close(self, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        """Release the hardware; idempotent, bounded by `timeout_s`, never raises."""

    def reconnect(self, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        """Close (best effort) and open again; the way out of `DeviceDisconnected`."""

    def info(self) -> dict[str, Any]:
        """Static description: kind, implementation, serial, model, resolution/limits."""

    def status(self, timeout_s: float = DEFAULT_TIMEOUT_S) -> dict[str, Any]:
        """Live probe (talks to the device): open/connected, position, temperature, counters."""

    def __enter__(self) -> Device: ...

    def __exit__(self, *exc: object) -> None: ...


@runtime_checkable
class SLM(Device, Protocol):
    """A display / spatial light modulator showing grey-level input images.

    ``show`` returns once the pattern is on the panel and has settled (``settle_s``), so a
    camera exposure started afterwards sees it -- unless the device has display latency, in
    which case the camera's `Frame.pattern_id` says what was really shown.
    """

    shape_hw: tuple[int, int]
    channels: int  # 1 (mono) or 3 (RGB display)
    bit_depth: int

    @property
    def settle_s(self) -> float: ...

    @property
    def pattern_id(self) -> PatternId | None:
        """Id passed to the last successful `show`."""

    @property
    def response_lut(self) -> np.ndarray:
        """Nominal grey level -> relative intensity (2**bit_depth,) in [0, 1] (from config)."""

    def show(
        self,
        pattern: np.ndarray,
        pattern_id: PatternId | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        """Display `pattern`: (H, W) or (H, W, 3) integer grey levels, or float in [0, 1]
        (quantised to grey levels); shape must equal `shape_hw` (ValueError otherwise)."""


@runtime_checkable
class Camera(Device, Protocol):
    """An area-scan camera delivering `Frame` objects."""

    shape_hw: tuple[int, int]
    bit_depth: int

    @property
    def exposure_s(self) -> float: ...

    @exposure_s.setter
    def exposure_s(self, value: float) -> None: ...

    @property
    def exposure_range_s(self) -> tuple[float, float]: ...

    def set_exposure(self, exposure_s: float, timeout_s: float = DEFAULT_TIMEOUT_S) -> float:
        """Set exposure (LimitError outside `exposure_range_s`); returns the value applied."""

    def capture(
        self, timeout_s: float = DEFAULT_TIMEOUT_S, *, allow_incomplete: bool = False
    ) -> Frame:
        """Return the next frame whose exposure starts after this call -- or, for a free-running
        camera configured for full rate (``frame_policy='full_rate'``), the next frame
        delivered, in order, whose `Frame.pattern_id` is then None (its exposure may predate
        the call). `drivers.sync.exposure_after_show` gives the first behaviour on any camera.

        Raises DeviceTimeout when none arrives in time, FrameIncomplete for a partial frame
        (unless `allow_incomplete`, then the frame carries `FLAG_INCOMPLETE`).
        """

    def stats(self) -> dict[str, int]:
        """Frame-loss accounting: frames delivered, dropped (counted from real frame ids only),
        incomplete, timeouts; implementations may add more (timestamp_wraps, discarded...)."""


@runtime_checkable
class Stage(Device, Protocol):
    """A single-axis motorized stage (focus), positions in metres."""

    @property
    def limits_m(self) -> tuple[float, float]:
        """Software limits enforced BEFORE anything is sent (LimitError, nothing moves)."""

    @property
    def position_m(self) -> float:
        """Current position (queries the device with the default timeout)."""

    def get_position(self, timeout_s: float = DEFAULT_TIMEOUT_S) -> float: ...

    def move_absolute(self, position_m: float, timeout_s: float = DEFAULT_MOVE_TIMEOUT_S) -> float:
        """Move and wait until settled; returns the final position. MotionError on stall."""

    def move_relative(self, delta_m: float, timeout_s: float = DEFAULT_MOVE_TIMEOUT_S) -> float: ...

    def home(self, timeout_s: float = DEFAULT_MOVE_TIMEOUT_S) -> float: ...

    def stop(self, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        """Stop any motion now (usable from another thread while a move is waiting)."""

    def is_moving(self, timeout_s: float = DEFAULT_TIMEOUT_S) -> bool: ...


def to_grey_levels(
    pattern: np.ndarray, shape_hw: tuple[int, int], channels: int, bit_depth: int = 8
) -> np.ndarray:
    """Validate an SLM pattern and return integer grey levels (H, W) or (H, W, 3).

    Float input is read as intensity-like drive in [0, 1] and rounded to the nearest level;
    integer input must already lie in [0, 2**bit_depth - 1]. Shared by all SLM drivers so
    they reject the same things with the same messages.
    """
    arr = np.asarray(pattern)
    want = tuple(shape_hw) if channels == 1 else (*shape_hw, channels)
    if channels == 3 and arr.ndim == 3 and arr.shape[0] == 3 and arr.shape[1:] == tuple(shape_hw):
        arr = np.moveaxis(arr, 0, -1)  # accept (3, H, W) as well: that is how batches are stored
    if arr.shape != want:
        raise ValueError(f"pattern: expected shape {want}, got {arr.shape}")
    top = (1 << bit_depth) - 1
    dtype = np.uint8 if bit_depth <= 8 else np.uint16
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)) or arr.min() < 0.0 or arr.max() > 1.0:
            raise ValueError("pattern: float patterns must be finite and lie in [0, 1]")
        return np.rint(arr * top).astype(dtype)
    if np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool:
        if arr.size and (arr.min() < 0 or arr.max() > top):
            raise ValueError(f"pattern: integer grey levels must lie in [0, {top}]")
        return arr.astype(dtype, copy=True)
    raise ValueError(f"pattern: unsupported dtype {arr.dtype}")
