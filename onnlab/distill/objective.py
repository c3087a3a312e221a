"""The NTKD training objective: alpha * task + beta * NTKD (+ kd_weight * logit KD).

A loss callable of the training contract, ``loss(model, batch) -> (tensor, logs)``:

- ``model`` a ``HybridONN`` (design-time training): the student Gram is over its trainable
  parameters (frontend PSFs and backend) on ``batch["x"]`` (raw images).
- ``model`` a bare backend (post-fabrication compensation): ``batch["x"]`` are the captured
  feature maps, ``batch["x_teacher"]`` the raw images of the same samples for the teacher; only
  the backend's parameters exist in the graph, so the frozen optics cannot move.

Both cases are the same code: student NTK of ``model`` on ``batch["x"]``, teacher NTK on
``batch.get("x_teacher", batch["x"])``.  The teacher Gram is computed without a graph (its
parameters are frozen): by default exactly, once, on a fixed pool of anchor batches (``prepare``,
called by the training loop, builds it from the training set; a step then compares the student's
Gram on the next anchor batch with the cached teacher Gram); optionally per step on the training
batch with any ``ntk_gram`` estimator.  The student Gram is exact and differentiable.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from functools import cache
from typing import Any

import torch
from torch import Tensor, nn

from onnlab.distill.anchors import DEFAULT_ANCHORS, AnchorPool
from onnlab.distill.losses import NORMALISATIONS, ntkd_loss
from onnlab.distill.ntk import ESTIMATORS, ntk_gram_and_output
from onnlab.distill.task_losses import TaskLoss, kd_divergence, task_loss
from onnlab.distill.teacher_outputs import TeacherOutputs, ViewStream
from onnlab.errors import OnnlabError

# Defaults, chosen by measurement (MNIST students trained 5 epochs on 4,500 images with a 98.3 %
# LeNet teacher, 3 seeds, 10,000 test images; none 91.48 %, KD 89.54 %):
# - CKA normalisation, beta = 1: 92.10 %; trace 91.85 %, beta 0.3 91.85 %, beta 10 hurt
#   (91.37 % on a 1,000-image test).  CKA is scale-invariant and ignores the constant kernel
#   component that dominates NTKs of non-negative images.
# - teacher Gram: "anchor" (onnlab.distill.anchors): the NTKD term is taken on a fixed, seeded
#   pool of 64 disjoint anchor batches of ntk_batch samples whose EXACT teacher Grams are
#   computed once in ``prepare`` (the teacher is frozen, so they never change).  Exact teacher
#   Gram, no teacher work per step.  MNIST, 4,500 images, 3 epochs, 3 seeds, registered LeNet
#   teacher: anchors 64 90.10 +- 0.37 %, vs 90.18 +- 0.42 % for the previous default (a fresh
#   teacher sketch on the training batch every step; see below) -- the same within noise.
#   Setup: ~0.2 s per anchor batch on MNIST (64 anchors ~13 s on a loaded 2-core CPU).
# - previous default, still available (teacher_estimator="output", teacher_size=1): one random
#   output direction per step on the training batch.  Unbiased; its per-step error on a
#   trained LeNet is large (~25 % relative Frobenius), yet training matched the exact per-step
#   teacher Gram (92.10 vs 92.17 %, 5-epoch sweep) -- fresh directions average the noise out.
#   The exact teacher Gram per step (teacher_estimator="exact") needs C = 10 teacher backward
#   directions every step (~3x a KD step on MNIST, > 1 KD step alone on CIFAR-10).
# - ntk_batch 16: Grams on 16 samples (anchor batches; for per-step estimators the first 16 of
#   each shuffled batch).  32 gave 92.10 % in the sweep above; the whole batch of 128 91.95 %
#   at 1.8x the training time.  The student's Gram work is quadratic in it.
TEACHER_ESTIMATOR = "anchor"
TEACHER_SIZE = 1  # per-step sketch size ("output"/"jvp"); unused by "anchor"
NTK_BATCH = 16
TEACHER_ESTIMATORS = (*ESTIMATORS, "anchor")
# ntk_batch None ("whole batch") with anchors: anchor batches of the training batch size, or
# this many samples when the caller of ``prepare`` does not say.
FULL_ANCHOR_BATCH = 128
# Segmentation: 16 pooled mask outputs x per-sample weight-gradients of full-resolution
# decoder convolutions make the exact student Gram ~60x a KD step (16 anchor samples: ~150x).
# The default is the matched sketch: each anchor batch has 4 seeded orthonormal output
# directions, the teacher's cached Gram and the student's Gram are both taken along them, so
# the loss is exactly 0 at student = teacher (an independent one-direction student sketch
# against the exact teacher Gram gave 0.1-0.55 there: a floor the student is pushed away from
# the teacher to reach).  Directions, measured on a 89.9 %-mIoU U-Net teacher and a fresh
# student, anchor batches of 8 (``onnlab bench ntk`` "segmentation", and two batches by hand):
# the signal-to-noise ratio of the NTKD gradient over direction draws is 0.24-0.44 for 1
# direction (cosine with the exact-Gram gradient 0.30-0.49), 1.1 for 2, 0.7-4.9 for 4 (cosine
# 0.56-0.90; the mean over draws 0.90-0.97).  For scale, the exact gradient's own SNR across
# anchor batches (noise SGD has anyway) was 1.0-4.9 on the same student: with 4 directions the
# sketch adds about as much noise as batch sampling does; with 1 it adds 4-10x more.  The
# old independent one-direction sketch: SNR 0.23-0.29.  Anchor batches of 8 samples, the
# segmentation training batch.
SEGMENTATION_DIRECTIONS = 4
SEGMENTATION_NTK_BATCH = 8
# Even so, a segmentation NTKD term (4 directions, double backward through full-resolution
# convolutions) costs ~12 KD steps, so the term is lazy there (Karras et al. 2020, "lazy
# regularisation"): taken every 12th step with 12x the weight, the same mean weight, which
# brings the mean step to <= 2 KD steps (1.86 measured); the steps between are task (+ KD)
# steps.  Skipping is cheap in signal where the NTKD gradient changes little from batch to
# batch (pairwise cosine 0.84 over 4 batches in one measurement; SNR 1.0-4.9 above).  Caveat:
# under Adam the 12x-weighted term raises the second-moment estimate more than a per-step term
# would.  Classification Grams are cheap: 1 (every step).
SEGMENTATION_NTK_EVERY = 12
# per-step teacher estimators ("output"/"jvp"/"exact") with segmentation: the student sketch
SEGMENTATION_ESTIMATOR, SEGMENTATION_SIZE = "output", 1

_MODE_DEPENDENT = (
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.modules.dropout._DropoutNd,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)


@cache
def _forward_reads_training(cls: type) -> bool:
    """Does a custom module's forward branch on ``self.training``? (source inspection)."""
    try:
        return "self.training" in inspect.getsource(cls.forward)
    except (OSError, TypeError):
        return True


