"""Sweeps through Hydra multirun: the file format, a local end-to-end sweep, its table."""

from __future__ import annotations

import csv
import json
import math
import shlex
import statistics
from pathlib import Path

import pytest
import yaml

from onnlab.cli import main
from onnlab.errors import ConfigError
from onnlab.sweep.collect import point_command
from onnlab.sweep.spec import SweepSpec, load_spec, points, resolve, validate

pytest.importorskip("hydra")

TINY = {
    "name": "tiny",
    "task": "mnist",
    "train": {"epochs": 1, "batch_size": 32},
    "data": {"limit": 64, "eval_limit": 32},
    "seeds": 2,
    "grid": {"train.lr": [1.0e-3, 3.0e-3]},
}


def _write(tmp_path: Path, spec: dict, name: str = "sweep.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec))
    return path


def _run(args: list[str]) -> int:
    try:
        main(args)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def test_two_point_local_sweep_writes_mean_and_std_over_seeds(tmp_path, capsys):
    out = tmp_path / "sweep"
    args = ["sweep", str(_write(tmp_path, TINY)), "--out", str(out), "--device", "cpu"]
    assert _run(args) == 0
    printed = capsys.readouterr().out
    assert "point 0  train.lr=0.001" in printed and "point 1  train.lr=0.003" in printed

    summary = json.loads((out / "summary.json").read_text())
    assert summary["metric"] == "accuracy" and summary["failed"] == []
    assert [r["train.lr"] for r in summary["rows"]] == [1.0e-3, 3.0e-3]
    with (out / "summary.csv").open() as fh:
        csv_rows = list(csv.DictReader(fh))
    assert len(csv_rows) == 2
    for point, row in enumerate(summary["rows"]):
        assert row["seeds"] == [0, 1] and row["missing_seeds"] == []
        # the table's numbers are those the training runner wrote for each seed
        accs = []
        for seed in (0, 1):
            job = out / "jobs" / f"point-{point}-seed-{seed}"
            run = json.loads((job / f"seed-{seed}" / "result.json").read_text())
            config = json.loads((job / f"seed-{seed}" / "config.json").read_text())
            assert config["lr"] == row["train.lr"] and config["seed"] == seed
            assert config["epochs"] == 1 and config["batch_size"] == 32
            accs.append(run["test"]["accuracy"])
        assert row["test.accuracy.mean"] == pytest.approx(statistics.mean(accs))
        assert row["test.accuracy.std"] == pytest.approx(statistics.stdev(accs))
        assert float(csv_rows[point]["test.accuracy.mean"]) == pytest.approx(statistics.mean(accs))

    # rerun on the same folder: every seed is finished, nothing retrains, same table
    before = (out / "summary.json").read_text()
    assert _run(args) == 0
    assert json.loads((out / "summary.json").read_text())["rows"] == json.loads(before)["rows"]
    # a different sweep may not reuse the folder
    other = _write(tmp_path, {**TINY, "seeds": 3}, "other.yaml")
    assert _run(["sweep", str(other), "--out", str(out)]) == 2
    assert "different sweep" in capsys.readouterr().err


def test_tuning_sweep_never_scores_the_test_split_and_ranks_by_validation(tmp_path, capsys):
    spec = {**TINY, "seeds": 1, "score_on": "val"}
    out = tmp_path / "tune"
    args = ["sweep", str(_write(tmp_path, spec)), "--out", str(out), "--device", "cpu"]
    assert _run(args) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["score_on"] == "val"
    assert not any(c.startswith("test.") for c in summary["columns"])
    for point in range(2):
        run = json.loads(
            (out / "jobs" / f"point-{point}-seed-0" / "seed-0" / "result.json").read_text()
        )
        assert run["test"] is None and "accuracy" in run["val"]
    vals = [r["val.accuracy.mean"] for r in summary["rows"]]
    assert summary["best_point"] == max(range(2), key=lambda i: vals[i])
    assert (
        f"point {summary['best_point']}"
        in [ln for ln in printed.splitlines() if "<- best" in ln][0]
    )
    assert "val accuracy" in printed and "test accuracy" not in printed

    # the printed command trains the chosen point again: same config, same validation score
    command = summary["best_command"]
    assert f"best point {summary['best_point']}: {command}" in printed
    assert summary["best_command_missing"] == []
    argv = shlex.split(command)
    assert argv[:2] == ["onnlab", "train"]
    rerun = tmp_path / "rerun"
    assert _run([*argv[1:], "--seeds", "1", "--out", str(rerun), "--no-progress"]) == 0
    chosen = out / "jobs" / f"point-{summary['best_point']}-seed-0" / "seed-0"
    keys = ("lr", "epochs", "batch_size", "seed")
    again = json.loads((rerun / "seed-0" / "config.json").read_text())
    before = json.loads((chosen / "config.json").read_text())
    assert {k: again[k] for k in keys} == {k: before[k] for k in keys}
    again = json.loads((rerun / "seed-0" / "result.json").read_text())
    before = json.loads((chosen / "result.json").read_text())
    assert again["val"]["accuracy"] == before["val"]["accuracy"]


def test_sweep_file_errors_are_one_line_before_anything_runs(tmp_path, capsys):
    bad = _write(tmp_path, {**TINY, "train": {"epochs": 1, "learning_rate": 1.0}})
    assert _run(["sweep", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "learning_rate" in err and "Traceback" not in err
    assert not (tmp_path / "o" / "jobs").exists()
    with pytest.raises(ConfigError, match="swept name"):
        load_spec(_write(tmp_path, {**TINY, "grid": {"lr": [1.0]}}))
    with pytest.raises(ConfigError, match="either grid or random"):
        load_spec(_write(tmp_path, {**TINY, "random": {"n": 2, "params": {}}}))
    spec = SweepSpec.model_validate({**TINY, "grid": {"train.seed": [1, 2]}})
    with pytest.raises(ConfigError, match="set by the sweep itself"):
        validate(spec)


def test_grid_and_random_points():
    grid = SweepSpec.model_validate(
        {**TINY, "grid": {"train.lr": [1e-3, 1e-2], "loss.beta": [0.3, 1.0, 3.0]}}
    )
    got = points(grid)
    assert len(got) == 6 and got[1] == {"train": {"lr": 1e-3}, "loss": {"beta": 1.0}}
    params = {"train.lr": {"low": 1e-4, "high": 1e-2, "log": True}, "method": {"choices": ["kd"]}}
    rand = SweepSpec.model_validate({**TINY, "grid": {}, "random": {"n": 400, "params": params}})
    draws = points(rand)
    assert draws == points(rand)  # seeded: the same points on every machine
    lrs = [p["train"]["lr"] for p in draws]
    assert all(1e-4 <= v <= 1e-2 for v in lrs) and all(p["method"] == "kd" for p in draws)
    # log-uniform: about half the draws fall below the geometric midpoint 1e-3
    assert 0.4 < sum(v < 1e-3 for v in lrs) / len(lrs) < 0.6
    assert math.isclose(statistics.median(math.log10(v) for v in lrs), -3, abs_tol=0.2)


@pytest.mark.slow
def test_the_same_file_runs_through_the_submitit_launcher(tmp_path):
    """The cluster path, run locally: hydra/launcher=submitit_local starts each job as its own
    process (as submitit_slurm would on a node); the table comes out the same way."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    out = tmp_path / "sweep"
    spec = _write(tmp_path, {**TINY, "seeds": 1, "grid": {"train.lr": [3e-3]}})  # one job
    launcher = ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5"]
    assert _run(["sweep", str(spec), "--out", str(out), "--device", "cpu", *launcher]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [r["seeds"] for r in summary["rows"]] == [[0]] and summary["failed"] == []
    assert (out / "jobs" / ".submitit").is_dir()  # the jobs really went through submitit


def test_the_slurm_launcher_composes_with_the_same_sweep_config(tmp_path):
    """No cluster here: check that hydra/launcher=submitit_slurm and its options resolve
    against the generated sweep config (what `onnlab sweep FILE hydra/launcher=...` runs)."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from hydra import compose, initialize_config_dir

    from onnlab.sweep import prepare
    from onnlab.sweep.engine import HYDRA_CONFIG

    spec = SweepSpec.model_validate(TINY)
    prepare(spec, tmp_path, "test")
    overrides = ["hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu"]
    with initialize_config_dir(config_dir=str(tmp_path), version_base="1.3"):
        cfg = compose(HYDRA_CONFIG, overrides=overrides, return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert cfg.hydra.launcher.partition == "gpu"
    assert cfg.hydra.sweeper.params == {"point": "0,1", "seed": "0,1"}
    assert cfg.spec.train.epochs == 1 and len(cfg.points) == 2


def test_a_failing_job_is_recorded_and_fails_the_command(tmp_path, capsys):
    """One bad configuration does not cancel the others, and it is not hidden."""
    spec = {**TINY, "seeds": 1, "grid": {"arch.n_kernels": [-3]}}
    out = tmp_path / "sweep"
    assert _run(["sweep", str(_write(tmp_path, spec)), "--out", str(out)]) == 1
    assert "n_kernels must be >= 1" in capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert [(f["point"], f["seed"]) for f in summary["failed"]] == [(0, 0)]
    assert summary["rows"][0]["missing_seeds"] == [0]
    assert "Traceback" in (out / "jobs" / "point-0-seed-0" / "error.txt").read_text()


@pytest.mark.parametrize(
    "path", sorted((Path(__file__).parents[2] / "configs" / "sweeps").glob("*.yaml"))
)
def test_shipped_sweep_files_are_valid(path):
    spec = load_spec(path)
    assert len(validate(spec, str(path))) >= 2


def test_point_command_carries_unrounded_values_and_names_what_it_cannot():
    spec = SweepSpec.model_validate(
        {
            "task": "cifar10",
            "method": "ntkd",
            "train": {"epochs": 30, "weight_decay": 0.01},
            "arch": {"frontend": "phase", "optics": {"kernel_px": 7}},
            "data": {"data_root": "/data dir"},
            "random": {"n": 1, "seed": 0, "params": {"loss.beta": {"low": 0.1, "high": 10.0}}},
        }
    )
    point = {**points(spec)[0], "loss": {**points(spec)[0]["loss"], "anchors": 16}}
    point["loss"]["signed"] = True
    command, missing = point_command(resolve(spec, point))
    argv = shlex.split(command)
    beta = point["loss"]["beta"]
    assert argv[:6] == ["onnlab", "train", "--task", "cifar10", "--method", "ntkd"]
    assert f"beta={beta!r}" in argv and float(argv[argv.index(f"beta={beta!r}")][5:]) == beta
    assert "anchors=16" in argv and "signed=true" in argv and "frontend=phase" in argv
    assert argv[argv.index("--epochs") + 1] == "30" and argv[-2:] == ["--data-root", "/data dir"]
    assert missing == ["arch.optics", "train.weight_decay"]
