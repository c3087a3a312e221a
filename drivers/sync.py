"""Display/exposure synchronisation for hardware-in-the-loop work: every frame exposed AFTER
the pattern was shown.

Why: capture and calibration show a pattern, then capture; a frame whose exposure began before
the pattern was on the panel mixes two patterns and must never be stored. With a software
trigger the camera exposes exactly when asked (every frame, at the trigger rate); a camera
without one can only skip the frame already in flight (``frame_policy='after_call'``, at most
half its rate); a hardware-triggered camera is synchronised by the bench's wiring. Whatever
was configured is restored afterwards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from drivers.errors import DeviceError


@contextlib.contextmanager
def exposure_after_show(camera: Any) -> Iterator[str]:
    """Within the block, `camera.capture()` returns only frames exposed after the call.

    Yields how: ``"software trigger"``, ``"hardware trigger"``, ``"after_call frame policy"``
    or ``"on demand"`` (a camera without these controls, e.g. one that renders at capture
    time: its frames start after the call by construction).
    """
    if getattr(camera, "trigger", None) == "hardware":
        yield "hardware trigger"
        return
    if "software" in tuple(getattr(camera, "trigger_modes", ())) and hasattr(camera, "set_trigger"):
        previous = camera.set_trigger("software")
        try:
            yield "software trigger"
        finally:
            with contextlib.suppress(DeviceError):  # a dead camera: the error is already out
                camera.set_trigger(previous)
        return
    if hasattr(camera, "set_frame_policy"):
        previous = camera.set_frame_policy("after_call")
        try:
            yield "after_call frame policy"
        finally:
            camera.set_frame_policy(previous)
        return
    yield "on demand"
