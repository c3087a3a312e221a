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

from onnlab.estimate.design import design_network
from onnlab.estimate.estimator import Estimator, Split
from onnlab.estimate.learning_curve import CURVE_SIZES, trained_hybrid_estimate
from onnlab.models.zoo import STUDENT_DEFAULTS
from onnlab.training.config import DEFAULTS

REFERENCES = Path(__file__).resolve().parents[2] / "configs" / "estimate" / "trained-hybrids.json"
GOALS = {"max_abs_error_points": 2.0, "speedup_vs_training": 50.0}


def load_split(task: str, split: str, data_root: str | None, limit: int, seed: int) -> Split:
    """One split of a task's data (seeded subset of ``limit`` images) for the estimator."""
    from onnlab.data import load_dataset

    ds = load_dataset(task, split, data_root, seed=seed, limit=limit)
    return Split(ds.images, ds.targets)


def student_kernel(task: str) -> tuple[tuple[int, ...], bool]:
    """(hidden widths, flips) of the student `onnlab train` builds for ``task``: the backend
    depth of its NTK and whether its kernel is flip-averaged (the student trains with flips)."""
    hidden = tuple(STUDENT_DEFAULTS[task]["hidden"])
    return hidden, "flip" in DEFAULTS[(task, "student")].get("augment", "none")


def load_references(path: Path = REFERENCES) -> dict:
    """The committed trained-hybrid table (see the module docstring)."""
    return json.loads(Path(path).read_text())


def validate_trained(
    task: str = "mnist",
    *,
    data_root: str | None = None,
    n_train: int | None = None,
    n_val: int | None = None,
    n_test: int | None = None,
    seeds: tuple[int, ...] = (0,),
    references: Path = REFERENCES,
    log=None,
) -> dict:
    """Learning-curve estimate vs the trained student for every reference K of ``task``.

    Each seed draws its own training subset, validation split and PSFs; a row's prediction is
    the mean over ``seeds`` (its std says how much one estimate can be trusted), its time the
    mean time of one estimate. Sizes left None are the task's ``CURVE_SIZES``.
    """
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    table = load_references(references)
    if task not in table["tasks"]:
        raise ValueError(f"no trained references for task {task!r} in {references}")
    if not seeds:
        raise ValueError("seeds must name at least one estimate seed")
    entry = table["tasks"][task]
    hidden, flips = student_kernel(task)
    m, v, t = CURVE_SIZES[task]
    n_train = m if n_train is None else n_train
    n_val = v if n_val is None else n_val
    n_test = t if n_test is None else n_test
    splits = {
        seed: tuple(
            load_split(task, name, data_root, size, seed)
            for name, size in (("train", n_train), ("val", n_val), ("test", n_test))
        )
        for seed in seeds
    }
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
        per_seed = []
        for seed in seeds:
            est = Estimator(arch, *splits[seed], seed=seed)
            gen = torch.Generator().manual_seed(seed * 100_003 + design.n_kernels)
            psfs = est.prior.sample(design.n_kernels, arch.in_channels, arch.kernel_px, gen)
            pred = trained_hybrid_estimate(est, psfs, entry["n_train"], flips=flips)
            per_seed.append({"seed": seed, **pred.as_dict()})
        predictions = torch.tensor([p["predicted"] for p in per_seed], dtype=torch.float64)
        wall = sum(p["time_s"] for p in per_seed) / len(per_seed)
        row = {
            "n_kernels": design.n_kernels,
            "aperture_mm": ref["aperture_mm"],
            "predicted": float(predictions.mean()),
            "predicted_std": float(predictions.std()) if len(per_seed) > 1 else 0.0,
            "estimate_seeds": list(seeds),
            "trained": ref["test_mean"],
            "trained_std": ref["test_std"],
            "trained_seeds": len(ref["seeds"]),
            "abs_error_points": abs(float(predictions.mean()) - ref["test_mean"]),
            "estimate_wall_s": wall,
            "estimate_cpu_s": sum(p["cpu_s"] for p in per_seed) / len(per_seed),
            "train_time_s_per_seed": ref["train_time_s"],
            "speedup_vs_training": ref["train_time_s"] / max(wall, 1e-9),
            "per_seed": per_seed,
        }
        log(
            f"[estimate] {task} K={row['n_kernels']}: predicted {row['predicted']:.2f} ± "
            f"{row['predicted_std']:.2f}% trained {row['trained']:.2f}% (|error| "
            f"{row['abs_error_points']:.2f}) | estimate {wall:.2f} s vs training "
            f"{row['train_time_s_per_seed']:.0f} s per seed ({row['speedup_vs_training']:.0f}x)"
        )
        rows.append(row)
    errors = [r["abs_error_points"] for r in rows]
    speedups = [r["speedup_vs_training"] for r in rows]
    return {
        "task": task,
        "against": "trained hybrids",
        "n_train_subset": n_train,
        "n_val": n_val,
        "n_test": n_test,
        "n_train_full": entry["n_train"],
        "kernel": "NTK, infinite backend width, trainable PSFs"
        + (", flip-averaged" if flips else ""),
        "hidden": list(hidden),
        "per_k": rows,
        "max_abs_error_points": max(errors) if errors else None,
        "speedup_vs_training": min(speedups) if speedups else None,
        "goals": GOALS,
        "timing": "wall seconds per estimate, torch single-threaded (training references: one "
        "thread each)",
    }
