"""Shared fixtures: real-data location (skipped when absent) and quiet, deterministic torch.

Every test runs torch single-threaded: the suite uses small tensors, and on a shared 2-core
machine two intra-op threads mostly wait for each other (OpenMP barriers, BLAS
oversubscription), which made gradchecks and eigendecompositions up to 10x slower.
"""

from __future__ import annotations

import os
from pathlib import Path

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
