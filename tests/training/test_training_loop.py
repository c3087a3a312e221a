"""The training loop: methods reduce the loss, physics holds, checkpoints and resume are exact."""

from __future__ import annotations

import importlib.util
import json
import math

import pytest
import torch

from onnlab.cli import main
from onnlab.data import load_dataset
from onnlab.models.zoo import build_student, build_teacher
from onnlab.training import TrainConfig, load_checkpoint, make_loss, save_checkpoint, train
from onnlab.training.loop import STATE_FILE


@pytest.fixture(scope="module")
def mnist_small():
    return load_dataset("mnist", "train", None, limit=512), load_dataset(
        "mnist", "val", None, limit=128
    )


@pytest.fixture(scope="module")
def mnist_teacher(mnist_small, tmp_path_factory):
    """A LeNet trained for a few seconds: good enough to have something to distil."""
    torch.manual_seed(1)
    teacher = build_teacher("mnist")
    cfg = _config(epochs=2, lr=2e-3, frontend_lr_scale=1.0)
    train(
        teacher,
        mnist_small[0].subset(range(256)),
        mnist_small[1],
        cfg,
        make_loss("none", "mnist"),
        tmp_path_factory.mktemp("t"),
    )
    return teacher


def _config(**kw):
    base = dict(
        epochs=2, batch_size=64, lr=3e-3, frontend_lr_scale=10.0, progress=False, device="cpu"
    )
    return TrainConfig(**{**base, **kw})


@pytest.mark.parametrize("method", ["none", "kd"])
def test_short_run_reduces_loss_and_keeps_psfs_physical(method, mnist_small, tmp_path, request):
    train_set, val_set = mnist_small
    teacher = request.getfixturevalue("mnist_teacher") if method == "kd" else None
    torch.manual_seed(0)
    model = build_student("mnist")
    loss = make_loss(method, "mnist", teacher)
    before = model.frontend.psfs().detach().clone()
    history = train(model, train_set, val_set, _config(epochs=3), loss, tmp_path / method)
    losses = [e["train"]["loss"] for e in history["epochs"]]
    assert losses[-1] < (0.7 if method == "none" else 0.85) * losses[0]
    psfs = model.frontend.psfs()
    assert not torch.allclose(psfs, before)  # the optics were trained, not just the backend
    assert bool((psfs >= 0).all()) and bool((psfs.sum((1, 2, 3)) <= 1 + 1e-6).all())
    files = {p.name for p in (tmp_path / method).iterdir()}
    assert {"config.json", "metrics.json", "curves.png", "model.pt", STATE_FILE} <= files
    assert history["final"]["val"]["accuracy"] > 0.5
    if method == "kd":  # the KD term is logged and finite (the teacher here is weak)
        assert all(math.isfinite(e["train"]["kd"]) for e in history["epochs"])


@pytest.mark.skipif(
    importlib.util.find_spec("onnlab.distill.objective") is None,
    reason="onnlab.distill.objective (NTKD, issue 4) is not installed yet",
)
def test_ntkd_runs_through_the_same_loop(mnist_small, tmp_path):
    train_set, val_set = mnist_small
    loss = make_loss("ntkd", "mnist", build_teacher("mnist"))
    history = train(
        build_student("mnist"),
        train_set.subset(range(64)),
        val_set,
        _config(epochs=1, batch_size=16),
        loss,
        tmp_path,
    )
    assert torch.isfinite(torch.tensor(history["final"]["train"]["loss"]))


class Interrupt(Exception):
    pass


def _interrupting(loss, after_calls: int):
    calls = {"n": 0}

    def wrapped(model, batch):
        calls["n"] += 1
        if calls["n"] > after_calls:
            raise Interrupt
        return loss(model, batch)

    return wrapped


