"""Anchor batches: a fixed pool of training samples with cached EXACT teacher Grams.

Why: the teacher is frozen, so its exact NTK Gram on a fixed batch never changes.  Computing it
every step costs several KD steps (C = 10 backward directions through the teacher); a one-random-
direction sketch is cheap but ~25 % wrong per step.  An anchor pool pays the exact Gram once, at
setup, for ``count`` disjoint batches of ``batch`` samples; each training step then only runs
the student on the next anchor batch (a seeded, reshuffled cycle over the pool), so a step does no
teacher work at all and its teacher Gram is exact.

Under DistributedDataParallel (``torchrun``) the pool is split across ranks, not replicated:
rank r owns anchors r, r + W, r + 2W, ... of the global selection, computes only their teacher
Grams, and aligns one of its own anchor batches per step.  Each anchor batch's Gram is complete
within one rank, so no Gram is ever block-diagonal; DDP then averages the per-rank NTKD
gradients, which is the gradient of the mean NTKD loss over the W anchor batches of that step
(the same value a single process computes on those anchors; tests/training/test_ddp_ntkd.py).
Gathering Jacobians across ranks instead would cost an all-gather of B x C x P per step and
buys nothing: the anchor Grams are fixed-size and already complete.

Student and teacher inputs come from the same dataset fields the training loop uses:
``dataset.images`` for the student (raw images for a hybrid, captured feature maps in
backend-only compensation) and ``dataset.teacher_images`` (falling back to ``images``) for the
teacher.  Anchor samples are not augmented: they are fixed points at which the kernels are
compared.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from onnlab.distill.ntk import default_output_fn, eval_mode, ntk_gram, orthogonal_rows

DEFAULT_ANCHORS = 64


def select_anchors(n_samples: int, batch: int, count: int, seed: int) -> Tensor:
    """(count', batch) int64 indices of disjoint anchor batches, seeded.

    ``count' = min(count, n_samples // batch)``: a small training set (e.g. a 10 % capture for
    post-fabrication compensation) gets as many full disjoint batches as it holds.
    """
    if batch < 2:
        raise ValueError(f"batch must be >= 2, got {batch}")
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    usable = min(count, n_samples // batch)
    if usable < 1:
        raise ValueError(
            f"the training set has {n_samples} samples, fewer than one anchor batch of {batch}"
        )
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(n_samples, generator=gen)[: usable * batch].view(usable, batch)


def _shard() -> tuple[int, int]:
    """(rank, world size) of the initialised torch.distributed process group, else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class AnchorPool:
    """Anchor samples for the student, their exact teacher Grams, and a seeded cycle over them.

    Built by :meth:`build`; :meth:`next` returns the student input and teacher Gram of the next
    anchor batch (:meth:`draw` also its output directions).  The cycle visits every anchor once
    per round in a fresh seeded order.

    ``cotangents`` (count, M, C): the output directions each anchor's teacher Gram was taken
    along (None: all C outputs, the exact Gram).  A student Gram taken along the same rows is
    the matched sketch: equal to the teacher's whenever the models are equal, so an NTKD loss
    built on it is exactly 0 at student = teacher, which an independent student sketch is not.
    """

    def __init__(
        self,
        indices: Tensor,
        x_student: Tensor,
        grams: Tensor,
        seed: int,
        cotangents: Tensor | None = None,
    ) -> None:
        if cotangents is not None and cotangents.shape[0] != indices.shape[0]:
            raise ValueError("cotangents: one (M, C) block per anchor batch")
        self.indices, self.x_student, self.grams = indices, x_student, grams
        self.cotangents = cotangents
        self.seed = seed
        self.setup_s = 0.0
        self._round, self._pos = 0, 0
        self._order = self._shuffle(0)

    def __len__(self) -> int:
        return self.indices.shape[0]

    def _shuffle(self, round_: int) -> Tensor:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + round_)
        return torch.randperm(len(self), generator=gen)

    def seek(self, step: int) -> None:
        """Position the cycle as if ``step`` anchors had been drawn (resuming a run)."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        self._round, self._pos = divmod(step, len(self))
        self._order = self._shuffle(self._round)

    def next(self) -> tuple[Tensor, Tensor]:
        """(student input (batch, ...), exact teacher Gram (batch, batch)) of the next anchor."""
        x, gram, _ = self.draw()
        return x, gram

    def draw(self) -> tuple[Tensor, Tensor, Tensor | None]:
        """``next`` plus the anchor's output directions (M, C), None for the exact Gram."""
        if self._pos == len(self):
            self._round, self._pos = self._round + 1, 0
            self._order = self._shuffle(self._round)
        k = int(self._order[self._pos])
        self._pos += 1
        rows = None if self.cotangents is None else self.cotangents[k]
        return self.x_student[k], self.grams[k], rows

    @classmethod
    def build(
        cls,
        teacher: nn.Module,
        dataset: Any,
        *,
        batch: int,
        count: int = DEFAULT_ANCHORS,
        seed: int = 0,
        device: torch.device | str | None = None,
        directions: int | None = None,
        output_fn: Callable[[Tensor], Tensor] | None = None,
        chunk_size: int | None = None,
        shard: tuple[int, int] | None = None,
    ) -> AnchorPool:
        """Select anchors from ``dataset`` and compute each batch's exact teacher Gram once.

        The Grams are taken in eval mode without a graph, one anchor batch at a time (the
        structured engine's cost is linear in the batch, so grouping saves nothing and would
        only raise peak memory).  ``device``: where the student inputs and Grams are kept
        (default: the teacher's device).  ``directions``: None for the exact Gram over all C
        outputs; M for M seeded orthonormal output directions per anchor (``cotangents``),
        drawn from the anchor's first sample index so they do not depend on how the pool is
        split across processes.  ``shard=(rank, world_size)``: keep only this rank's
        share of the selected anchors (default: the torch.distributed process group's, if one
        is initialised; ``(0, 1)``: the whole pool).
        """
        t0 = time.perf_counter()
        images = dataset.images
        x_teacher_all = getattr(dataset, "teacher_images", None)
        x_teacher_all = images if x_teacher_all is None else x_teacher_all
        if x_teacher_all.shape[0] != images.shape[0]:
            raise ValueError("dataset.teacher_images and dataset.images differ in length")
        idx = select_anchors(images.shape[0], batch, count, seed)
        rank, size = _shard() if shard is None else shard
        if not 0 <= rank < size:
            raise ValueError(f"shard must be (rank, world_size) with 0 <= rank < size: {shard}")
        if idx.shape[0] < size:
            raise ValueError(
                f"{idx.shape[0]} anchor batch(es) cannot be split over {size} processes; "
                "raise the anchor count or use fewer processes"
            )
        idx = idx[rank::size]
        params = list(teacher.parameters())
        t_device = params[0].device if params else torch.device("cpu")
        keep = torch.device(device) if device is not None else t_device
        rows = None
        if directions is not None:
            rows = _anchor_directions(teacher, x_teacher_all, idx, directions, seed, output_fn)
        grams = [
            ntk_gram(
                teacher,
                x_teacher_all[row].to(t_device),
                estimator="exact" if rows is None else "output",
                cotangents=None if rows is None else rows[k],
                params=params,
                chunk_size=chunk_size,
                output_fn=output_fn,
            ).to(keep)
            for k, row in enumerate(idx)
        ]
        pool = cls(idx, images[idx].to(keep), torch.stack(grams), seed, rows)
        pool.setup_s = time.perf_counter() - t0
        return pool


def _anchor_directions(
    teacher: nn.Module,
    x_teacher: Tensor,
    idx: Tensor,
    directions: int,
    seed: int,
    output_fn: Callable[[Tensor], Tensor] | None,
) -> Tensor:
    """(count, M, C) orthonormal output rows per anchor batch, scaled so E[U^T U] = I."""
    if directions < 1:
        raise ValueError(f"directions must be >= 1, got {directions}")
    params = list(teacher.parameters())
    device = params[0].device if params else torch.device("cpu")
    with torch.no_grad(), eval_mode(teacher):
        n_out = (output_fn or default_output_fn)(teacher(x_teacher[idx[0, :1]].to(device)))
    n_out = n_out.shape[1]
    blocks = [
        orthogonal_rows(
            directions, n_out, torch.Generator().manual_seed(seed * 1_000_003 + int(row[0]))
        )
        for row in idx
    ]
    return torch.stack(blocks).to(torch.get_default_dtype())
