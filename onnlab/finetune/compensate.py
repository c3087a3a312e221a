"""Post-fabrication compensation: re-train the digital backend on features captured from the bench.

The optics cannot change after fabrication, so the only lever is the backend. Three answers
to "what does the backend do with the as-built features" (paper, Table 4):

- `no_compensation`: the simulation-trained backend, applied as is to captured features;
- `end_to_end`: backend re-trained on captured features with the task loss alone;
- `ntkd`: backend re-trained with task loss + NTK distillation, the teacher's NTK taken on the
  raw images and the backend's NTK on the captured features of the same batch (Eq. 9 over the
  backend only).

Every method starts from a deep copy of the same trained backend and sees the same batches in
the same order, so the comparison isolates the objective. The frontend is frozen and its
parameters and buffers are hashed before and after: a bit-level change is a bug, not noise.
"""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from onnlab.capture.store import CaptureStore
from onnlab.data.base import ArrayDataset
from onnlab.errors import CaptureError

METHODS = ("no_compensation", "end_to_end", "ntkd")


def optical_fingerprint(model: nn.Module) -> str:
    """sha256 over every frontend parameter and buffer (name, dtype, shape, bytes)."""
    frontend = model.frontend
    digest = hashlib.sha256()
    for name, tensor in sorted(frontend.state_dict(keep_vars=False).items()):
        arr = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{arr.dtype}|{tuple(arr.shape)}".encode())
        digest.update(
            arr.numpy().tobytes()
            if arr.dtype != torch.bool
            else arr.to(torch.uint8).numpy().tobytes()
        )
    return digest.hexdigest()


def freeze_optics(model: nn.Module) -> None:
    """The fabricated frontend is glass: no gradient ever reaches it."""
    for p in model.frontend.parameters():
        p.requires_grad_(False)


def to_backend_features(frontend: nn.Module, physical: torch.Tensor) -> torch.Tensor:
    """Per-PSF captured features (B, K, H, W) -> what the backend reads (B, K', H, W).

    With pseudo-negative pairs the optics delivers both halves and the subtraction is digital,
    exactly as `OpticalFrontend.forward` does it after the convolution.
    """
    if getattr(frontend, "pseudo_negative", False):
        half = physical.shape[1] // 2
        return physical[:, :half] - physical[:, half:]
    return physical


def captured_dataset(
    store_path: str | Path,
    raw: ArrayDataset,
    frontend: nn.Module,
    *,
    task: str | None = None,
) -> ArrayDataset:
    """Captured features of `store_path` as a dataset whose `teacher_images` are the raw images.

    Rows are matched to `raw` by dataset index (not position), and labels are checked against
    the raw dataset, so a store captured from another split or dataset is refused.
    """
    with CaptureStore.read(store_path) as store:
        if not store.is_full:
            raise CaptureError(
                f"capture store {store_path} holds {store.n_committed}/{store.n_requested} "
                "frames; finish the capture first (rerun the same capture command)"
            )
        data = store.load()
    if data.content != "features":
        raise CaptureError(
            f"capture store {store_path} holds raw frames; fine-tuning needs feature tiles "
            "(capture with --calibration)"
        )
    lookup = {int(i): p for p, i in enumerate(raw.indices.tolist())}
    missing = [int(i) for i in data.indices if int(i) not in lookup]
    if missing:
        raise CaptureError(
            f"capture store {store_path}: {len(missing)} captured indices (e.g. {missing[:3]}) "
            "are not in the dataset it is paired with - wrong split or data root?"
        )
    pos = torch.as_tensor([lookup[int(i)] for i in data.indices], dtype=torch.int64)
    targets = torch.as_tensor(np.asarray(data.targets))
    if not torch.equal(targets.to(raw.targets.dtype), raw.targets[pos]):
        raise CaptureError(
            f"capture store {store_path}: labels differ from the dataset's - it was captured "
            "from other data"
        )
    with torch.no_grad():
        features = to_backend_features(frontend, torch.as_tensor(data.data, dtype=torch.float32))
    return ArrayDataset(
        features,
        raw.targets[pos],
        raw.indices[pos],
        teacher_images=raw.images[pos],
        task=task or raw.task,
    )