def mode_independent(model: nn.Module) -> bool:
    """True when train- and eval-mode forwards of ``model`` are the same function.

    Why: the NTK is always taken in eval mode; if the two modes agree the student's task loss
    can reuse the NTK forward instead of running the model a second time.  Conservative:
    BatchNorm/dropout, or a custom forward that reads ``self.training`` (except a data-dependent
    init that has already happened, flagged by a true ``initialised`` buffer), count as
    mode-dependent.
    """
    for module in model.modules():
        if isinstance(module, _MODE_DEPENDENT):
            if not isinstance(module, nn.modules.dropout._DropoutNd) or module.p > 0:
                return False
            continue
        cls = type(module)
        if cls.__module__.startswith("torch.nn") or not _forward_reads_training(cls):
            continue
        flag = getattr(module, "initialised", None)
        if not (isinstance(flag, Tensor) and bool(flag)):
            return False
    return True


class NTKDObjective:
    """alpha * task + beta * NTKD(student Gram, teacher Gram) + kd_weight * Hinton KD.

    Args:
        teacher: frozen teacher (its parameters are set to ``requires_grad=False``; eval mode).
        task: task name ("mnist", "cifar10", "segmentation") for the task / KD losses.
        alpha, beta, kd_weight: weights of the three terms.
        normalisation: Gram comparison, see ``onnlab.distill.losses`` ("cka" default).
        estimator, size: student NTK estimator; None -> "exact" (the structured exact Gram),
            except segmentation with a per-step teacher estimator: "output", one direction.
            With anchors and ``directions`` the student uses the anchor's rows instead.
        seed: seeds the projection generators (student and teacher use separate streams).
        teacher_estimator, teacher_size: teacher NTK estimator (an ``ntk_gram`` estimator
            taken on each batch, or "anchor": exact Grams cached on a fixed pool of anchor
            batches, which needs ``prepare`` before the first call).
        anchors: number of disjoint anchor batches of ``ntk_batch`` samples ("anchor" only).
        directions: "anchor" only: None compares exact Grams over all outputs; M compares
            Grams taken along M seeded output directions per anchor, the same for teacher and
            student (matched sketch, 0 at student = teacher); "auto": None for classification,
            4 for segmentation.
        temperature: KD temperature (only used when ``kd_weight > 0``).
        output_fn: (B, ...) output -> (B, C) for the NTK; default pools masks to 4x4.
        ntk_every: take the NTKD term every ``ntk_every``-th call, weighted by ``ntk_every``
            (lazy regularisation; "auto": 1, 12 for segmentation).  The calls between are task
            (+ KD) steps and log the most recent NTKD value.
        ntk_batch: take the Grams on the first ``ntk_batch`` samples of the batch ("auto": 16,
            8 for segmentation; the loop shuffles, so that is a random subset); None, 0 or
            "all" = the whole batch.  The task/KD terms always use the whole batch.
        params: the student parameters to take the NTK over (None: all requires_grad ones).
        chunk_size: memory bound passed to ``ntk_gram``.
    """

    def __init__(
        self,
        teacher: nn.Module,
        task: str,
        alpha: float = 1.0,
        beta: float = 1.0,
        kd_weight: float = 0.0,
        normalisation: str = "cka",
        estimator: str | None = None,
        size: int | None = None,
        seed: int = 0,
        *,
        teacher_estimator: str = TEACHER_ESTIMATOR,
        teacher_size: int | None = TEACHER_SIZE,
        temperature: float = 10.0,
        output_fn: Callable[[Tensor], Tensor] | None = None,
        ntk_batch: int | str | None = "auto",
        params: Iterable[Tensor] | None = None,
        chunk_size: int | None = None,
        anchors: int = DEFAULT_ANCHORS,
        directions: int | str | None = "auto",
        ntk_every: int | str = "auto",
    ) -> None:
        for name, value in (("alpha", alpha), ("beta", beta), ("kd_weight", kd_weight)):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if normalisation not in NORMALISATIONS:
            raise ValueError(
                f"normalisation must be one of {NORMALISATIONS}, got {normalisation!r}"
            )
        self.task_loss = TaskLoss(task)
        self.kind = self.task_loss.kind
        segmentation = self.kind == "segmentation"
        anchored = teacher_estimator == "anchor"
        if directions == "auto":
            directions = SEGMENTATION_DIRECTIONS if segmentation else None
        if directions in ("none", "exact"):  # CLI spellings (--loss-opt directions=exact)
            directions = None
        if directions is not None and (not isinstance(directions, int) or directions < 1):
            raise ValueError(f"directions must be an integer >= 1 or None, got {directions!r}")
        if anchored and directions is not None and estimator not in (None, "output"):
            raise ValueError(
                "directions (matched sketch) sets the student's output rows; leave estimator unset"
            )
        if ntk_every == "auto":
            ntk_every = SEGMENTATION_NTK_EVERY if segmentation else 1
        if not isinstance(ntk_every, int) or ntk_every < 1:
            raise ValueError(f"ntk_every must be an integer >= 1, got {ntk_every!r}")
        if ntk_batch == "auto":
            ntk_batch = SEGMENTATION_NTK_BATCH if segmentation else NTK_BATCH
        if estimator is None:
            per_step_segmentation = segmentation and not anchored
            estimator = SEGMENTATION_ESTIMATOR if per_step_segmentation else "exact"
            size = size if size is not None or not per_step_segmentation else SEGMENTATION_SIZE
        if anchored and directions is not None:
            estimator, size = "output", directions
        if estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
        if teacher_estimator not in TEACHER_ESTIMATORS:
            raise ValueError(
                f"teacher_estimator must be one of {TEACHER_ESTIMATORS}, got {teacher_estimator!r}"
            )
        if not isinstance(anchors, int) or anchors < 1:
            raise ValueError(f"anchors must be an integer >= 1, got {anchors!r}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if ntk_batch in (0, "all", "none"):  # CLI spellings (--loss-opt ntk_batch=0)
            ntk_batch = None
        if ntk_batch is not None and (not isinstance(ntk_batch, int) or ntk_batch < 2):
            raise ValueError(f"ntk_batch must be >= 2, or 0/None for the whole batch: {ntk_batch}")
        if ntk_batch == 2 and normalisation == "cka":
            # a centred 2 x 2 Gram is c [[1, -1], [-1, 1]]: the CKA of any two is 1, no signal
            raise ValueError("ntk_batch=2 with normalisation='cka' is constant (CKA of 2 x 2 = 1)")
        self.teacher = teacher.eval()
        self.outputs = TeacherOutputs(self.teacher)  # logit-KD outputs, cached where repeated
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.task = task
        self.alpha, self.beta, self.kd_weight = alpha, beta, kd_weight
        self.normalisation, self.temperature = normalisation, temperature
        self.estimator, self.size = estimator, size
        self.teacher_estimator, self.teacher_size = teacher_estimator, teacher_size
        self.output_fn, self.ntk_batch, self.chunk_size = output_fn, ntk_batch, chunk_size
        self.params = None if params is None else list(params)
        self.seed = seed
        self.anchors = anchors
        self.directions = directions if anchored else None
        self.ntk_every = ntk_every
        self._calls, self._last_ntkd = 0, float("nan")
        self.anchor_pool: AnchorPool | None = None
        self._student_gen = torch.Generator().manual_seed(seed)
        self._teacher_gen = torch.Generator().manual_seed(seed + 1_000_003)

    def prepare(
        self,
        train_set: Any,
        device: torch.device | str | None = None,
        seed: int | None = None,
        batch_size: int | None = None,
        step: int = 0,
        view_stream: ViewStream | None = None,
    ) -> None:
        """Setup hook the training loop calls once before the first step.

        With ``teacher_estimator="anchor"`` it selects the anchor pool from ``train_set``
        (seeded by ``seed``, default the objective's seed) and computes the exact teacher Gram
        of every anchor batch (cost in ``anchor_pool.setup_s``); other estimators need nothing.
        ``batch_size``: the training batch size, the anchor batch size when ``ntk_batch`` is
        None (whole batch).  ``step``: the training step about to run (a resumed run continues
        the anchor cycle where the interrupted one stopped).  ``view_stream``: names the loop's
        augmented views, so the logit-KD teacher outputs can be shared between runs
        (`onnlab.distill.teacher_outputs`).
        """
        self._calls, self._last_ntkd = step, float("nan")  # lazy NTKD: same cadence on resume
        self.outputs.prepare(train_set, view_stream)  # logit-KD outputs: cached where repeated
        if self.teacher_estimator != "anchor":
            return
        self.teacher.eval()
        self.anchor_pool = AnchorPool.build(
            self.teacher,
            train_set,
            batch=min(self.ntk_batch or batch_size or FULL_ANCHOR_BATCH, len(train_set)),
            count=self.anchors,
            seed=self.seed if seed is None else seed,
            device=device,
            directions=self.directions,
            output_fn=self.output_fn,
            chunk_size=self.chunk_size,
        )
        self.anchor_pool.seek(-(-step // self.ntk_every))  # anchors drawn before ``step``

    def teacher_gram(self, x_teacher: Tensor) -> tuple[Tensor, Tensor | None]:
        """Teacher Gram (no graph) and, when computed on the same inputs, its outputs."""
        self.teacher.eval()  # a caller's .train() on a parent module must not switch BN
        return ntk_gram_and_output(
            self.teacher,
            x_teacher,
            estimator=self.teacher_estimator,
            size=self.teacher_size,
            generator=self._teacher_gen,
            params=list(self.teacher.parameters()),
            chunk_size=self.chunk_size,
            output_fn=self.output_fn,
        )

    def student_gram(
        self, model: nn.Module, x: Tensor, rows: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """Differentiable student Gram and its (eval-mode) output when available.

        ``rows``: explicit (M, C) output directions (an anchor's matched sketch).
        """
        return ntk_gram_and_output(
            model,
            x,
            estimator=self.estimator,
            size=self.size,
            generator=self._student_gen,
            create_graph=True,
            params=self.params,
            chunk_size=self.chunk_size,
            output_fn=self.output_fn,
            cotangents=rows,
        )

    def __call__(
        self, model: nn.Module, batch: dict[str, Tensor]
    ) -> tuple[Tensor, dict[str, float]]:
        x, y = batch["x"], batch["y"]
        x_t = batch.get("x_teacher", x)
        if x_t.shape[0] != x.shape[0]:
            raise ValueError(f"x_teacher has {x_t.shape[0]} samples, x has {x.shape[0]}")
        need_t = self.kd_weight > 0
        lazy_skip = self._calls % self.ntk_every != 0
        self._calls += 1
        if lazy_skip:
            return self._without_ntkd(model, batch, need_t)
        if self.teacher_estimator == "anchor":
            if self.anchor_pool is None:
                raise OnnlabError(
                    "NTKD with teacher_estimator='anchor' needs objective.prepare(train_set, "
                    "device) before the first step (the training loop calls it)"
                )
            x_a, g_t, rows = self.anchor_pool.draw()
            g_s, _ = self.student_gram(model, x_a, rows)
            out_s, out_t, whole = model(x), None, False
        else:
            n = x.shape[0] if self.ntk_batch is None else min(self.ntk_batch, x.shape[0])
            whole = n == x.shape[0]
            g_s, out_s = self.student_gram(model, x[:n])
            if not (whole and out_s is not None and mode_independent(model)):
                out_s = model(x)
            g_t, out_t = self.teacher_gram(x_t[:n])
        if need_t and not (whole and out_t is not None):
            out_t = self.outputs(batch)
        ntkd = ntkd_loss(g_s, g_t, self.normalisation)
        task = task_loss(self.kind, out_s, y)
        loss = self.alpha * task + self.beta * self.ntk_every * ntkd
        self._last_ntkd = ntkd.item()
        logs: dict[str, Any] = {"task": task.item(), "ntkd": self._last_ntkd}
        if need_t:
            kd = kd_divergence(out_s, out_t, self.temperature, self.kind)
            loss = loss + self.kd_weight * kd
            logs["kd"] = kd.item()
        logs["loss"] = loss.item()
        return loss, logs

    def _without_ntkd(
        self, model: nn.Module, batch: dict[str, Tensor], need_t: bool
    ) -> tuple[Tensor, dict[str, float]]:
        """A lazy step between NTKD terms: alpha * task (+ kd_weight * KD)."""
        out_s = model(batch["x"])
        task = task_loss(self.kind, out_s, batch["y"])
        loss = self.alpha * task
        logs: dict[str, Any] = {"task": task.item()}
        if self._last_ntkd == self._last_ntkd:  # none yet after a resume between NTKD steps
            logs["ntkd"] = self._last_ntkd
        if need_t:
            kd = kd_divergence(out_s, self.outputs(batch), self.temperature, self.kind)
            loss = loss + self.kd_weight * kd
            logs["kd"] = kd.item()
        logs["loss"] = loss.item()
        return loss, logs
