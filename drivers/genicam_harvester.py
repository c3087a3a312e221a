"""One harvesters `Harvester` per set of GenTL producer files, shared within a process.

Why: a GenTL producer (.cti) is a shared library with process-wide state. When a second
`Harvester` loads the same file, the producer's devices are already claimed by the first one
and the second sees none ("found: none"), so two cameras on one producer could not be open at
once. Cameras that name the same producer files therefore share one Harvester, counted by
reference; the last one to close resets it. Loading an overlapping but different set of files
is refused with a message that says how to fix the config (give both cameras the same `cti`).
The blocking calls (``update()``, ``reset()``) run under a deadline (`run_with_deadline`).
"""

from __future__ import annotations

import contextlib
import glob
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drivers.base import run_with_deadline
from drivers.errors import DeviceError


def find_producers(cti: str | list[str] | None = None) -> list[str]:
    """GenTL producer files: from `cti` (files, folders, globs) or GENICAM_GENTL64_PATH."""
    if cti is None:
        entries = [p for p in os.environ.get("GENICAM_GENTL64_PATH", "").split(os.pathsep) if p]
    else:
        entries = [cti] if isinstance(cti, str) else list(cti)
    found: list[str] = []
    for entry in entries:
        path = Path(entry).expanduser()
        if path.is_dir():
            found += sorted(str(p) for p in path.glob("*.cti"))
        elif path.is_file():
            found.append(str(path))
        else:
            found += sorted(glob.glob(str(path)))
    return list(dict.fromkeys(found))


@dataclass
class _Shared:
    harvester: Any
    users: int = 0


_LOCK = threading.Lock()
_SHARED: dict[tuple[str, ...], _Shared] = {}


def producer_key(producers: list[str]) -> tuple[str, ...]:
    """Identity of a producer set: the real paths, sorted."""
    return tuple(sorted(os.path.realpath(p) for p in producers))


def acquire(producers: list[str], timeout_s: float) -> tuple[tuple[str, ...], Any]:
    """The shared, updated Harvester for `producers` (created on first use) and its key."""
    key = producer_key(producers)
    with _LOCK:
        shared = _SHARED.get(key)
        if shared is None:
            clash = [k for k in _SHARED if set(k) & set(key)]
            if clash:
                raise DeviceError(
                    f"producer(s) {sorted(set(clash[0]) & set(key))} are already loaded by "
                    f"another camera with producers {list(clash[0])}; a GenTL producer can be "
                    "loaded once per process: give both cameras the same `cti` list"
                )
            from harvesters.core import Harvester

            harvester = Harvester()
            try:
                for path in producers:
                    harvester.add_file(path)
                run_with_deadline(harvester.update, timeout_s, "harvester-update")
            except BaseException:
                with contextlib.suppress(Exception):  # keep the original error visible
                    run_with_deadline(harvester.reset, timeout_s, "harvester-reset")
                raise
            shared = _SHARED[key] = _Shared(harvester)
        shared.users += 1
        return key, shared.harvester


def release(key: tuple[str, ...], timeout_s: float) -> None:
    """One user less; the last one resets the Harvester (unloads the producers)."""
    with _LOCK:
        shared = _SHARED.get(key)
        if shared is None:
            return
        shared.users -= 1
        if shared.users > 0:
            return
        del _SHARED[key]
    run_with_deadline(shared.harvester.reset, timeout_s, "harvester-reset")


def users(producers: list[str]) -> int:
    """How many open cameras share the Harvester of `producers` (0: none loaded)."""
    with _LOCK:
        shared = _SHARED.get(producer_key(producers))
        return 0 if shared is None else shared.users
