"""Peak memory of one benchmark step: CUDA allocator peak, or resident-set growth on CPU.

Why the CPU figure is sampled, not read: torch's CPU allocator keeps no peak statistics, so a
thread samples /proc/self/statm every millisecond while the step runs, after returning freed
heap pages to the OS (``malloc_trim``) so the baseline is the live heap.
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
import time
from collections.abc import Callable

import torch


class PeakRSS:
    """Peak resident-set growth of this process while the block runs (1 ms sampling)."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096

    def __enter__(self) -> PeakRSS:
        with contextlib.suppress(OSError):  # not glibc: the baseline just includes free pages
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        self.base = self._rss()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss() - self.base)
            time.sleep(0.001)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss() - self.base)


def peak_memory_mb(step: Callable[[], None], device: torch.device) -> float:
    """Peak memory `step` adds, MB: CUDA's allocator peak, or on CPU the resident-set growth
    (nan where /proc is missing)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    try:
        with PeakRSS() as probe:
            step()
        return probe.peak / 2**20
    except OSError:  # no /proc: not measurable here
        return float("nan")
