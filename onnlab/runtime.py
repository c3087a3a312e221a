"""Small process-wide helpers shared by every workflow: seeding, devices, run directories."""

from __future__ import annotations

import json
import os
import random
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a torch Generator for code that takes one explicitly."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def default_device() -> torch.device:
    """CUDA when present, else CPU. Everything in onnlab also runs on CPU (CI has no GPU)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def runs_root() -> Path:
    """Where run directories go: $ONNLAB_RUNS or ./runs (git-ignored)."""
    return Path(os.environ.get("ONNLAB_RUNS", "runs"))


def make_run_dir(kind: str, root: Path | None = None) -> Path:
    """Create a fresh, uniquely named run directory `<root>/<kind>-<UTC time>-<id>`."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    path = (root or runs_root()) / f"{kind}-{stamp}-{uuid.uuid4().hex[:6]}"
    path.mkdir(parents=True, exist_ok=False)
    return path


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return _jsonable(value.detach().cpu().tolist())
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path: Path, payload: Any) -> Path:
    """Write JSON atomically (temp file + rename) so a killed process never leaves half a file."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_jsonable(payload), indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)
    return path


def to_jsonable(value: Any) -> Any:
    """Convert tensors/arrays/paths nested in dicts and lists to plain JSON types."""
    return _jsonable(value)
