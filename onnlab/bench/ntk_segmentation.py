"""`onnlab bench ntk`, part 3: segmentation NTKD (the ``segmentation_*`` keys; see `bench.ntk`).

Synthetic shapes, the 56-PSF student, the U-Net teacher, batch 8, the task's default objective
(matched sketch along M output directions per anchor, lazy every ``ntk_every`` steps): its cost
against KD, its loss at student = teacher, and how much of its gradient is signal.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from onnlab.distill.losses import ntkd_loss
from onnlab.distill.ntk import ntk_gram
from onnlab.distill.objective import NTKDObjective


def rel_error(a: Tensor, b: Tensor) -> float:
    """Relative Frobenius error ||a - b|| / ||b||."""
    return float((a - b).norm() / b.norm())


def segmentation_bench(quick: bool, seed: int, teacher_path: Path | None = None) -> dict[str, Any]:
    """Segmentation NTKD: cost vs KD, zero at student = teacher, gradient signal (see doc).

    The teacher: ``teacher_path``, else the registered synthetic-set U-Net, else a seeded init
    (stated in ``teacher_weights``); the gradient cosines mean most with a trained teacher.
    """
    import copy

    from onnlab.data import load_dataset
    from onnlab.models.zoo import build_student, build_teacher
    from onnlab.training.losses import KDLoss

    torch.manual_seed(seed)
    data = load_dataset("segmentation", "train", None, limit=256)
    batch_n = 8
    x, y = data.images[:batch_n], data.targets[:batch_n]
    student, teacher = build_student("segmentation"), build_teacher("segmentation")
    teacher_weights = f"random init (seed {seed}); no registered teacher"
    try:
        from onnlab.training.checkpoint import load_checkpoint
        from onnlab.training.runner import registered_teacher_path

        path = teacher_path or registered_teacher_path("segmentation")
        if Path(path).is_file():
            teacher = load_checkpoint(path)[0]
            teacher_weights = f"trained: {path}"
    except Exception as exc:  # noqa: BLE001 - fall back to the seeded init, and say why
        teacher_weights = f"random init (seed {seed}); teacher unusable: {exc}"
    teacher.eval()
    student.initialise(x)
    student.train()
    anchors = 2 if quick else 4
    default = NTKDObjective(teacher, "segmentation", seed=seed, anchors=anchors)
    t0 = time.perf_counter()
    default.prepare(data, "cpu", seed, batch_size=batch_n)
    setup_s = time.perf_counter() - t0
    kd = KDLoss(teacher, "segmentation")
    optimiser = torch.optim.AdamW(student.parameters(), lr=1e-5)
    batch = {"x": x, "y": y}

    def step(loss: Any, ntkd_now: bool | None = None) -> float:
        if ntkd_now is not None:
            loss._calls = 0 if ntkd_now else 1
        t = time.perf_counter()
        optimiser.zero_grad(set_to_none=True)
        loss(student, batch)[0].backward()
        optimiser.step()
        return time.perf_counter() - t

    repeats = 3 if quick else 5
    step(kd), step(default, True), step(default, False)  # warm-up
    times: dict[str, list[float]] = {"kd": [], "ntkd_term": [], "lazy": []}
    for _ in range(repeats):
        times["kd"].append(step(kd))
        times["ntkd_term"].append(step(default, True))
        times["lazy"].append(step(default, False))
    med = {k: statistics.median(v) for k, v in times.items()}
    k = default.ntk_every
    mean_step = (med["ntkd_term"] + (k - 1) * med["lazy"]) / k

    # zero at student = teacher, and gradient signal vs noise, on the first anchor batch
    twin = copy.deepcopy(teacher).eval()
    for p in twin.parameters():
        p.requires_grad_(True)
    x_a, rows = default.anchor_pool.x_student[0], default.anchor_pool.cotangents[0]
    signal = _segmentation_signal(
        student, teacher, twin, default, seed, 3 if quick else 6, 2 if quick else 4
    )
    proj = rows.to(x_a)
    oracle = ntk_gram(
        student,
        x_a,
        estimator="jacobian",
        chunk_size=2,
        output_fn=lambda out, u=proj: (
            torch.nn.functional.adaptive_avg_pool2d(out, 4).flatten(1) @ u.T
        ),
    )
    matched = default.student_gram(student, x_a, rows)[0].detach()
    return {
        "data": "synthetic segmentation shapes (train)",
        "batch": batch_n,
        "defaults": {
            "directions": default.directions,
            "ntk_batch": default.ntk_batch,
            "ntk_every": k,
            "teacher_estimator": default.teacher_estimator,
        },
        "teacher_weights": teacher_weights,
        "step_s": med,
        "ntkd_term_over_kd_step_time": med["ntkd_term"] / med["kd"],
        "ntkd_over_kd_step_time": mean_step / med["kd"],
        "anchor_setup_s_per_anchor": setup_s / len(default.anchor_pool),
        "matched_gram_rel_error_vs_oracle": rel_error(matched, oracle),
        **signal,
    }


def _snr(gs: list[Tensor], exact: Tensor | None = None) -> dict[str, float]:
    """|mean|^2 / mean |g - mean|^2 over draws (noise dominates below 1), cosines vs exact."""
    stack = torch.stack(gs)
    mean = stack.mean(0)
    out = {
        "snr": float(mean.square().sum() / (stack - mean).square().sum(1).mean().clamp_min(1e-30))
    }
    if exact is not None:
        out["cosine"] = statistics.fmean(_cos(g, exact) for g in gs)
        out["mean_cosine"] = _cos(mean, exact)
    return out


def _segmentation_signal(
    student: nn.Module,
    teacher: nn.Module,
    twin: nn.Module,
    default: NTKDObjective,
    seed: int,
    draws: int,
    batches: int,
) -> dict[str, Any]:
    """Loss at student = teacher and gradient signal/noise of the NTKD estimators.

    On the first anchor batch, for ``draws`` random draws of output rows: the default (matched:
    student and teacher Grams along the same M rows) and the previous default (independent:
    the student along one row, the exact teacher Gram).  Per estimator: the mean cosine of one
    draw's gradient with the exact-Gram loss gradient, the cosine of the mean over the draws,
    and the signal-to-noise ratio over draws.  For scale, the SNR of the exact gradient across
    ``batches`` anchor batches (the sampling noise SGD has anyway).  At student = teacher the
    matched loss is 0 for every draw; the independent one is not.
    """
    from onnlab.distill.ntk import default_output_fn, orthogonal_rows

    pool = default.anchor_pool
    x = pool.x_student[0]
    t_params = list(teacher.parameters())
    params = [p for p in student.parameters() if p.requires_grad]
    with torch.no_grad():
        n_out = default_output_fn(teacher(x[:1])).shape[1]

    def grad(loss: Tensor) -> Tensor:
        return torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)])

    def exact_grad(xb: Tensor) -> tuple[Tensor, Tensor]:
        g_t = ntk_gram(teacher, xb, params=t_params)
        return grad(ntkd_loss(ntk_gram(student, xb, create_graph=True), g_t)), g_t

    exact, exact_t = exact_grad(x)
    across = [exact] + [exact_grad(pool.x_student[b])[0] for b in range(1, min(batches, len(pool)))]
    grads: dict[str, list[Tensor]] = {"matched": [], "independent": []}
    at_teacher: dict[str, list[float]] = {"matched": [], "independent": []}
    for r in range(draws):
        gen = torch.Generator().manual_seed(seed * 1_000 + r)
        for name, m, ref in (("matched", default.directions, None), ("independent", 1, exact_t)):
            opts = {"estimator": "output", "cotangents": orthogonal_rows(m, n_out, gen).float()}
            t_u = ntk_gram(teacher, x, params=t_params, **opts) if ref is None else ref
            grads[name].append(
                grad(ntkd_loss(ntk_gram(student, x, create_graph=True, **opts), t_u))
            )
            at_teacher[name].append(ntkd_loss(ntk_gram(twin, x, **opts), t_u).item())
    out: dict[str, Any] = {
        "signal_draws": draws,
        "signal_batch": x.shape[0],
        "exact_grad_snr_across_batches": _snr(across)["snr"],
        "exact_grad_batches": len(across),
    }
    for name, gs in grads.items():
        key = "" if name == "matched" else "_independent_sketch"
        stats = _snr(gs, exact)
        out[f"loss_student_equals_teacher{key}"] = max(at_teacher[name])
        out[f"grad_cosine_vs_exact{key}"] = stats["cosine"]
        out[f"mean_grad_cosine_vs_exact{key}"] = stats["mean_cosine"]
        out[f"grad_snr{key}"] = stats["snr"]
    return out


def _cos(a: Tensor, b: Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()).clamp_min(1e-30))
