"""The hybrid optical neural network: optical frontend → digital backend."""

from __future__ import annotations

import torch
from torch import nn

from onnlab.models.backends import ActNorm
from onnlab.models.frontend import OpticalFrontend
from onnlab.models.phase_frontend import PhaseMaskFrontend


class HybridONN(nn.Module):
    """`forward(x) = backend(frontend(x))`; `features(x)` is what the camera would see.

    Kept as two named submodules so workflows can split them: after fabrication the frontend
    is replaced by captured features and only `backend` is trained.
    """

    def __init__(self, frontend: OpticalFrontend | PhaseMaskFrontend, backend: nn.Module) -> None:
        super().__init__()
        self.frontend = frontend
        self.backend = backend

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images → (B, K', H, W) optical feature maps (simulated sensor)."""
        return self.frontend(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backend(self.frontend(x))

    @torch.no_grad()
    def initialise(self, x: torch.Tensor) -> None:
        """Data-dependent init of the backend's ActNorm layers from a batch of images.

        Called by the training loop before the first step so that per-sample Jacobians (NTK)
        and functional calls never hit the lazy first-forward initialisation.
        """
        initialise_actnorm(self.backend, self.features(x))

    def digital_parameters(self) -> list[nn.Parameter]:
        """Parameters that stay trainable after fabrication (the backend's)."""
        return [p for p in self.backend.parameters() if p.requires_grad]


@torch.no_grad()
def initialise_actnorm(backend: nn.Module, features: torch.Tensor) -> None:
    """Run one forward in train mode so every uninitialised ActNorm sets itself from data."""
    pending = [m for m in backend.modules() if isinstance(m, ActNorm) and not bool(m.initialised)]
    if not pending:
        return
    was_training = backend.training
    backend.train()
    backend(features)
    backend.train(was_training)
