"""One error taxonomy for every device (SLM, camera, stage), real or simulated.

Every error carries the device id, the operation that failed and the time it took, and is
raised `from` the vendor exception so the original cause is never lost.
"""

from __future__ import annotations


class DeviceError(Exception):
    """A device operation failed."""

    def __init__(
        self,
        message: str,
        *,
        device_id: str = "?",
        operation: str = "?",
        elapsed_s: float | None = None,
    ) -> None:
        self.device_id = device_id
        self.operation = operation
        self.elapsed_s = elapsed_s
        self.message = message
        super().__init__(str(self))

    def __str__(self) -> str:
        took = f" after {self.elapsed_s:.3f} s" if self.elapsed_s is not None else ""
        return f"[{self.device_id}] {self.operation} failed{took}: {self.message}"

    def __reduce__(self):  # keep keyword-only fields through pickling (multiprocessing, logs)
        return (
            _rebuild,
            (type(self), self.message, self.device_id, self.operation, self.elapsed_s),
        )


def _rebuild(cls, message, device_id, operation, elapsed_s):
    return cls(message, device_id=device_id, operation=operation, elapsed_s=elapsed_s)


class DeviceTimeout(DeviceError):
    """The device did not answer within `timeout_s`."""


class DeviceDisconnected(DeviceError):
    """The device went away (cable, power, driver); `reconnect()` may bring it back."""


class FrameIncomplete(DeviceError):
    """A camera delivered a partial or corrupted frame."""


class LimitError(DeviceError):
    """A requested move or setting is outside the configured limits (nothing was sent)."""


class ProtocolError(DeviceError):
    """The device's reply was short, garbled or unexpected."""


class DeviceNotFound(DeviceError):
    """No device matched the configured serial/model/id."""


class MotionError(DeviceError):
    """A move did not complete as commanded (stall, following error, hardware limit switch)."""


class DeviceBusy(DeviceTimeout):
    """Another thread held the device lock for longer than `timeout_s`."""


class ConfigurationError(DeviceError, ValueError):
    """A bench config is invalid; the message names the file, the field and what was expected.

    It is a `ValueError` too, so code that validates parameters generically catches it, and the
    CLI prints it as one line.
    """

    def __str__(self) -> str:
        return self.message


class UnsupportedFeature(DeviceError):
    """The device has no such feature (e.g. a camera without an ExposureTime node)."""


class UnsupportedPixelFormat(UnsupportedFeature):
    """A camera delivered a pixel format whose bit depth onnlab does not know (never guessed)."""
