"""`onnlab bench ntk`: NTK estimator accuracy and the cost of an NTKD step relative to KD.

What it measures, in one process, batch 128:

1. Accuracy (MNIST system): relative Frobenius error ||G_est - G_exact|| / ||G_exact|| of every
   estimator, for the student (48.8 k parameters) and the LeNet teacher (431 k), on real MNIST
   images; both on the raw Gram and on the centred Gram (what the default CKA loss sees).
   Student reference: the vmap/jacrev oracle; teacher reference: the structured exact Gram,
   itself checked against the oracle on 16 samples.  Sketch errors are means over 3 draws.
   ``sketch_rel_error`` is the headline: the teacher Gram the default objective trains with
   vs exact, raw Gram.  Default "anchor": the cached exact Grams of the anchor pool, checked
   against the vmap/jacrev oracle on the anchor samples (``output_sketch_rel_error``: the old
   one-direction per-step sketch, kept as an option).
2. Time (MNIST + LeNet, CIFAR-10 + CifarNet): one training step (forward, backward, AdamW
   step; same batch; warm-up, then interleaved repeats, median) with the default
   ``NTKDObjective`` divided by one with the KD baseline ``KDLoss``; also the full-batch exact
   variant, (MNIST) the default with the exact teacher Gram instead of its one-direction sketch,
   and (MNIST only: it needs B x C x P memory) the naive reference -- student Gram by
   vmap(jacrev) + double backward on the whole batch, teacher as in the default.
3. Segmentation (``segmentation_*`` keys; synthetic shapes, 56-PSF student, U-Net teacher,
   batch 8, the task's default): the default NTKD objective (matched sketch along M output
   directions per anchor, lazy every ``ntk_every`` steps) against KD: the step that takes the
   NTKD term, and the mean step over one lazy cycle; the NTKD loss at student = teacher (a
   trainable copy of the teacher) for the default and for the previous default (independent
   one-direction student sketch vs exact teacher Gram); over direction draws on one anchor
   batch, the gradient's signal-to-noise ratio and its cosine with the exact-Gram loss
   gradient (how much of a step is signal), also for the exact gradient across anchor
   batches (the noise SGD has anyway); and the relative error of the matched student Gram vs
   the vmap/jacrev oracle of the projected outputs.
4. Phase frontend (``phase*`` keys, `onnlab.bench.ntk_phase`): the exact student Gram through
   the wave model by the closed-form PSF Jacobian against the two autograd routes.
5. Peak memory of each step: CUDA ``max_memory_allocated``; on CPU the peak resident-set growth
   sampled every millisecond after returning freed memory to the OS (``malloc_trim``).

Timings are ratios taken in the same process with KD and NTKD steps interleaved, because the
CPU is shared and absolute times drift.  The default objective's one-time setup (building
the anchor pool: 64 exact teacher Grams) is timed separately (``anchor_setup_s``) and reported
amortised: ÷ one epoch of NTKD steps (full training split, and the 4,500-image sweep subset),
and folded into a per-step ratio over a full-split epoch (``amortised_ntkd_over_kd_step_time``).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from onnlab.bench.memory import peak_memory_mb
from onnlab.bench.ntk_phase import phase_bench
from onnlab.bench.ntk_segmentation import rel_error, segmentation_bench
from onnlab.distill.losses import centre_gram
from onnlab.distill.ntk import ntk_gram
from onnlab.distill.objective import NTKDObjective
from onnlab.runtime import default_device

BATCH = 128
FULL_TRAIN = {"mnist": 60_000, "cifar10": 50_000}  # training-split sizes, for amortisation


def _errors(gram: Tensor, ref: Tensor) -> dict[str, float]:
    return {"raw": rel_error(gram, ref), "centred": rel_error(centre_gram(gram), centre_gram(ref))}


def _data_root() -> Path | None:
    """$ONNLAB_DATA, else the shared data folder next to the repository (as the tests use)."""
    from onnlab.data.paths import resolve_data_root

    root = resolve_data_root(None)
    shared = Path(__file__).resolve().parents[2].parent / "shared" / "data"
    return root if root is not None else (shared if shared.is_dir() else None)


def _images(task: str, seed: int) -> tuple[Tensor, Tensor, str]:
    """A batch of real images when available, else seeded uniform noise (stated in the JSON)."""
    from onnlab.data import load_dataset

    try:
        if task == "mnist":
            data = load_dataset("mnist", "train")
        else:
            data = load_dataset(task, "train", _data_root(), limit=4 * BATCH)
        gen = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(data), generator=gen)[:BATCH]
        return data.images[idx], data.targets[idx], f"{task} train images"
    except Exception as exc:  # noqa: BLE001 - any data problem: fall back, but say so
        shape = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32)}[task]
        gen = torch.Generator().manual_seed(seed)
        x = torch.rand(BATCH, *shape, generator=gen)
        y = torch.randint(0, 10, (BATCH,), generator=gen)
        return x, y, f"uniform noise ({type(exc).__name__}: {exc})"


def _accuracy(quick: bool, seed: int) -> dict[str, Any]:
    from onnlab.models.zoo import build_student, build_teacher

    torch.manual_seed(seed)
    x, _, source = _images("mnist", seed)
    student, teacher = build_student("mnist"), build_teacher("mnist")
    student.initialise(x)
    teacher_weights = f"random init (seed {seed}); no registered teacher"
    try:  # sketch errors depend on training: use the registered teacher when there is one
        from onnlab.training.checkpoint import load_checkpoint
        from onnlab.training.runner import registered_teacher_path

        path = registered_teacher_path("mnist")
        if path.is_file():
            teacher = load_checkpoint(path)[0]
            teacher_weights = f"trained: {path}"
    except Exception as exc:  # noqa: BLE001 - fall back to the seeded init, and say why
        teacher_weights = f"random init (seed {seed}); registered teacher unusable: {exc}"
    teacher.eval()
    t_params = list(teacher.parameters())
    draws = 1 if quick else 3
    out: dict[str, Any] = {
        "data": source,
        "batch": BATCH,
        "draws": draws,
        "teacher_weights": teacher_weights,
    }

    def sketch(model: nn.Module, params: Any, ref: Tensor, est: str, size: int) -> dict:
        errs = [
            _errors(
                ntk_gram(
                    model,
                    x,
                    estimator=est,
                    size=size,
                    params=params,
                    generator=torch.Generator().manual_seed(seed + d),
                ),
                ref,
            )
            for d in range(draws)
        ]
        return {k: statistics.fmean(e[k] for e in errs) for k in ("raw", "centred")}

    ref_s = ntk_gram(student, x, estimator="jacobian", chunk_size=32)
    student_errs = {"exact": _errors(ntk_gram(student, x), ref_s)}
    for est, size in [("output", 1), ("output", 2), ("output", 5), ("jvp", 64)]:
        student_errs[f"{est}-{size}"] = sketch(student, None, ref_s, est, size)
    out["student"] = {"reference": "jacobian (vmap/jacrev oracle)", "errors": student_errs}

    ref_t = ntk_gram(teacher, x, params=t_params)
    small = ntk_gram(teacher, x[:16], estimator="jacobian", params=t_params)
    teacher_errs = {"exact_vs_jacobian_16": _errors(ref_t[:16, :16], small)}
    sizes = (
        [("output", 1), ("output", 2), ("jvp", 32)]
        if quick
        else [("output", 1), ("output", 2), ("output", 5), ("jvp", 32), ("jvp", 128)]
    )
    for est, size in sizes:
        teacher_errs[f"{est}-{size}"] = sketch(teacher, t_params, ref_t, est, size)
    out["teacher"] = {"reference": "exact (structured)", "errors": teacher_errs}
    default = NTKDObjective.__init__.__kwdefaults__
    if default["teacher_estimator"] == "anchor":
        key = "anchor"
        teacher_errs[key] = _anchor_errors(teacher, quick, seed)
    else:
        key = f"{default['teacher_estimator']}-{default['teacher_size']}"
    out["default_teacher_estimator"] = key
    out["sketch_rel_error"] = teacher_errs[key]["raw"]
    out["sketch_rel_error_centred"] = teacher_errs[key]["centred"]
    return out


def _anchor_errors(teacher: nn.Module, quick: bool, seed: int) -> dict[str, Any]:
    """The default teacher Gram as training uses it: the cached Grams of an anchor pool built
    from the MNIST training set exactly as ``NTKDObjective.prepare`` builds it, each compared
    with the autograd oracle (vmap/jacrev) on the same anchor samples; worst over the anchors
    checked (the oracle costs ~0.3 GB per 16-sample anchor with the LeNet)."""
    from onnlab.data import load_dataset

    data = load_dataset("mnist", "train")
    objective = NTKDObjective(teacher, "mnist", seed=seed)
    objective.prepare(data, "cpu", seed)
    pool = objective.anchor_pool
    params = list(teacher.parameters())
    raw, centred = [], []
    for k in range(min(len(pool), 2 if quick else 4)):
        x_t = data.images[pool.indices[k]]
        oracle = ntk_gram(teacher, x_t, estimator="jacobian", params=params)
        err = _errors(pool.grams[k], oracle)
        raw.append(err["raw"])
        centred.append(err["centred"])
    return {
        "raw": max(raw),
        "centred": max(centred),
        "anchors_checked": len(raw),
        "reference": "jacobian (vmap/jacrev oracle) on the anchor samples",
    }


def _timing(task: str, quick: bool, seed: int) -> dict[str, Any]:
    from onnlab.models.zoo import build_student, build_teacher
    from onnlab.training.losses import KDLoss

    device = default_device()
    torch.manual_seed(seed)
    x, y, source = _images(task, seed)
    student, teacher = build_student(task).to(device), build_teacher(task).to(device)
    x, y = x.to(device), y.to(device)
    student.initialise(x)
    student.train()
    batch = {"x": x, "y": y}
    optimiser = torch.optim.AdamW(student.parameters(), lr=1e-4)
    sketch = {"teacher_estimator": "output", "teacher_size": 1}
    losses: dict[str, Any] = {
        "kd": KDLoss(teacher, task),
        "ntkd": NTKDObjective(teacher, task, seed=seed),
        "ntkd_output_sketch": NTKDObjective(teacher, task, seed=seed, **sketch),
        "ntkd_full_batch": NTKDObjective(teacher, task, seed=seed, ntk_batch=None, **sketch),
    }
    if task == "mnist":  # what an exact default teacher Gram would cost (it is ~0 error)
        losses["ntkd_exact_teacher"] = NTKDObjective(
            teacher, task, seed=seed, teacher_estimator="exact", teacher_size=None
        )
    if not quick and task == "mnist":  # CIFAR: B x C x P per-sample Jacobians would need ~9 GB
        losses["naive"] = NTKDObjective(
            teacher, task, seed=seed, estimator="jacobian", ntk_batch=None, **sketch
        )
    train_set = _train_set(task)
    setup_s: dict[str, float] = {}
    for name, loss in losses.items():  # one-time setup (anchor pools), timed
        if hasattr(loss, "prepare"):
            t0 = time.perf_counter()
            loss.prepare(train_set, device, seed, batch_size=BATCH)
            setup_s[name] = time.perf_counter() - t0

    def step(name: str) -> Callable[[], None]:
        def run() -> None:
            optimiser.zero_grad(set_to_none=True)
            value, _ = losses[name](student, batch)
            value.backward()
            optimiser.step()
            if device.type == "cuda":
                torch.cuda.synchronize()

        return run

    repeats = 3 if quick else 7
    times: dict[str, list[float]] = {name: [] for name in losses}
    for name in losses:  # warm-up (lazy init, allocator, first-call dispatch)
        step(name)()
    for r in range(repeats):
        for name in losses:
            if name == "naive" and r >= 3:
                continue  # seconds per step: three repeats are enough for a reference
            t0 = time.perf_counter()
            step(name)()
            times[name].append(time.perf_counter() - t0)
    median = {name: statistics.median(v) for name, v in times.items()}
    memory = {name: peak_memory_mb(step(name), device) for name in losses}
    out: dict[str, Any] = {
        "data": source,
        "batch": BATCH,
        "device": str(device),
        "step_s": median,
        "peak_memory_mb": memory,
        "ratio_over_kd": {n: median[n] / median["kd"] for n in losses if n != "kd"},
        "ntkd_defaults": {
            k: getattr(losses["ntkd"], k)
            for k in (
                "estimator",
                "teacher_estimator",
                "teacher_size",
                "ntk_batch",
                "anchors",
                "beta",
            )
        },
        "setup_s": setup_s,
    }
    pool = losses["ntkd"].anchor_pool
    if pool is not None:
        steps = FULL_TRAIN[task] // BATCH
        out["anchor_setup_s"] = setup_s["ntkd"]
        out["anchor_count"] = len(pool)
        out["anchor_setup_over_kd_step"] = setup_s["ntkd"] / median["kd"]
        # setup ÷ one epoch of NTKD steps on the full training split, and on the 4,500-image
        # subset of the default-selection sweeps
        out["anchor_setup_over_epoch"] = setup_s["ntkd"] / (steps * median["ntkd"])
        out["anchor_setup_over_epoch_4500"] = setup_s["ntkd"] / ((4500 // BATCH) * median["ntkd"])
        out["anchor_amortised_ntkd_over_kd_step_time"] = (
            median["ntkd"] + setup_s["ntkd"] / steps
        ) / median["kd"]
    return out


def _train_set(task: str) -> Any:
    """What the anchor pool is drawn from: the bundled MNIST sample (4,500 images), or the
    first 4,500 CIFAR-10 training images (noise stand-ins when the data are missing)."""
    from onnlab.data import load_dataset
    from onnlab.data.base import ArrayDataset

    try:
        root = None if task == "mnist" else _data_root()
        return load_dataset(task, "train", root, limit=4500)
    except Exception:  # noqa: BLE001 - same fallback as _images (stated in its "data")
        shape = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32)}[task]
        x = torch.rand(4500, *shape, generator=torch.Generator().manual_seed(0))
        return ArrayDataset(x, torch.zeros(4500, dtype=torch.long))


def run(quick: bool = False, seed: int = 0) -> dict[str, Any]:
    """Estimator errors (MNIST) and NTKD/KD step-time ratios (MNIST, CIFAR-10); see module doc."""
    t0 = time.perf_counter()
    accuracy = _accuracy(quick, seed)
    mnist = _timing("mnist", quick, seed)
    cifar = _timing("cifar10", quick, seed)
    seg = segmentation_bench(quick, seed)
    phase = phase_bench(quick, seed)
    return {
        "phase_gram_closed_form_speedup": {
            name: case["closed_form_speedup_vs_rows"] for name, case in phase["cases"].items()
        },
        "phase": phase,
        "segmentation_ntkd_over_kd_step_time": seg["ntkd_over_kd_step_time"],
        "segmentation_ntkd_term_over_kd_step_time": seg["ntkd_term_over_kd_step_time"],
        "segmentation_loss_student_equals_teacher": seg["loss_student_equals_teacher"],
        "segmentation_grad_snr": seg["grad_snr"],
        "segmentation_grad_snr_independent_sketch": seg["grad_snr_independent_sketch"],
        "segmentation": seg,
        "ntkd_over_kd_step_time": mnist["ratio_over_kd"]["ntkd"],
        "ntkd_over_kd_step_time_cifar10": cifar["ratio_over_kd"]["ntkd"],
        "sketch_rel_error": accuracy["sketch_rel_error"],
        "sketch_rel_error_means": (
            "relative Frobenius error of the teacher Gram the default objective trains with "
            f"({accuracy['default_teacher_estimator']}) vs the exact teacher Gram, LeNet on "
            "MNIST images, raw Gram (centred: sketch_rel_error_centred); anchor: cached pool "
            "Grams vs the autograd oracle on the anchor samples (worst anchor checked); "
            f"otherwise a per-step estimator on {BATCH} images vs the structured exact Gram"
        ),
        "sketch_rel_error_centred": accuracy["sketch_rel_error_centred"],
        "teacher_sketch_rel_errors": {
            k: v["raw"] for k, v in accuracy["teacher"]["errors"].items() if k != "exact"
        },
        "output_sketch_rel_error": accuracy["teacher"]["errors"]["output-1"]["raw"],
        "anchor_setup_s": mnist.get("anchor_setup_s"),
        "anchor_setup_s_cifar10": cifar.get("anchor_setup_s"),
        "anchor_setup_over_epoch": mnist.get("anchor_setup_over_epoch"),
        "anchor_setup_over_epoch_cifar10": cifar.get("anchor_setup_over_epoch"),
        "anchor_setup_over_epoch_4500": mnist.get("anchor_setup_over_epoch_4500"),
        "anchor_setup_over_epoch_4500_cifar10": cifar.get("anchor_setup_over_epoch_4500"),
        "amortised_ntkd_over_kd_step_time": mnist.get("anchor_amortised_ntkd_over_kd_step_time"),
        "amortised_ntkd_over_kd_step_time_cifar10": cifar.get(
            "anchor_amortised_ntkd_over_kd_step_time"
        ),
        "output_sketch_ntkd_over_kd_step_time": mnist["ratio_over_kd"]["ntkd_output_sketch"],
        "output_sketch_ntkd_over_kd_step_time_cifar10": cifar["ratio_over_kd"][
            "ntkd_output_sketch"
        ],
        "exact_teacher_ntkd_over_kd_step_time": mnist["ratio_over_kd"]["ntkd_exact_teacher"],
        "naive_over_kd_step_time": mnist["ratio_over_kd"].get("naive"),
        "full_batch_ntkd_over_kd_step_time": mnist["ratio_over_kd"]["ntkd_full_batch"],
        "accuracy": accuracy,
        "timing": {"mnist": mnist, "cifar10": cifar},
        "torch_threads": torch.get_num_threads(),
        "quick": quick,
        "seed": seed,
        "wall_s": time.perf_counter() - t0,
    }
