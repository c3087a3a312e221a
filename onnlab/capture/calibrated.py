"""Calibrated capture: what the calibration package gives the capture loop.

A calibration artifact turns a raw camera frame into per-kernel feature tiles in the design
frontend's units (registration, dark offset, gain and exposure undone by `calibration.twin`),
and says how to drive the display so that it shows the intended intensities (the measured
display response, inverted). The capture loop only sees three callables: `pattern(image)`,
`features(frame)` and `prepare(camera)`; this module is the single place that knows the
calibration package's API.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np


def calibration_id(path: str | Path) -> str:
    """Content id of an artifact file (first 16 hex of its sha256): stable across copies."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def inverse_lut(lut: np.ndarray) -> np.ndarray:
    """Grey level for each of 4096 evenly spaced target intensities in [0, 1].

    The display's relative intensity per grey level is monotonic but not linear (gamma) and
    does not reach 0 (black level); the nearest achievable level is used, so the displayed
    image equals the dataset image wherever the display can show it.
    """
    lut = np.maximum.accumulate(np.asarray(lut, dtype=np.float64))
    targets = np.linspace(0.0, 1.0, 4096)
    hi = np.clip(np.searchsorted(lut, targets), 1, lut.size - 1)
    lo = hi - 1
    pick = np.where(np.abs(lut[lo] - targets) <= np.abs(lut[hi] - targets), lo, hi)
    return pick.astype(np.uint16 if lut.size > 256 else np.uint8)


class FeatureExtractor:
    """Frame -> (K, H, W) features and image -> display pattern, from one calibration."""

    def __init__(self, artifact: Any, twin: Any, path: str | Path) -> None:
        self.artifact = artifact
        self.twin = twin
        self.path = Path(path)
        self.calibration_id = calibration_id(self.path)
        self.design_id = str(artifact.meta.design_hash)
        layout = artifact.meta.layout
        self.feature_shape = (int(layout.n_kernels), *map(int, layout.image_hw))
        self._levels = inverse_lut(artifact.response_lut)

    @property
    def design_psfs(self) -> Any:
        import torch

        return torch.as_tensor(np.asarray(self.artifact.design_psfs), dtype=torch.float32)

    def prepare(self, camera: Any) -> None:
        """Put the camera at the exposure the calibration was measured at."""
        exposure = float(self.artifact.meta.camera.exposure_s)
        if abs(float(camera.exposure_s) - exposure) > 1e-12:
            camera.set_exposure(exposure)

    def pattern(self, image: np.ndarray) -> np.ndarray:
        """Dataset intensities in [0, 1] -> integer grey levels that display them."""
        idx = np.rint(np.clip(image, 0.0, 1.0) * (self._levels.size - 1)).astype(np.int64)
        return self._levels[idx]

    def features(self, frame: Any) -> np.ndarray:
        """(K, H, W) float32 feature tiles in design units."""
        # per_kernel_alpha: divide out each kernel's measured brightness, so the backend sees
        # the design's brightness scale (alpha is calibrated, as in the paper)
        out = self.twin.features_from_frame([frame], per_kernel_alpha=True)[0]
        return out.detach().cpu().numpy().astype(np.float32)

    def summary(self) -> dict[str, Any]:
        info = dict(self.artifact.summary())
        info["calibration_id"] = self.calibration_id
        return info


def load_extractor(
    path: str | Path, bench_config: Any | None = None, design: Any | None = None
) -> FeatureExtractor:
    """Load an artifact strictly (refusing another bench or design) and build its twin."""
    from calibration.artifact import CalibrationArtifact
    from calibration.twin import DigitalTwin

    artifact = CalibrationArtifact.load(path, bench_config=bench_config, design=design)
    return FeatureExtractor(artifact, DigitalTwin(artifact), path)


def calibrate_sim_bench(
    bench: Any,
    design_psfs: Any,
    path: str | Path,
    *,
    rows: int,
    cols: int,
    gap_px: int,
    electrons_per_unit: float | None = None,
    bench_config_hash: str,
    quick: bool = False,
    options: dict[str, Any] | None = None,
    progress: bool = True,
) -> FeatureExtractor:
    """Run the full calibration on a simulated bench through its device twins only.

    The design PSFs, the tile layout and the sensor's photometric scale are what a lab knows
    from the design and the camera datasheet; the hidden as-built truth is never read.
    """
    import torch

    from calibration.forward import TileGeometry
    from calibration.runner import BenchSetup, CalibrationOptions, device_record, run_calibration

    design = torch.as_tensor(design_psfs, dtype=torch.float32)
    tiles = TileGeometry(
        int(rows),
        int(cols),
        int(gap_px),
        tuple(int(v) for v in bench.slm.shape_hw),
        tuple(int(v) for v in bench.camera.shape_hw),
        int(design.shape[0]),
    )
    setup = BenchSetup(
        slm=bench.slm,
        camera=bench.camera,
        stage=bench.stage,
        tiles=tiles,
        design_psfs=design,
        bench_config_hash=bench_config_hash,
        electrons_per_unit=electrons_per_unit,
        device_records={
            d.device_id: device_record(d) for d in (bench.slm, bench.camera, bench.stage)
        },
    )
    base = CalibrationOptions.quick() if quick else CalibrationOptions()
    # validated: an unknown or bad field is refused (extra="forbid"), not silently ignored
    opts = CalibrationOptions.model_validate({**base.model_dump(), **(options or {})})
    run = run_calibration(
        setup,
        options=opts,
        progress=_progress_printer() if progress else None,
        notes={
            "simulated": True,
            "simulated_devices": [d.device_id for d in (bench.slm, bench.camera, bench.stage)],
        },
    )
    run.artifact.save(path)
    return load_extractor(path, bench_config=bench_config_hash, design=design)


def _progress_printer() -> Any:
    """Calibration progress as one rich status line per step."""
    from rich.console import Console

    console = Console(stderr=True)

    def report(message: str, fraction: float) -> None:
        if message.endswith("done"):
            console.print(f"  calibration {message}")

    return report
