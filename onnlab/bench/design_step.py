"""Cost of training through the wave model: a phase-frontend step over a free-frontend step.

`measure_phase_over_free_step_time` times one full training step (forward, cross-entropy,
backward, Adam step) of the same student architecture with the free frontend (trained PSFs)
and with the phase-mask frontend (phase maps -> PSFs by `psfs_from_phases`, with dispersion,
every step), on the same batch, in one process, round-robin so that load on a shared machine
hits both alike. It also times the PSF computation alone (forward + backward of `psfs()`), the
part the phase frontend adds. `onnlab bench design` reports the ratio as
``phase_frontend_over_free_step_time`` (goal <= 3 on the MNIST system, batch 128).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from onnlab.models.zoo import build_student, task_spec


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _step_fn(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step() -> None:
        optimiser.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimiser.step()

    return step


def _psf_fn(model: torch.nn.Module) -> Callable[[], None]:
    def step() -> None:
        model.zero_grad(set_to_none=True)
        model.frontend.psfs().sum().backward()

    return step


def measure_phase_over_free_step_time(
    task: str = "mnist",
    batch_size: int = 128,
    repeats: int = 15,
    *,
    warmup: int = 3,
    device: str | torch.device | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Median seconds per training step, free vs phase frontend, and their ratio.

    Returns ``phase_frontend_over_free_step_time`` (phase step / free step), ``free_step_s``,
    ``phase_step_s``, ``phase_psf_s`` / ``free_psf_s`` (PSFs forward + backward alone), and the
    set-up (task, batch, device, threads, the phase system's K, C, N, oversample).
    """
    spec = task_spec(task)
    if spec.kind != "classification":
        raise ValueError(f"task must be a classification task (mnist, cifar10), got {task!r}")
    if batch_size < 1 or repeats < 1 or warmup < 0:
        raise ValueError("batch_size and repeats must be >= 1, warmup >= 0")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(batch_size, spec.in_channels, *spec.image_hw, generator=gen).to(dev)
    y = torch.randint(0, spec.n_classes, (batch_size,), generator=gen).to(dev)
    models = {}
    for name in ("free", "phase"):
        torch.manual_seed(seed)
        model = build_student(task, frontend=name).to(dev).train()
        model.initialise(x)
        models[name] = model
    steps = {f"{n}_step": _step_fn(m, x, y) for n, m in models.items()}
    steps.update({f"{n}_psf": _psf_fn(m) for n, m in models.items()})
    for _ in range(warmup):
        for fn in steps.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, fn in steps.items():
            _sync(dev)
            t0 = time.perf_counter()
            fn()
            _sync(dev)
            times[name].append(time.perf_counter() - t0)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    fe = models["phase"].frontend
    return {
        "phase_frontend_over_free_step_time": round(med["phase_step"] / med["free_step"], 3),
        "free_step_s": med["free_step"],
        "phase_step_s": med["phase_step"],
        "free_psf_s": med["free_psf"],
        "phase_psf_s": med["phase_psf"],
        "task": task,
        "batch_size": batch_size,
        "repeats": repeats,
        "device": str(dev),
        "torch_threads": torch.get_num_threads(),
        "phase_system": {
            "n_kernels": fe.n_kernels,
            "channels": fe.in_channels,
            "kernel_px": fe.kernel_px,
            "phase_samples": fe.phase_samples,
            "oversample": fe.oversample,
            "material": fe.material.name,
        },
    }
