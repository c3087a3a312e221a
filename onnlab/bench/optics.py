"""Benchmark of the optical frontend: forward+backward throughput of `optical_conv2d`.

Measures, in one run and on the same inputs, the direct path (one conv2d over all kernels), the
FFT path, and a NAIVE reference that convolves one kernel at a time in a Python loop (how an
optical frontend is often first written). Systems follow the paper: an 8-kernel 7x7 mono frontend
on 28x28 MNIST-sized images and a 16-kernel 7x7 RGB frontend on 32x32 CIFAR-sized images, batch
128, with non-negative, energy-normalised trainable PSFs (softplus, then per-kernel sum = 1).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from onnlab.optics.convolution import optical_conv2d

SYSTEMS = {
    "mnist": dict(n_kernels=8, in_channels=1, kernel_px=7, image_hw=(28, 28)),
    "cifar10": dict(n_kernels=16, in_channels=3, kernel_px=7, image_hw=(32, 32)),
}
BATCH = 128


def naive_conv2d(images: torch.Tensor, psfs: torch.Tensor) -> torch.Tensor:
    """Reference: one conv2d per kernel (Python loop), true convolution, 'same' size."""
    pad = psfs.shape[-1] // 2
    outs = [F.conv2d(images, psfs[k : k + 1].flip(-2, -1), padding=pad) for k in range(len(psfs))]
    return torch.cat(outs, dim=1)


def _physical_psfs(raw: torch.Tensor) -> torch.Tensor:
    psfs = F.softplus(raw)
    return psfs / psfs.sum(dim=(1, 2, 3), keepdim=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_steps(
    paths: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]],
    images: torch.Tensor,
    raw: torch.Tensor,
    warmup: int,
    repeats: int,
) -> dict[str, float]:
    """Median seconds of one forward+backward step (loss = mean squared feature) per path.

    Paths are timed round-robin within each repeat, so load fluctuations of a shared machine
    hit all of them alike and the reported ratios stay meaningful.
    """

    def step(conv: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
        raw.grad = None
        out = conv(images, _physical_psfs(raw))
        out.square().mean().backward()

    for _ in range(warmup):
        for conv in paths.values():
            step(conv)
    times: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(repeats):
        for name, conv in paths.items():
            _sync(images.device)
            t0 = time.perf_counter()
            step(conv)
            _sync(images.device)
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def _bench_system(
    spec: dict, device: torch.device, gen: torch.Generator, warmup: int, repeats: int
) -> dict:
    k, c, kp = spec["n_kernels"], spec["in_channels"], spec["kernel_px"]
    h, w = spec["image_hw"]
    images = torch.rand(BATCH, c, h, w, generator=gen).to(device)
    raw = torch.randn(k, c, kp, kp, generator=gen).to(device).requires_grad_(True)
    with torch.no_grad():
        psfs = _physical_psfs(raw)
        direct = optical_conv2d(images, psfs, method="direct")
        fft = optical_conv2d(images, psfs, method="fft")
        naive = naive_conv2d(images, psfs)
    paths = {
        "direct": lambda x, p: optical_conv2d(x, p, method="direct"),
        "fft": lambda x, p: optical_conv2d(x, p, method="fft"),
        "naive": naive_conv2d,
    }
    seconds = _time_steps(paths, images, raw, warmup, repeats)
    img_s = {name: BATCH / s for name, s in seconds.items()}
    best = max(("direct", "fft"), key=lambda n: img_s[n])
    return {
        **{f"{name}_images_per_s": round(v, 1) for name, v in img_s.items()},
        "best_path": best,
        "speedup_vs_naive": round(img_s[best] / img_s["naive"], 3),
        "direct_vs_fft": round(img_s["direct"] / img_s["fft"], 3),
        "fft_direct_max_abs_diff": float((direct - fft).abs().max()),
        "naive_direct_max_abs_diff": float((direct - naive).abs().max()),
        "shape": {"batch": BATCH, "kernels": k, "channels": c, "kernel_px": kp, "image_hw": [h, w]},
    }


def run(quick: bool = False, seed: int = 0) -> dict:
    """Throughput (images/s, forward+backward) of direct / FFT / naive per system.

    Stable top-level keys: ``speedup_vs_naive`` (best path over naive, MNIST system) and
    ``fft_direct_max_abs_diff`` (largest forward difference between the paths, both systems).
    """
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gen = torch.Generator().manual_seed(seed)
    warmup, repeats = (1, 3) if quick else (2, 9)
    systems = {
        name: _bench_system(spec, device, gen, warmup, repeats) for name, spec in SYSTEMS.items()
    }
    return {
        "speedup_vs_naive": systems["mnist"]["speedup_vs_naive"],
        "fft_direct_max_abs_diff": max(s["fft_direct_max_abs_diff"] for s in systems.values()),
        "systems": systems,
        "batch": BATCH,
        "measure": "forward+backward, median of round-robin repeats after warm-up",
        "warmup": warmup,
        "repeats": repeats,
        "device": str(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "quick": quick,
        "seed": seed,
    }


if __name__ == "__main__":  # pragma: no cover
    import json

    print(json.dumps(run(quick=True), indent=2))
