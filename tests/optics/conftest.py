"""Optics tests use tiny tensors: one intra-op thread avoids OpenMP spin-wait stalls that make
thousands of small ops (gradcheck) 10x slower on a busy shared CPU. Restored after each test."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
