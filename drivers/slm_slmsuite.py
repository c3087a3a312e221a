"""Any slmsuite SLM as an `SLM`: the class named in the config, built with its kwargs.

slmsuite already has the public-method -> ``_set_phase_hw`` split; this adapter adds what the
onnlab protocol needs on top: integer grey levels written unchanged (slmsuite passes integer
data of its own dtype straight to the hardware, no phase wrapping), a display-response lookup
table from the config (grey level -> relative intensity for an amplitude display, or -> phase
in radians for a phase SLM), a settle wait, a pattern id, and a timeout on the vendor call
(slmsuite writes block without one; a hung write is abandoned -> `DeviceTimeout`, and the
device is marked disconnected until `reconnect()`, since its state is then unknown).
"""

from __future__ import annotations

import concurrent.futures
import importlib
import time
from pathlib import Path
from typing import Any

import numpy as np

from drivers.base import DeviceBase
from drivers.errors import ConfigurationError, DeviceDisconnected, DeviceNotFound, DeviceTimeout
from drivers.protocols import DEFAULT_TIMEOUT_S, PatternId, to_grey_levels

SLM_PACKAGE = "slmsuite.hardware.slms"
"""The only package a config may name an SLM class from: a config must never be able to import
(let alone call) arbitrary code such as ``subprocess.Popen``."""


def check_slm_class_path(class_path: str) -> str:
    """Refuse, before anything is imported, a class path outside `SLM_PACKAGE`."""
    module, _, name = str(class_path).rpartition(".")
    parts = module.split(".")
    if (
        not module.startswith(SLM_PACKAGE + ".")
        or not name.isidentifier()
        or not all(p.isidentifier() and not p.startswith("_") for p in parts[3:])
    ):
        raise ConfigurationError(
            f"class {class_path!r}: only slmsuite SLM classes ({SLM_PACKAGE}.<module>.<Class>, "
            "a subclass of slmsuite's SLM) are accepted",
            operation="config",
        )
    return class_path


