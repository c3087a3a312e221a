"""Newport SMC100CC/PP protocol tables, shared by the real driver and the simulated controller.

From the *SMC100CC & SMC100PP Single-Axis DC or Stepper Motion Controller User's Manual*
(Newport): the ``TS`` controller-state table (two hex digits) and positioner-error bits (four
hex digits), and the ``TE`` command-error letters. They live here, not in the simulator, so the
serial driver (`drivers.stage_smc100`) imports no simulation code (nor torch) and the twin
(`drivers.sim.smc100`) speaks from exactly the same tables.
"""

from __future__ import annotations

# TS controller states (two hex digits), manual "Controller state" table
STATES: dict[str, str] = {
    "0A": "NOT REFERENCED from RESET",
    "0B": "NOT REFERENCED from HOMING",
    "0C": "NOT REFERENCED from CONFIGURATION",
    "0D": "NOT REFERENCED from DISABLE",
    "0E": "NOT REFERENCED from READY",
    "0F": "NOT REFERENCED from MOVING",
    "10": "NOT REFERENCED ESP stage error",
    "11": "NOT REFERENCED from JOGGING",
    "14": "CONFIGURATION",
    "1E": "HOMING commanded from RS-232-C",
    "1F": "HOMING commanded by SMC-RC",
    "28": "MOVING",
    "32": "READY from HOMING",
    "33": "READY from MOVING",
    "34": "READY from DISABLE",
    "35": "READY from JOGGING",
    "3C": "DISABLE from READY",
    "3D": "DISABLE from MOVING",
    "3E": "DISABLE from JOGGING",
    "46": "JOGGING from READY",
    "47": "JOGGING from DISABLE",
}

# TS positioner error bits (four hex digits)
POSITIONER_ERRORS: dict[int, str] = {
    0x0200: "80 W output power exceeded",
    0x0100: "DC voltage too low",
    0x0080: "wrong ESP stage",
    0x0040: "homing time out",
    0x0020: "following error",
    0x0010: "short circuit detection",
    0x0008: "RMS current limit",
    0x0004: "peak current limit",
    0x0002: "positive end of run",
    0x0001: "negative end of run",
}

# TE command error letters
COMMAND_ERRORS: dict[str, str] = {
    "@": "no error",
    "A": "unknown message code or floating point controller address",
    "B": "controller address not correct",
    "C": "parameter missing or out of range",
    "D": "execution not allowed",
    "E": "home sequence already started",
    "F": "ESP stage name unknown",
    "G": "displacement out of limits",
    "H": "command not allowed in NOT REFERENCED state",
    "I": "command not allowed in CONFIGURATION state",
    "J": "command not allowed in DISABLE state",
    "K": "command not allowed in READY state",
    "L": "command not allowed in HOMING state",
    "M": "command not allowed in MOVING state",
    "N": "current position out of software limit",
    "S": "communication time out",
    "U": "error during EEPROM access",
    "V": "error during command execution",
    "W": "command not allowed for PP version",
    "X": "command not allowed for CC version",
}

READY = ("32", "33", "34", "35")
NOT_REFERENCED = ("0A", "0B", "0C", "0D", "0E", "0F", "10", "11")
DISABLED = ("3C", "3D", "3E")
HOMING = ("1E", "1F")  # from RS-232-C (OR) or from the keypad / SMC-RC
JOGGING = ("46", "47")
MOVING = ("28", *HOMING, *JOGGING)
"""Every state in which the motor may be moving: `is_moving()` and stop-on-failure use it."""
STOPPED = (*READY, *NOT_REFERENCED, *DISABLED)


def fmt_number(value: float) -> str:
    """SMC100 number formatting: fixed point, at most 6 decimals, no trailing zeros."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text
