"""Data-parallel training across processes (torchrun / DistributedDataParallel).

The training loop runs unchanged in one process or under ``torchrun --nproc_per_node N``
(and across nodes with torchrun's rendezvous options): every process trains a replica, and
DistributedDataParallel averages the gradients after every backward pass.  This module holds
the few process-group helpers the loop needs, so the loop reads the same in both cases.

Choices (the README says what they change in results):

- **Global batch = ``batch_size``.**  Each of the W ranks takes ``batch_size / W`` samples of
  the SAME global batch a single process would take (the epoch's seeded permutation is computed
  identically on every rank; :func:`shard` takes every W-th sample of each global batch, exactly
  the index stream of ``torch.utils.data.DistributedSampler(seed=S, drop_last=True)``).  So the
  number of steps, the learning-rate curve and, for models without BatchNorm, the update
  itself do not depend on W: averaging W per-rank mean gradients over equal shards is the
  mean gradient of the global batch.  Augmentation draws are those of a single process too
  (each rank augments the global batch with the epoch's generator and keeps its rows).
- **What does change**: BatchNorm statistics are per rank (``batch_size / W`` samples; DDP
  broadcasts rank 0's running statistics at every forward), and float reductions happen in a
  different order (weights agree to ~1e-6 after an epoch, not bitwise).
- **Rank 0 writes** (run folder, logs, checkpoints, metrics).  It also evaluates the validation
  set alone and broadcasts the numbers: they are then exactly those of the model it saves (its
  weights and buffers), computed by the same code as a single process for every metric
  (including mIoU, which is not a mean of per-shard values).
- **Backends**: gloo for CPU tensors, nccl for CUDA tensors (one process group serving both,
  ``"cpu:gloo,cuda:nccl"``, so a ``--device cpu`` run on a GPU node still works).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from onnlab.errors import ConfigError

# Finite timeout for every collective: a rank that died or hangs fails the others instead of
# blocking them forever (NCCL's and gloo's default is 10-30 minutes; evaluation on rank 0 of a
# large validation set must fit inside it).
COLLECTIVE_TIMEOUT_S = float(os.environ.get("ONNLAB_DIST_TIMEOUT_S", "1800"))


@dataclass(frozen=True)
class World:
    """This process's place in the job: ``rank`` of ``size`` (``local_rank`` on its node)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes files and prints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None:
        return default
    try:
        return int(text)
    except ValueError as exc:
        raise ConfigError(f"environment variable {name}={text!r} is not an integer") from exc


def launched_by_torchrun() -> bool:
    """True when torchrun (or another launcher setting WORLD_SIZE > 1) started this process."""
    return _env_int("WORLD_SIZE", 1) > 1


def init_from_env(quiet: bool = False) -> World:
    """Join the process group torchrun describes in the environment (idempotent).

    Without WORLD_SIZE > 1 this is a single process and nothing is initialised.  With CUDA,
    each process binds to GPU ``LOCAL_RANK`` so that "cuda" means its own device.  ``quiet``
    (the CLI): ranks other than 0 send stdout to /dev/null, so a command prints its report
    once; their stderr (warnings, errors) stays.
    """
    if dist.is_available() and dist.is_initialized():
        return world()
    if not launched_by_torchrun():
        return World()
    if not dist.is_available():
        raise ConfigError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    local_rank = _env_int("LOCAL_RANK", 0)
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
    dist.init_process_group(
        backend="cpu:gloo,cuda:nccl" if cuda else "gloo",
        timeout=timedelta(seconds=COLLECTIVE_TIMEOUT_S),
    )
    atexit.register(_leave)
    if quiet and dist.get_rank() != 0:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
    return world()


def _leave() -> None:
    """Leave the process group at exit (torch warns about, and NCCL may hang on, a group left
    open). All ranks meet first: a rank that tears its gloo connections down while a peer is
    still using them can abort the peer ("terminate called without an active exception").
    A rank whose peer died never meets it, but torchrun then stops every rank anyway."""
    if dist.is_available() and dist.is_initialized():
        with contextlib.suppress(Exception):
            dist.barrier()
        dist.destroy_process_group()


def world() -> World:
    """The current process group's rank and size (rank 0 of 1 without one)."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(dist.get_rank(), dist.get_world_size(), _env_int("LOCAL_RANK", 0))


def device_for(name: str) -> torch.device:
    """The compute device of this rank: "auto" is CUDA when present, else CPU.

    A bare "cuda" means this rank's GPU (``init_from_env`` made it the current device);
    an explicit index ("cuda:1") is taken as given.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def local_batch_size(batch_size: int, size: int) -> int:
    """Per-rank batch: the global ``batch_size`` split evenly across ``size`` ranks."""
    if batch_size % size:
        raise ConfigError(
            f"batch size {batch_size} does not split over {size} processes; "
            f"use a multiple of {size} (the global batch is shared, not multiplied)"
        )
    return batch_size // size


def shard(global_batch: torch.Tensor, w: World) -> torch.Tensor:
    """This rank's share of a global batch of indices: every ``size``-th one from ``rank``."""
    return global_batch[w.rank :: w.size]


def broadcast(obj: Any, w: World | None = None) -> Any:
    """Rank 0's value of a picklable object, on every rank (identity in one process)."""
    w = w or world()
    if not w.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def mean_over_ranks(values: dict[str, float], w: World | None = None) -> dict[str, float]:
    """The mean of each value over ranks (identity in one process); every rank gets it."""
    w = w or world()
    if not w.distributed or not values:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    dist.all_reduce(t)  # float64 on CPU: gloo, whatever the training device
    return {k: float(v) / w.size for k, v in zip(keys, t.tolist(), strict=True)}


def barrier(w: World | None = None) -> None:
    """Wait for every rank (no-op in one process)."""
    w = w or world()
    if w.distributed:
        dist.barrier()


def wrap(model: nn.Module, device: torch.device, w: World) -> nn.Module:
    """DistributedDataParallel around ``model`` (the model itself in one process).

    DDP broadcasts rank 0's parameters and buffers at construction, so every replica starts
    from the same weights even if the ranks' initialisations differed.
    """
    if not w.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)  # buffers: rank 0's, every forward


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (the model itself otherwise)."""
    return (
        getattr(model, "module", model) if hasattr(model, "require_backward_grad_sync") else model
    )
