"""A software Newport SMC100CC controller that speaks the real ASCII protocol.

Modelled on the command set of the *SMC100CC & SMC100PP Single-Axis DC or Stepper Motion
Controller User's Manual* (Newport, "Command Set" / "Controller States" sections; tables in
`drivers.smc100_protocol`): commands
are ``<address><two letters>[<value>|?]\\r\\n``; queries answer ``<address><letters><value>\\r\\n``;
set commands are silent and a later ``TE`` reports the last command error letter.

It is reached THROUGH pyserial (``serial.serial_for_url("sim://smc100?...")``, see
`drivers.sim.protocol_sim`), so the real driver's byte handling, timeouts and parsing are what
get tested. Implemented: ``PA PR TP OR ST TS TE SL SR ID VE RS MM VA``; motion takes real time
(``velocity`` mm/s) so the driver's polling is exercised. Injected faults (URL options):
``stall_at`` (n-th move stops with a following error), ``limit_at`` (n-th move hits an end of
run), ``silent_at`` / ``garble_at`` / ``short_at`` (n-th reply is lost, corrupted or cut).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from drivers.smc100_protocol import (  # noqa: F401 - re-exported for older imports
    COMMAND_ERRORS,
    DISABLED,
    NOT_REFERENCED,
    POSITIONER_ERRORS,
    READY,
    STATES,
    fmt_number,
)


@dataclass
class SMC100Controller:
    """State machine of one controller; `handle(line)` returns the reply bytes (or None)."""

    address: int = 1
    velocity_mm_s: float = 20.0
    home_time_s: float = 0.05
    sl_mm: float = -1.0
    sr_mm: float = 26.0
    stage_id: str = "TRA25CC"
    stall_at: set[int] = field(default_factory=set)
    limit_at: set[int] = field(default_factory=set)
    clock: object = time.monotonic

    def __post_init__(self) -> None:
        self.state = "0A"
        self.error_bits = 0
        self.last_error = "@"
        self._pos = 0.0
        # t0, x0, x1, t1, end state, positioner error bits raised when the move ends
        self._move: tuple[float, float, float, float, str, int] | None = None
        self.moves = 0

    # ------------------------------------------------------------------ motion
    def _now(self) -> float:
        return self.clock()  # type: ignore[operator]

    def _update(self) -> None:
        if self._move is None:
            return
        t0, x0, x1, t1, end, bits = self._move
        now = self._now()
        if now >= t1:
            self._pos, self.state, self._move = x1, end, None
            self.error_bits |= bits
        else:
            self._pos = x0 + (x1 - x0) * (now - t0) / max(t1 - t0, 1e-12)

    def _start(self, target: float, end_state: str, duration: float | None = None) -> None:
        self._update()
        x0 = self._pos
        index, self.moves = self.moves, self.moves + 1
        end, bits = end_state, 0
        if index in self.stall_at or index in self.limit_at:
            # the motor gives up 40 % of the way: DISABLE from MOVING with the error bit set
            bits = 0x0020 if index in self.stall_at else (0x0002 if target >= x0 else 0x0001)
            target, end = x0 + 0.4 * (target - x0), "3D"
        if duration is None:
            duration = abs(target - x0) / self.velocity_mm_s
        t0 = self._now()
        self._move = (t0, x0, target, t0 + duration, end, bits)
        self.state = "28" if end_state != "32" else "1E"

    @property
    def position_mm(self) -> float:
        self._update()
        return self._pos

    # ------------------------------------------------------------------ protocol
    def _err(self, letter: str) -> None:
        self.last_error = letter

    def handle(self, line: bytes) -> bytes | None:
        """One command line (without CR LF) -> reply line (with CR LF) or None."""
        self._update()
        text = line.decode("ascii", errors="replace").strip()
        digits = ""
        while text[: len(digits) + 1].isdigit() and len(digits) < 2:
            digits = text[: len(digits) + 1]
        if not digits:
            return None  # no address: a real controller ignores the line
        if int(digits) != self.address:
            return None  # addressed to another controller on the bus
        cmd, arg = text[len(digits) : len(digits) + 2].upper(), text[len(digits) + 2 :]
        reply = self._dispatch(cmd, arg)
        return None if reply is None else f"{self.address}{cmd}{reply}\r\n".encode("ascii")

    def _number(self, arg: str) -> float | None:
        try:
            return float(arg)
        except ValueError:
            self._err("C")
            return None

    def _dispatch(self, cmd: str, arg: str) -> str | None:
        query = arg == "?"
        if cmd == "TP":
            return fmt_number(self.position_mm)
        if cmd == "TS":
            return f"{self.error_bits:04X}{self.state}"
        if cmd == "TE":
            letter, self.last_error = self.last_error, "@"
            return letter
        if cmd in ("SL", "SR"):
            if query:
                return fmt_number(self.sl_mm if cmd == "SL" else self.sr_mm)
            value = self._number(arg)
            if value is not None:
                setattr(self, cmd.lower() + "_mm", value)
            return None
        if cmd == "ID" and query:
            return self.stage_id
        if cmd == "VE":
            return " SMC_CC - Version 2.0.0 (onnlab simulator)"
        if cmd == "VA":
            if query:
                return fmt_number(self.velocity_mm_s)
            value = self._number(arg)
            if value is not None and value > 0:
                self.velocity_mm_s = value
            return None
        if cmd == "RS":
            self.__post_init__()
            return None
        if cmd == "MM":
            if self.state in READY and arg == "0":
                self.state = "3C"
            elif self.state in DISABLED and arg == "1":
                self.state, self.error_bits = "34", 0
            else:
                self._err("D")
            return None
        if cmd == "ST":
            if self.state in ("28", "1E"):
                self._move = None
                self.state = "33" if self.state == "28" else "0B"
            return None
        if cmd == "OR":
            if self.state not in NOT_REFERENCED:
                self._err("K" if self.state in READY else "D")
                return None
            self._start(0.0, "32", duration=self.home_time_s)
            return None
        if cmd in ("PA", "PR"):
            value = self._number(arg)
            if value is None:
                return None
            if self.state in NOT_REFERENCED:
                self._err("H")
                return None
            if self.state in DISABLED:
                self._err("J")
                return None
            if self.state == "28":
                self._err("M")
                return None
            target = value if cmd == "PA" else self.position_mm + value
            if not self.sl_mm <= target <= self.sr_mm:
                self._err("G")
                return None
            self._start(target, "33")
            return None
        self._err("A")
        return None
