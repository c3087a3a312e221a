"""What a run says about itself: simulated benches announced first and recorded, checkpoints
that know their dataset, a --limit teacher that says it is not the default one."""

from __future__ import annotations

import json


def test_capture_on_the_default_bench_says_simulated_first_and_records_it(tmp_path, cli):
    from onnlab.capture.store import CaptureStore

    out = tmp_path / "cap"
    argv = ["capture", "--split", "test", "--fraction", "0.005", "--no-progress"]
    code, lines = cli([*argv, "--out", str(out)])
    assert code == 0, lines
    assert lines[0].startswith("SIMULATED bench") and "sim.yaml" in lines[0]
    with CaptureStore.read(out / "capture.h5", verify=False) as store:
        assert store.meta["simulated"] is True
        assert store.meta["dataset"] == "mnist"


def test_limited_teacher_is_not_registered_and_says_so(tmp_path, monkeypatch, cli):
    monkeypatch.delenv("ONNLAB_DATA", raising=False)
    argv = ["teacher", "train", "--task", "mnist", "--limit", "128", "--eval-limit", "32"]
    argv += ["--epochs", "1", "--no-progress", "--device", "cpu", "--out", str(tmp_path / "t")]
    code, lines = cli(argv)
    assert code == 0, lines
    said = [ln for ln in lines if ln.startswith("not registered")]
    assert len(said) == 1 and "--limit 128" in said[0] and "--teacher" in said[0], lines
    assert any("mnist teacher: epoch 1/1" in ln for ln in lines), lines  # says who trains
    from onnlab.training.checkpoint import load_checkpoint

    _, meta = load_checkpoint(tmp_path / "t" / "model.pt")
    assert meta["dataset"] == {"dataset": "mnist-sample", "data_root": None}
    assert meta["limit"] == 128 and meta["seed"] == 0

    code, lines = cli([*argv[:-1], str(tmp_path / "t2"), "--register"])
    assert code == 0 and any(ln.startswith("registered teacher") for ln in lines), lines
    code, lines = cli(["evaluate", str(tmp_path / "t2" / "model.pt"), "--limit", "20"])
    assert code == 0 and "accuracy=" in lines[0], lines
    metrics = json.loads(
        (next((tmp_path / "runs").glob("evaluate-*")) / "metrics.json").read_text()
    )
    assert metrics["dataset"]["dataset"] == "mnist-sample" and metrics["n"] == 20
