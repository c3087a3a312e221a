"""Seeded fault injection for the simulated twins.

Real benches fail in a handful of ways that calibration and capture code must survive; the
twins reproduce each one on demand, deterministically (same seed -> same faults at the same
calls), so a test can assert that every fault surfaces as the right typed error:

- ``slm.timeout``: ``show`` is not acknowledged in time, nothing displayed -> `DeviceTimeout`.
- ``slm.disconnect``: display link lost; refuses work until reconnect() -> `DeviceDisconnected`.
- ``slm.latency``: the panel updates one frame late; that frame carries the PREVIOUS pattern's
  id in `Frame.pattern_id` (honest, so latency is detectable, never silent).
- ``camera.timeout``: no frame arrives within ``timeout_s`` -> `DeviceTimeout`.
- ``camera.disconnect``: the stream dies mid-acquisition until reconnect() ->
  `DeviceDisconnected`.
- ``camera.incomplete``: lines missing (zeros) -> `FrameIncomplete`, or a frame flagged
  ``incomplete`` with ``capture(allow_incomplete=True)``.
- ``camera.drop``: a frame lost in transport; the next is delivered -> frame-id gap and
  ``camera.stats()["dropped"]`` (frame-loss accounting, not an error).
- ``stage.timeout``: the controller does not answer -> `DeviceTimeout`.
- ``stage.disconnect``: serial link lost until reconnect() -> `DeviceDisconnected`.
- ``stage.stall``: the motor stops short of the target -> `MotionError`.
- ``stage.limit``: a hardware limit switch trips during the move -> `LimitError`.

Each fault fires either with a probability per call (``p``) or at scheduled call indices
(``schedule``: 0-based count of that operation on that device, e.g. ``{"camera.disconnect":
[5]}`` kills the stream at the 6th capture). All faults of one operation are drawn on every
attempt, so indices count attempts whichever fault fired; ``camera.drop`` alone counts frames
TRANSMITTED by the camera (a dropped frame uses up a frame id, so ``{"camera.drop": [1, 2]}``
delivers ids 0, 3, 4, ...).
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

FAULTS: tuple[str, ...] = (
    "slm.timeout",
    "slm.disconnect",
    "slm.latency",
    "camera.timeout",
    "camera.disconnect",
    "camera.incomplete",
    "camera.drop",
    "stage.timeout",
    "stage.disconnect",
    "stage.stall",
    "stage.limit",
)


def _check_names(names: object) -> None:
    for name in names:  # type: ignore[attr-defined]
        if name not in FAULTS:
            raise ValueError(f"unknown fault {name!r}; expected one of {', '.join(FAULTS)}")


class FaultConfig(BaseModel):
    """Which faults to inject and how often (all off by default)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    p: dict[str, float] = Field(default_factory=dict, description="fault -> probability per call")
    schedule: dict[str, list[int]] = Field(
        default_factory=dict, description="fault -> 0-based call indices at which it fires"
    )
    timeout_delay_s: float = Field(
        0.0, ge=0.0, description="how long a simulated timeout blocks (capped at timeout_s)"
    )
    seed: int | None = Field(None, description="fault RNG seed; None -> the bench seed")

    @field_validator("p")
    @classmethod
    def _check_p(cls, value: dict[str, float]) -> dict[str, float]:
        _check_names(value)
        for name, prob in value.items():
            if not 0.0 <= prob <= 1.0:
                raise ValueError(f"p[{name!r}]: expected a probability in [0, 1], got {prob}")
        return value

    @field_validator("schedule")
    @classmethod
    def _check_schedule(cls, value: dict[str, list[int]]) -> dict[str, list[int]]:
        _check_names(value)
        for name, idx in value.items():
            if any(i < 0 for i in idx):
                raise ValueError(f"schedule[{name!r}]: call indices must be >= 0")
        return value

    @property
    def enabled(self) -> bool:
        return any(v > 0 for v in self.p.values()) or any(self.schedule.values())


class FaultInjector:
    """Decides, per device operation call, whether a fault fires (deterministic given seed).

    Every `fires()` query draws one random number for its fault whether or not a probability
    is set, so enabling one fault does not shift the random stream of another.
    """

    def __init__(self, config: FaultConfig, seed: int) -> None:
        self.config = config
        base = config.seed if config.seed is not None else seed
        self._rngs = {
            name: np.random.default_rng([int(base) & 0xFFFFFFFF, i, 0xFA17])
            for i, name in enumerate(FAULTS)
        }
        self._calls: dict[str, int] = dict.fromkeys(FAULTS, 0)
        self.fired: dict[str, int] = dict.fromkeys(FAULTS, 0)

    def fires(self, name: str) -> bool:
        """Advance this fault's call counter and report whether it fires now."""
        if name not in self._calls:
            raise ValueError(f"unknown fault {name!r}")
        index = self._calls[name]
        self._calls[name] = index + 1
        draw = self._rngs[name].random()
        hit = index in self.config.schedule.get(name, ()) or draw < self.config.p.get(name, 0.0)
        if hit:
            self.fired[name] += 1
        return hit

    def delay(self, timeout_s: float) -> float:
        """Seconds a simulated timeout should block: the configured delay, capped."""
        return min(self.config.timeout_delay_s, timeout_s)
