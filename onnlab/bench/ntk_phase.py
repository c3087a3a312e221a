"""`onnlab bench ntk`, phase frontend: the exact student NTK Gram through the wave model.

A phase student's PSFs come from the wave model every step, so its exact NTK needs the PSF
Jacobian w.r.t. the design phases. Three routes give the same Gram; this times them in one
process (interleaved repeats, median), for the MNIST and CIFAR-10 phase students at their
NTK batch sizes, each as one differentiable Gram plus the backward of a loss on it (what an
NTKD step adds):

- ``closed_form`` (default): the frontend's `kernel_grams`, J_k J_k^T with a closed-form
  backward (`onnlab.optics.psf_phase_gram`);
- ``closed_form_jacobian``: the frontend's `kernel_jacobians` (`onnlab.optics.psf_jacobian`),
  about one wave-model pass, differentiated by autograd (the route before `kernel_grams`);
- ``autograd_blocks``: the Jacobian from one reverse pass per PSF value (C k k passes, all
  kernels at once; what the engine does for a kernel-independent module without a closed form);
- ``rows``: every gradient row pulled back through the wave model (outputs x batch passes;
  the engine's generic route, and what the first phase runs used).

Reported: seconds per Gram + backward, the speed-ups of the closed form, the relative
difference of each route's Gram of the phases alone from the closed form's (all four are
exact: float32 rounding), and the phases' share of the whole Gram's trace -- small (the
NTK weighs every parameter alike, and one of N^2 phase samples moves a PSF by ~1/N^2).
"""

from __future__ import annotations

import statistics
import time
from contextlib import ExitStack
from typing import Any
from unittest.mock import patch

import torch

from onnlab.distill.ntk import ntk_gram

ROUTES = ("closed_form", "closed_form_jacobian", "autograd_blocks", "rows")
# (task, NTK batch): the classification defaults (16) and the MNIST tuned choice (64)
CASES = (("mnist", 16), ("mnist", 64), ("cifar10", 16))


def _route(frontend: torch.nn.Module, route: str) -> ExitStack:
    stack = ExitStack()
    cls = type(frontend)
    if route != "closed_form":
        stack.enter_context(patch.object(cls, "kernel_grams", None))
    if route in ("autograd_blocks", "rows"):
        stack.enter_context(patch.object(cls, "kernel_jacobians", None))
    if route == "rows":
        stack.enter_context(patch.object(cls, "independent_kernels", False))
    return stack


def _case(task: str, batch: int, repeats: int, seed: int) -> dict[str, Any]:
    from onnlab.models.zoo import build_student

    torch.manual_seed(seed)
    model = build_student(task, frontend="phase")
    shape = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32)}[task]
    x = torch.rand(batch, *shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        model(x)  # data-dependent initialisation of the backend's normalisation
    weights = torch.randn(batch, batch, generator=torch.Generator().manual_seed(seed + 1))

    def step(route: str) -> torch.Tensor:
        with _route(model.frontend, route):
            model.zero_grad(set_to_none=True)
            gram = ntk_gram(model, x, create_graph=True)
            (gram * weights).sum().backward()
        return gram.detach()

    for route in ROUTES:  # warm-up
        step(route)
    # the routes compared on the phases' own Gram: in the whole Gram it sits below float32
    # resolution (``frontend_share_of_trace``), so equal whole Grams would prove nothing
    phase = [model.frontend.phase]
    grams = {}
    for route in ROUTES:
        with _route(model.frontend, route):
            grams[route] = ntk_gram(model, x, params=phase)
    share = float(grams["closed_form"].trace() / ntk_gram(model, x).trace())
    times: dict[str, list[float]] = {route: [] for route in ROUTES}
    for _ in range(repeats):
        for route in ROUTES:
            t0 = time.perf_counter()
            step(route)
            times[route].append(time.perf_counter() - t0)
    median = {route: statistics.median(v) for route, v in times.items()}
    ref = grams["closed_form"]
    return {
        "task": task,
        "ntk_batch": batch,
        "gram_and_backward_s": median,
        "closed_form_speedup_vs_rows": median["rows"] / median["closed_form"],
        "closed_form_speedup_vs_autograd_blocks": (
            median["autograd_blocks"] / median["closed_form"]
        ),
        "closed_form_speedup_vs_closed_form_jacobian": (
            median["closed_form_jacobian"] / median["closed_form"]
        ),
        "frontend_share_of_trace": share,
        "phase_gram_rel_diff_from_closed_form": {
            route: float((grams[route] - ref).norm() / ref.norm()) for route in ROUTES[1:]
        },
    }


def phase_bench(quick: bool = False, seed: int = 0) -> dict[str, Any]:
    """The four routes on each case of `CASES` (quick: MNIST at batch 16 only)."""
    cases = CASES[:1] if quick else CASES
    out = {f"{task}_{batch}": _case(task, batch, 2 if quick else 5, seed) for task, batch in cases}
    return {"threads": torch.get_num_threads(), "cases": out}
