"""The two real GenTL producers the tests stream from (both from PyPI wheels).

* ``viky.cti`` (the ``genicam`` package): three free-running devices, Mono8/RGBa8, no
  triggers, no device timestamps.
* ``TLSimu.cti`` (EMVA's ``genicam2`` wheel, a dev dependency): four devices on two interfaces,
  ``TriggerMode`` Off/On with ``TriggerSource=Software`` and a ``TriggerSoftware`` command,
  device timestamps and frame ids, PixelFormat read-only (Mono8 / RGB8).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


def viky_cti() -> str:
    genicam = pytest.importorskip("genicam")
    return str(Path(genicam.__file__).parent / "viky.cti")


def tlsimu_cti() -> str:
    spec = importlib.util.find_spec("genicam2")  # the .cti only: genicam2's Python is not used
    path = None
    if spec is not None and spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations))) / "TLSimu.cti"
    if path is None or not path.is_file():
        pytest.skip("TLSimu.cti (pip install genicam2==0.0.0.dev5472, a dev dependency) missing")
    return str(path)


TLSIMU_MONO = "SN_InterfaceA_0"
TLSIMU_MONO_2 = "SN_InterfaceB_0"
