"""Byte-transcript testing of serial drivers (after pymeasure's ``expected_protocol``).

A `TranscriptSerial` is a pyserial-like object scripted with ``(sent, reply)`` pairs: every
write must equal the next expected ``sent`` bytes exactly, and reads return that pair's
``reply`` (``None``: nothing -- the driver's read must time out). At the end `verify()` checks
that the whole script was consumed, so a test pins the driver's wire format byte for byte::

    with expected_transcript([(b"1TP\\r\\n", b"1TP12.5\\r\\n")]) as port:
        stage = SMC100Stage("stage0", port="transcript", limits_m=(0, 0.025),
                            serial_factory=lambda **kw: port)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager


class TranscriptError(AssertionError):
    """The driver wrote something other than the transcript expected."""


class TranscriptSerial:
    """Minimal pyserial `Serial` stand-in replaying a fixed conversation."""

    def __init__(self, pairs: Sequence[tuple[bytes | None, bytes | None]]) -> None:
        self.pairs = [(s, r) for s, r in pairs]
        self.index = 0
        self.is_open = True
        self.timeout: float | None = 1.0
        self.write_timeout: float | None = 1.0
        self._rx = bytearray()
        self._tx = bytearray()
        self.written: list[bytes] = []

    def write(self, data: bytes) -> int:
        if not self.is_open:
            raise TranscriptError("write on a closed port")
        self._tx += bytes(data)
        while self.index < len(self.pairs):
            sent, reply = self.pairs[self.index]
            if sent is None:  # an unsolicited reply: deliver and move on
                self._rx += reply or b""
                self.index += 1
                continue
            if len(self._tx) < len(sent):
                if not sent.startswith(bytes(self._tx)):
                    raise TranscriptError(
                        f"step {self.index}: expected {sent!r}, got {bytes(self._tx)!r}"
                    )
                break
            got = bytes(self._tx[: len(sent)])
            if got != sent:
                raise TranscriptError(f"step {self.index}: expected {sent!r}, got {got!r}")
            del self._tx[: len(sent)]
            self.written.append(got)
            self._rx += reply or b""
            self.index += 1
            if not self._tx:
                break
        else:
            if self._tx:
                raise TranscriptError(f"unexpected write after the transcript: {bytes(self._tx)!r}")
        return len(data)

    def read(self, size: int = 1) -> bytes:
        out = bytes(self._rx[:size])
        del self._rx[:size]
        return out  # short read == timeout, as pyserial

    def read_until(self, expected: bytes = b"\n", size: int | None = None) -> bytes:
        idx = self._rx.find(expected)
        end = len(self._rx) if idx < 0 else idx + len(expected)
        if size is not None:
            end = min(end, size)
        return self.read(end)

    @property
    def in_waiting(self) -> int:
        return len(self._rx)

    def reset_input_buffer(self) -> None:
        self._rx.clear()

    def reset_output_buffer(self) -> None:
        """Nothing buffered on the way out."""

    def flush(self) -> None:
        """Writes are immediate."""

    def close(self) -> None:
        self.is_open = False

    def verify(self) -> None:
        """Every scripted exchange happened and nothing is left unread."""
        if self.index != len(self.pairs):
            raise TranscriptError(
                f"transcript not finished: stopped before step {self.index}: "
                f"{self.pairs[self.index]!r}"
            )
        if self._tx:
            raise TranscriptError(f"unmatched bytes written: {bytes(self._tx)!r}")


@contextmanager
def expected_transcript(
    pairs: Sequence[tuple[bytes | None, bytes | None]],
) -> Iterator[TranscriptSerial]:
    """Yield a `TranscriptSerial`; on normal exit verify the transcript was fully used."""
    port = TranscriptSerial(pairs)
    yield port
    port.verify()
