"""Where datasets live: `--data-root` beats `$ONNLAB_DATA`; nothing is ever downloaded."""

from __future__ import annotations

import os
from pathlib import Path

from onnlab.errors import DataError

ENV_VAR = "ONNLAB_DATA"


def resolve_data_root(data_root: str | Path | None) -> Path | None:
    """Return the data root from the option or the environment, or None when neither is set.

    A root that is given but does not exist is an error (a typo must not silently fall back to
    the bundled sample).
    """
    value = data_root if data_root is not None else os.environ.get(ENV_VAR)
    if value in (None, ""):
        return None
    root = Path(value).expanduser()
    if not root.is_dir():
        source = "--data-root" if data_root is not None else f"${ENV_VAR}"
        raise DataError(f"data root {root} (from {source}) is not a directory")
    return root


def cache_root() -> Path:
    """Cache for extracted archives: $ONNLAB_CACHE or ~/.cache/onnlab."""
    return Path(os.environ.get("ONNLAB_CACHE", Path.home() / ".cache" / "onnlab"))


def dataset_identity(task: str, data_root: str | Path | None) -> dict[str, str | None]:
    """Which data a run used: {"dataset": name, "data_root": resolved folder or None}.

    Names: ``mnist-sample`` (the bundled digits) or ``mnist``; ``cifar10``; ``synthetic``
    (the seeded stand-in) or ``carvana``. Checkpoints record it, so `onnlab evaluate` can
    refuse to score a Carvana model on the synthetic set, and teachers are registered per
    dataset (a Carvana teacher never replaces the synthetic one).
    """
    root = resolve_data_root(data_root)
    if root is None:
        name = {"mnist": "mnist-sample", "segmentation": "synthetic"}.get(task, task)
    else:
        name = {"segmentation": "carvana"}.get(task, task)
    return {"dataset": name, "data_root": None if root is None else str(root.resolve())}