def resolve_slm_class(class_path: str) -> type:
    """Import an allowed class path and check that it IS an slmsuite SLM (subclass check)."""
    check_slm_class_path(class_path)
    module_name, _, name = class_path.rpartition(".")
    try:
        from slmsuite.hardware.slms.slm import SLM

        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as exc:
        raise DeviceNotFound(f"cannot import SLM class {class_path!r}: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, SLM)):
        raise ConfigurationError(
            f"class {class_path!r} is not a subclass of slmsuite's SLM; only slmsuite SLM "
            "classes are accepted",
            operation="config",
        )
    return cls


def load_lut(lut: Any, bit_depth: int, gamma: float | None, mode: str) -> np.ndarray:
    """(2**bit_depth,) table grey -> response, from a list, a .npy/.csv path, or a gamma."""
    n = 1 << bit_depth
    if lut is None:
        g = np.arange(n) / (n - 1)
        return 2 * np.pi * g if mode == "phase" else g ** (2.2 if gamma is None else gamma)
    if isinstance(lut, (str, Path)):
        path = Path(lut)
        table = np.load(path) if path.suffix == ".npy" else np.loadtxt(path, delimiter=",")
    else:
        table = np.asarray(lut, dtype=np.float64)
    table = np.asarray(table, dtype=np.float64).reshape(-1)
    if table.size != n or not np.all(np.isfinite(table)):
        raise ValueError(f"lut: expected {n} finite values (one per grey level), got {table.size}")
    return table


class SlmsuiteSLM(DeviceBase):
    """Adapter around ``slmsuite.hardware.slms.*`` classes (see module docstring)."""

    kind = "slm"
    implementation = "slmsuite"
    channels = 1  # slmsuite SLMs are single-plane
    error_map = ((ImportError, DeviceNotFound), *DeviceBase.error_map)

    def __init__(
        self,
        device_id: str,
        class_path: str,
        kwargs: dict[str, Any] | None = None,
        *,
        mode: str = "intensity",
        lut: Any = None,
        gamma: float | None = None,
        settle_s: float = 0.05,
    ) -> None:
        super().__init__(device_id)
        if mode not in ("intensity", "phase"):
            raise ValueError(f"mode: expected 'intensity' or 'phase', got {mode!r}")
        if settle_s < 0:
            raise ValueError(f"settle_s: expected >= 0, got {settle_s!r}")
        self.class_path = class_path
        self.kwargs = dict(kwargs or {})
        self.mode = mode
        self._lut_spec, self._gamma = lut, gamma
        self._settle_s = float(settle_s)
        self._slm: Any = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._pattern_id: PatternId | None = None
        self.shape_hw: tuple[int, int] = (0, 0)
        self.bit_depth = 8
        self._lut = load_lut(lut, 8, gamma, mode) if not isinstance(lut, (str, Path)) else None

    @classmethod
    def from_config(cls, device_id: str, cfg: Any, bench: Any = None) -> SlmsuiteSLM:
        lut = cfg.lut
        if isinstance(lut, str) and bench is not None:
            lut = str(bench.resolve(lut))
        return cls(
            device_id,
            cfg.class_path,
            cfg.kwargs,
            mode=cfg.mode,
            lut=lut,
            gamma=cfg.gamma,
            settle_s=cfg.settle_s,
        )

    # ------------------------------------------------------------------ lifecycle
    def _resolve_class(self) -> type:
        return resolve_slm_class(self.class_path)

    def _open_hw(self, timeout_s: float) -> None:
        cls = self._resolve_class()
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=self.device_id)
        self._slm = self._bounded(lambda: cls(**self.kwargs), timeout_s, "construct")
        self.shape_hw = (int(self._slm.shape[0]), int(self._slm.shape[1]))
        self.bit_depth = int(self._slm.bitdepth)
        self._lut = load_lut(self._lut_spec, self.bit_depth, self._gamma, self.mode)

    def _close_hw(self) -> None:
        slm, pool = self._slm, self._pool
        self._slm = self._pool = None
        try:
            if slm is not None:
                slm.close()
        finally:
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)

    def _bounded(self, fn: Any, timeout_s: float, what: str) -> Any:
        """Run a blocking vendor call on the device's worker thread, at most `timeout_s`."""
        assert self._pool is not None
        future = self._pool.submit(fn)
        try:
            return future.result(timeout=timeout_s)
        except concurrent.futures.TimeoutError as exc:
            # The vendor call is still running; its outcome is unknown, so is the device state.
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = concurrent.futures.ThreadPoolExecutor(1)
            self._disconnected = True
            raise DeviceTimeout(f"{what} did not return within {timeout_s:.3f} s") from exc

    # ------------------------------------------------------------------ SLM protocol
    @property
    def settle_s(self) -> float:
        return self._settle_s

    @property
    def pattern_id(self) -> PatternId | None:
        return self._pattern_id

    @property
    def response_lut(self) -> np.ndarray:
        """Grey -> relative intensity (intensity mode) or phase in radians (phase mode)."""
        assert self._lut is not None
        return self._lut.copy()

    def show(
        self,
        pattern: np.ndarray,
        pattern_id: PatternId | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        grey = None
        if self.is_open:  # validate outside the hook: a bad pattern is a ValueError, not a fault
            grey = to_grey_levels(pattern, self.shape_hw, 1, self.bit_depth)
        self._call("show", self._show_hw, grey, pattern_id, timeout_s=timeout_s)

    def _show_hw(self, grey: np.ndarray, pattern_id: PatternId | None, timeout_s: float) -> None:
        if self._slm is None or grey is None:
            raise DeviceDisconnected("SLM is not connected")
        grey = grey.astype(self._slm.dtype)
        t0 = time.monotonic()
        self._bounded(lambda: self._slm.set_phase(grey, settle=False), timeout_s, "set_phase")
        self._pattern_id = pattern_id
        left = timeout_s - (time.monotonic() - t0)
        if self._settle_s > left:
            raise DeviceTimeout(
                f"pattern written but settle_s={self._settle_s} s exceeds the remaining timeout"
            )
        time.sleep(self._settle_s)

    # ------------------------------------------------------------------ description
    def _status_hw(self, timeout_s: float) -> dict[str, Any]:
        return {"pattern_id": self._pattern_id, "resolution_hw": list(self.shape_hw)}

    def _info_extra(self) -> dict[str, Any]:
        return {
            "class": self.class_path,
            "serial": getattr(self._slm, "serial", None),
            "model": getattr(self._slm, "name", None),
            "resolution_hw": list(self.shape_hw),
            "bit_depth": self.bit_depth,
            "mode": self.mode,
        }
