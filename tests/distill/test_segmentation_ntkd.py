"""Segmentation NTKD under its default estimator: zero at student = teacher, matched sketches.

The segmentation default compares Grams taken along 4 seeded output directions per anchor
batch, the same rows for the teacher's cached Gram and the student's Gram (matched sketch).
Taken along the same rows, equal models have equal Grams, so the loss is 0 at student = teacher;
the previous default (an independent one-direction student sketch against the exact teacher
Gram) was not, and the contrast below shows the test can fail.
"""

from __future__ import annotations

import copy

import pytest
import torch

from onnlab.data.base import ArrayDataset
from onnlab.distill.anchors import AnchorPool
from onnlab.distill.ntk import ntk_gram
from onnlab.distill.objective import NTKDObjective
from onnlab.models.zoo import build_teacher


def _unet_and_data() -> tuple[torch.nn.Module, ArrayDataset]:
    torch.manual_seed(0)
    teacher = build_teacher("segmentation", base=4, depth=2)  # the task's U-Net, made small
    gen = torch.Generator().manual_seed(1)
    images = torch.rand(16, 3, 16, 16, generator=gen)
    masks = (torch.rand(16, 1, 16, 16, generator=gen) > 0.5).float()
    return teacher, ArrayDataset(images, masks)


def _student_is_teacher(teacher: torch.nn.Module) -> torch.nn.Module:
    """A trainable copy of the teacher, in eval mode so that the objective's task forward does
    not move its BatchNorm running statistics away from the teacher's between steps."""
    student = copy.deepcopy(teacher).eval()
    for p in student.parameters():
        p.requires_grad_(True)
    return student


def test_default_segmentation_ntkd_is_zero_for_student_equal_to_teacher():
    teacher, data = _unet_and_data()
    student = _student_is_teacher(teacher)
    objective = NTKDObjective(teacher, "segmentation", anchors=2, alpha=0.0)
    defaults = (objective.directions, objective.ntk_batch, objective.ntk_every)
    assert defaults == (4, 8, 12)  # the defaults under test
    objective.prepare(data, "cpu", seed=0)
    batch = {"x": data.images[:4], "y": data.targets[:4]}
    for _ in range(3):  # every anchor batch, with its own direction
        objective._calls = 0  # take the NTKD term now (it is lazy: every 12th step)
        _, logs = objective(student, batch)
        assert abs(logs["ntkd"]) < 1e-6


def test_lazy_ntkd_term_every_k_steps_with_k_times_the_weight():
    teacher, data = _unet_and_data()
    student = copy.deepcopy(teacher).eval()
    for p in student.parameters():
        p.requires_grad_(True)
    torch.nn.init.normal_(next(student.parameters()))  # student != teacher: NTKD > 0
    objective = NTKDObjective(teacher, "segmentation", anchors=2, ntk_every=3, beta=0.5)
    objective.prepare(data, "cpu", seed=0)
    batch = {"x": data.images[:4], "y": data.targets[:4]}
    for step in range(6):
        loss, logs = objective(student, batch)
        if step % 3 == 0:
            assert logs["ntkd"] > 0
            assert loss.item() == pytest.approx(logs["task"] + 0.5 * 3 * logs["ntkd"], rel=1e-5)
        else:
            assert loss.item() == pytest.approx(logs["task"], rel=1e-6)
    assert objective.anchor_pool._pos == 2  # two NTKD steps drew two anchors
    objective.prepare(data, "cpu", seed=0, step=4)  # resume at step 4: next NTKD at step 6
    pool = objective.anchor_pool
    assert pool._round * len(pool) + pool._pos == 2 and objective._calls == 4
    _, logs = objective(student, batch)
    assert "ntkd" not in logs  # no NTKD value measured yet in the resumed run


def test_independent_student_sketch_is_not_zero_at_student_equal_to_teacher():
    """The old default, for contrast: a one-direction student sketch vs the exact teacher Gram."""
    teacher, data = _unet_and_data()
    student = _student_is_teacher(teacher)
    objective = NTKDObjective(
        teacher, "segmentation", anchors=2, alpha=0.0, directions=None, estimator="output", size=1
    )
    objective.prepare(data, "cpu", seed=0)
    _, logs = objective(student, {"x": data.images[:4], "y": data.targets[:4]})
    assert logs["ntkd"] > 0.01


def test_matched_anchor_grams_are_the_projected_oracle():
    """Each cached teacher Gram is the autograd oracle's Gram of the projected outputs u . f."""
    teacher, data = _unet_and_data()
    pool = AnchorPool.build(teacher, data, batch=4, count=2, seed=3, directions=2)
    assert pool.cotangents.shape == (2, 2, 16)  # 2 anchors x 2 directions x 4x4 pooled outputs
    rows = pool.cotangents[0]
    ref = ntk_gram(
        teacher,
        data.images[pool.indices[0]],
        estimator="jacobian",
        params=list(teacher.parameters()),
        output_fn=lambda out: torch.nn.functional.adaptive_avg_pool2d(out, 4).flatten(1) @ rows.T,
    )
    torch.testing.assert_close(pool.grams[0], ref, rtol=1e-4, atol=1e-6)
    # the rows are orthonormal up to the sqrt(C/M) scale that makes E[U^T U] = I
    torch.testing.assert_close(rows @ rows.T, torch.eye(2) * 16 / 2, rtol=1e-5, atol=1e-5)


def test_directions_follow_the_anchor_not_the_shard():
    teacher, data = _unet_and_data()
    whole = AnchorPool.build(teacher, data, batch=4, count=4, seed=3, directions=1, shard=(0, 1))
    half = AnchorPool.build(teacher, data, batch=4, count=4, seed=3, directions=1, shard=(1, 2))
    torch.testing.assert_close(half.cotangents, whole.cotangents[1::2])


def test_matched_sketch_rejects_an_explicit_student_estimator():
    teacher, _ = _unet_and_data()
    with pytest.raises(ValueError, match="directions"):
        NTKDObjective(teacher, "segmentation", estimator="exact")
    assert NTKDObjective(teacher, "segmentation", directions="exact").directions is None
    assert NTKDObjective(teacher, "mnist").directions is None  # classification: exact Grams
