"""Learning-rate schedules and batched augmentation."""

from __future__ import annotations

import pytest
import torch

from onnlab.training.augment import augment_batch, random_translate
from onnlab.training.config import TrainConfig, default_config, learning_rate


def test_schedules_shape():
    total = 1000
    cos = TrainConfig(lr=1.0, schedule="cosine", warmup_fraction=0.1)
    assert learning_rate(cos, 0, total) == 0.0
    assert learning_rate(cos, 100, total) == pytest.approx(1.0)
    assert learning_rate(cos, 999, total) < 1e-4
    one = TrainConfig(lr=1.0, schedule="onecycle")
    lrs = [learning_rate(one, s, total) for s in range(total)]
    assert max(range(total), key=lrs.__getitem__) == 300 and lrs[0] < 0.05 and lrs[-1] < 1e-3
    assert default_config("cifar10", "teacher").augment == "crop_flip"
    with pytest.raises(ValueError):
        default_config("cifar10", "examiner")


def test_translate_moves_content_and_masks_together():
    x = torch.zeros(64, 1, 9, 9)
    x[:, :, 4, 4] = 1.0
    y = x.clone()
    g = torch.Generator().manual_seed(0)
    xs, ys = random_translate(x, 2, g, y)
    assert torch.equal(xs, ys)  # same geometric transform for the mask
    pos = xs[:, 0].flatten(1).argmax(1)
    rows, cols = pos // 9, pos % 9
    assert set(rows.tolist()) == {2, 3, 4, 5, 6} and set(cols.tolist()) == {2, 3, 4, 5, 6}
    assert torch.equal(xs.sum((1, 2, 3)), torch.ones(64))  # nothing falls off within ±2 px
    labels = torch.arange(64)
    xf, yf = augment_batch("crop_flip", x, labels, g)
    assert torch.equal(yf, labels) and xf.shape == x.shape
