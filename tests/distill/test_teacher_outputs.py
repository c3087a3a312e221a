"""The cache key of teacher outputs on augmented views (onnlab.distill.teacher_outputs)."""

import torch
from torch import nn

from onnlab.data.base import ArrayDataset
from onnlab.distill.teacher_outputs import TeacherOutputs, ViewStream


def _key(teacher: nn.Module, images: torch.Tensor, stream: str = "views seed=0") -> str:
    outputs = TeacherOutputs(teacher)
    labels = torch.zeros(len(images), dtype=torch.long)
    outputs.prepare(ArrayDataset(images, labels), ViewStream(stream, len(images)))
    return outputs._key()


def test_key_changes_with_every_input_of_the_views_and_the_teacher():
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))  # 0-d BatchNorm buffer
    images = torch.rand(4, 1, 8, 8)
    base = _key(teacher, images)
    assert base == _key(teacher, images.clone())
    assert base != _key(teacher, images, "views seed=1")
    changed = images.clone()
    changed[3, 0, 7, 7] += 1e-3
    assert base != _key(teacher, changed)
    teacher[1].num_batches_tracked += 1
    assert base != _key(teacher, images)
    teacher[1].num_batches_tracked -= 1
    with torch.no_grad():
        teacher[0].weight[0, 0, 0, 0] += 1e-6
    assert base != _key(teacher, images)
