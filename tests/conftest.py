"""Shared fixtures: real-data location (skipped when absent) and quiet, deterministic torch.

Every test runs torch single-threaded: the suite uses small tensors, and on a shared 2-core
machine two intra-op threads mostly wait for each other (OpenMP barriers, BLAS
oversubscription), which made gradchecks and eigendecompositions up to 10x slower.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def _shared_data_root() -> Path | None:
    for candidate in (
        os.environ.get("ONNLAB_SHARED_DATA"),
        os.environ.get("ONNLAB_DATA"),
        str(REPO.parent / "shared" / "data"),
    ):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def shared_data_root() -> Path:
    """The real MNIST/CIFAR-10 files of ../shared/data, or skip with the reason."""
    root = _shared_data_root()
    if root is None:
        pytest.skip("real data not found: set ONNLAB_SHARED_DATA or ONNLAB_DATA (../shared/data)")
    return root


def write_carvana_layout(root: Path, cars: int = 6, angles: int = 2) -> None:
    """A Kaggle-Carvana tree under ``root``: JPEG photos with a bright rectangle and the
    matching GIF masks (palette 0/1 like Kaggle), ``angles`` photos per car."""
    from PIL import Image

    from onnlab.data.datasets import clear_cache

    base = root / "Carvana"
    (base / "train").mkdir(parents=True)
    (base / "train_masks").mkdir()
    for c in range(cars):
        for a in range(angles):
            image_id = f"car{c:03d}abcd_{a + 1:02d}"
            img = np.zeros((96, 128, 3), dtype=np.uint8)
            mask = np.zeros((96, 128), dtype=np.uint8)
            img[24:72, 32 + 8 * a : 96 + 8 * a] = 230
            mask[24:72, 32 + 8 * a : 96 + 8 * a] = 1
            Image.fromarray(img).save(base / "train" / f"{image_id}.jpg", quality=95)
            gif = Image.fromarray(mask, mode="L").convert("P")
            gif.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
            gif.save(base / "train_masks" / f"{image_id}_mask.gif")
    clear_cache()


@pytest.fixture
def make_carvana():
    """`write_carvana_layout(root, cars, angles)`: a small Carvana tree for loader/CLI tests."""
    return write_carvana_layout


@pytest.fixture(autouse=True)
def _deterministic_torch(monkeypatch, tmp_path):
    torch.manual_seed(0)
    monkeypatch.setenv("ONNLAB_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("ONNLAB_CACHE", str(tmp_path / "cache"))


@pytest.fixture(autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
