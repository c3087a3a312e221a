"""Realise a student's free PSFs, score the student with them, and store the realisation.

The realisation file (``realisation.npz``, numpy arrays + one JSON string, read with
``allow_pickle=False``) carries the phases, the realised and target PSFs, the per-kernel errors
and efficiencies, and the physical system they belong to, so that `design export --realised`
can fabricate exactly what was evaluated without fitting again.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from onnlab import __version__
from onnlab.design.realise import RealisationResult, realise
from onnlab.design.source import DesignSource
from onnlab.models.phase_frontend import PhaseSystem
from onnlab.optics.layout import OpticsConfig
from onnlab.optics.materials import Material

FORMAT = "onnlab-realisation"
_ARRAYS = (
    "phases",
    "psfs",
    "target",
    "rel_error",
    "rel_error_per_channel",
    "shape_rel_error",
    "efficiency",
    "efficiency_per_channel",
)


def realise_source(source: DesignSource, system: PhaseSystem, **kwargs: Any) -> RealisationResult:
    """Fit phase maps to a free student's PSFs on `system` (see `realise` for kwargs)."""
    if source.kind != "free":
        raise ValueError(
            "the checkpoint's frontend is already a phase mask: export its design_phases() "
            "directly (onnlab design export), there is nothing to realise"
        )
    return realise(
        source.free_psfs(),
        system.optics,
        n_phase=system.phase_samples,
        material=system.material,
        oversample=system.oversample,
        **kwargs,
    )


def evaluate_with_psfs(
    source: DesignSource, psfs: torch.Tensor, dataset, *, batch_size: int = 512
) -> dict[str, Any]:
    """Test metric of the student with its own PSFs and with `psfs` (frozen, physical energies),
    on the same data: {"metric", "free", "realised", "drop_points"}."""
    from onnlab.training.metrics import evaluate, primary_metric

    metric = primary_metric(source.task)
    t0 = time.perf_counter()
    free = evaluate(source.model, dataset, source.task, batch_size)[metric]
    model = copy.deepcopy(source.model)
    frontend = model.frontend
    frontend.load_psfs(psfs.to(torch.float32), trainable=False)
    realised = evaluate(model, dataset, source.task, batch_size)[metric]
    return {
        "metric": metric,
        "n_images": len(dataset),
        "free": free,
        "realised": realised,
        "drop_points": 100.0 * (free - realised),
        "eval_wall_s": time.perf_counter() - t0,
    }


def system_json(system: PhaseSystem) -> dict[str, Any]:
    """JSON-ready description of a physical system (optics, material, N)."""
    optics = {
        k: list(v) if isinstance(v, tuple) else v for k, v in system.optics.model_dump().items()
    }
    return {
        "optics": optics,
        "material": asdict(system.material),
        "phase_samples": system.phase_samples,
        "oversample": system.oversample,
    }


def system_from_json(data: dict[str, Any]) -> PhaseSystem:
    """Inverse of `system_json` (validated)."""
    return PhaseSystem(
        OpticsConfig(**data["optics"]),
        Material(**data["material"]),
        int(data["phase_samples"]),
        int(data["oversample"]),
    )


def save_realisation(
    path: str | Path, result: RealisationResult, system: PhaseSystem, source: DesignSource | None
) -> Path:
    """Write ``realisation.npz`` (arrays in SI units / radians + JSON metadata)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": FORMAT,
        "onnlab_version": __version__,
        "units": {"phases": "rad at design wavelength", "psfs": "fraction of incident power"},
        "system": system_json(system),
        "checkpoint": str(source.path) if source and source.path else None,
        "checkpoint_sha256": source.sha256 if source else None,
        "summary": result.summary(),
    }
    arrays = {k: getattr(result, k).numpy() for k in _ARRAYS}
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, meta_json=np.array(json.dumps(meta)), **arrays)
    tmp.replace(path)
    return path


def load_realisation(path: str | Path) -> tuple[RealisationResult, PhaseSystem, dict[str, Any]]:
    """Read a realisation file: (result, its physical system, metadata)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"realisation file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta_json"]))
            arrays = {k: torch.from_numpy(data[k].copy()) for k in _ARRAYS}
    except (OSError, KeyError, ValueError) as exc:
        raise ValueError(f"realised={path} is not a realisation file: {exc}") from exc
    if meta.get("format") != FORMAT:
        raise ValueError(f"realised={path} is not a realisation file (format {meta.get('format')})")
    system = system_from_json(meta["system"])
    summary = meta["summary"]
    result = RealisationResult(
        **arrays,
        config=system.optics,
        match=summary["match"],
        n_phase=int(summary["n_phase"]),
        spot_px=float(summary["spot_px"]),
        wall_s=float(summary["wall_s"]),
        oversample=int(summary["oversample"]),
    )
    return result, system, meta
