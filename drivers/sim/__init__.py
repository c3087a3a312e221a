"""Simulated twins of the bench devices, built on onnlab.optics (see `drivers.sim.model`)."""

from drivers.sim.bench import SimulatedBench
from drivers.sim.design import TASK_DEFAULTS, design_psfs
from drivers.sim.faults import FAULTS, FaultConfig, FaultInjector
from drivers.sim.model import DisplayResponse, Focus, Registration, SimTruth, TileLayout

__all__ = [
    "FAULTS",
    "TASK_DEFAULTS",
    "DisplayResponse",
    "FaultConfig",
    "FaultInjector",
    "Focus",
    "Registration",
    "SimTruth",
    "SimulatedBench",
    "TileLayout",
    "design_psfs",
]
