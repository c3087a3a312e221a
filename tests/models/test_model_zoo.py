"""Shapes and sizes of the paper's systems and teachers; feature normalisation."""

from __future__ import annotations

import pytest
import torch

from onnlab.models.backends import ActNorm
from onnlab.models.zoo import TASKS, build_student, build_teacher, count_parameters


@pytest.mark.parametrize("task", list(TASKS))
def test_output_shapes(task):
    spec = TASKS[task]
    x = torch.rand(2, spec.in_channels, *spec.image_hw)
    student, teacher = build_student(task), build_teacher(task)
    expected = (2, 10) if spec.kind == "classification" else (2, 1, *spec.image_hw)
    assert student(x).shape == expected and teacher(x).shape == expected
    assert student.features(x).shape[-2:] == spec.image_hw


def test_parameter_counts_match_the_paper_systems():
    mnist = build_student("mnist")
    assert 40_000 <= count_parameters(mnist) <= 60_000  # "≈0.05 M"
    assert mnist.frontend.psfs().shape == (8, 1, 7, 7)
    cifar = build_student("cifar10")
    assert 1.4e6 <= count_parameters(cifar) <= 1.8e6  # "≈1.6 M"
    assert cifar.frontend.psfs().shape == (16, 3, 7, 7)
    wide = build_student("segmentation", width=52)
    assert 0.9e6 <= count_parameters(wide.backend) <= 1.4e6  # "≈1.1 M"
    lenet = build_teacher("mnist")
    assert count_parameters(lenet) > 5 * count_parameters(mnist)


def test_unknown_task_and_option():
    with pytest.raises(ValueError, match="task"):
        build_student("imagenet")
    with pytest.raises(ValueError, match="n_kernal"):
        build_student("mnist", n_kernal=4)


def test_actnorm_initialises_from_data_and_folds_a_gain():
    norm = ActNorm(3)
    x = torch.randn(64, 3, 5, 5) * torch.tensor([0.01, 2.0, 5.0]).view(1, 3, 1, 1) + 0.3
    y = norm(x)  # first training forward initialises
    assert torch.allclose(y.mean((0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(y.std((0, 2, 3)), torch.ones(3), atol=1e-4)
    gain = torch.tensor([0.5, 2.0, 7.0])
    norm.fold_gain(gain)  # a camera that reads features x·gain gives the same output
    assert torch.allclose(norm(x * gain.view(1, 3, 1, 1)), y, atol=1e-4)


def test_hybrid_initialise_normalises_tiny_optical_features():
    model = build_student("mnist")
    x = torch.rand(32, 1, 28, 28) * 0.2
    feats = model.features(x)
    assert feats.abs().max() < 1.0  # physical intensities
    model.initialise(x)
    normed = model.backend.norm(model.backend.pool(feats))
    assert 0.5 < normed.std().item() < 2.0


def test_cifar_teacher_flip_tta_averages_mirror_images_only_in_eval():
    torch.manual_seed(0)
    plain = build_teacher("cifar10", width=8, flip_tta=False)
    tta = build_teacher("cifar10", width=8, flip_tta=True)
    tta.load_state_dict(plain.state_dict())
    x = torch.randn(3, 3, 32, 32)
    plain.eval(), tta.eval()
    with torch.no_grad():
        expected = 0.5 * (plain(x) + plain(x.flip(-1)))
        torch.testing.assert_close(tta(x), expected, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(tta(x), plain(x), atol=1e-4)  # the mirror image matters
    plain.train(), tta.train()
    torch.manual_seed(1)
    a = plain(x)
    torch.manual_seed(1)
    torch.testing.assert_close(tta(x), a)  # training sees one view, as before


@pytest.mark.parametrize("estimator", ["exact", "jacobian"])
def test_cifar_teacher_ntk_runs_under_functorch(estimator):
    """The teacher's NTK (NTKD anchors) goes through vmap/jacrev, which cannot clone into
    the channels-last layout the teacher uses for speed elsewhere."""
    from onnlab.distill.ntk import ntk_gram

    torch.manual_seed(0)
    teacher = build_teacher("cifar10", width=4)
    gram = ntk_gram(teacher, torch.randn(3, 3, 32, 32), estimator=estimator)
    assert gram.shape == (3, 3)
    torch.testing.assert_close(gram, gram.T, rtol=1e-4, atol=1e-4)
    assert bool((torch.linalg.eigvalsh(gram) > -1e-3 * gram.diagonal().max()).all())
