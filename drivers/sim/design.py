"""The design a simulated bench is built from: its PSFs (or phases) and its tile grid.

The rules live in layer 1 (`onnlab.optics.seeded_design`) so that calibration reads the same
design without importing the simulator; this module adds the bench-config error type.
Drivers may not import the model zoo, so a bench config that names no design file gets a
seeded, plausible design: smooth random PSFs (legacy model) or seeded phase maps whose PSFs
come from the wave model (physical model). They are NOT trained kernels.
"""

from __future__ import annotations

from typing import Any

import torch

from drivers.errors import ConfigurationError
from onnlab.optics.seeded_design import (
    TASK_DEFAULTS,
    design_psfs,
    read_psfs,
    stand_alone_design,
    tile_grid,
)

__all__ = [
    "TASK_DEFAULTS",
    "design_psfs",
    "read_psfs",
    "sim_design",
    "sim_design_psfs",
    "tile_grid",
]


def sim_design(config: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(design PSFs, design phases or None) of a bench config's ``sim`` section."""
    try:
        return stand_alone_design(config.sim, config.resolve)
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigurationError(f"{config.source}: sim.design: {exc}", operation="config") from exc


def sim_design_psfs(config: Any) -> torch.Tensor:
    """The design PSFs of a bench config's ``sim`` section: its file, else the seeded design."""
    return sim_design(config)[0]
