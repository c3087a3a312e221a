"""Simulated SLM, camera and stage: the public protocol over a shared `SimulatedBench`.

What they share physically -- the panel's contents and the stage position -- is one explicit
`drivers.sim.state.BenchState` (``bench.state``); no device reads another device's private
attributes. They implement only ``_hw`` hooks (`drivers.base.DeviceBase` supplies locking,
timing, error mapping and the disconnected state), so the twins fail exactly the way real
drivers do. None of them sleeps in normal operation: the device clock (`Frame.timestamp_s`) is
simulated, so thousands of frames take seconds, not minutes.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from drivers.base import DeviceBase
from drivers.errors import (
    DeviceDisconnected,
    DeviceTimeout,
    FrameIncomplete,
    LimitError,
    MotionError,
    UnsupportedFeature,
)
from drivers.protocols import (
    DEFAULT_MOVE_TIMEOUT_S,
    DEFAULT_TIMEOUT_S,
    FLAG_INCOMPLETE,
    FLAG_SATURATED,
    Frame,
    PatternId,
    to_grey_levels,
)

if TYPE_CHECKING:
    from drivers.sim.bench import SimulatedBench


class _SimDevice(DeviceBase):
    implementation = "sim"

    def __init__(self, device_id: str, bench: SimulatedBench) -> None:
        super().__init__(device_id)
        self._bench = bench

    def _fault(self, name: str, operation: str, timeout_s: float, *extra: str) -> dict[str, bool]:
        """Raise the typed error of an injected transport fault, if it fires now.

        All faults of the operation (`extra` included) are drawn up front, so a schedule index
        always counts attempts of that operation, whichever fault fired first.
        """
        faults = self._bench.faults
        names = (f"{self.kind}.disconnect", f"{self.kind}.timeout", *extra)
        fired = {n: faults.fires(n) for n in names}
        if fired[names[0]]:
            raise DeviceDisconnected(f"simulated {name}: link lost", operation=operation)
        if fired[names[1]]:
            time.sleep(faults.delay(timeout_s))
            raise DeviceTimeout(
                f"simulated: no answer within {timeout_s:.3f} s", operation=operation
            )
        return fired

    def _info_extra(self) -> dict[str, Any]:
        return {"serial": f"SIM-{self.kind.upper()}-{self._bench.seed}", "model": "onnlab twin"}


class SimSLM(_SimDevice):
    """A panel of ``image_hw`` pixels, ``channels`` colour planes, 8-bit grey levels."""

    kind = "slm"

    def __init__(self, device_id: str, bench: SimulatedBench) -> None:
        super().__init__(device_id, bench)
        self.shape_hw: tuple[int, int] = tuple(bench.image_hw)  # type: ignore[assignment]
        self.channels = bench.channels
        self.bit_depth = 8
        self._last_id: PatternId | None = None

    @property
    def settle_s(self) -> float:
        return 0.0

    @property
    def pattern_id(self) -> PatternId | None:
        return self._last_id

    @property
    def response_lut(self) -> np.ndarray:
        """Nominal (datasheet) response: gamma 2.2, no black level -- NOT the hidden truth."""
        return np.linspace(0.0, 1.0, 256) ** 2.2

    def show(
        self,
        pattern: np.ndarray,
        pattern_id: PatternId | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        grey = to_grey_levels(pattern, self.shape_hw, self.channels, self.bit_depth)
        self._call("show", self._show_hw, grey, pattern_id, timeout_s=timeout_s)

    def _show_hw(self, grey: np.ndarray, pattern_id: PatternId | None, timeout_s: float) -> None:
        fired = self._fault("display", "show", timeout_s, "slm.latency")
        frame = grey.reshape(*self.shape_hw, self.channels)
        self._bench.state.show(frame, pattern_id, late=fired["slm.latency"])
        self._last_id = pattern_id

    def _status_hw(self, timeout_s: float) -> dict[str, Any]:
        return {"pattern_id": self._last_id, "resolution_hw": list(self.shape_hw)}

    def _info_extra(self) -> dict[str, Any]:
        return {
            **super()._info_extra(),
            "resolution_hw": list(self.shape_hw),
            "channels": self.channels,
        }


class SimCamera(_SimDevice):
    """Mono camera over the tiled sensor; frames rendered on demand by the bench model.

    Every frame is rendered when `capture` is called, from what the panel shows then: the
    exposure always starts after the call, which is what a software trigger gives a real
    camera. So it offers ``free_run`` and ``software`` triggers, and both behave alike."""

    kind = "camera"
    trigger_modes = ("free_run", "software")

    def __init__(self, device_id: str, bench: SimulatedBench, exposure_s: float = 1.0) -> None:
        super().__init__(device_id, bench)
        self.shape_hw: tuple[int, int] = tuple(bench.truth.layout.sensor_hw)  # type: ignore[assignment]
        self.bit_depth = bench.truth.sensor.bit_depth
        self._exposure_s = float(exposure_s)
        self._frame_id = -1
        self._clock_s = 0.0
        self._stats = {"delivered": 0, "dropped": 0, "incomplete": 0, "timeouts": 0}
        self._trigger = "free_run"

    @property
    def trigger(self) -> str:
        return self._trigger

    def set_trigger(self, mode: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> str:
        """Same contract as the GenICam driver; returns the previous mode."""
        if mode not in ("free_run", "software", "hardware"):
            raise ValueError(f"trigger: expected free_run, software or hardware, got {mode!r}")
        if mode not in self.trigger_modes:
            raise UnsupportedFeature(
                f"trigger={mode!r}: the twin supports {list(self.trigger_modes)}",
                device_id=self.device_id,
                operation="set_trigger",
            )
        previous, self._trigger = self._trigger, mode
        return previous

    @property
    def exposure_range_s(self) -> tuple[float, float]:
        return (1e-6, 10.0)

    @property
    def exposure_s(self) -> float:
        return self._exposure_s

    @exposure_s.setter
    def exposure_s(self, value: float) -> None:
        self.set_exposure(value)

    def set_exposure(self, exposure_s: float, timeout_s: float = DEFAULT_TIMEOUT_S) -> float:
        lo, hi = self.exposure_range_s
        if not lo <= float(exposure_s) <= hi:
            raise LimitError(
                f"exposure_s={exposure_s!r} outside [{lo}, {hi}]",
                device_id=self.device_id,
                operation="set_exposure",
            )
        return self._call(
            "set_exposure", self._set_exposure_hw, float(exposure_s), timeout_s=timeout_s
        )

    def _set_exposure_hw(self, exposure_s: float, timeout_s: float) -> float:
        self._exposure_s = exposure_s
        return exposure_s

    def stats(self) -> dict[str, int]:
        return dict(self._stats)

    def capture(
        self, timeout_s: float = DEFAULT_TIMEOUT_S, *, allow_incomplete: bool = False
    ) -> Frame:
        return self._call("capture", self._capture_hw, allow_incomplete, timeout_s=timeout_s)

    def _next_id(self) -> tuple[int, float]:
        self._frame_id += 1
        self._clock_s += self._exposure_s + 1e-3  # exposure + readout on the device clock
        return self._frame_id, self._clock_s

    def _capture_hw(self, allow_incomplete: bool, timeout_s: float) -> Frame:
        bench, faults = self._bench, self._bench.faults
        try:
            fired = self._fault("stream", "capture", timeout_s, "camera.incomplete")
        except DeviceTimeout:
            self._stats["timeouts"] += 1
            raise
        while faults.fires("camera.drop"):  # lost in transport: the id is used up
            self._next_id()
            self._stats["dropped"] += 1
        grey, pattern_id = bench.state.expose()
        frame_id, stamp = self._next_id()
        z = bench.state.stage_z_m
        grey_t = torch.from_numpy(np.moveaxis(grey, -1, 0)[None].copy())
        key = bench.noise.key(grey_t[0], pattern_id, self._exposure_s, z)
        pixels = bench.renderer.frames_dn(grey_t, z, self._exposure_s, [bench.noise.generator(key)])
        pixels = pixels[0]
        flags = set()
        if fired["camera.incomplete"]:
            cut = int(bench.fault_rng.integers(1, pixels.shape[0]))
            pixels[cut:] = 0
            flags.add(FLAG_INCOMPLETE)
            self._stats["incomplete"] += 1
            if not allow_incomplete:
                raise FrameIncomplete(
                    f"frame {frame_id}: only {cut} of {pixels.shape[0]} lines arrived",
                    operation="capture",
                )
        if pixels.max(initial=0) >= bench.truth.sensor.max_dn:
            flags.add(FLAG_SATURATED)
        bench.noise.delivered(key)  # only now: an undelivered frame leaves the count alone
        self._stats["delivered"] += 1
        return Frame(
            pixels=pixels,
            frame_id=frame_id,
            timestamp_s=stamp,
            exposure_s=self._exposure_s,
            pattern_id=pattern_id,
            flags=frozenset(flags),
            device_id=self.device_id,
            meta={"stage_z_m": z, "sim": True},
        )

    def _render_batch(self, grey: torch.Tensor, pattern_ids: list[PatternId | None]) -> list[Frame]:
        """Bench.render fast path: same model and per-frame noise, no transport faults."""
        bench = self._bench
        z = bench.state.stage_z_m
        generators = []
        for i in range(grey.shape[0]):  # in order: repeats within the batch count up
            key = bench.noise.key(grey[i], pattern_ids[i], self._exposure_s, z)
            generators.append(bench.noise.generator(key))
            bench.noise.delivered(key)
        pixels = bench.renderer.frames_dn(grey, z, self._exposure_s, generators)
        frames = []
        max_dn = bench.truth.sensor.max_dn
        for i in range(pixels.shape[0]):
            frame_id, stamp = self._next_id()
            flags = frozenset({FLAG_SATURATED}) if pixels[i].max() >= max_dn else frozenset()
            frames.append(
                Frame(
                    pixels=pixels[i].copy(),
                    frame_id=frame_id,
                    timestamp_s=stamp,
                    exposure_s=self._exposure_s,
                    pattern_id=pattern_ids[i],
                    flags=flags,
                    device_id=self.device_id,
                    meta={"stage_z_m": z, "sim": True},
                )
            )
        self._stats["delivered"] += len(frames)
        return frames

    def _status_hw(self, timeout_s: float) -> dict[str, Any]:
        return {"exposure_s": self._exposure_s, "frames": self.stats()}

    def _info_extra(self) -> dict[str, Any]:
        return {
            **super()._info_extra(),
            "resolution_hw": list(self.shape_hw),
            "bit_depth": self.bit_depth,
        }


class SimStage(_SimDevice):
    """Focus stage: z in metres; moves are instantaneous on the wall clock."""

    kind = "stage"

    def __init__(
        self, device_id: str, bench: SimulatedBench, limits_m: tuple[float, float]
    ) -> None:
        super().__init__(device_id, bench)
        self._limits = (float(limits_m[0]), float(limits_m[1]))

    @property
    def _z_m(self) -> float:
        return self._bench.state.stage_z_m

    @_z_m.setter
    def _z_m(self, value: float) -> None:
        self._bench.state.stage_z_m = float(value)

    @property
    def limits_m(self) -> tuple[float, float]:
        return self._limits

    @property
    def position_m(self) -> float:
        return self.get_position()

    def get_position(self, timeout_s: float = DEFAULT_TIMEOUT_S) -> float:
        return self._call("get_position", self._position_hw, timeout_s=timeout_s)

    def _position_hw(self, timeout_s: float) -> float:
        return self._z_m

    def is_moving(self, timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
        self._call("is_moving", self._position_hw, timeout_s=timeout_s)
        return False

    def _check_target(self, target_m: float, operation: str) -> None:
        lo, hi = self._limits
        if not np.isfinite(target_m) or not lo <= target_m <= hi:
            raise LimitError(
                f"target {target_m!r} m outside software limits [{lo}, {hi}] m; nothing sent",
                device_id=self.device_id,
                operation=operation,
            )

    def move_absolute(self, position_m: float, timeout_s: float = DEFAULT_MOVE_TIMEOUT_S) -> float:
        self._check_target(float(position_m), "move_absolute")
        return self._call("move_absolute", self._move_hw, float(position_m), timeout_s=timeout_s)

    def move_relative(self, delta_m: float, timeout_s: float = DEFAULT_MOVE_TIMEOUT_S) -> float:
        target = self._z_m + float(delta_m)
        self._check_target(target, "move_relative")
        return self._call("move_relative", self._move_hw, target, timeout_s=timeout_s)

    def home(self, timeout_s: float = DEFAULT_MOVE_TIMEOUT_S) -> float:
        return self._call("home", self._move_hw, self._limits[0], timeout_s=timeout_s)

    def stop(self, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self._call("stop", self._position_hw, timeout_s=timeout_s)

    def _move_hw(self, target_m: float, timeout_s: float) -> float:
        fired = self._fault("serial link", "move", timeout_s, "stage.stall", "stage.limit")
        start = self._z_m
        if fired["stage.stall"]:
            self._z_m = start + (target_m - start) * float(self._bench.fault_rng.uniform(0.1, 0.9))
            raise MotionError(
                f"stalled at {self._z_m:.6g} m before reaching {target_m:.6g} m (following error)"
            )
        if fired["stage.limit"]:
            self._z_m = start + (target_m - start) * float(self._bench.fault_rng.uniform(0.1, 0.9))
            raise LimitError(f"hardware limit switch tripped at {self._z_m:.6g} m")
        self._z_m = target_m
        return self._z_m

    def _status_hw(self, timeout_s: float) -> dict[str, Any]:
        return {"position_m": self._z_m, "limits_m": list(self._limits)}

    def _info_extra(self) -> dict[str, Any]:
        return {**super()._info_extra(), "limits_m": list(self._limits)}
