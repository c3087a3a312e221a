"""Shared device semantics: public method -> private ``_hw`` hook (after slmsuite's split).

Each concrete driver implements only small ``_*_hw`` hooks that talk to the vendor library.
The public methods go through `DeviceBase._call`, which gives every implementation the same
behaviour for free:

* the device lock (one `threading.RLock`) is taken with the caller's ``timeout_s`` -- a call
  stuck behind another thread fails with `DeviceBusy` instead of waiting forever;
* the device must be open and not disconnected (a disconnected device refuses work until
  ``reconnect()``, so a half-dead connection never returns garbage);
* every exception leaving a hook becomes a `DeviceError` subclass naming the device id, the
  operation and the elapsed time, chained (``raise ... from``) to the vendor exception;
* ``close()`` is idempotent and ``reconnect()`` is close + open.

Vendor exception types are mapped through `DeviceBase.error_map` (subclasses extend it).
"""

from __future__ import annotations

import contextlib
import math
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

from drivers.errors import (
    DeviceBusy,
    DeviceDisconnected,
    DeviceError,
    DeviceTimeout,
)
from drivers.protocols import DEFAULT_TIMEOUT_S

T = TypeVar("T")


class _NoLock:
    def acquire(self, timeout: float = -1) -> bool:
        return True

    def release(self) -> None:
        pass


_NO_LOCK = _NoLock()


