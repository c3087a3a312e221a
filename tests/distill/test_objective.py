"""NTKDObjective: the training-contract loss, its gradient, modes and what it leaves alone."""

from __future__ import annotations

import pytest
import torch
from ntk_toys import ToyCNN, ToyHybrid
from torch import nn

from onnlab.distill.losses import ntkd_loss
from onnlab.distill.ntk import ntk_gram
from onnlab.distill.objective import NTKDObjective, mode_independent

pytest.importorskip("onnlab.training.losses")


def _batch(n: int = 6) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {
        "x": torch.rand(n, 1, 8, 8, generator=gen),
        "y": torch.randint(0, 4, (n,), generator=gen),
    }


def test_ntkd_gradient_passes_gradcheck() -> None:
    """d NTKD / d theta through the structured Gram (double backward) vs finite differences."""
    torch.manual_seed(0)
    student = ToyHybrid(hw=4, n_kernels=1, hidden=2, n_out=2).double()
    teacher = ToyCNN(n_out=2).double()
    x = torch.rand(4, 1, 8, 8, dtype=torch.float64)
    x_small = torch.nn.functional.avg_pool2d(x, 2)
    g_t = ntk_gram(teacher, x, params=list(teacher.parameters()))
    names = ["frontend.raw", "frontend.raw_t", "backend.2.weight", "backend.4.weight"]
    start = tuple(student.get_parameter(n).detach().clone().requires_grad_() for n in names)

    def loss(*values: torch.Tensor) -> torch.Tensor:
        params = dict(zip(names, values, strict=True))
        g_s = ntk_gram(student, x_small, create_graph=True, params=params)
        return ntkd_loss(g_s, g_t, "cka")

    assert torch.autograd.gradcheck(loss, start, eps=1e-6, atol=1e-7)


def test_loss_zero_when_student_is_teacher() -> None:
    torch.manual_seed(0)
    model = ToyHybrid()
    teacher = ToyHybrid()
    teacher.load_state_dict(model.state_dict())
    objective = NTKDObjective(teacher, "mnist", alpha=0.0, beta=1.0, teacher_estimator="exact")
    loss, logs = objective(model, _batch())
    assert abs(float(loss)) < 1e-6 and logs["ntkd"] < 1e-6
    assert {"loss", "task", "ntkd"} <= set(logs)


def test_total_is_weighted_sum_and_kd_is_reused() -> None:
    torch.manual_seed(0)
    from onnlab.training.losses import KDLoss

    model, teacher = ToyHybrid(), ToyCNN()
    batch = _batch()
    objective = NTKDObjective(
        teacher,
        "mnist",
        alpha=0.7,
        beta=2.0,
        kd_weight=0.5,
        teacher_estimator="output",
        teacher_size=1,
    )
    loss, logs = objective(model, batch)
    assert float(loss) == pytest.approx(0.7 * logs["task"] + 2.0 * logs["ntkd"] + 0.5 * logs["kd"])
    _, kd_logs = KDLoss(teacher, "mnist")(model, batch)  # same KD definition as the KD baseline
    assert logs["kd"] == pytest.approx(kd_logs["kd"], rel=1e-5)
    assert logs["task"] == pytest.approx(kd_logs["task"], rel=1e-5)


def test_training_step_reduces_ntkd() -> None:
    """A few SGD steps on beta * NTKD alone move the student's Gram towards the teacher's."""
    torch.manual_seed(0)
    model, teacher = ToyHybrid(), ToyCNN()
    objective = NTKDObjective(teacher, "mnist", alpha=0.0, teacher_estimator="exact")
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    batch = _batch(8)
    first = None
    for _ in range(15):
        opt.zero_grad()
        loss, logs = objective(model, batch)
        loss.backward()
        opt.step()
        first = logs["ntkd"] if first is None else first
    assert logs["ntkd"] < 0.7 * first


