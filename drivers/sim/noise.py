"""Per-frame sensor-noise seeds for the simulated bench.

Why not one running generator: with a single stream, frame n's noise depends on every frame
drawn before it (probes, retries, a capture interrupted and resumed by a new process), so two
captures of the same pattern list disagree as soon as one of them was interrupted. Here each
frame's noise is drawn from its own `torch.Generator`, seeded by a hash of

    (bench seed, pattern id, displayed grey levels, exposure, stage position, repeat)

where ``repeat`` counts how many frames of that same key this bench has already DELIVERED.
The count keeps repeated grabs of one pattern independent (calibration averages them; the
fidelity benchmark differences two renders of the same images) while staying deterministic:
a resumed capture in a fresh process starts from 0 like the uninterrupted one. Frames that are
never delivered (timeouts, dropped or incomplete frames) do not advance it, so a retried index
gets the same noise as a fault-free grab of that index.
"""

from __future__ import annotations

import hashlib
import numbers
import struct
from typing import Any

import numpy as np
import torch


def _id_text(pattern_id: Any) -> str:
    """A stable spelling of a pattern id (an int from numpy or Python spells the same)."""
    if isinstance(pattern_id, numbers.Integral) and not isinstance(pattern_id, bool):
        return f"i:{int(pattern_id)}"
    return f"{type(pattern_id).__name__}:{pattern_id}"


class FrameNoise:
    """Deterministic per-frame noise generators with a per-key delivered-frame counter."""

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)
        self._delivered: dict[bytes, int] = {}

    def key(
        self, grey: np.ndarray | torch.Tensor, pattern_id: Any, exposure_s: float, z_m: float
    ) -> bytes:
        """Digest identifying what the sensor is exposed to (not when)."""
        arr = grey.numpy() if isinstance(grey, torch.Tensor) else np.asarray(grey)
        h = hashlib.blake2b(digest_size=16)
        h.update(struct.pack("<q", self.seed))
        h.update(_id_text(pattern_id).encode())
        h.update(str(arr.shape).encode())
        h.update(np.ascontiguousarray(arr, dtype=np.uint8).tobytes())
        h.update(struct.pack("<dd", float(exposure_s), float(z_m)))
        return h.digest()

    def generator(self, key: bytes) -> torch.Generator:
        """Generator for the next delivered frame of `key` (peeks; `delivered` advances)."""
        repeat = self._delivered.get(key, 0)
        digest = hashlib.blake2b(key + struct.pack("<q", repeat), digest_size=8).digest()
        return torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)

    def delivered(self, key: bytes) -> None:
        """Count one delivered frame of `key` (the next frame of it gets fresh noise)."""
        self._delivered[key] = self._delivered.get(key, 0) + 1
