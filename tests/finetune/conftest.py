"""Fine-tuning tests run torch single-threaded: on shared CPUs, two intra-op threads on these
small models are several times slower than one (the threads mostly wait for each other)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
