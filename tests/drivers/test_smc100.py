"""SMC100 driver: byte-for-byte transcripts (pymeasure `expected_protocol` style) and the
simulated controller reached through pyserial's own `serial_for_url`."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid

import pytest
import serial

from drivers.errors import (
    DeviceDisconnected,
    DeviceError,
    DeviceNotFound,
    DeviceTimeout,
    LimitError,
    MotionError,
    ProtocolError,
)
from drivers.sim import protocol_sim
from drivers.sim.transcript import TranscriptError, TranscriptSerial, expected_transcript
from drivers.stage_smc100 import SMC100Stage, decode_positioner_errors

protocol_sim.register()  # sim://smc100 URLs (the real driver no longer registers them)

OPEN = [
    (b"1ID?\r\n", b"1IDTRA25CC\r\n"),
    (b"1SL?\r\n", b"1SL0\r\n"),
    (b"1SR?\r\n", b"1SR25\r\n"),
    (b"1TS\r\n", b"1TS000033\r\n"),
]


def _stage(port: TranscriptSerial, limits=(0.0, 0.02)) -> SMC100Stage:
    stage = SMC100Stage("stage0", "transcript", limits, serial_factory=lambda *a, **k: port)
    stage.open(timeout_s=1.0)
    return stage


def test_open_reads_identity_and_intersects_limits() -> None:
    with expected_transcript(OPEN) as port:
        stage = _stage(port, limits=(-0.005, 0.02))
    assert stage.limits_m == (0.0, 0.02)  # controller SL=0 mm wins over the config's -5 mm
    assert stage.info()["model"] == "TRA25CC"


def test_move_absolute_wire_format_and_polling() -> None:
    script = OPEN + [
        (b"1PA12.5\r\n", None),
        (b"1TE\r\n", b"1TE@\r\n"),
        (b"1TS\r\n", b"1TS000028\r\n"),  # MOVING
        (b"1TS\r\n", b"1TS000033\r\n"),  # READY from MOVING
        (b"1TP\r\n", b"1TP12.49999\r\n"),
    ]
    with expected_transcript(script) as port:
        stage = _stage(port)
        assert stage.move_absolute(12.5e-3) == pytest.approx(12.49999e-3)


def test_move_relative_checks_limits_against_position_first() -> None:
    script = OPEN + [
        (b"1TP\r\n", b"1TP19.9\r\n"),  # 19.9 mm + 0.2 mm > 20 mm limit: PR never written
        (b"1TP\r\n", b"1TP19.9\r\n"),
        (b"1PR-0.0001\r\n", None),
        (b"1TE\r\n", b"1TE@\r\n"),
        (b"1TS\r\n", b"1TS000033\r\n"),
        (b"1TP\r\n", b"1TP19.8999\r\n"),
    ]
    with expected_transcript(script) as port:
        stage = _stage(port)
        with pytest.raises(LimitError, match="nothing sent"):
            stage.move_relative(0.2e-3)
        assert stage.move_relative(-1e-7) == pytest.approx(19.8999e-3)


def test_software_limits_write_nothing() -> None:
    with expected_transcript(OPEN) as port:
        stage = _stage(port)
        for target in (0.0201, -1e-9, float("nan")):
            with pytest.raises(LimitError, match="nothing sent"):
                stage.move_absolute(target)
    assert port.written == [s for s, _ in OPEN]  # not one byte after the handshake


@pytest.mark.parametrize(
    ("letter", "error", "text", "ts"),
    [
        ("G", LimitError, "displacement out of limits", None),
        ("F", DeviceError, "ESP stage name unknown", None),  # was missing: 'unknown TE code'
        ("H", DeviceError, "NOT REFERENCED.*state 0A", b"1TS00000A\r\n"),
        ("M", DeviceError, "MOVING.*state 28", b"1TS000028\r\n"),
    ],
)
def test_command_errors_are_decoded(letter: str, error: type, text: str, ts) -> None:
    script = OPEN + [(b"1PA1\r\n", None), (b"1TE\r\n", f"1TE{letter}\r\n".encode())]
    if ts is not None:  # refused because of the state: the error names the state
        script.append((b"1TS\r\n", ts))
    with expected_transcript(script) as port:
        stage = _stage(port)
        with pytest.raises(error, match=text):
            stage.move_absolute(1e-3)


@pytest.mark.parametrize(
    ("ts", "error", "text"),
    [
        (b"1TS00203D\r\n", MotionError, "following error"),
        (b"1TS00023D\r\n", LimitError, "positive end of run"),
        (b"1TS00003D\r\n", MotionError, "DISABLE from MOVING"),
    ],
)
def test_positioner_errors_abort_the_move(ts: bytes, error: type, text: str) -> None:
    script = OPEN + [(b"1PA1\r\n", None), (b"1TE\r\n", b"1TE@\r\n"), (b"1TS\r\n", ts)]
    with expected_transcript(script) as port:
        stage = _stage(port)
        with pytest.raises(error, match=text):
            stage.move_absolute(1e-3)


@pytest.mark.parametrize(
    ("reply", "error", "text"),
    [
        (b"1TP12.5", ProtocolError, "short reply"),  # no CR LF
        (b"1T\r\n", ProtocolError, "wrong echo"),
        (b"2TP12.5\r\n", ProtocolError, "wrong echo"),  # another controller answered
        (b"1TP\xff\xfe\r\n", ProtocolError, "garbled"),
        (b"1TPabc\r\n", ProtocolError, "expected a number"),
        (None, DeviceTimeout, "no reply"),
    ],
)
def test_bad_replies_never_pass_as_values(reply, error, text) -> None:
    with expected_transcript(OPEN + [(b"1TP\r\n", reply)]) as port:
        stage = _stage(port)
        with pytest.raises(error, match=text) as info:
            stage.get_position(timeout_s=0.05)
    assert info.value.device_id == "stage0" and info.value.operation == "get_position"


@pytest.mark.parametrize(
    "ts", [b"1TS0000\r\n", b"1TSzz0033\r\n", b"1TS000099\r\n"], ids=["short", "hex", "state"]
)
def test_malformed_status_is_a_protocol_error(ts: bytes) -> None:
    with expected_transcript(OPEN + [(b"1TS\r\n", ts)]) as port:
        stage = _stage(port)
        with pytest.raises(ProtocolError):
            stage.is_moving()


class _ForeverMoving(TranscriptSerial):
    """After the handshake: accepts PA, answers TE '@' and TS 'MOVING' until it gets ST."""

    def write(self, data: bytes) -> int:
        if self.index < len(self.pairs):
            return super().write(data)
        self.written.append(bytes(data))
        moving = b"1ST\r\n" not in self.written
        replies = {b"1TE\r\n": b"1TE@\r\n", b"1TS\r\n": b"1TS0000" + (b"28" if moving else b"33")}
        self._rx += replies.get(bytes(data), b"") + (b"\r\n" if bytes(data) in replies else b"")
        return len(data)


def test_move_timeout_sends_stop_and_confirms_it() -> None:
    port = _ForeverMoving(OPEN)
    stage = _stage(port)
    t0 = time.monotonic()
    with pytest.raises(DeviceTimeout, match=r"sent ST, controller stopped in state 33"):
        stage.move_absolute(1e-3, timeout_s=0.05)
    assert time.monotonic() - t0 < 0.5
    assert port.written[len(OPEN) :][:2] == [b"1PA1\r\n", b"1TE\r\n"]
    assert port.written[-2:] == [b"1ST\r\n", b"1TS\r\n"]  # stop, then confirm the state


# ---------------------------------------------------------------- issue 16: failed moves stop
MOVE = [(b"1PA1\r\n", None), (b"1TE\r\n", b"1TE@\r\n")]
STOP_CONFIRMED = [
    (b"1ST\r\n", None),
    (b"1TS\r\n", b"1TS000028\r\n"),
    (b"1TS\r\n", b"1TS000033\r\n"),
]


@pytest.mark.parametrize(
    ("during_move", "error", "text"),
    [
        ([(b"1TS\r\n", None)], DeviceTimeout, "no reply to '1TS'"),  # a TS reply is lost
        ([(b"1TS\r\n", b"1TS00\xff28\r\n")], ProtocolError, "garbled"),
        ([(b"1TS\r\n", b"1TS000028\r\n"), (b"1TS\r\n", b"1TX\r\n")], ProtocolError, "echo"),
    ],
    ids=["lost-TS", "garbled-TS", "wrong-echo-TS"],
)
def test_failure_while_moving_stops_the_motion_first(during_move, error, text) -> None:
    """The controller is still MOVING when the driver gives up: ST, confirm, then raise."""
    script = OPEN + MOVE + during_move + STOP_CONFIRMED
    with expected_transcript(script) as port:
        stage = _stage(port)
        with pytest.raises(error, match=text) as info:
            stage.move_absolute(1e-3, timeout_s=0.2)
    assert "sent ST, controller stopped in state 33 (READY from MOVING)" in str(info.value)
    assert isinstance(info.value.__cause__, error)


@pytest.mark.parametrize("te", [b"1TE\xfe@\r\n", b"1T", None], ids=["garbled", "short", "lost"])
def test_unreadable_te_right_after_pa_stops_the_motion(te) -> None:
    """After PA the TE answer is lost or garbled: did the move start? Stop it to be sure."""
    script = OPEN + [(b"1PA1\r\n", None), (b"1TE\r\n", te)] + STOP_CONFIRMED
    with expected_transcript(script) as port:
        stage = _stage(port)
        with pytest.raises((ProtocolError, DeviceTimeout), match="sent ST, controller stopped"):
            stage.move_absolute(1e-3, timeout_s=0.1)


def test_stop_that_cannot_be_confirmed_says_so() -> None:
    script = OPEN + MOVE + [(b"1TS\r\n", None), (b"1ST\r\n", None), (b"1TS\r\n", None)]
    with expected_transcript(script) as port:
        stage = _stage(port)
        with pytest.raises(DeviceTimeout, match="sent ST, state not confirmed"):
            stage.move_absolute(1e-3, timeout_s=0.1)


@pytest.mark.parametrize("state", ["1F", "46", "47", "28", "1E"])
def test_is_moving_in_every_moving_state(state: str) -> None:
    """1F (homing from the keypad) and 46/47 (jogging) were reported as not moving."""
    ts = f"1TS0000{state}\r\n".encode()
    with expected_transcript(OPEN + [(b"1TS\r\n", ts), (b"1TS\r\n", b"1TS000033\r\n")]) as port:
        stage = _stage(port)
        assert stage.is_moving() is True
        assert stage.is_moving() is False


def test_disabled_controller_is_not_re_enabled_unless_asked() -> None:
    disabled = OPEN[:3] + [(b"1TS\r\n", b"1TS00203D\r\n")]  # DISABLE from MOVING (following err)
    refused = [
        (b"1PA1\r\n", None),
        (b"1TE\r\n", b"1TEJ\r\n"),
        (b"1TS\r\n", b"1TS00203D\r\n"),
    ]
    with expected_transcript(disabled + refused) as port:  # no MM1 anywhere
        stage = _stage(port)
        assert stage.info()["state_on_open"] == "3D"
        with pytest.raises(DeviceError, match=r"DISABLE from MOVING.*enable_on_open"):
            stage.move_absolute(1e-3)
    enable = [(b"1MM1\r\n", None), (b"1TE\r\n", b"1TE@\r\n"), (b"1TS\r\n", b"1TS000034\r\n")]
    with expected_transcript(disabled + enable) as port:
        stage = SMC100Stage(
            "stage0", "t", (0.0, 0.02), enable_on_open=True, serial_factory=lambda *a, **k: port
        )
        stage.open(timeout_s=1.0)
        assert stage.info()["state_on_open"] == "34"


def test_home_on_open_has_its_own_timeout() -> None:
    """A home search longer than the open timeout completes (it used to time out)."""
    stage = SMC100Stage(
        "stage0", _url(home_time=0.4), (0.0, 0.025), home_on_open=True, home_timeout_s=5.0
    )
    stage.open(timeout_s=0.1)  # handshake budget only
    assert "READY from HOMING" in stage.status()["controller_state"]
    stage.close()
    short = SMC100Stage(
        "stage0", _url(home_time=0.4), (0.0, 0.025), home_on_open=True, home_timeout_s=0.1
    )
    with pytest.raises(DeviceTimeout, match="'OR' not finished.*sent ST"):
        short.open(timeout_s=5.0)


@pytest.mark.parametrize(
    "module", ["drivers.stage_smc100", "drivers.camera_genicam", "drivers.slm_slmsuite"]
)
def test_real_driver_imports_no_simulator(module: str) -> None:
    code = (
        f"import sys, {module}; "
        "bad = [m for m in sys.modules if m.startswith('drivers.sim') or m == 'torch']; "
        "assert not bad, bad"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_transcript_catches_unexpected_bytes() -> None:
    port = TranscriptSerial([(b"1TP\r\n", b"1TP0\r\n")])
    with pytest.raises(TranscriptError, match="expected"):
        port.write(b"1TS\r\n")


def test_decode_positioner_error_bits() -> None:
    assert decode_positioner_errors(0x0021) == ["following error", "negative end of run"]
    assert decode_positioner_errors(0) == []


# ---------------------------------------------------------------- simulated controller


def _url(**opts: object) -> str:
    opts = {"velocity": 100, **opts}
    return f"sim://smc100?id={uuid.uuid4().hex}" + "".join(f"&{k}={v}" for k, v in opts.items())


def test_sim_controller_through_serial_for_url() -> None:
    port = serial.serial_for_url(_url(), timeout=0.5)
    port.write(b"1TS\r\n")
    assert port.read_until(b"\r\n") == b"1TS00000A\r\n"  # NOT REFERENCED from RESET
    port.write(b"1PA5\r\n1TE\r\n")
    assert port.read_until(b"\r\n") == b"1TEH\r\n"  # moves refused before homing
    port.write(b"2TP\r\n")  # another address: silence
    assert port.read_until(b"\r\n") == b""
    port.close()


def test_sim_stage_home_move_stall_limit_and_recovery() -> None:
    stage = SMC100Stage("stage0", _url(stall_at=2, limit_at=3), (0.0, 0.025), enable_on_open=True)
    stage.open()
    assert "NOT REFERENCED" in stage.status()["controller_state"]
    assert stage.home() == 0.0  # move 0 (OR)
    assert stage.move_absolute(0.01) == pytest.approx(0.01)  # move 1
    with pytest.raises(MotionError, match="following error"):
        stage.move_absolute(0.02)  # move 2 stalls 40 % of the way
    assert stage.get_position() == pytest.approx(0.014, abs=1e-6)
    with pytest.raises(DeviceError, match="DISABLE"):
        stage.move_absolute(0.012)  # controller refuses (J) until re-enabled
    stage.reconnect()  # enable_on_open: re-open re-enables (MM1), the position was kept
    assert "READY" in stage.status()["controller_state"]
    with pytest.raises(LimitError, match="end of run"):
        stage.move_absolute(0.02)  # move 3 hits the end-of-run switch
    stage.close()


def test_sim_stage_stop_from_another_thread_interrupts_a_move() -> None:
    stage = SMC100Stage("stage0", _url(velocity=2), (0.0, 0.025), home_on_open=True)
    stage.open()
    timer = threading.Timer(0.1, stage.stop)
    timer.start()
    t0 = time.monotonic()
    with pytest.raises(MotionError, match="stopped"):
        stage.move_absolute(0.02, timeout_s=5.0)
    timer.join()
    assert time.monotonic() - t0 < 1.0
    assert 0.0 < stage.get_position() < 0.002
    stage.close()


@pytest.mark.parametrize(
    ("opt", "error"),
    [("silent_at", DeviceTimeout), ("garble_at", ProtocolError), ("short_at", ProtocolError)],
)
def test_sim_reply_faults_surface_typed(opt: str, error: type) -> None:
    stage = SMC100Stage("stage0", _url(**{opt: 4}), (0.0, 0.025))
    stage.open(timeout_s=1.0)  # replies 0-3: ID, SL, SR, TS
    with pytest.raises(error):
        stage.get_position(timeout_s=0.1)
    assert stage.get_position(timeout_s=0.5) == 0.0  # a bad reply does not poison the next


def test_sim_disconnect_then_reconnect() -> None:
    stage = SMC100Stage("stage0", _url(disconnect_at=5), (0.0, 0.025))
    stage.open()  # commands 0-3
    stage.get_position()  # command 4
    with pytest.raises(DeviceDisconnected):
        stage.get_position()
    with pytest.raises(DeviceDisconnected, match="reconnect"):
        stage.get_position()
    stage.reconnect()  # a fresh port (disconnect_at counts per port): usable again
    assert stage.get_position() == 0.0
    stage.close()


def test_missing_port_is_device_not_found() -> None:
    stage = SMC100Stage("stage0", "/dev/does-not-exist-onnlab", (0.0, 0.025))
    with pytest.raises(DeviceNotFound, match="does-not-exist"):
        stage.open(timeout_s=0.5)