def holdout_split(
    dataset: ArrayDataset, fraction: float, seed: int
) -> tuple[ArrayDataset, ArrayDataset | None]:
    """(fit, validation) parts of `dataset`; `fraction` 0 gives (dataset, None)."""
    if fraction <= 0:
        return dataset, None
    n_val = round(fraction * len(dataset))
    if n_val < 1 or n_val >= len(dataset) - 1:
        raise ValueError(
            f"val_fraction {fraction} of {len(dataset)} captured samples leaves no usable split"
        )
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
    return dataset.subset(order[n_val:]), dataset.subset(order[:n_val])


def finetune_backend(
    model: nn.Module,
    method: str,
    train_set: ArrayDataset,
    *,
    teacher: nn.Module | None,
    task: str,
    train_config: Any,
    ntkd_options: dict[str, Any] | None = None,
    run_dir: str | Path,
    val_set: ArrayDataset | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """A fine-tuned copy of `model.backend` (the model itself is never modified).

    With `val_set` the copy is the best validated epoch's (`keep_best`), else the last one's.
    """
    from onnlab.training.loop import train
    from onnlab.training.losses import TaskLoss, make_loss

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    backend = copy.deepcopy(model.backend)
    if method == "no_compensation":
        return backend, {}
    for p in backend.parameters():
        p.requires_grad_(True)
    if method == "end_to_end":
        loss = TaskLoss(task)
    else:
        if teacher is None:
            raise ValueError("NTKD compensation needs the teacher")
        opts = dict(ntkd_options or {})
        opts.setdefault("seed", int(train_config.seed))
        loss = make_loss("ntkd", task, teacher, **opts)
    history = train(
        backend,
        train_set,
        val_set,
        train_config.model_copy(update={"task": task, "keep_best": val_set is not None}),
        loss,
        Path(run_dir) / method,
        params=list(backend.parameters()),
        label=f"{task} backend fine-tuning ({'end-to-end' if method == 'end_to_end' else 'NTKD'})",
    )
    return backend, history


def compensate(
    model: nn.Module,
    teacher: nn.Module | None,
    train_set: ArrayDataset,
    test_set: ArrayDataset,
    *,
    task: str,
    train_config: Any,
    ntkd_options: dict[str, Any] | None = None,
    run_dir: str | Path,
    methods: tuple[str, ...] = METHODS,
    val_fraction: float = 0.0,
) -> dict[str, Any]:
    """Run each method, evaluate on the captured test features, prove the optics unchanged.

    `val_fraction` of the captured training set (a seeded draw, the same for every method) is
    held out to choose each method's epoch; the test captures are only ever evaluated.
    Returns {method: {metrics..., "history": per-epoch logs}} plus "optics_sha256".
    """
    from onnlab.training.metrics import evaluate

    train_set, val_set = holdout_split(train_set, val_fraction, int(train_config.seed))
    freeze_optics(model)
    before = optical_fingerprint(model)
    results: dict[str, Any] = {}
    for method in methods:
        backend, history = finetune_backend(
            model,
            method,
            train_set,
            teacher=teacher,
            task=task,
            train_config=train_config,
            ntkd_options=ntkd_options,
            run_dir=run_dir,
            val_set=val_set,
        )
        backend.cpu()
        metrics = evaluate(backend, test_set, task)
        metrics["history"] = [
            {"epoch": e["epoch"], **e.get("train", {})} for e in history.get("epochs", [])
        ]
        metrics["train_time_s"] = history.get("train_time_s", 0.0)
        results[method] = metrics
        after = optical_fingerprint(model)
        if after != before:  # not `assert`: must hold under python -O too
            raise RuntimeError(f"{method} changed the optical parameters ({before} -> {after})")
    results["optics_sha256"] = before
    return results
