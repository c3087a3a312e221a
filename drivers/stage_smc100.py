"""Newport SMC100CC/PP single-axis controller over RS-232 (pyserial), as a `Stage`.

Protocol: Newport, *SMC100CC & SMC100PP Single-Axis DC or Stepper Motion Controller -- User's
Manual*, section "Command Set" (two-letter ASCII commands ``<addr><CC><value>\\r\\n``, 57600
baud 8N1 with XON/XOFF) and the ``TS`` controller-state / positioner-error tables and ``TE``
command-error letters in `drivers.smc100_protocol` (shared with the simulated controller; this
module imports nothing from `drivers.sim`). Commands used:

``PA``/``PR`` move absolute/relative (controller units, mm for linear stages) · ``TP`` position
· ``OR`` home search · ``ST`` stop · ``TS`` positioner error + controller state · ``TE`` last
command error · ``SL?``/``SR?`` controller software limits · ``ID?`` stage model · ``MM1``
leave DISABLE (only with ``enable_on_open``).

Design (pymeasure's Instrument/Adapter split, without silent timeouts):
* Limits are enforced HERE, before a move is written: the config's ``limits_m`` intersected
  with the controller's ``SL``/``SR`` -> `LimitError`, nothing sent.
* Every set command is followed by ``TE``; a letter other than ``@`` raises (G, N -> LimitError;
  others -> DeviceError with the manual's text).
* Every reply must be ``<addr><CC><value>\\r\\n``; anything short, garbled or with the wrong
  echo raises `ProtocolError` -- a value is never guessed. No reply in time -> `DeviceTimeout`.
* A move polls ``TS`` until READY; a positioner error aborts it (end of run -> `LimitError`,
  following error etc. -> `MotionError`). EVERY failure while the controller may still be
  moving (time out, a lost ``TS`` reply, a garbled ``TE`` right after ``PA``, a stop request)
  sends ``ST`` and polls ``TS`` until the controller is no longer MOVING/HOMING/JOGGING before
  raising; the error says that it stopped and in which state the controller ended.
* Homing (``OR``) has its own deadline, ``home_timeout_s`` (a real home search takes 8-30 s),
  also when it runs inside ``open()`` (``home_on_open``): the open timeout bounds the
  handshake, not the search.
* A DISABLED controller (after a following error, say) is re-enabled (``MM1``) on open only
  with ``enable_on_open=True``; otherwise moves are refused with the controller's state named.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

import serial

from drivers.base import DeviceBase
from drivers.errors import (
    DeviceDisconnected,
    DeviceError,
    DeviceNotFound,
    DeviceTimeout,
    LimitError,
    MotionError,
    ProtocolError,
)
from drivers.protocols import DEFAULT_MOVE_TIMEOUT_S, DEFAULT_TIMEOUT_S
from drivers.smc100_protocol import (
    COMMAND_ERRORS,
    DISABLED,
    MOVING,
    NOT_REFERENCED,
    POSITIONER_ERRORS,
    READY,
    STATES,
    fmt_number,
)

POLL_S = 0.01
DEFAULT_HOME_TIMEOUT_S = 60.0
"""A real home search takes roughly 8-30 s; homing never shares the open/move budget."""
STOP_CONFIRM_S = 2.0
"""How long a stop-on-failure waits for the controller to leave MOVING (deceleration)."""
_LIMIT_BITS = 0x0003  # positive / negative end of run


def decode_positioner_errors(bits: int) -> list[str]:
    """TS error bits -> manual texts (most severe first)."""
    return [text for bit, text in POSITIONER_ERRORS.items() if bits & bit]


class _StillMoving(Exception):
    """Internal: `error` happened while the controller may still be moving."""

    def __init__(self, error: DeviceError) -> None:
        super().__init__(str(error))
        self.error = error


class SMC100Stage(DeviceBase):
    """One SMC100 axis; positions in metres (``units_per_m`` converts to controller units)."""

    kind = "stage"
    implementation = "smc100"
    error_map = (
        (serial.SerialTimeoutException, DeviceTimeout),
        (serial.SerialException, DeviceDisconnected),
        *DeviceBase.error_map,
        (OSError, DeviceDisconnected),
    )

    def __init__(
        self,
        device_id: str,
        port: str,
        limits_m: tuple[float, float],
        *,
        address: int = 1,
        baudrate: int = 57600,
        units_per_m: float = 1000.0,
        home_on_open: bool = False,
        home_timeout_s: float = DEFAULT_HOME_TIMEOUT_S,
        enable_on_open: bool = False,
        serial_factory: Callable[..., Any] | None = None,
    ) -> None:
        super().__init__(device_id)
        if not limits_m[0] < limits_m[1]:
            raise ValueError(f"limits_m: expected (min, max) with min < max, got {limits_m!r}")
        if not 1 <= address <= 31:
            raise ValueError(f"address: expected 1..31, got {address!r}")
        self.port = port
        self.address = int(address)
        self.baudrate = int(baudrate)
        self.units_per_m = float(units_per_m)
        self.home_on_open = home_on_open
        if not home_timeout_s > 0:
            raise ValueError(f"home_timeout_s: expected > 0, got {home_timeout_s!r}")
        self.home_timeout_s = float(home_timeout_s)
        self.enable_on_open = enable_on_open
        self._open_state: str | None = None
        self._config_limits = (float(limits_m[0]), float(limits_m[1]))
        self._limits = self._config_limits
        self._factory = serial_factory or serial.serial_for_url
        self._ser: Any = None
        self._io = threading.Lock()  # one transaction on the wire at a time (stop() included)
        self._stop_requested = threading.Event()
        self._ident: dict[str, str] = {}

    @classmethod
    def from_config(cls, device_id: str, cfg: Any, bench: Any = None) -> SMC100Stage:
        return cls(
            device_id,
            cfg.port,
            tuple(cfg.limits_m),
            address=cfg.address,
            baudrate=cfg.baudrate,
            units_per_m=cfg.units_per_m,
            home_on_open=cfg.home_on_open,
            home_timeout_s=cfg.home_timeout_s,
            enable_on_open=cfg.enable_on_open,
        )

    # ------------------------------------------------------------------ wire level
    def _transact(self, command: str, *, reply: bool, timeout_s: float) -> str | None:
        """Write ``<addr><command>`` and, for queries, read and validate the reply value."""
        ser = self._ser
        head = f"{self.address}{command[:2]}"
        with self._io:
            if reply:
                ser.reset_input_buffer()  # stale bytes would shift every later reply
            ser.timeout = max(timeout_s, 1e-3)
            ser.write(f"{self.address}{command}\r\n".encode("ascii"))
            if not reply:
                return None
            raw = ser.read_until(b"\r\n")
        if not raw:
            raise DeviceTimeout(f"no reply to {head!r} within {timeout_s:.3f} s")
        if not raw.endswith(b"\r\n"):
            raise ProtocolError(f"short reply to {head!r}: {raw!r} (no CR LF terminator)")
        try:
            text = raw[:-2].decode("ascii")
        except UnicodeDecodeError as exc:
            raise ProtocolError(f"garbled reply to {head!r}: {raw!r}") from exc
        if not text.startswith(head):
            raise ProtocolError(f"garbled reply to {head!r}: {raw!r} (wrong echo)")
        return text[len(head) :]

    def _query(self, command: str, timeout_s: float) -> str:
        value = self._transact(command, reply=True, timeout_s=timeout_s)
        assert value is not None
        return value

    def _query_float(self, command: str, timeout_s: float) -> float:
        value = self._query(command, timeout_s)
        try:
            return float(value)
        except ValueError as exc:
            raise ProtocolError(
                f"expected a number in reply to {command!r}, got {value!r}"
            ) from exc

    def _command(self, command: str, timeout_s: float) -> None:
        """Silent set command, then ``TE`` to learn whether the controller accepted it."""
        self._transact(command, reply=False, timeout_s=timeout_s)
        letter = self._query("TE", timeout_s)
        if letter not in COMMAND_ERRORS:
            raise ProtocolError(f"unknown TE error code {letter!r} after {command!r}")
        if letter == "@":
            return
        text = f"controller refused {command!r}: {letter} ({COMMAND_ERRORS[letter]})"
        if letter in "DHIJKLM":  # refused because of the state: say which one it is in
            with contextlib.suppress(DeviceError):
                _, state = self._state(timeout_s)
                text += f"; controller state {state} ({STATES[state]})"
                if state in DISABLED:
                    text += " - clear the cause, then reconnect with enable_on_open: true"
        raise (LimitError if letter in "GN" else DeviceError)(text)

    def _state(self, timeout_s: float) -> tuple[int, str]:
        value = self._query("TS", timeout_s)
        if len(value) != 6:
            raise ProtocolError(
                f"TS reply must be 4 hex error digits + 2 state digits, got {value!r}"
            )
        try:
            bits = int(value[:4], 16)
        except ValueError as exc:
            raise ProtocolError(f"TS error field is not hex: {value!r}") from exc
        state = value[4:].upper()
        if state not in STATES:
            raise ProtocolError(f"unknown TS controller state {state!r}")
        return bits, state

    # ------------------------------------------------------------------ lifecycle hooks
    def _open_hw(self, timeout_s: float) -> None:
        try:
            self._ser = self._factory(
                self.port,
                baudrate=self.baudrate,
                timeout=timeout_s,
                xonxoff=True,
                write_timeout=timeout_s,
            )
        except (serial.SerialException, ValueError, OSError) as exc:
            raise DeviceNotFound(f"cannot open serial port {self.port!r}: {exc}") from exc
        t0 = time.monotonic()

        def left() -> float:
            return max(1e-3, timeout_s - (time.monotonic() - t0))

        try:
            self._ident = {"model": self._query("ID?", left()).strip()}
            lo_mm, hi_mm = self._query_float("SL?", left()), self._query_float("SR?", left())
            lo = max(self._config_limits[0], lo_mm / self.units_per_m)
            hi = min(self._config_limits[1], hi_mm / self.units_per_m)
            if not lo < hi:
                raise LimitError(
                    f"configured limits {self._config_limits} m do not overlap the controller's "
                    f"SL/SR [{lo_mm}, {hi_mm}] controller units"
                )
            self._limits = (lo, hi)
            _, state = self._state(left())
            if state in DISABLED and self.enable_on_open:  # asked for: leave DISABLE (MM1)
                self._command("MM1", left())
                _, state = self._state(left())
            self._open_state = state
            if state in NOT_REFERENCED and self.home_on_open:
                self._move_hw("OR", self.home_timeout_s)  # its own deadline, not the open's
        except BaseException:
            with contextlib.suppress(Exception):  # keep the original error visible
                self._close_hw()
            raise

    def _close_hw(self) -> None:
        ser, self._ser = self._ser, None
        if ser is not None:
            ser.close()

    # ------------------------------------------------------------------ Stage protocol
    @property
    def limits_m(self) -> tuple[float, float]:
        return self._limits

    @property
    def position_m(self) -> float:
        return self.get_position()

    def get_position(self, timeout_s: float = DEFAULT_TIMEOUT_S) -> float:
        return self._call("get_position", self._position_hw, timeout_s=timeout_s)

    def _position_hw(self, timeout_s: float) -> float:
        return self._query_float("TP", timeout_s) / self.units_per_m

    def is_moving(self, timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
        return self._call(
            "is_moving", lambda timeout_s: self._state(timeout_s)[1] in MOVING, timeout_s=timeout_s
        )

    def _check_target(self, target_m: float, operation: str) -> None:
        lo, hi = self._limits
        if not (target_m == target_m and lo <= target_m <= hi):  # NaN fails too
            raise LimitError(
                f"target {target_m!r} m outside limits [{lo}, {hi}] m; nothing sent",
                device_id=self.device_id,
                operation=operation,
            )

    def move_absolute(self, position_m: float, timeout_s: float = DEFAULT_MOVE_TIMEOUT_S) -> float:
        self._check_target(float(position_m), "move_absolute")
        cmd = "PA" + fmt_number(float(position_m) * self.units_per_m)
        return self._call("move_absolute", self._move_hw, cmd, timeout_s=timeout_s)

    def move_relative(self, delta_m: float, timeout_s: float = DEFAULT_MOVE_TIMEOUT_S) -> float:
        return self._call(
            "move_relative", self._move_relative_hw, float(delta_m), timeout_s=timeout_s
        )

    def _move_relative_hw(self, delta_m: float, timeout_s: float) -> float:
        t0 = time.monotonic()
        here = self._position_hw(timeout_s)
        self._check_target(here + delta_m, "move_relative")  # still nothing sent
        cmd = "PR" + fmt_number(delta_m * self.units_per_m)
        return self._move_hw(cmd, max(1e-3, timeout_s - (time.monotonic() - t0)))

    def home(self, timeout_s: float | None = None) -> float:
        """Home search when NOT REFERENCED, else move to 0; `timeout_s` defaults to
        ``home_timeout_s``."""
        budget = self.home_timeout_s if timeout_s is None else timeout_s
        return self._call("home", self._home_hw, timeout_s=budget)

    def _home_hw(self, timeout_s: float) -> float:
        _, state = self._state(timeout_s)
        if state in NOT_REFERENCED:
            return self._move_hw("OR", timeout_s)
        self._check_target(0.0, "home")  # referenced: home means the home position (0)
        return self._move_hw("PA0", timeout_s)

    def stop(self, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        """Sends ``ST`` without waiting for the device lock, so it interrupts a running move."""
        self._stop_requested.set()
        self._call("stop", self._stop_hw, timeout_s=timeout_s, use_lock=False)

    def _stop_hw(self, timeout_s: float) -> None:
        if self._ser is None:
            raise DeviceDisconnected("port is closed")
        self._transact("ST", reply=False, timeout_s=timeout_s)

    def _move_hw(self, cmd: str, timeout_s: float) -> float:
        """Send a motion command and wait for READY; on any failure stop the motion first."""
        t0 = time.monotonic()
        self._stop_requested.clear()
        try:
            # A lost or garbled TE leaves unknown whether the move started: stop it. A TE
            # letter (refused) means nothing moves; a dead line cannot carry ST anyway.
            self._command(cmd, timeout_s)
            return self._wait_ready(cmd, t0, timeout_s)
        except _StillMoving as exc:
            raise self._stopped(exc.error, cmd) from exc.error.__cause__
        except (ProtocolError, DeviceTimeout) as exc:
            raise self._stopped(exc, cmd) from exc

    def _wait_ready(self, cmd: str, t0: float, timeout_s: float) -> float:
        while True:
            left = timeout_s - (time.monotonic() - t0)
            if left <= 0:
                raise _StillMoving(DeviceTimeout(f"{cmd!r} not finished within {timeout_s:.3f} s"))
            bits, state = self._state(max(left, 1e-3))
            if bits:
                what = ", ".join(decode_positioner_errors(bits))
                error = (LimitError if bits & _LIMIT_BITS else MotionError)(
                    f"{cmd!r} aborted: {what}"
                )
                if state in MOVING:
                    raise _StillMoving(error)
                raise error
            if state in READY:
                if self._stop_requested.is_set():
                    raise MotionError(f"{cmd!r} stopped by stop() before reaching its target")
                return self._position_hw(max(left, 1e-3))
            if state in DISABLED or state in NOT_REFERENCED:
                raise MotionError(f"{cmd!r} ended in state {state} ({STATES[state]})")
            time.sleep(min(POLL_S, max(left, 0)))

    def _stopped(self, error: DeviceError, cmd: str) -> DeviceError:
        """Send ST, poll TS until the controller is no longer moving, and return `error` with
        what happened appended (the same error type, so callers' handling does not change)."""
        try:
            self._transact("ST", reply=False, timeout_s=1.0)
        except Exception as exc:  # noqa: BLE001 - reported in the message; the original wins
            note = f"; ST could NOT be sent ({type(exc).__name__}: {exc}) - the stage may move"
        else:
            note = "; sent ST"
            deadline = time.monotonic() + STOP_CONFIRM_S
            state = None
            while time.monotonic() < deadline:
                try:
                    _, state = self._state(0.5)
                except DeviceError as exc:
                    note += f", state not confirmed ({exc.message})"
                    break
                if state not in MOVING:
                    note += f", controller stopped in state {state} ({STATES[state]})"
                    break
                time.sleep(POLL_S)
            else:
                note += f", controller STILL in state {state} after {STOP_CONFIRM_S} s"
        stopped = type(error)(error.message + note)
        stopped.__cause__ = error.__cause__
        return stopped

    # ------------------------------------------------------------------ description
    def _status_hw(self, timeout_s: float) -> dict[str, Any]:
        bits, state = self._state(timeout_s)
        return {
            "position_m": self._position_hw(timeout_s),
            "controller_state": f"{state} ({STATES[state]})",
            "positioner_errors": decode_positioner_errors(bits),
        }

    def _info_extra(self) -> dict[str, Any]:
        return {
            "port": self.port,
            "address": self.address,
            "model": self._ident.get("model"),
            "serial": None,  # SMC100 does not report a serial number over RS-232
            "limits_m": list(self._limits),
            "state_on_open": self._open_state,
        }