def run_with_deadline(fn: Callable[[], T], timeout_s: float, what: str) -> T:
    """Run a blocking vendor call (no timeout of its own) on a daemon thread; `DeviceTimeout`
    when it has not returned within `timeout_s`. The thread is then abandoned: its outcome,
    and so the device state, is unknown -- callers treat the device as disconnected."""
    result: dict[str, Any] = {}
    done = threading.Event()

    def target() -> None:
        try:
            result["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            result["error"] = exc
        finally:
            done.set()

    threading.Thread(target=target, name=f"onnlab-{what}", daemon=True).start()
    if not done.wait(max(float(timeout_s), 0.0)):
        raise DeviceTimeout(f"{what} did not return within {timeout_s:.3f} s")
    if "error" in result:
        raise result["error"]
    return result["value"]


def check_timeout(timeout_s: float) -> float:
    """Reject a missing, infinite or negative timeout: every blocking call must end."""
    if timeout_s is None or not isinstance(timeout_s, (int, float)):
        raise ValueError(f"timeout_s: expected a finite number of seconds, got {timeout_s!r}")
    if not math.isfinite(timeout_s) or timeout_s < 0:
        raise ValueError(f"timeout_s: expected a finite value >= 0, got {timeout_s!r}")
    return float(timeout_s)


class DeviceBase:
    """Base for every driver (real or simulated); see the module docstring."""

    kind: ClassVar[str] = "device"
    implementation: ClassVar[str] = "base"
    #: (vendor exception type, DeviceError subclass), first match wins; DeviceError passes as is.
    error_map: ClassVar[tuple[tuple[type[BaseException], type[DeviceError]], ...]] = (
        (TimeoutError, DeviceTimeout),
        (ConnectionError, DeviceDisconnected),
        (EOFError, DeviceDisconnected),
    )

    def __init__(self, device_id: str) -> None:
        if not device_id or not isinstance(device_id, str):
            raise ValueError(f"device_id: expected a non-empty string, got {device_id!r}")
        self.device_id = device_id
        self._lock = threading.RLock()
        self._open = False
        self._disconnected = False

    # ------------------------------------------------------------------ lifecycle
    @property
    def is_open(self) -> bool:
        """True when open and not disconnected."""
        return self._open and not self._disconnected

    def open(self, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        """Connect (idempotent)."""
        if self._open and not self._disconnected:
            return
        self._call("open", self._open_hw, timeout_s=timeout_s, require_open=False)
        self._open = True
        self._disconnected = False

    def close(self, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        """Release the hardware; idempotent, bounded and never raises (errors are swallowed on
        purpose: close runs in `finally`/`__exit__` where a second exception would hide the
        first).

        Bounded twice: the device lock is waited for at most `timeout_s` (a call hung inside
        the vendor library holds it; the device is closed anyway, which is what a caller
        closing a hung device wants), and the vendor's release runs under the same deadline
        (`run_with_deadline`); a release that does not return is abandoned and the device is
        marked disconnected, so a later ``open()``/``reconnect()`` starts from scratch.
        """
        timeout_s = check_timeout(timeout_s)
        t0 = time.monotonic()
        locked = self._lock.acquire(timeout=timeout_s)
        try:
            if not self._open:
                return
            self._open = False
            left = max(1e-3, timeout_s - (time.monotonic() - t0))
            try:
                if sys.is_finalizing():  # interpreter exit (__del__): no new threads now
                    self._close_hw()
                else:
                    run_with_deadline(self._close_hw, left, f"{self.device_id}-close")
            except DeviceTimeout:
                self._disconnected = True
            except Exception:  # noqa: BLE001 - see docstring
                pass
        finally:
            if locked:
                self._lock.release()

    def reconnect(self, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        """Close (best effort) and open again."""
        with self._lock:
            self.close(timeout_s=timeout_s)
            self._disconnected = False
            self.open(timeout_s=timeout_s)

    def __enter__(self):
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort at interpreter exit
        with contextlib.suppress(Exception):
            if getattr(self, "_open", False):
                self.close()

    def __repr__(self) -> str:
        state = "open" if self.is_open else ("disconnected" if self._disconnected else "closed")
        return f"<{type(self).__name__} {self.device_id!r} {state}>"

    # ------------------------------------------------------------------ description
    def info(self) -> dict[str, Any]:
        """Static description (no device traffic); subclasses add to `_info_extra`."""
        return {
            "device_id": self.device_id,
            "kind": self.kind,
            "implementation": self.implementation,
            **self._info_extra(),
        }

    def status(self, timeout_s: float = DEFAULT_TIMEOUT_S) -> dict[str, Any]:
        """Live probe; 'state' is open/closed/disconnected, plus `_status_hw` fields."""
        out: dict[str, Any] = {"state": "open" if self.is_open else "closed"}
        if self._disconnected:
            out["state"] = "disconnected"
        if self.is_open:
            out.update(self._call("status", self._status_hw, timeout_s=timeout_s))
        return out

    # ------------------------------------------------------------------ the one wrapper
    def _call(
        self,
        operation: str,
        hook: Callable[..., T],
        *args: Any,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        require_open: bool = True,
        pass_timeout: bool = True,
        use_lock: bool = True,
        **kwargs: Any,
    ) -> T:
        """Run `hook(*args, timeout_s=..., **kwargs)` with lock, state check and error mapping.

        `timeout_s` is the caller's whole budget: waiting for the lock consumes part of it
        and the hook gets what is left. `use_lock=False` is for the few calls that must get
        through while another thread holds the device (an emergency `stop()` during a move);
        such hooks guard their own I/O.
        """
        timeout_s = check_timeout(timeout_s)
        t0 = time.monotonic()
        lock = self._lock if use_lock else _NO_LOCK
        if not lock.acquire(timeout=timeout_s):
            raise DeviceBusy(
                "device lock held by another caller",
                device_id=self.device_id,
                operation=operation,
                elapsed_s=time.monotonic() - t0,
            )
        try:
            if require_open:
                if self._disconnected:
                    raise DeviceDisconnected(
                        "device is disconnected; call reconnect()",
                        device_id=self.device_id,
                        operation=operation,
                        elapsed_s=time.monotonic() - t0,
                    )
                if not self._open:
                    raise DeviceError(
                        "device is not open; call open() or use it as a context manager",
                        device_id=self.device_id,
                        operation=operation,
                        elapsed_s=time.monotonic() - t0,
                    )
            left = max(0.0, timeout_s - (time.monotonic() - t0))
            try:
                if pass_timeout:
                    return hook(*args, timeout_s=left, **kwargs)
                return hook(*args, **kwargs)
            except DeviceError as exc:
                self._annotate(exc, operation, t0)
                if isinstance(exc, DeviceDisconnected):
                    self._disconnected = True
                raise
            except Exception as exc:  # noqa: BLE001 - mapped and chained below
                mapped = self._map_exception(exc)
                err = mapped(
                    f"{type(exc).__name__}: {exc}",
                    device_id=self.device_id,
                    operation=operation,
                    elapsed_s=time.monotonic() - t0,
                )
                if isinstance(err, DeviceDisconnected):
                    self._disconnected = True
                raise err from exc
        finally:
            lock.release()

    def _annotate(self, exc: DeviceError, operation: str, t0: float) -> None:
        """Fill in what a hook did not know (device id, operation, elapsed time)."""
        if exc.device_id in ("?", "", None):
            exc.device_id = self.device_id
        if exc.operation in ("?", "", None):
            exc.operation = operation
        if exc.elapsed_s is None:
            exc.elapsed_s = time.monotonic() - t0
        exc.args = (str(exc),)

    def _map_exception(self, exc: BaseException) -> type[DeviceError]:
        for vendor_type, ours in self.error_map:
            if isinstance(exc, vendor_type):
                return ours
        return DeviceError

    def _raise(self, cls: type[DeviceError], message: str, operation: str = "?") -> None:
        """Raise from inside a hook; `_call` fills in device id and elapsed time."""
        raise cls(message, device_id=self.device_id, operation=operation)

    # ------------------------------------------------------------------ hooks
    def _open_hw(self, timeout_s: float) -> None:
        """Connect to the hardware."""

    def _close_hw(self) -> None:
        """Release the hardware (may raise; `close` swallows it)."""

    def _status_hw(self, timeout_s: float) -> dict[str, Any]:
        return {}

    def _info_extra(self) -> dict[str, Any]:
        return {}
