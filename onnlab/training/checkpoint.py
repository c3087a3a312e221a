"""Model checkpoints that rebuild themselves: weights plus the metadata to re-create the model.

A checkpoint is `{"format", "version", "meta", "state_dict"}` saved with `torch.save` and read
with `torch.load(weights_only=True)` (no pickled code is ever executed). `meta` holds the task,
the role (student/teacher), the zoo architecture kwargs and free-form metrics, so
`load_checkpoint(path)` needs nothing but the file. Writes are atomic (temp file + rename).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from onnlab.errors import CheckpointError
from onnlab.runtime import to_jsonable

FORMAT = "onnlab-checkpoint"
VERSION = 1


def model_meta(model: nn.Module) -> dict[str, Any]:
    """task / role / architecture of a zoo-built model (empty for foreign modules)."""
    info = getattr(model, "build_info", None) or {}
    if not info:
        return {}
    return {"task": info["task"], "role": info["role"], "architecture": dict(info["kwargs"])}


def atomic_torch_save(payload: Any, path: str | Path) -> Path:
    """torch.save to a temp file, then rename: a killed process never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def save_checkpoint(path: str | Path, model: nn.Module, meta: dict[str, Any] | None = None) -> Path:
    """Save weights and metadata; `meta` entries override what the model knows of itself.

    Required in the end: "task", "role" and "architecture" (filled automatically for models
    from `onnlab.models.zoo`), so that `load_checkpoint` can rebuild the model.
    """
    merged = {**model_meta(model), **(meta or {})}
    missing = [k for k in ("task", "role", "architecture") if k not in merged]
    if missing:
        raise CheckpointError(
            f"cannot checkpoint {type(model).__name__} to {path}: meta lacks {missing} "
            "(build it with onnlab.models.zoo or pass them in meta)"
        )
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "meta": to_jsonable(merged),
        "state_dict": state,
    }
    return atomic_torch_save(payload, path)


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The raw payload (format-checked), without building a model."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unpickling errors have many types
        # torch's own message is long and suggests weights_only=False (never do that for a
        # file of unknown origin): name the file and the failure kind only.
        raise CheckpointError(
            f"not an onnlab checkpoint: {path} (torch.load failed: {type(exc).__name__})"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"not an onnlab checkpoint: {path} (no onnlab format marker)")
    if payload.get("version", 0) > VERSION:
        raise CheckpointError(f"{path} has format version {payload['version']} > {VERSION}")
    return payload


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model through the zoo from `meta` and load its weights (strictly).

    Frontends that carry measured PSFs come back frozen, as they were saved.
    """
    from onnlab.models.zoo import build_model

    payload = read_checkpoint(path, map_location)
    meta = payload["meta"]
    try:
        model = build_model(meta["task"], meta["role"], **meta["architecture"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot rebuild the model from its meta: {exc}") from exc
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit the model: {exc}") from exc
    frontend = getattr(model, "frontend", None)
    if frontend is not None and bool(getattr(frontend, "measured_active", False)):
        for p in frontend.parameters():
            p.requires_grad_(False)
    return model.to(map_location), meta
