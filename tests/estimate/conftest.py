"""Estimator tests run single-threaded: on shared 2-core machines BLAS oversubscription makes
eigendecompositions ~10x slower than one thread."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
