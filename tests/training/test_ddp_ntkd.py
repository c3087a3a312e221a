"""NTKD under DDP (2 gloo processes): loss and gradient equal the single-process values.

Each rank aligns its own anchor batches (the anchor pool is split across ranks, each batch's
teacher Gram is complete within its rank); DDP averages the gradients.  The single-process
reference computes the same objective on the same anchors (and the same local task batches)
and averages it, so the two must agree to float precision.  A silently block-diagonal Gram
(a Gram over both ranks' samples with the cross-rank blocks missing) would not.

This file is also the worker: torchrun runs it as a script (`python -m torch.distributed.run
... tests/training/test_ddp_ntkd.py OUT`), and each rank writes its numbers to OUT.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

WORLD = 2
N, HW, ANCHOR_BATCH, ANCHORS, BATCH = 48, 8, 6, 4, 8


class _Frontend(nn.Module):
    """Non-negative PSFs by softmax, a true convolution (the optical frontend's shape)."""

    def __init__(self) -> None:
        super().__init__()
        self.raw = nn.Parameter(torch.randn(3, 1, 3, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        psf = self.raw.flatten(1).softmax(1).view_as(self.raw)
        return F.conv2d(x, psf, padding=1)


class _Student(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.frontend = _Frontend()
        self.backend = nn.Sequential(
            nn.AvgPool2d(2), nn.Flatten(), nn.Linear(3 * (HW // 2) ** 2, 8), nn.Tanh(),
            nn.Linear(8, 4),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backend(self.frontend(x))


class _Data:
    def __init__(self, images: torch.Tensor) -> None:
        self.images, self.teacher_images = images, None

    def __len__(self) -> int:
        return self.images.shape[0]


def _case():
    """Student, teacher, data and one global batch; identical in every process."""
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten())
    teacher.append(nn.Linear(4 * HW * HW, 4))
    student = _Student()
    gen = torch.Generator().manual_seed(1)
    data = _Data(torch.rand(N, 1, HW, HW, generator=gen))
    x = torch.rand(BATCH, 1, HW, HW, generator=gen)
    y = torch.randint(0, 4, (BATCH,), generator=gen)
    return student, teacher, data, x, y


def _objective(teacher):
    from onnlab.distill.objective import NTKDObjective

    return NTKDObjective(teacher, "mnist", ntk_batch=ANCHOR_BATCH, anchors=ANCHORS, seed=3)


def _grads(model: nn.Module) -> dict[str, list]:
    return {n: p.grad.flatten().tolist() for n, p in model.named_parameters()}


def _worker(out: Path) -> None:
    """One rank: its shard of the anchors and of the batch, DDP-averaged gradient."""
    from onnlab.training import distributed

    w = distributed.init_from_env()
    student, teacher, data, x, y = _case()
    objective = _objective(teacher)
    objective.prepare(data, "cpu")  # the pool is split by the process group
    net = distributed.wrap(student, torch.device("cpu"), w)
    sl = slice(w.rank, None, w.size)  # the loop's shard of the global batch
    loss, logs = objective(net, {"x": x[sl], "y": y[sl]})
    loss.backward()
    mean = distributed.mean_over_ranks({"loss": loss.item(), "ntkd": logs["ntkd"]}, w)
    result = {
        "loss": mean["loss"],
        "ntkd": mean["ntkd"],
        "grads": _grads(student),
        "anchor_indices": objective.anchor_pool.indices.tolist(),
        "grams": objective.anchor_pool.grams.tolist(),
    }
    (out / f"rank{w.rank}.json").write_text(json.dumps(result))


def _reference() -> dict:
    """One process, the same anchors: mean over the ranks' objectives, and its gradient."""
    from onnlab.distill.anchors import AnchorPool

    student, teacher, data, x, y = _case()
    full = AnchorPool.build(teacher, data, batch=ANCHOR_BATCH, count=ANCHORS, seed=3)
    total, ntkd, per_rank = 0.0, 0.0, []
    for rank in range(WORLD):
        objective = _objective(teacher)
        objective.anchor_pool = AnchorPool.build(
            teacher, data, batch=ANCHOR_BATCH, count=ANCHORS, seed=3, shard=(rank, WORLD)
        )
        loss, logs = objective(student, {"x": x[rank::WORLD], "y": y[rank::WORLD]})
        total = total + loss / WORLD
        ntkd += logs["ntkd"] / WORLD
        per_rank.append(objective.anchor_pool.indices)
    total.backward()
    return {"loss": total.item(), "ntkd": ntkd, "grads": _grads(student), "full": full}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_ranks(target: list[str], timeout_s: float = 120) -> None:
    """torchrun with 2 CPU processes on 127.0.0.1, bounded by a timeout (shared by DDP tests).

    ``target``: a script and its arguments, or ``["-m", module, ...]``.
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore::FutureWarning"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={WORLD}",
        "--nnodes=1", "--master_addr=127.0.0.1", f"--master_port={_free_port()}",
        *target,
    ]  # fmt: skip
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"2-process run exceeded {timeout_s} s: {exc.stderr}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.mark.timeout(180)
def test_ntkd_loss_and_gradient_under_ddp_equal_single_process(tmp_path):
    run_two_ranks([__file__, str(tmp_path)])
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    ref = _reference()
    full = ref["full"]

    # the cache is split, not replicated: rank r holds anchors r, r+W, ... with complete Grams
    for r, got in enumerate(ranks):
        assert torch.equal(torch.tensor(got["anchor_indices"]), full.indices[r::WORLD])
        grams = torch.tensor(got["grams"])
        assert grams.shape == (ANCHORS // WORLD, ANCHOR_BATCH, ANCHOR_BATCH)
        torch.testing.assert_close(grams, full.grams[r::WORLD].to(grams.dtype))
        off_diagonal = grams - torch.diag_embed(torch.diagonal(grams, dim1=1, dim2=2))
        assert off_diagonal.abs().max() > 1e-3 * grams.abs().max()  # a full kernel, not a diag

    assert ranks[0]["loss"] == pytest.approx(ranks[1]["loss"])  # all-reduced
    assert ranks[0]["loss"] == pytest.approx(ref["loss"], rel=1e-6)
    assert ranks[0]["ntkd"] == pytest.approx(ref["ntkd"], rel=1e-6)
    assert ref["ntkd"] > 1e-4  # the NTKD term is not trivially zero
    for name, g_ref in ref["grads"].items():
        g_ref = torch.tensor(g_ref)
        assert g_ref.abs().max() > 0, name
        for got in ranks:  # DDP hands every rank the same averaged gradient
            torch.testing.assert_close(
                torch.tensor(got["grads"][name]), g_ref, rtol=1e-5, atol=1e-7
            )


if __name__ == "__main__":
    torch.set_num_threads(1)
    _worker(Path(sys.argv[1]))
