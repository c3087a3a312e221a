"""A frozen teacher's outputs, computed once: per training sample, or per augmented view.

A frozen teacher in eval mode is a fixed function, so its output depends only on its input.
Two cases make the inputs repeat, and the training loop marks both in the batch:

- **Fixed inputs** (no augmentation, or captured features with fixed teacher images): the
  batch carries ``"index"`` (its samples' rows in the training set). Outputs are kept in
  memory per sample, so the teacher runs once per sample in a run instead of once per epoch.
- **Augmented views**: the loop draws epoch *e*'s order and views from a generator seeded by
  (seed, e) alone, so every run with the same training images, augmentation policy, seed and
  global batch size sees the same views in the same batches, whatever its method or
  hyper-parameters: tuning trials, and the KD and NTKD + KD rows of one seed. The batch then
  also carries ``"view_epoch"``. A complete epoch of outputs is written (atomically) to
  ``$ONNLAB_CACHE/teacher-views/<key>/epoch-NNNN.pt``; a later run with the same key reads it
  instead of running the teacher. The key hashes the teacher's weights, the training images
  and labels, the view stream (policy, seed, batch size, size of the set, torch version: the
  generator's algorithm) and this file's format, so a stale file cannot match.

What caching changes: nothing in the numbers. A cached output is the teacher's output on the
same view in the same batch, computed by an earlier run (bit for bit with the same kernels and
thread count; batched convolutions may otherwise differ in the last float bit). A file that
fails to load, or whose key, shape or values do not check out, is not used: the epoch is
recomputed and the file replaced (``rejected_files`` counts them). Under DDP a rank sees only
its rows of each batch, so it never completes an epoch and never writes one (it still reads).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from onnlab.data.paths import cache_root

FORMAT = "teacher-views-v1"
# Largest per-epoch output store kept in memory and on disk (bytes); above it (e.g. mask
# logits of large segmentation sets) views are not cached and the teacher runs every step.
EPOCH_STORE_BUDGET_BYTES = 512 << 20


@dataclass(frozen=True)
class ViewStream:
    """The loop's augmented views: what determines them, and how many one epoch visits."""

    name: str  # every field the views depend on (policy, seed, batch size, set size, ...)
    samples_per_epoch: int  # the loop drops a ragged last batch: those rows are never seen