def test_resume_reproduces_an_uninterrupted_run(mnist_small, tmp_path):
    train_set, val_set = mnist_small
    cfg = _config(augment="shift")
    ref = build_student("mnist")
    init = {k: v.clone() for k, v in ref.state_dict().items()}
    train(ref, train_set, val_set, cfg, make_loss("none", "mnist"), tmp_path / "ref")
    part = build_student("mnist")
    part.load_state_dict(init)
    steps_per_epoch = len(train_set) // cfg.batch_size
    with pytest.raises(Interrupt):  # killed half-way through epoch 2
        train(
            part,
            train_set,
            val_set,
            cfg,
            _interrupting(make_loss("none", "mnist"), steps_per_epoch + 3),
            tmp_path / "r",
        )
    resumed = build_student("mnist")  # a fresh process: different init, state comes from disk
    h = train(resumed, train_set, val_set, cfg, make_loss("none", "mnist"), tmp_path / "r")
    assert [e["epoch"] for e in h["epochs"]] == [1, 2]
    for key, value in ref.state_dict().items():
        assert torch.allclose(value, resumed.state_dict()[key], atol=1e-6), key
    with pytest.raises(Exception, match="lr"):
        train(
            resumed, train_set, val_set, _config(lr=1.0), make_loss("none", "mnist"), tmp_path / "r"
        )


def test_resume_refuses_other_settings_than_the_run_started_with(mnist_small, tmp_path):
    """A run's epochs must all come from one setting: resuming a folder with other loss options
    (or method, data, teacher: the caller's meta) is refused, the same ones resume."""
    from onnlab.errors import ConfigError

    small, val_set = mnist_small[0].subset(range(128)), mnist_small[1]
    meta = {"method": "ntkd", "seed": 0, "loss_options": {"beta": 1.879, "anchors": 16}}
    run = tmp_path / "r"
    loss = make_loss("none", "mnist")
    train(build_student("mnist"), small, val_set, _config(epochs=1), loss, run, meta=meta)
    assert json.loads((run / "run.json").read_text()) == meta
    two = _config(epochs=2)  # epochs may grow on resume; the rest may not change
    other = {**meta, "loss_options": {"beta": 1.0, "anchors": 16}}
    with pytest.raises(ConfigError, match="run.json: cannot resume with a different loss_options"):
        train(build_student("mnist"), small, val_set, two, loss, run, meta=other)
    with pytest.raises(ConfigError, match="different method"):
        train(build_student("mnist"), small, val_set, two, loss, run, meta={**meta, "method": "kd"})
    history = train(build_student("mnist"), small, val_set, two, loss, run, meta=meta)
    assert [e["epoch"] for e in history["epochs"]] == [1, 2]


def test_checkpoint_round_trip_with_measured_psfs(tmp_path):
    model = build_student("cifar10", pseudo_negative=True)
    model.initialise(torch.rand(8, 3, 32, 32))
    measured = model.frontend.psfs().detach() * 0.9
    model.frontend.load_psfs(measured)
    path = save_checkpoint(tmp_path / "m.pt", model, {"metrics": {"val": {"accuracy": 0.5}}})
    loaded, meta = load_checkpoint(path)
    assert (
        meta["task"] == "cifar10"
        and meta["role"] == "student"
        and meta["architecture"]["pseudo_negative"]
    )
    x = torch.rand(3, 3, 32, 32)
    model.eval()
    assert torch.equal(loaded(x), model(x))
    assert torch.equal(loaded.frontend.psfs(), measured)
    assert not any(p.requires_grad for p in loaded.frontend.parameters())
    (tmp_path / "bad.pt").write_bytes(b"junk")
    from onnlab.errors import CheckpointError

    with pytest.raises(CheckpointError, match="bad.pt"):
        load_checkpoint(tmp_path / "bad.pt")


