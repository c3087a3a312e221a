"""Simulated twins of the bench devices, built on onnlab.optics (see `drivers.sim.model`).

The names below load on first use (PEP 562): importing a light submodule -- the fault config
the bench YAML validates against, the ``sim://`` serial handler -- must not pull in torch and
the optics model, so ``drivers.registry`` and the real drivers stay cheap to import.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "SimulatedBench": "drivers.sim.bench",
    "TASK_DEFAULTS": "drivers.sim.design",
    "design_psfs": "drivers.sim.design",
    "FAULTS": "drivers.sim.faults",
    "FaultConfig": "drivers.sim.faults",
    "FaultInjector": "drivers.sim.faults",
    "DisplayResponse": "drivers.sim.model",
    "Focus": "drivers.sim.model",
    "Registration": "drivers.sim.model",
    "SimTruth": "drivers.sim.model",
    "TileLayout": "drivers.sim.model",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'drivers.sim' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
