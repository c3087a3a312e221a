"""From a bench config and its opened devices to a `BenchSetup` (what calibration needs).

The devices answer for themselves (panel and camera shapes, limits, ids, serials); the rest —
the design PSFs, the tile layout and the photometric scale — is design knowledge that the bench
config (``sim`` section for simulated benches) or command-line options provide. Calibration
never reads a simulated bench's hidden ``truth``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from calibration.artifact import config_hash
from calibration.forward import TileGeometry
from calibration.runner import BenchSetup, device_record
from onnlab.errors import CalibrationError, ConfigError


def load_design(path: str | Path) -> torch.Tensor:
    """(K, C, k, k) design PSFs from .npy or .pt (weights_only)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"design PSFs not found: {p}")
    arr = np.load(p, allow_pickle=False) if p.suffix == ".npy" else torch.load(p, weights_only=True)
    psfs = torch.as_tensor(arr, dtype=torch.float32)
    if psfs.ndim != 4 or psfs.shape[2] != psfs.shape[3]:
        raise ConfigError(f"{p}: expected (K, C, k, k) PSFs, got {tuple(psfs.shape)}")
    return psfs


def design_from_config(config: Any) -> torch.Tensor:
    """The design a config's simulated bench is built from (same rule as the registry)."""
    from drivers.sim import design_psfs as make_design

    d = config.sim.design
    if d.psfs_path:
        return load_design(config.resolve(d.psfs_path))
    return make_design(d.task, d.kernels, d.kernel_px, d.channels, d.seed)


def default_grid(n_kernels: int) -> tuple[int, int]:
    """Near-square rows × cols (rows ≤ cols) holding K tiles, the simulated bench's default."""
    rows = max(1, int(math.floor(math.sqrt(n_kernels))))
    return rows, math.ceil(n_kernels / rows)


def setup_from_devices(
    config: Any,
    devices: dict[str, Any],
    *,
    slm_id: str = "slm0",
    camera_id: str | None = None,
    stage_id: str | None = None,
    design_psfs: torch.Tensor | None = None,
    rows: int | None = None,
    cols: int | None = None,
    gap_px: int | None = None,
) -> BenchSetup:
    """Pick the SLM ``slm_id`` and the (only, or named) camera and stage; build the setup."""
    if slm_id not in devices or getattr(devices[slm_id], "kind", "") != "slm":
        slms = [i for i, d in devices.items() if getattr(d, "kind", "") == "slm"]
        raise ConfigError(f"--device {slm_id!r} is not an SLM of this bench; SLMs: {slms}")

    def pick(kind: str, wanted: str | None) -> Any:
        found = {i: d for i, d in devices.items() if getattr(d, "kind", "") == kind}
        if wanted is not None:
            if wanted not in found:
                raise ConfigError(f"no {kind} {wanted!r} on this bench; have {list(found)}")
            return found[wanted]
        if len(found) > 1:
            raise ConfigError(f"several {kind}s ({list(found)}); name one explicitly")
        return next(iter(found.values()), None)

    slm = devices[slm_id]
    camera = pick("camera", camera_id)
    if camera is None:
        raise CalibrationError("calibration needs a camera; none is configured")
    stage = pick("stage", stage_id)
    design = design_psfs if design_psfs is not None else design_from_config(config)
    n_k = int(design.shape[0])
    sim = config.sim
    rows = sim.rows if rows is None else rows
    cols = sim.cols if cols is None else cols
    if rows is None and cols is None:
        rows, cols = default_grid(n_k)
    elif rows is None:
        rows = math.ceil(n_k / cols)
    elif cols is None:
        cols = math.ceil(n_k / rows)
    tiles = TileGeometry(
        int(rows),
        int(cols),
        int(sim.gap_px if gap_px is None else gap_px),
        tuple(int(v) for v in slm.shape_hw),
        tuple(int(v) for v in camera.shape_hw),
        n_k,
    )
    ch, cw = tiles.canvas_hw
    if ch > tiles.camera_hw[0] or cw > tiles.camera_hw[1]:
        raise ConfigError(
            f"{rows}x{cols} tiles of {tiles.image_hw} with gap {tiles.gap_px} need "
            f"{tiles.canvas_hw} px but the camera has {tiles.camera_hw}"
        )
    if int(design.shape[1]) != int(getattr(slm, "channels", 1)):
        raise ConfigError(
            f"design has {design.shape[1]} colour channels but the SLM shows {slm.channels}"
        )
    phi = None
    if getattr(camera, "implementation", "") == "sim":
        from onnlab.optics import SensorModel

        phi = float(SensorModel(**sim.sensor).full_scale_e)
    used = [d for d in (slm, camera, stage) if d is not None]
    return BenchSetup(
        slm=slm,
        camera=camera,
        stage=stage,
        tiles=tiles,
        design_psfs=design,
        bench_config_hash=config_hash(config),
        electrons_per_unit=phi,
        device_records={d.device_id: device_record(d) for d in used},
    )
