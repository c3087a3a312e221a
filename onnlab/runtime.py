"""Small process-wide helpers shared by every workflow: seeding, devices, run directories."""

from __future__ import annotations

import json
import os
import random
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
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
    """Create a fresh, uniquely named run directory `<root>/<kind>-<UTC time>-<id>`.

    Under torchrun (an initialised torch.distributed group) rank 0 names and creates it and
    every other rank receives that name, so a DDP job writes one run folder, not one per rank.
    """
    import torch.distributed as dist

    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    path = (root or runs_root()) / f"{kind}-{stamp}-{uuid.uuid4().hex[:6]}"
    ddp = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    if not ddp or dist.get_rank() == 0:
        path.mkdir(parents=True, exist_ok=False)
    if ddp:
        box = [str(path)]
        dist.broadcast_object_list(box, src=0)
        path = Path(box[0])
    return path


def run_dir_at(out: str | Path | None, kind: str) -> Path:
    """`--out DIR` (created if needed, reused if present) or a fresh run folder of `kind`."""
    if out is None:
        return make_run_dir(kind)
    path = Path(out)
    path.mkdir(parents=True, exist_ok=True)
    return path


# What a training run writes before its first result (`onnlab.training.loop`): its TrainConfig
# and what trains besides it (method, loss options, data, teacher) -- settings, nothing worth
# keeping by themselves
CONFIG_FILE = "config.json"
RUN_FILE = "run.json"
SETTINGS_FILES = frozenset({CONFIG_FILE, RUN_FILE})


def holds_results(path: Path) -> bool:
    """Whether a run folder holds anything worth keeping (beyond its settings and temp files)."""
    return any(
        p.is_file() and p.name not in SETTINGS_FILES and ".tmp" not in p.name
        for p in Path(path).rglob("*")
    )


@contextmanager
def run_folder(kind: str, out: str | Path | None = None) -> Iterator[Path]:
    """The run folder of a command: `out` (created or reused) or a fresh one under runs/.

    If the command fails or is interrupted before writing anything worth keeping, a folder
    that this call created is removed again, so failed runs leave no empty folders behind.
    """
    created = out is None or not Path(out).exists()
    if out is None:
        path = make_run_dir(kind)
    else:
        path = Path(out)
        path.mkdir(parents=True, exist_ok=True)
    try:
        yield path
    except BaseException:
        if created and path.is_dir() and not holds_results(path):
            shutil.rmtree(path, ignore_errors=True)
        raise


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
