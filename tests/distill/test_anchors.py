"""Anchor batches: cached exact teacher Grams on a fixed, seeded, disjoint pool of samples."""

from __future__ import annotations

import pytest
import torch
from ntk_toys import ToyCNN, ToyHybrid, rel_err

from onnlab.distill.anchors import AnchorPool, select_anchors
from onnlab.distill.losses import ntkd_loss
from onnlab.distill.ntk import ntk_gram
from onnlab.distill.objective import NTKDObjective
from onnlab.errors import OnnlabError

pytest.importorskip("onnlab.training.losses")


class _Data:
    """The two dataset fields the anchor pool reads (as ArrayDataset has them)."""

    def __init__(self, images: torch.Tensor, teacher_images: torch.Tensor | None = None) -> None:
        self.images, self.teacher_images = images, teacher_images

    def __len__(self) -> int:
        return self.images.shape[0]


def _data(n: int = 40, seed: int = 0) -> _Data:
    return _Data(torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed)))


def test_selection_is_seeded_disjoint_and_bounded() -> None:
    a = select_anchors(100, 8, 5, seed=3)
    assert a.shape == (5, 8)
    assert torch.equal(a, select_anchors(100, 8, 5, seed=3))
    assert not torch.equal(a, select_anchors(100, 8, 5, seed=4))
    assert a.unique().numel() == a.numel()  # disjoint batches, no repeated sample
    assert int(a.min()) >= 0 and int(a.max()) < 100
    assert select_anchors(20, 8, 5, seed=0).shape == (2, 8)  # a small set: as many as fit
    with pytest.raises(ValueError, match="anchor batch"):
        select_anchors(5, 8, 5, seed=0)


def test_anchor_grams_equal_the_autograd_oracle_of_those_samples() -> None:
    """The cached Gram is the teacher's exact NTK on exactly the anchor samples."""
    torch.manual_seed(0)
    teacher, data = ToyCNN().eval(), _data()
    pool = AnchorPool.build(teacher, data, batch=6, count=3, seed=1)
    params = list(teacher.parameters())
    assert len(pool) == 3 and pool.grams.shape == (3, 6, 6)
    for k in range(3):
        x = data.images[pool.indices[k]]
        assert torch.equal(pool.x_student[k], x)
        oracle = ntk_gram(teacher, x, estimator="jacobian", params=params)
        assert rel_err(pool.grams[k], oracle) < 1e-5
    assert pool.setup_s > 0


def test_backend_only_anchors_feed_features_to_student_and_images_to_teacher() -> None:
    torch.manual_seed(0)
    model, teacher = ToyHybrid(), ToyCNN().eval()
    images = _data().images
    features = model.features(images).detach()
    pool = AnchorPool.build(teacher, _Data(features, images), batch=5, count=2, seed=0)
    idx = pool.indices[0]
    assert torch.equal(pool.x_student[0], features[idx])
    params = list(teacher.parameters())
    expected = ntk_gram(teacher, images[idx], estimator="jacobian", params=params)
    assert rel_err(pool.grams[0], expected) < 1e-5


def test_cycle_visits_every_anchor_each_round_and_seek_resumes() -> None:
    pool = AnchorPool.build(ToyCNN(), _data(), batch=4, count=5, seed=2)
    key = {pool.x_student[k].sum().item(): k for k in range(len(pool))}
    drawn = [key[pool.next()[0].sum().item()] for _ in range(10)]
    assert sorted(drawn[:5]) == list(range(5)) and sorted(drawn[5:]) == list(range(5))
    assert drawn[:5] != drawn[5:]  # reshuffled per round (fixed seed: deterministic)
    other = AnchorPool(pool.indices, pool.x_student, pool.grams, seed=2)
    other.seek(7)
    assert [key[other.next()[0].sum().item()] for _ in range(3)] == drawn[7:10]


def test_objective_without_prepare_raises() -> None:
    objective = NTKDObjective(ToyCNN(), "mnist", teacher_estimator="anchor")
    batch = {"x": torch.rand(4, 1, 8, 8), "y": torch.zeros(4, dtype=torch.long)}
    with pytest.raises(OnnlabError, match="prepare"):
        objective(ToyHybrid(), batch)
    with pytest.raises(ValueError, match="anchors"):
        NTKDObjective(ToyCNN(), "mnist", teacher_estimator="anchor", anchors=0)


def test_anchor_objective_uses_anchor_samples_and_no_teacher_forward() -> None:
    torch.manual_seed(0)
    model, teacher, data = ToyHybrid(), ToyCNN(), _data()
    objective = NTKDObjective(teacher, "mnist", teacher_estimator="anchor", ntk_batch=4, anchors=3)
    objective.prepare(data, "cpu", seed=5)
    calls = {"n": 0}
    teacher.register_forward_hook(lambda *_: calls.__setitem__("n", calls["n"] + 1))
    batch = {"x": torch.rand(8, 1, 8, 8), "y": torch.randint(0, 4, (8,))}
    probe = AnchorPool(
        objective.anchor_pool.indices,
        data.images[objective.anchor_pool.indices],
        objective.anchor_pool.grams,
        seed=5,
    )
    x_a, g_t = probe.next()
    _, logs = objective(model, batch)
    assert calls["n"] == 0  # the step does no teacher work
    expected = ntkd_loss(ntk_gram(model, x_a), g_t)
    assert logs["ntkd"] == pytest.approx(float(expected), rel=1e-4)


def test_training_with_anchors_reduces_the_loss() -> None:
    """beta * NTKD alone through the anchor cycle: the student's Grams on every anchor batch
    move towards the teacher's cached ones (pool-wide NTKD measured before and after)."""
    torch.manual_seed(0)
    model, teacher, data = ToyHybrid(), ToyCNN(), _data(32)
    objective = NTKDObjective(
        teacher, "mnist", teacher_estimator="anchor", ntk_batch=8, anchors=2, alpha=0.0
    )
    objective.prepare(data, "cpu", seed=0)
    pool = objective.anchor_pool

    def pool_ntkd() -> float:
        return sum(
            float(ntkd_loss(ntk_gram(model, pool.x_student[k]), pool.grams[k]))
            for k in range(len(pool))
        )

    before = pool_ntkd()
    opt = torch.optim.Adam(model.parameters(), lr=0.005)
    batch = {"x": data.images[:16], "y": torch.randint(0, 4, (16,))}
    for _ in range(30):
        opt.zero_grad()
        loss, _ = objective(model, batch)
        loss.backward()
        opt.step()
    assert pool_ntkd() < 0.7 * before
