"""Every bad input of issue 17 through the real CLI entry point: exit 2, one line, no traceback.

Each case runs `onnlab.cli.main` in-process (the console script calls the same function) and
fails before any training, calibration or capture starts, so the whole module takes seconds.
Cases that need a file (a checkpoint, a design, a bench or experiment config) build it in
tmp_path. The last tests check the opposite side of the contract: a real bug is not turned
into a one-liner.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from onnlab.cli import main


def assert_one_line(argv: list[str], cli, *expected: str) -> str:
    code, lines = cli(argv)
    assert code == 2, (code, lines)
    assert len(lines) == 1, lines
    assert "Traceback" not in lines[0]
    for text in expected:
        assert text in lines[0], (text, lines[0])
    return lines[0]


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """A text file and a random-bytes file under the suffixes the commands read."""
    rng = np.random.default_rng(0)
    out: dict[str, Path] = {}
    for suffix in (".pt", ".npy"):
        text = tmp_path / f"text{suffix}"
        text.write_text("this is not a tensor\n")
        noise = tmp_path / f"random{suffix}"
        noise.write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
        out[f"text{suffix}"], out[f"random{suffix}"] = text, noise
    return out


@pytest.fixture
def teacher_ckpt(tmp_path: Path) -> Path:
    """An untrained but valid mnist teacher checkpoint (no training needed to reject options)."""
    from onnlab.models.zoo import build_teacher
    from onnlab.training.checkpoint import save_checkpoint

    return save_checkpoint(tmp_path / "teacher.pt", build_teacher("mnist"))


# ------------------------------------------------------------------ files that are not files


@pytest.mark.parametrize("kind", ["text.pt", "random.pt"])
def test_foreign_checkpoint_is_one_line(files, kind, cli) -> None:
    line = assert_one_line(["evaluate", str(files[kind])], cli, "not an onnlab checkpoint")
    assert "weights_only" not in line and len(line) < 200  # never torch's long advice


@pytest.mark.parametrize("kind", ["text.pt", "random.pt"])
def test_foreign_teacher_checkpoint_is_one_line(files, kind, cli) -> None:
    argv = ["train", "--task", "mnist", "--method", "kd", "--teacher", str(files[kind])]
    assert_one_line(argv, cli, "not an onnlab checkpoint")


@pytest.mark.parametrize("kind", ["text.npy", "random.npy", "text.pt", "random.pt"])
def test_calibrate_design_not_psfs_is_one_line(files, kind, cli) -> None:
    argv = ["calibrate", "--sim", "--no-progress", "--design", str(files[kind])]
    assert_one_line(argv, cli, "--design", str(files[kind]))


@pytest.mark.parametrize("kind", ["text.npy", "text.pt", "random.pt"])
def test_devices_with_psfs_path_to_a_foreign_file_is_one_line(files, kind, tmp_path, cli) -> None:
    config = tmp_path / "bench.yaml"
    config.write_text(
        "devices: {slm0: {kind: slm}, cam0: {kind: camera}}\n"
        f"sim: {{model: legacy, design: {{psfs_path: {files[kind]}}}}}\n"
    )
    assert_one_line(["devices", "--config", str(config)], cli, "sim.design", str(files[kind]))


# ------------------------------------------------------------------ options


@pytest.mark.parametrize("command", [["train"], ["teacher", "train"], ["finetune", "--sim"]])
def test_task_typo_lists_the_valid_tasks(command, cli) -> None:
    assert_one_line([*command, "--task", "mnsit"], cli, "'mnsit'", "mnist", "segmentation")


@pytest.mark.parametrize("command", [["train"], ["teacher", "train"]])
@pytest.mark.parametrize("device", ["gpu", "cuda"])
def test_unusable_compute_device_is_one_line(command, device, cli) -> None:
    if device == "cuda" and torch.cuda.is_available():
        device = f"cuda:{torch.cuda.device_count()}"  # one past the last visible GPU
    assert_one_line([*command, "--task", "mnist", "--device", device], cli, "--device")


def test_unknown_loss_option_is_one_line(teacher_ckpt, cli) -> None:
    base = ["train", "--task", "mnist", "--teacher", str(teacher_ckpt)]
    assert_one_line([*base, "--loss-opt", "foo=bar"], cli, "foo")  # method none
    line = assert_one_line([*base, "--method", "kd", "--loss-opt", "foo=bar"], cli, "foo")
    assert "temperature" in line  # says what the options are
    line = assert_one_line(
        [*base, "--method", "ntkd", "--loss-opt", "bta=2"], cli, "did you mean 'beta'"
    )
    assert_one_line([*base, "--method", "kd", "--loss-opt", "alpha"], cli, "KEY=VALUE")
    assert_one_line([*base, "--method", "kd", "--alpha", "7"], cli, "alpha")


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["finetune", "--sim", "--seeds", "0"], "--seeds"),
        (["finetune", "--sim", "--epochs", "0"], "--epochs"),
        (["train", "--task", "mnist", "--epochs", "0"], "--epochs"),
        (["train", "--task", "mnist", "--seeds", "0"], "--seeds"),
        (["train", "--task", "mnist", "--lr", "0"], "--lr"),
        (["teacher", "train", "--task", "mnist", "--lr", "0"], "--lr"),
        (["capture", "--fraction", "0"], "--fraction"),
        (["calibrate", "--sim", "--steps", "dark,teleport"], "--steps"),
        (["bench", "no-such-benchmark"], "no-such-benchmark"),
        (["bench", "calibration", "--opt", "model=ideal"], "model=legacy|physical"),
        (["bench", "optics", "--opt", "x=1"], "--opt applies to"),
        (["bench", "estimate", "--opt", "nope=1"], "--opt"),
        (["bench", "estimate", "--opt", "against=nope"], "trained | random"),
        (["capture", "--slm", "nope"], "--slm 'nope'"),
        (["calibrate", "--sim", "--slm", "cam0"], "--slm 'cam0'"),
        (["calibrate", "--sim", "--rows", "50"], "50x4 tiles"),
        (["evaluate", "missing.pt"], "missing.pt"),
    ],
)
def test_out_of_range_values_fail_at_parse_time(argv, flag, cli) -> None:
    assert_one_line(argv, cli, flag)


@pytest.mark.parametrize(
    ("argv", "old"),
    [
        (["finetune", "--sim", "--run-dir", "x"], "--run-dir"),
        (["capture", "--dataset", "mnist"], "--dataset"),
        (["calibrate", "--sim", "--device", "slm0"], "--device"),
        (["teacher", "train", "--task", "mnist", "--seed", "1"], "--seed"),
    ],
)
def test_retired_spellings_fail_naming_the_flag(argv, old, cli) -> None:
    assert_one_line(argv, cli, old)


def test_finetune_without_sim_needs_its_inputs(cli) -> None:
    assert_one_line(["finetune"], cli, "--student", "--test-capture")


# ------------------------------------------------------------------ config files


def test_bench_config_typo_suggests_the_nearest_key(tmp_path, cli) -> None:
    config = tmp_path / "bench.yaml"
    config.write_text("devices: {slm0: {kind: slm}, cam0: {kind: camera}}\nsim: {gap_pz: 3}\n")
    line = assert_one_line(["devices", "--config", str(config)], cli, "sim.gap_pz")
    assert "did you mean 'gap_px'" in line and "input_value" not in line and "http" not in line


def test_experiment_config_errors_name_field_value_and_expectation(tmp_path, cli) -> None:
    bad = tmp_path / "exp.yaml"
    bad.write_text("task: mnist\ncapture: {fractoin: 0.2}\n")
    argv = ["finetune", "--sim", "--experiment", str(bad), "--no-progress"]
    line = assert_one_line(argv, cli, "capture.fractoin", "did you mean 'fraction'")
    bad.write_text("task: mnist\ncapture: {fraction: 1.5}\n")
    line = assert_one_line(argv, cli, "capture.fraction", "1.5", "less than or equal to 1")
    assert "type=" not in line and "For further information" not in line


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("student: {architecture: {widht: 3}}", "student.architecture"),
        ("student: {ntkd: {bta: 2}}", "did you mean 'beta'"),
        ("finetune: {ntkd: {alpha: -1}}", "finetune.ntkd"),
    ],
)
def test_experiment_options_are_checked_before_training(tmp_path, text, expected, cli) -> None:
    bad = tmp_path / "exp.yaml"
    bad.write_text(f"task: mnist\n{text}\n")
    argv = ["finetune", "--sim", "--experiment", str(bad), "--out", str(tmp_path / "run")]
    assert_one_line(argv, cli, str(bad), expected)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("kind", ["random.pt", "text.pt"])
def test_random_bytes_as_a_yaml_config_is_one_line(files, kind, tmp_path, cli) -> None:
    config = tmp_path / "config.yaml"
    config.write_bytes(files[kind].read_bytes())
    assert_one_line(["devices", "--config", str(config)], cli, str(config))
    assert_one_line(["finetune", "--sim", "--experiment", str(config)], cli, str(config))


def test_missing_bench_config_is_one_line(tmp_path, cli) -> None:
    assert_one_line(["capture", "--config", str(tmp_path / "nope.yaml")], cli, "nope.yaml")


# ------------------------------------------------------------------ data and checkpoints


@pytest.mark.parametrize(
    "command",
    [
        ["train", "--task", "mnist"],
        ["teacher", "train", "--task", "segmentation"],
        ["capture", "--task", "mnist"],
        ["finetune", "--sim", "--task", "mnist"],
    ],
)
def test_missing_data_root_fails_before_any_work(command, tmp_path, cli) -> None:
    out = tmp_path / "run"
    argv = [*command, "--data-root", str(tmp_path / "nope"), "--out", str(out)]
    assert_one_line(argv, cli, "nope")
    assert not out.exists()


def test_cifar10_without_data_says_where_to_put_it(monkeypatch, cli) -> None:
    monkeypatch.delenv("ONNLAB_DATA", raising=False)
    assert_one_line(["train", "--task", "cifar10"], cli, "--data-root", "CIFAR-10")


@pytest.mark.parametrize("flag", ["--student", "--teacher"])
def test_finetune_checks_its_checkpoints_before_training(files, flag, cli) -> None:
    argv = ["finetune", "--sim", "--tiny", "--no-progress", flag, str(files["text.pt"])]
    assert_one_line(argv, cli, "not an onnlab checkpoint")


# ------------------------------------------------------------------ provenance


def test_evaluate_refuses_a_checkpoint_of_another_dataset(tmp_path, monkeypatch, cli) -> None:
    """A Carvana checkpoint scored without --data-root would silently use the synthetic set."""
    from onnlab.models.zoo import build_student
    from onnlab.training.checkpoint import save_checkpoint

    monkeypatch.delenv("ONNLAB_DATA", raising=False)
    carvana = {"dataset": "carvana", "data_root": str(tmp_path / "data")}
    path = save_checkpoint(tmp_path / "seg.pt", build_student("segmentation"), {"dataset": carvana})
    assert_one_line(["evaluate", str(path)], cli, "carvana", "--data-root", "synthetic")


def test_kd_without_a_registered_teacher_says_how_to_get_one(cli) -> None:
    line = assert_one_line(["train", "--task", "mnist", "--method", "kd"], cli, "teacher train")
    assert "--teacher" in line and "--limit" in line


def test_failed_run_leaves_no_empty_run_folder(tmp_path, cli) -> None:
    out = tmp_path / "run"
    argv = ["train", "--task", "mnist", "--arch", "widht=3", "--out", str(out)]
    assert_one_line(argv, cli, "--arch")
    assert not out.exists()


# ------------------------------------------------------------------ bugs keep their traceback


def test_a_bug_is_not_hidden_as_a_user_error(monkeypatch) -> None:
    import onnlab.training.runner as runner

    def broken(*args, **kwargs):
        raise ValueError("a programming error deep inside")

    monkeypatch.setattr(runner, "train_teacher", broken)
    with pytest.raises(ValueError, match="programming error"):
        main(["teacher", "train", "--task", "mnist", "--no-progress", "--limit", "10"])
