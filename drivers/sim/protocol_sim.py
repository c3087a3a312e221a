"""pyserial URL handler ``sim://<instrument>?options``: simulated instruments on a serial line.

Registered by appending ``"drivers.sim"`` to `serial.protocol_handler_packages` (done by
`register()`, called from `drivers.stage_smc100`), after which ``serial.serial_for_url(
"sim://smc100?address=1&velocity=50")`` returns a `Serial` whose far end is a
`drivers.sim.smc100.SMC100Controller`. The real driver therefore runs unchanged: it writes
bytes, waits on ``timeout`` and parses replies exactly as on a COM port.

The controller behind a URL persists across port close/open (as a powered controller does):
one controller per ``id`` option (default ``""``); use distinct ids for independent stages.

Options: ``id``, ``address``, ``velocity`` (mm/s), ``home_time`` (s), ``sl``/``sr`` (mm),
``stall_at``/``limit_at`` (comma-separated indices of motion commands, homing included;
fixed when the controller is first created), ``silent_at``/``garble_at``/
``short_at`` (comma-separated reply indices), ``disconnect_at`` (command index after which the
line is dead: every read/write raises `serial.SerialException`).
"""

from __future__ import annotations

import threading
import time
import urllib.parse

import serial
from serial.serialutil import PortNotOpenError, SerialBase, SerialException

from drivers.sim.smc100 import SMC100Controller

_INSTRUMENTS = ("smc100",)
_CONTROLLERS: dict[str, SMC100Controller] = {}  # one simulated controller per sim:// id


def register() -> None:
    """Make ``sim://`` URLs known to `serial.serial_for_url` (idempotent)."""
    if "drivers.sim" not in serial.protocol_handler_packages:
        serial.protocol_handler_packages.append("drivers.sim")


def _indices(values: list[str]) -> set[int]:
    return {int(v) for part in values for v in part.split(",") if v.strip()}


class Serial(SerialBase):
    """In-memory serial port connected to a simulated instrument."""

    def open(self) -> None:
        if self.is_open:
            raise SerialException("Port is already open.")
        if self._port is None:
            raise SerialException("Port must be configured before it can be used.")
        self._cond = threading.Condition()
        self._rx = bytearray()
        self._tx = bytearray()
        self._commands = 0
        self._replies = 0
        self._dead = False
        self._from_url(self.port)
        self.is_open = True

    def _from_url(self, url: str) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "sim" or parts.netloc not in _INSTRUMENTS:
            raise SerialException(f"expected sim://smc100?options, got {url!r}")
        opts = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
        known = {
            "address", "velocity", "home_time", "sl", "sr", "stall_at", "limit_at",
            "silent_at", "garble_at", "short_at", "disconnect_at", "id",
        }  # fmt: skip
        unknown = set(opts) - known
        if unknown:
            raise SerialException(f"sim://smc100: unknown option(s) {sorted(unknown)}")

        def num(name: str, default: float) -> float:
            return float(opts[name][0]) if name in opts else default

        key = urllib.parse.urlunsplit(parts._replace(query=f"id={opts.get('id', [''])[0]}"))
        existing = _CONTROLLERS.get(key)
        if existing is not None:  # the far end outlives the port, as real hardware does
            self.controller = existing
        else:
            self.controller = _CONTROLLERS[key] = SMC100Controller(
                address=int(num("address", 1)),
                velocity_mm_s=num("velocity", 20.0),
                home_time_s=num("home_time", 0.05),
                sl_mm=num("sl", -1.0),
                sr_mm=num("sr", 26.0),
                stall_at=_indices(opts.get("stall_at", [])),
                limit_at=_indices(opts.get("limit_at", [])),
            )
        self._silent = _indices(opts.get("silent_at", []))
        self._garble = _indices(opts.get("garble_at", []))
        self._short = _indices(opts.get("short_at", []))
        dis = _indices(opts.get("disconnect_at", []))
        self._disconnect_at = min(dis) if dis else None

    def close(self) -> None:
        self.is_open = False
        super().close()

    def _reconfigure_port(self, *args: object, **kwargs: object) -> None:
        """Nothing to configure on an in-memory line."""

    def _check(self) -> None:
        if not self.is_open:
            raise PortNotOpenError()
        if self._dead:
            raise SerialException("device reports readiness to read but returned no data")

    @property
    def in_waiting(self) -> int:
        self._check()
        return len(self._rx)

    def reset_input_buffer(self) -> None:
        self._check()
        with self._cond:
            self._rx.clear()

    def reset_output_buffer(self) -> None:
        self._check()

    def write(self, data: bytes) -> int:
        self._check()
        data = bytes(data)
        self._tx += data
        while b"\r\n" in self._tx:
            line, _, rest = bytes(self._tx).partition(b"\r\n")
            self._tx = bytearray(rest)
            self._command(line)
        return len(data)

    def _command(self, line: bytes) -> None:
        index = self._commands
        self._commands += 1
        if self._disconnect_at is not None and index >= self._disconnect_at:
            self._dead = True
            raise SerialException("write failed: [Errno 5] Input/output error")
        reply = self.controller.handle(line)
        if reply is None:
            return
        n = self._replies
        self._replies += 1
        if n in self._silent:
            return
        if n in self._garble:
            reply = b"\x1a" + reply[1:3] + b"#?\xfe\r\n"
        elif n in self._short:
            reply = reply[:2]  # cut mid-reply: no terminator
        with self._cond:
            self._rx += reply
            self._cond.notify_all()

    def read(self, size: int = 1) -> bytes:
        self._check()
        deadline = None if self._timeout is None else time.monotonic() + self._timeout
        with self._cond:
            while len(self._rx) < size:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                self._cond.wait(timeout=left)
                self._check()
            out = bytes(self._rx[:size])
            del self._rx[:size]
        return out

    def flush(self) -> None:
        """Writes are immediate; nothing to flush (also called by close())."""
