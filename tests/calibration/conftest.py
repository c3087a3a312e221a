"""Shared calibration fixture: one calibrated default sim bench per session."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from calib_helpers import calibrate_sim  # noqa: E402


@pytest.fixture(scope="session")
def calibrated() -> Any:
    """The legacy sim bench (seed 0), calibrated once for the whole session (see
    calib_helpers.sim_config for why legacy)."""
    cfg, devices, run = calibrate_sim(0)
    yield cfg, devices, run
    devices.close()
