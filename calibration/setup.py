"""From a bench config and its opened devices to a `BenchSetup` (what calibration needs).

The devices answer for themselves (panel and camera shapes, limits, ids, serials); the rest —
the design PSFs, the tile layout and the photometric scale — is design knowledge that the bench
config (``sim`` section for simulated benches) or command-line options provide, read with the
layer-1 design rules (`onnlab.optics.seeded_design`) that the simulator also uses. Calibration
knows the design, never the simulator: it does not import ``drivers.sim`` and never reads a
simulated bench's hidden ``truth``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from calibration.artifact import config_hash
from calibration.forward import TileGeometry
from calibration.runner import BenchSetup, device_record
from onnlab.errors import CalibrationError, ConfigError
from onnlab.optics.seeded_design import read_psfs, stand_alone_design, tile_grid


def config_design_psfs(config: Any) -> torch.Tensor:
    """The design PSFs a bench config's ``sim`` section names (file, or seeded design)."""
    try:
        return stand_alone_design(config.sim, config.resolve)[0]
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError(f"{config.source}: sim.design: {exc}") from exc


def load_design(path: str | Path) -> torch.Tensor:
    """(K, C, k, k) design PSFs from .npy or .pt (weights_only); ConfigError when malformed."""
    try:
        return read_psfs(path)
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError(str(exc)) from exc


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
        raise ConfigError(f"--slm {slm_id!r} is not an SLM of this bench; SLMs: {slms}")

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
    design = design_psfs if design_psfs is not None else config_design_psfs(config)
    n_k = int(design.shape[0])
    sim = config.sim
    rows, cols = tile_grid(
        n_k, sim.rows if rows is None else rows, sim.cols if cols is None else cols
    )
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
