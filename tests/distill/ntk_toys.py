"""Tiny models with closed-form or cheaply checkable NTKs, shared by the distill tests.

A module of its own (not conftest.py): ``from conftest import`` picks whichever conftest
pytest imported last when several test folders are collected together.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ToyFrontend(nn.Module):
    """Optical-frontend stand-in: softmax-parameterised non-negative PSFs, true convolution."""

    def __init__(self, n_kernels: int = 3, in_channels: int = 1, kernel_px: int = 3) -> None:
        super().__init__()
        self.raw = nn.Parameter(torch.randn(n_kernels, in_channels, kernel_px, kernel_px))
        self.raw_t = nn.Parameter(torch.zeros(n_kernels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        psf = (
            self.raw.flatten(1).softmax(1).view_as(self.raw)
            * torch.sigmoid(self.raw_t)[:, None, None, None]
        )
        return F.conv2d(x, psf.flip(-1, -2), padding=self.raw.shape[-1] // 2)


class ToyHybrid(nn.Module):
    """frontend -> pool -> Linear -> ReLU -> Linear, the shape of the MNIST student."""

    def __init__(self, hw: int = 8, n_kernels: int = 3, hidden: int = 6, n_out: int = 4) -> None:
        super().__init__()
        self.frontend = ToyFrontend(n_kernels)
        self.backend = nn.Sequential(
            nn.AvgPool2d(2),
            nn.Flatten(),
            nn.Linear(n_kernels * (hw // 2) ** 2, hidden),
            nn.ReLU(),
            nn.Linear(hidden, n_out),
        )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.frontend(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backend(self.frontend(x))


class ToyCNN(nn.Module):
    """Conv (in-place ReLU, BatchNorm) teacher stand-in."""

    def __init__(self, n_out: int = 4) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1),
            nn.BatchNorm2d(4),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(4, 5, 3, padding="same", bias=False),
            nn.ReLU(),
            nn.Flatten(),
        )
        self.head = nn.Linear(5 * 4 * 4, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())
