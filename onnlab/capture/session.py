"""One capture run from a dataset: the glue shared by `onnlab capture` and `finetune --sim`.

It turns (dataset, requested indices, devices, optional feature extractor) into a `CaptureSpec`
with full provenance, opens or resumes the store, and runs the loop. Keeping this out of the
CLI means the main demo captures exactly the way a technician does.
"""

from __future__ import annotations

import hashlib
import json
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from onnlab.capture.runner import CaptureSummary, ExposurePolicy, RetryPolicy, run_capture
from onnlab.capture.schema import CaptureSpec
from onnlab.capture.store import CaptureStore


def versions() -> dict[str, str]:
    """Toolkit and library versions recorded in every store (numbers depend on them)."""
    import h5py
    import torch

    import onnlab

    return {
        "onnlab": onnlab.__version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "h5py": h5py.__version__,
    }


def bench_config_sha256(config: Any) -> str:
    """Hash of a bench config's content (not of where the file lies)."""
    if hasattr(config, "model_dump"):
        payload = config.model_dump(mode="json", exclude={"source"})
    else:
        payload = config
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def device_info(device: Any) -> dict[str, Any]:
    try:
        return dict(device.info())
    except Exception:  # noqa: BLE001 - provenance is best effort, never fails a capture
        return {"device_id": getattr(device, "device_id", "?")}


def image_pattern(image: Any) -> np.ndarray:
    """A dataset image (C, H, W) in [0, 1] -> SLM pattern ((H, W) mono, (3, H, W) colour)."""
    arr = np.asarray(image.detach().cpu().numpy() if hasattr(image, "detach") else image)
    arr = np.clip(arr.astype(np.float64), 0.0, 1.0)
    return arr[0] if arr.shape[0] == 1 else arr


def capture_dataset(
    out: str | Path,
    dataset: Any,
    requested: np.ndarray,
    slm: Any,
    camera: Any,
    *,
    meta: dict[str, Any],
    to_features: Callable[[Any], np.ndarray] | None = None,
    feature_shape: tuple[int, ...] | None = None,
    pattern_fn: Callable[[np.ndarray], np.ndarray] = lambda x: x,
    chunk_size: int = 64,
    retry: RetryPolicy | None = None,
    exposure: ExposurePolicy | None = None,
    progress: bool = True,
    description: str = "capturing",
) -> CaptureSummary:
    """Capture `requested` dataset indices into `out` (created, or resumed if it is this run).

    Args:
        dataset: an `ArrayDataset` (images, targets, stable `indices`).
        to_features: Frame -> (K, H, W) feature tiles in design units (the calibration's
            twin); None stores the raw camera frames.
        meta: run metadata; keys in `onnlab.capture.schema.IDENTITY_KEYS` must match on resume.
        pattern_fn: display linearisation applied to each image pattern (default: none).
    """
    lookup = {int(i): p for p, i in enumerate(dataset.indices.tolist())}
    unknown = [int(i) for i in requested if int(i) not in lookup]
    if unknown:
        raise ValueError(f"requested indices not in the dataset, e.g. {unknown[:3]}")
    targets = dataset.targets
    if to_features is None:
        content, item_shape, item_dtype = (
            "frames",
            tuple(camera.shape_hw),
            ("uint8" if camera.bit_depth <= 8 else "uint16"),
        )
        row_for: Callable[[Any], np.ndarray] = lambda frame: frame.pixels  # noqa: E731
    else:
        if feature_shape is None:
            raise ValueError("feature_shape is required with to_features")
        content, item_shape, item_dtype = "features", tuple(feature_shape), "float32"
        row_for = to_features
    target_shape = tuple(targets.shape[1:])
    spec = CaptureSpec(
        requested_indices=np.asarray(requested, dtype=np.int64),
        content=content,
        item_shape=item_shape,
        item_dtype=item_dtype,
        target_shape=target_shape,
        target_dtype=str(targets.numpy().dtype),
        meta={
            **meta,
            "versions": versions(),
            "devices": {"slm": device_info(slm), "camera": device_info(camera)},
            "n_requested": int(len(requested)),
        },
    )

    def pattern_for(index: int) -> np.ndarray:
        return pattern_fn(image_pattern(dataset.images[lookup[index]]))

    def target_for(index: int) -> np.ndarray:
        return targets[lookup[index]].numpy()

    with CaptureStore.open(out, spec, chunk_size=chunk_size) as store:
        return run_capture(
            store,
            slm,
            camera,
            pattern_for,
            target_for,
            row_for,
            retry=retry,
            exposure=exposure,
            progress=progress,
            description=description,
        )
