"""Task, KD and segmentation losses and metrics against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from onnlab.training.losses import KDLoss, TaskLoss, dice_loss, kd_divergence, make_loss
from onnlab.training.metrics import accuracy, miou


class Fixed(nn.Module):
    """Returns preset outputs regardless of input (a stand-in teacher/student)."""

    def __init__(self, out: torch.Tensor) -> None:
        super().__init__()
        self.out = nn.Parameter(out.clone())

    def forward(self, x):
        return self.out


def test_kd_is_hinton_formula():
    s, t = torch.randn(5, 10), torch.randn(5, 10)
    y = torch.randint(0, 10, (5,))
    loss = KDLoss(Fixed(t), "mnist", temperature=10.0, alpha=0.5)
    value, logs = loss(Fixed(s), {"x": torch.zeros(5), "y": y})
    p_t, p_s = F.softmax(t / 10, 1), F.softmax(s / 10, 1)
    kl = (p_t * (p_t.log() - p_s.log())).sum(1).mean()
    expected = 0.5 * 100 * kl + 0.5 * F.cross_entropy(s, y)
    assert math.isclose(value.item(), expected.item(), rel_tol=1e-5)
    assert set(logs) == {"loss", "task", "kd"}
    same, _ = KDLoss(Fixed(s), "mnist", alpha=1.0)(Fixed(s), {"x": torch.zeros(5), "y": y})
    assert abs(same.item()) < 1e-6  # student == teacher: nothing to distil


def test_binary_kd_is_per_pixel_bernoulli_kl():
    s, t = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    ps, pt = torch.sigmoid(s / 2), torch.sigmoid(t / 2)
    kl = (pt * (pt / ps).log() + (1 - pt) * ((1 - pt) / (1 - ps)).log()).mean()
    assert math.isclose(
        kd_divergence(s, t, 2.0, "segmentation").item(), 4 * kl.item(), rel_tol=1e-5
    )


def test_segmentation_task_loss_and_metrics():
    target = torch.zeros(1, 1, 4, 4)
    target[..., :2, :] = 1
    perfect = (target * 2 - 1) * 20
    assert dice_loss(perfect, target).item() < 1e-6
    value, _ = TaskLoss("segmentation")(Fixed(perfect), {"x": None, "y": target})
    assert value.item() < 1e-6
    half = perfect.clone()
    half[..., 0, :] = -20  # predict only row 1 of the two foreground rows
    # fg IoU 4/8, bg IoU 8/12
    assert math.isclose(miou(half, target), (0.5 + 8 / 12) / 2, rel_tol=1e-9)
    assert accuracy(torch.tensor([[0.0, 1.0], [1.0, 0.0]]), torch.tensor([1, 1])) == 0.5


def test_make_loss_methods():
    assert isinstance(make_loss("none", "mnist"), TaskLoss)
    assert isinstance(make_loss("kd", "mnist", Fixed(torch.zeros(1, 10)), alpha=0.3), KDLoss)
    with pytest.raises(ValueError, match="teacher"):
        make_loss("kd", "mnist")
    with pytest.raises(ValueError, match="method"):
        make_loss("fitnets", "mnist", Fixed(torch.zeros(1, 10)))