def test_backend_only_mode_leaves_frontend_untouched() -> None:
    """Post-fabrication: features in, raw images to the teacher; optics get no gradient."""
    torch.manual_seed(0)
    model, teacher = ToyHybrid(), ToyCNN()
    batch = _batch()
    before = {k: v.clone() for k, v in model.frontend.state_dict().items()}
    features = model.features(batch["x"]).detach()
    objective = NTKDObjective(
        teacher, "mnist", kd_weight=1.0, teacher_estimator="output", teacher_size=1
    )
    opt = torch.optim.SGD(model.backend.parameters(), lr=0.1)
    loss, _ = objective(model.backend, {"x": features, "y": batch["y"], "x_teacher": batch["x"]})
    loss.backward()
    opt.step()
    assert all(p.grad is None for p in model.frontend.parameters())
    assert all(p.grad is not None for p in model.backend.parameters())
    for k, v in model.frontend.state_dict().items():
        assert torch.equal(v, before[k])
    # same as the hybrid whose frontend is frozen: the student NTK is over trainable params
    model.frontend.requires_grad_(False)
    g_hybrid = objective.student_gram(model, batch["x"])[0]
    g_backend = objective.student_gram(model.backend, features)[0]
    torch.testing.assert_close(g_hybrid, g_backend)


def test_mode_dependence_detection() -> None:
    assert mode_independent(ToyHybrid())
    assert not mode_independent(ToyCNN())  # BatchNorm
    assert not mode_independent(nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5)))
    assert mode_independent(nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.0)))


def test_batchnorm_student_task_loss_in_train_mode() -> None:
    """A BatchNorm student's task loss uses train-mode statistics; its NTK uses eval mode and
    the module's flags and running statistics end as a plain train-mode forward leaves them."""
    torch.manual_seed(0)
    student, teacher = ToyCNN(), ToyHybrid()
    batch = _batch()
    reference = ToyCNN()
    reference.load_state_dict(student.state_dict())
    student.train()
    reference.train()
    objective = NTKDObjective(
        teacher, "mnist", beta=1.0, teacher_estimator="output", teacher_size=1
    )
    _, logs = objective(student, batch)
    expected = nn.functional.cross_entropy(reference(batch["x"]), batch["y"])
    assert logs["task"] == pytest.approx(float(expected), rel=1e-5)
    assert student.training
    expected_state = reference.state_dict()
    for k, v in student.state_dict().items():
        assert torch.equal(v, expected_state[k]), k


def test_bad_arguments() -> None:
    teacher = ToyCNN()
    with pytest.raises(ValueError, match="beta"):
        NTKDObjective(teacher, "mnist", beta=-1.0)
    with pytest.raises(ValueError, match="normalisation"):
        NTKDObjective(teacher, "mnist", normalisation="l1")
    with pytest.raises(ValueError, match="teacher_estimator"):
        NTKDObjective(teacher, "mnist", teacher_estimator="magic")


def test_ntk_batch_takes_grams_on_a_prefix_and_task_on_all() -> None:
    torch.manual_seed(0)
    model, teacher = ToyHybrid(), ToyCNN()
    batch = _batch(8)
    objective = NTKDObjective(teacher, "mnist", ntk_batch=4, teacher_estimator="exact")
    _, logs = objective(model, batch)
    g_s = ntk_gram(model, batch["x"][:4])
    g_t = ntk_gram(teacher, batch["x"][:4], params=list(teacher.parameters()))
    assert logs["ntkd"] == pytest.approx(float(ntkd_loss(g_s, g_t)), rel=1e-4)
    task = nn.functional.cross_entropy(model(batch["x"]), batch["y"])
    assert logs["task"] == pytest.approx(float(task), rel=1e-5)
    with pytest.raises(ValueError, match="ntk_batch"):
        NTKDObjective(teacher, "mnist", ntk_batch=1)
    with pytest.raises(ValueError, match="CKA"):  # a centred 2 x 2 Gram: CKA 1 for any model
        NTKDObjective(teacher, "mnist", ntk_batch=2, normalisation="cka")
    g = torch.tensor([[2.0, 0.3], [0.3, 1.0]])
    assert float(ntkd_loss(g, torch.tensor([[1.0, -0.9], [-0.9, 5.0]]), "cka")) < 1e-6
    NTKDObjective(teacher, "mnist", ntk_batch=2, normalisation="trace")  # trace: still signal
    assert NTKDObjective(teacher, "mnist", ntk_batch=0).ntk_batch is None  # CLI: whole batch
