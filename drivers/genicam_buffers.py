"""Reading one harvesters buffer: its pixels (owned copies), GenTL frame id and timestamp.

Why apart from the camera: these are the only places that touch a delivered buffer's
contents, and each must fail soft in one specific way -- producers that report no frame id
or no timestamp give ``None`` (never an invented value), while pixels are always copied out
before the buffer is handed back to the producer's queue.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def copy_pixels(comp: Any) -> np.ndarray:
    """Own the pixels before the buffer is re-queued; (H, W) or (H, W, 3)."""
    h, w = int(comp.height), int(comp.width)
    data = np.array(comp.data, copy=True)
    per_px = data.size // max(h * w, 1)
    img = data.reshape(h, w) if per_px == 1 else data.reshape(h, w, per_px)[..., :3]
    return np.ascontiguousarray(img)


def buffer_frame_id(buf: Any) -> int | None:
    try:
        return int(buf.module.frame_id)
    except Exception:  # noqa: BLE001 - producers may not report frame ids: never invent one
        return None


def buffer_timestamp(buf: Any) -> float | None:
    try:
        return int(buf.timestamp_ns) * 1e-9
    except Exception:  # noqa: BLE001 - NotAvailable on producers without timestamps
        return None
