"""Benchmark: design -> fabrication, measured in one run.

1. A free MNIST student (trained here: bundled sample unless $ONNLAB_DATA, 2 epochs; or the
   `checkpoint` given) is realised as phase maps on its physical system (`student_system`:
   the phase frontend's optics, material and N) — ``realisation_rel_error`` is the mean over
   kernels of ||p_realised - p_free|| / ||p_free|| (absolute PSFs, energies included).
2. The student is tested with its free PSFs and with the realised ones (frozen, physical
   energies), same test set — ``realised_accuracy_drop_points`` (free minus realised, in
   percentage points; before fabrication errors and height quantisation).
3. A training step with the phase frontend over one with the free frontend, MNIST system,
   batch 128 (`onnlab.bench.design_step`) — ``phase_frontend_over_free_step_time``.
4. The realised design is exported (L = 8 levels) and its GDSII re-imported, rasterised and
   propagated — ``gds_roundtrip_max_rel_psf_error`` against the quantised design's PSFs.

Goals (issue 13): <= 0.05, <= 1 point, <= 3, <= 1e-3.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import torch

GOALS = {
    "realisation_rel_error": 0.05,
    "realised_accuracy_drop_points": 1.0,
    "phase_frontend_over_free_step_time": 3.0,
    "gds_roundtrip_max_rel_psf_error": 1e-3,
}


def _train_free_student(seed: int, epochs: int, workdir: Path) -> tuple[torch.nn.Module, dict]:
    from onnlab.data import load_dataset
    from onnlab.models.zoo import build_student
    from onnlab.runtime import seed_everything
    from onnlab.training.config import default_config
    from onnlab.training.loop import train
    from onnlab.training.losses import make_loss

    train_set = load_dataset("mnist", "train", seed=seed)
    val_set = load_dataset("mnist", "val", seed=seed)
    seed_everything(seed)
    model = build_student("mnist")
    config = default_config("mnist", "student", epochs=epochs, seed=seed, progress=False)
    history = train(model, train_set, val_set, config, make_loss("none", "mnist", None), workdir)
    meta = {"task": "mnist", "role": "student", "architecture": model.build_info["kwargs"]}
    return model.cpu().eval(), {**meta, "train_time_s": history["train_time_s"]}


def run(quick: bool = False, seed: int = 0, checkpoint: str | Path | None = None) -> dict[str, Any]:
    """All four numbers of the design bench (see the module docstring) plus their details."""
    from onnlab.bench.design_step import measure_phase_over_free_step_time
    from onnlab.data import load_dataset
    from onnlab.design.export import export_design
    from onnlab.design.source import from_model, load_source
    from onnlab.design.student import evaluate_with_psfs, realise_source
    from onnlab.errors import CheckpointError

    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="onnlab-bench-design-") as tmp:
        work = Path(tmp)
        if checkpoint is not None:
            try:
                source = load_source(checkpoint)
            except ValueError as exc:
                raise CheckpointError(f"{checkpoint}: {exc}") from exc
            student = {"checkpoint": str(checkpoint), "checkpoint_sha256": source.sha256}
        else:
            model, meta = _train_free_student(seed, 1 if quick else 2, work / "train")
            source = from_model(model, meta)
            student = {"trained_here": True, "epochs": 1 if quick else 2, **meta}
            student.pop("architecture")
        if source.kind != "free":
            raise CheckpointError(f"{checkpoint}: bench design needs a free-frontend student")
        system = source.system
        result = realise_source(source, system, seed=seed)
        test = load_dataset(source.task, "test", seed=seed)
        evaluation = evaluate_with_psfs(source, result.psfs, test)
        step = measure_phase_over_free_step_time(
            task="mnist", batch_size=128, repeats=5 if quick else 15, seed=seed
        )
        export = export_design(
            work / "export",
            result.phases,
            system,
            levels=8,
            target_psfs=result.target,
            previews=False,
        )
    out = {
        "realisation_rel_error": float(result.rel_error.mean()),
        "realised_accuracy_drop_points": evaluation["drop_points"],
        "phase_frontend_over_free_step_time": step["phase_frontend_over_free_step_time"],
        "gds_roundtrip_max_rel_psf_error": export["gds_roundtrip_max_rel_psf_error"],
        "goals": GOALS,
        "student": student,
        "system": {
            "focal_length_m": system.optics.focal_length_m,
            "kernel_size_m": system.optics.kernel_size_m,
            "sensor_pitch_m": system.optics.sensor_pitch_m,
            "wavelengths_m": list(system.optics.wavelengths_m),
            "phase_samples": system.phase_samples,
            "oversample": system.oversample,
            "material": system.material.name,
            "spot_px": result.spot_px,
        },
        "realisation": {
            "rel_error": result.rel_error.tolist(),
            "rel_error_max": float(result.rel_error.max()),
            "efficiency": result.efficiency.tolist(),
            "target_energy": result.target.sum(dim=(1, 2, 3)).tolist(),
            "target_peak_pixel": result.info["target_peak_pixel"],
            "focus_centre_pixel": result.info["focus_centre_pixel"],
            "wall_s": result.wall_s,
        },
        "evaluation": evaluation,
        "step_time": step,
        "export": {
            "levels": 8,
            "max_rel_error_quantised_vs_target": max(
                export["quantisation"]["rel_error_quantised_vs_target"]
            ),
            "gds_bytes": export["gds"]["bytes"],
            "wall_s": export["wall_s"],
        },
        "torch_threads": torch.get_num_threads(),
        "wall_s": time.perf_counter() - t_all,
    }
    return out