def test_cli_teacher_then_kd_student_then_evaluate(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("ONNLAB_DATA", raising=False)
    common = [
        "--limit",
        "128",
        "--eval-limit",
        "64",
        "--epochs",
        "1",
        "--no-progress",
        "--device",
        "cpu",
    ]
    with pytest.raises(SystemExit) as exit_info:
        main(["teacher", "train", "--task", "mnist", "--out", str(tmp_path / "t"), *common])
    assert exit_info.value.code == 0
    teacher = tmp_path / "t" / "model.pt"
    with pytest.raises(SystemExit):
        main(
            [
                "train",
                "--task",
                "mnist",
                "--method",
                "kd",
                "--seeds",
                "2",
                "--teacher",
                str(teacher),
                "--loss-opt",
                "temperature=3.5",
                "--out",
                str(tmp_path / "s"),
                *common,
            ]
        )
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert summary["method"] == "kd" and summary["test"]["n"] == 2
    # provenance: the options that trained every seed, in the summary, results and run.json
    assert summary["loss_options"] == {"temperature": 3.5} and summary["architecture"] == {}
    for seed in (0, 1):
        assert summary["runs"][seed]["loss_options"] == {"temperature": 3.5}
        run = json.loads((tmp_path / "s" / f"seed-{seed}" / "run.json").read_text())
        assert run["method"] == "kd" and run["loss_options"] == {"temperature": 3.5}
    assert (tmp_path / "s" / "seed-1" / "model.pt").is_file()
    with pytest.raises(SystemExit):
        main(
            [
                "evaluate",
                str(tmp_path / "s" / "seed-0" / "model.pt"),
                "--limit",
                "50",
                "--out",
                str(tmp_path / "e"),
            ]
        )
    assert "accuracy=" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:  # no registered teacher: one-line error
        main(["train", "--task", "mnist", "--method", "kd", *common])
    assert exit_info.value.code == 2
    assert "teacher train" in capsys.readouterr().err


def test_resume_continues_the_ntkd_anchor_cycle(mnist_small, tmp_path):
    """The loop builds the anchor pool (prepare) and a resumed NTKD run continues the anchor
    cycle where it stopped, so it ends where an uninterrupted run does."""
    train_set = mnist_small[0].subset(range(96))
    cfg = _config(batch_size=32)
    teacher = build_teacher("mnist")

    def loss():
        return make_loss("ntkd", "mnist", teacher, ntk_batch=8, anchors=5)

    ref = build_student("mnist")
    init = {k: v.clone() for k, v in ref.state_dict().items()}
    history = train(ref, train_set, None, cfg, loss(), tmp_path / "ref")
    assert history["prepare_time_s"] > 0
    part = build_student("mnist")
    part.load_state_dict(init)
    with pytest.raises(Interrupt):  # 3 steps per epoch: stop in the middle of epoch 2
        inner = loss()
        stopping = _interrupting(inner, 4)
        stopping.prepare = inner.prepare  # the wrapper must expose the setup hook too
        train(part, train_set, None, cfg, stopping, tmp_path / "r")
    resumed = build_student("mnist")
    train(resumed, train_set, None, cfg, loss(), tmp_path / "r")
    for key, value in ref.state_dict().items():
        assert torch.allclose(value, resumed.state_dict()[key], atol=1e-5), key


def test_keep_best_ends_on_the_best_validated_epoch_and_survives_resume(mnist_small, tmp_path):
    """A high learning rate makes validation accuracy wander; the model must end on its peak."""
    from onnlab.training.metrics import evaluate

    train_set, val_set = mnist_small[0].subset(range(256)), mnist_small[1]
    cfg = _config(epochs=5, lr=3e-2, keep_best=True, schedule="constant")
    torch.manual_seed(0)
    model = build_student("mnist")
    history = train(model, train_set, val_set, cfg, make_loss("none", "mnist"), tmp_path / "a")
    scores = [e["val"]["accuracy"] for e in history["epochs"]]
    assert history["best_epoch"] == 1 + scores.index(max(scores))
    assert evaluate(model, val_set, "mnist")["accuracy"] == pytest.approx(max(scores))
    assert history["final"]["val"]["accuracy"] == max(scores)

    # stop after 2 epochs, resume to 5: the best found before the stop is not forgotten
    torch.manual_seed(0)
    part = build_student("mnist")
    train(
        part,
        train_set,
        val_set,
        cfg.model_copy(update={"epochs": 2}),
        make_loss("none", "mnist"),
        tmp_path / "b",
    )
    state = torch.load(tmp_path / "b" / STATE_FILE, weights_only=True)
    assert state["best"]["epoch"] == 1 + scores[:2].index(max(scores[:2]))


def test_keep_best_without_validation_is_refused(mnist_small, tmp_path):
    with pytest.raises(ValueError, match="keep_best needs a validation set"):
        train(
            build_student("mnist"),
            mnist_small[0].subset(range(64)),
            None,
            _config(epochs=1, keep_best=True),
            make_loss("none", "mnist"),
            tmp_path,
        )


def test_label_smoothing_is_the_smoothed_cross_entropy():
    from onnlab.training.losses import TaskLoss

    logits, y = torch.randn(8, 10), torch.randint(0, 10, (8,))
    model = torch.nn.Identity()
    smooth, _ = TaskLoss("mnist", label_smoothing=0.1)(model, {"x": logits, "y": y})
    # (1 - ε)·CE(one-hot) + ε·mean over classes of −log p
    logp = torch.log_softmax(logits, 1)
    expected = -(0.9 * logp.gather(1, y[:, None]).squeeze(1) + 0.1 * logp.mean(1)).mean()
    assert smooth.item() == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(ValueError, match="label_smoothing"):
        TaskLoss("mnist", label_smoothing=1.0)


def test_kd_caches_teacher_outputs_on_fixed_inputs_only(mnist_small, mnist_teacher, tmp_path):
    """Without augmentation the frozen teacher runs once per training sample (cached after the
    first epoch) and training is the same as without the cache; augmented views are all new."""
    train_set, val_set = mnist_small
    train_set = train_set.subset(range(256))

    def run(name: str, cache: bool, augment: str = "none"):
        torch.manual_seed(0)
        model = build_student("mnist")
        loss = make_loss("kd", "mnist", mnist_teacher)
        if not cache:
            loss.prepare = None  # the loop then finds no cache to fill
        cfg = _config(epochs=3, augment=augment)
        history = train(model, train_set, val_set, cfg, loss, tmp_path / name)
        return model, loss, [e["train"]["loss"] for e in history["epochs"]]

    cached, loss_c, curve_c = run("cached", cache=True)
    plain, loss_p, curve_p = run("plain", cache=False)
    assert loss_c.teacher_samples == len(train_set)  # once per sample, not once per epoch
    assert loss_p.teacher_samples == 3 * len(train_set)
    assert curve_c == pytest.approx(curve_p, rel=1e-5)
    for a, b in zip(cached.parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    _, loss_a, _ = run("augmented", cache=True, augment="shift")
    assert loss_a.teacher_samples == 3 * len(train_set)  # every view is new: nothing cached


def test_teacher_outputs_on_augmented_views_are_shared_between_runs(
    mnist_small, mnist_teacher, tmp_path
):
    """Runs that draw the same views (same images, policy, seed, batch size) reuse a complete
    epoch of teacher outputs from disk, with the same training as without the cache; another
    seed draws other views; a damaged file is rejected and recomputed, never used."""
    from onnlab.distill.teacher_outputs import TeacherOutputs

    train_set = mnist_small[0].subset(range(200))  # batch 64: 8 rows of each epoch unseen
    seen = 192

    def run(name: str, seed: int = 0, cache: bool = True, epochs: int = 2, **opts):
        torch.manual_seed(0)
        model = build_student("mnist")
        loss = make_loss("kd", "mnist", mnist_teacher, **opts)
        if not cache:
            loss.outputs = TeacherOutputs(loss.teacher)  # never prepared: runs every batch
            loss.prepare = None
        cfg = _config(epochs=epochs, augment="shift", seed=seed)
        history = train(model, train_set, None, cfg, loss, tmp_path / name)
        return loss, [e["train"]["loss"] for e in history["epochs"]]

    first, _ = run("first", temperature=4.0, alpha=0.9)
    assert first.teacher_samples == 2 * seen  # every view is new to an empty cache
    files = sorted((tmp_path / "cache" / "teacher-views").glob("*/epoch-*.pt"))
    assert [f.name for f in files] == ["epoch-0000.pt", "epoch-0001.pt"]

    reused, curve_r = run("reused", temperature=2.0, alpha=0.5)  # another trial, same views
    plain, curve_p = run("plain", cache=False, temperature=2.0, alpha=0.5)
    assert reused.teacher_samples == 0
    assert plain.teacher_samples == 2 * seen
    assert curve_r == pytest.approx(curve_p, rel=1e-6)

    torch.manual_seed(0)  # NTKD + KD reads the same file for its logit-KD term
    ntkd_kd = make_loss("ntkd", "mnist", mnist_teacher, kd_weight=0.5, anchors=2, ntk_batch=16)
    cfg = _config(epochs=1, augment="shift")
    train(build_student("mnist"), train_set, None, cfg, ntkd_kd, tmp_path / "ntkd-kd")
    assert ntkd_kd.outputs.teacher_samples == 0

    other_seed, _ = run("seed1", seed=1, epochs=1)
    assert other_seed.teacher_samples == seen  # other views: not served from seed 0

    files[1].write_bytes(files[1].read_bytes()[:100])  # a write cut short by a crash
    damaged, curve_d = run("damaged", temperature=2.0, alpha=0.5)
    assert damaged.outputs.rejected_files == 1
    assert damaged.teacher_samples == seen  # that epoch recomputed, the other read
    assert curve_d == pytest.approx(curve_p, rel=1e-6)
    assert torch.load(files[1], weights_only=True)["outputs"].shape[0] == len(train_set)
