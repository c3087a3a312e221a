"""What `onnlab capture` does, as a function (the CLI module only parses options).

Identity of a run (what must match to resume): dataset, split, the requested index list (from
fraction + seed + limit), the bench config's content hash, the calibration id and the content
kind. Anything else (progress bar, retry bounds, exposure check) may change between attempts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from onnlab.capture.calibrated import FeatureExtractor, load_extractor
from onnlab.capture.runner import ExposurePolicy, RetryPolicy, select_indices
from onnlab.capture.session import bench_config_sha256, capture_dataset
from onnlab.errors import ConfigError


def _pick(devices: dict[str, Any], kind: str, wanted: str | None) -> Any:
    """The device `wanted`, or the only/first one of `kind`."""
    if wanted is not None:
        if wanted not in devices:
            raise ConfigError(f"no device {wanted!r} in the bench config ({', '.join(devices)})")
        return devices[wanted]
    for device in devices.values():
        if getattr(device, "kind", None) == kind:
            return device
    raise ConfigError(f"the bench config has no {kind}")


def capture_command(
    *,
    config: Path | None,
    dataset: str,
    split: str,
    fraction: float,
    out: Path,
    calibration: Path | None,
    seed: int,
    data_root: str | None,
    limit: int | None,
    chunk_size: int,
    slm_id: str | None,
    camera_id: str | None,
    exposure_check: bool,
    max_attempts: int,
    progress: bool,
) -> dict[str, Any]:
    """Select, open, capture, summarise; returns the summary dict."""
    from drivers.registry import default_config_path, load_bench_config, open_devices
    from onnlab.data import load_dataset

    bench = load_bench_config(config if config is not None else default_config_path())
    data = load_dataset(dataset, split, data_root, seed=seed, limit=limit)
    requested = select_indices(data.indices.numpy(), fraction, seed)
    extractor: FeatureExtractor | None = None
    if calibration is not None:
        extractor = load_extractor(calibration, bench)
    meta = {
        "dataset": dataset,
        "split": split,
        "fraction": fraction,
        "seed": seed,
        "limit": limit,
        "data_root": None if data_root is None else str(data_root),
        "bench_config": bench.model_dump(mode="json"),
        "bench_config_sha256": bench_config_sha256(bench),
        "simulated": any(d.driver == "sim" for d in bench.devices.values()),
        "calibration_id": extractor.calibration_id if extractor else None,
        "calibration_path": None if calibration is None else str(calibration),
        "model_id": extractor.design_id if extractor else None,
        "requested_sha256_hint": "see root attribute requested_sha256",
    }
    design = None if extractor is None else extractor.design_psfs
    with open_devices(bench, design_psfs=design) as devices:
        slm = _pick(devices, "slm", slm_id)
        camera = _pick(devices, "camera", camera_id)
        if extractor is not None:
            extractor.prepare(camera)
        try:
            summary = capture_dataset(
                out,
                data,
                np.asarray(requested),
                slm,
                camera,
                meta=meta,
                to_features=None if extractor is None else extractor.features,
                feature_shape=None if extractor is None else extractor.feature_shape,
                pattern_fn=(lambda p: p) if extractor is None else extractor.pattern,
                chunk_size=chunk_size,
                retry=RetryPolicy(max_attempts=max_attempts),
                exposure=ExposurePolicy() if exposure_check else None,
                progress=progress,
                description=f"{dataset}/{split}",
            )
        except KeyboardInterrupt:
            from onnlab.capture.store import CaptureStore

            with CaptureStore.read(out, verify=False) as store:
                done = store.n_committed
            from onnlab.errors import Interrupted

            raise Interrupted(
                f"{done} frames committed in {out}; rerun the same command to resume"
            ) from None
    return summary.to_dict()
