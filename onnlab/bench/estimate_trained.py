"""`onnlab bench estimate --opt against=trained`: the estimate against trained hybrids.

The references are the students `onnlab train` produces (free PSFs, the task's backend, the
full training split, no transfer), K-swept and trained with >= 2 seeds; their test accuracies
and per-seed training times are committed in ``configs/estimate/trained-hybrids.json`` (the
commands that made them are in the file). For each reference the layout is derived from its
aperture (Eq. 1, `onnlab.estimate.design`), and the learning-curve estimate
(`onnlab.estimate.learning_curve`) predicts the trained accuracy at the full training-set size.
Speed-up = training wall time per seed / estimate wall time, both on one torch thread.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from onnlab.bench.estimate import _split
from onnlab.estimate.design import design_network
from onnlab.estimate.estimator import Estimator
from onnlab.estimate.learning_curve import trained_hybrid_estimate
from onnlab.models.zoo import STUDENT_DEFAULTS
from onnlab.training.config import DEFAULTS

REFERENCES = Path(__file__).resolve().parents[2] / "configs" / "estimate" / "trained-hybrids.json"
GOALS = {"max_abs_error_points": 2.0, "speedup_vs_training": 50.0}


def load_references(path: Path = REFERENCES) -> dict:
    """The committed trained-hybrid table (see the module docstring)."""
    return json.loads(Path(path).read_text())


def validate_trained(
    task: str = "mnist",
    *,
    data_root: str | None = None,
    n_train: int = 1000,
    n_val: int = 1000,
    n_test: int = 2000,
    seed: int = 0,
    references: Path = REFERENCES,
    log=None,
) -> dict:
    """Learning-curve estimate vs the trained student for every reference K of ``task``."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    table = load_references(references)
    if task not in table["tasks"]:
        raise ValueError(f"no trained references for task {task!r} in {references}")
    entry = table["tasks"][task]
    flips = "flip" in DEFAULTS[(task, "student")].get("augment", "none")
    hidden = tuple(STUDENT_DEFAULTS[task]["hidden"])
    train = _split(task, "train", data_root, n_train, seed)
    val = _split(task, "val", data_root, n_val, seed)
    test = _split(task, "test", data_root, n_test, seed)
    rows = []
    for ref in entry["references"]:
        design = design_network(
            task,
            tuple(a * 1e-3 for a in ref["aperture_mm"]),
            table["kernel_mm"] * 1e-3,
            table["spacing_mm"] * 1e-3,
            hidden=hidden,
        )
        if design.n_kernels != ref["n_kernels"]:
            raise ValueError(
                f"aperture {ref['aperture_mm']} mm holds {design.n_kernels} kernels, the "
                f"reference was trained with {ref['n_kernels']}"
            )
        arch = design.architecture
        est = Estimator(arch, train, val, test, seed=seed)
        gen = torch.Generator().manual_seed(seed * 100_003 + design.n_kernels)
        psfs = est.prior.sample(design.n_kernels, arch.in_channels, arch.kernel_px, gen)
        pred = trained_hybrid_estimate(est, psfs, entry["n_train"], flips=flips)
        row = {
            "n_kernels": design.n_kernels,
            "aperture_mm": ref["aperture_mm"],
            "predicted": 100 * pred.predicted,
            "trained": ref["test_mean"],
            "trained_std": ref["test_std"],
            "trained_seeds": len(ref["seeds"]),
            "abs_error_points": abs(100 * pred.predicted - ref["test_mean"]),
            "estimate_wall_s": pred.time_s,
            "estimate_cpu_s": pred.cpu_s,
            "train_time_s_per_seed": ref["train_time_s"],
            "speedup_vs_training": ref["train_time_s"] / max(pred.time_s, 1e-9),
            "exponent": pred.exponent,
            "curve": pred.points,
        }
        log(
            f"[estimate] {task} K={row['n_kernels']}: predicted {row['predicted']:.2f}% trained "
            f"{row['trained']:.2f}% (|error| {row['abs_error_points']:.2f}) | estimate "
            f"{row['estimate_wall_s']:.2f} s vs training {row['train_time_s_per_seed']:.0f} s "
            f"per seed ({row['speedup_vs_training']:.0f}x)"
        )
        rows.append(row)
    errors = [r["abs_error_points"] for r in rows]
    speedups = [r["speedup_vs_training"] for r in rows]
    return {
        "task": task,
        "against": "trained hybrids",
        "n_train_subset": len(train.images),
        "n_val": len(val.images),
        "n_test": len(test.images),
        "n_train_full": entry["n_train"],
        "kernel": "NTK, infinite backend width, trainable PSFs"
        + (", flip-averaged" if flips else ""),
        "hidden": list(hidden),
        "per_k": rows,
        "max_abs_error_points": max(errors) if errors else None,
        "speedup_vs_training": min(speedups) if speedups else None,
        "goals": GOALS,
        "timing": "wall seconds, torch single-threaded (training references: one thread each)",
    }