def _digest(*parts: Any) -> str:
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        if isinstance(part, torch.Tensor):
            t = part.detach().cpu().contiguous().reshape(-1)  # 0-d buffers too (BatchNorm)
            h.update(f"{t.dtype}{tuple(part.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        else:
            h.update(repr(part).encode())
    return h.hexdigest()


class TeacherOutputs:
    """Runs a frozen teacher on a batch, reusing outputs the loop marks as repeatable."""

    def __init__(self, teacher: nn.Module) -> None:
        self.teacher = teacher
        self.teacher_samples = 0  # samples the teacher has run on (the cost caching saves)
        self.rejected_files = 0  # cache files that failed their checks and were recomputed
        self._fixed: torch.Tensor | None = None  # (N, ...) outputs for fixed inputs
        self._fixed_ok: torch.Tensor | None = None  # (N,) bool
        self._train_set: Any = None
        self._view_stream: ViewStream | None = None
        self._view_dir: Path | None = None
        self._epoch: int | None = None
        self._store: torch.Tensor | None = None  # (N, ...) outputs of the current epoch's views
        self._store_ok: torch.Tensor | None = None
        self._store_saved = False

    def prepare(self, train_set: Any, view_stream: ViewStream | None = None) -> None:
        """Start a run on ``train_set``; ``view_stream`` names the loop's augmented views."""
        self._fixed, self._fixed_ok = None, torch.zeros(len(train_set), dtype=torch.bool)
        self._train_set, self._view_stream, self._view_dir = train_set, view_stream, None
        self._epoch, self._store, self._store_ok = None, None, None

    def __call__(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x = batch.get("x_teacher", batch["x"])
        self.teacher.eval()  # a caller's model.train() must not switch teacher BatchNorm
        index = batch.get("index")
        with torch.no_grad():
            if index is None or self._fixed_ok is None:
                return self._run(x)
            if "view_epoch" in batch:
                return self._views(int(batch["view_epoch"][0]), index.cpu(), x)
            return self._fixed_rows(index.cpu(), x)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        self.teacher_samples += len(x)
        return self.teacher(x)

    def _fill(self, store: torch.Tensor | None, ok: torch.Tensor, rows, x) -> torch.Tensor:
        missing = ~ok[rows]
        if bool(missing.any()):
            fresh = self._run(x[missing.to(x.device)])
            if store is None:
                store = fresh.new_zeros((len(ok), *fresh.shape[1:]))
            store[rows[missing].to(store.device)] = fresh
            ok[rows[missing]] = True
        assert store is not None
        return store

    def _fixed_rows(self, rows: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        assert self._fixed_ok is not None
        self._fixed = self._fill(self._fixed, self._fixed_ok, rows, x)
        return self._fixed[rows.to(self._fixed.device)]

    # --- augmented views -------------------------------------------------------------------
    def _views(self, epoch: int, rows: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self._view_stream is None:  # no stream named, or the outputs are too large
            return self._run(x)
        if epoch != self._epoch:
            assert self._fixed_ok is not None
            self._open_epoch(epoch, len(self._fixed_ok))
        assert self._store_ok is not None
        if self._store is None:  # first batch of a new store: is a whole epoch affordable?
            fresh = self._run(x)
            if fresh[0].numel() * fresh.element_size() * len(self._store_ok) > (
                EPOCH_STORE_BUDGET_BYTES
            ):
                self._view_stream, self._store_ok = None, None
                return fresh
            self._store = fresh.new_zeros((len(self._store_ok), *fresh.shape[1:]))
            self._store[rows.to(fresh.device)] = fresh
            self._store_ok[rows] = True
        else:
            self._store = self._fill(self._store, self._store_ok, rows, x)
        out = self._store[rows.to(self._store.device)]
        done = int(self._store_ok.sum()) >= self._view_stream.samples_per_epoch
        if not self._store_saved and done:
            self._save(epoch)
        return out

    def _key(self) -> str:
        train = self._train_set
        targets = getattr(train, "targets", None)
        weights = sorted(self.teacher.state_dict().items())
        return _digest(
            FORMAT,
            self._view_stream,
            torch.__version__.split("+")[0],
            train.images,
            targets if isinstance(targets, torch.Tensor) else None,
            *(name for name, _ in weights),
            *(value for _, value in weights),
        )

    def _open_epoch(self, epoch: int, n: int) -> None:
        if self._view_dir is None:
            self._view_dir = cache_root() / "teacher-views" / self._key()
        self._epoch, self._store_saved = epoch, False
        self._store, self._store_ok = None, torch.zeros(n, dtype=torch.bool)
        path = self._view_dir / f"epoch-{epoch:04d}.pt"
        if not path.exists():
            return
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            outputs, filled = saved["outputs"], saved["filled"]
            valid = (
                saved["key"] == self._view_dir.name
                and saved["epoch"] == epoch
                and outputs.shape[0] == n
                and filled.shape == (n,)
                and filled.dtype == torch.bool
                and int(filled.sum()) == self._view_stream.samples_per_epoch
                and bool(torch.isfinite(outputs[filled]).all())
            )
        except Exception:  # damaged file (truncated write, foreign content): recompute it
            valid = False
        if not valid:
            self.rejected_files += 1
            return
        device = next(iter(self.teacher.parameters()), torch.empty(0)).device
        self._store, self._store_saved = outputs.to(device), True
        self._store_ok = filled

    def _save(self, epoch: int) -> None:
        assert self._view_dir is not None and self._store is not None
        self._view_dir.mkdir(parents=True, exist_ok=True)
        path = self._view_dir / f"epoch-{epoch:04d}.pt"
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        assert self._store_ok is not None
        payload = {
            "key": self._view_dir.name,
            "epoch": epoch,
            "outputs": self._store.cpu(),
            "filled": self._store_ok.clone(),
        }
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # readers see the old file or the whole new one, never half
        self._store_saved = True
