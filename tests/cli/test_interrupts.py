"""Ctrl-C in the long commands: one line saying what was kept and how to resume; the rerun
says that it resumes and does not redo finished work.

The interrupt is a KeyboardInterrupt raised from a hook at a known point (what SIGINT raises
in the main thread), so each test is deterministic and takes seconds with tiny settings.
"""

from __future__ import annotations

from pathlib import Path

import yaml


def assert_interrupt_line(code: int, lines: list[str], out: Path) -> str:
    """Exit 130 and exactly one 'interrupted:' line, the last one, naming the run folder."""
    assert code == 130, lines
    said = [ln for ln in lines if ln.startswith("interrupted")]
    assert len(said) == 1 and lines[-1] == said[0], lines
    assert "kept" in said[0] and "resume" in said[0] and str(out) in said[0], said[0]
    return said[0]


def test_calibrate_interrupted_keeps_finished_steps_and_resumes(tmp_path, monkeypatch, cli):
    import calibration.runner as runner

    real_step = runner._run_step
    calls: list[str] = []

    def step(name, ctx, opts, interrupt_at="focus"):
        calls.append(name)
        if name == interrupt_at:
            raise KeyboardInterrupt
        return real_step(name, ctx, opts)

    out = tmp_path / "cal"
    argv = ["calibrate", "--sim", "--quick", "--no-progress", "--steps", "dark,response,focus"]
    argv += ["--out", str(out)]
    monkeypatch.setattr(runner, "_run_step", step)
    code, lines = cli(argv)
    line = assert_interrupt_line(code, lines, out)
    assert "dark, response" in line
    assert lines[0].startswith("SIMULATED")

    calls.clear()
    monkeypatch.setattr(runner, "_run_step", lambda n, c, o: step(n, c, o, interrupt_at=""))
    code, lines = cli(argv)
    assert code == 0, lines
    assert any("resuming" in ln and "dark, response" in ln for ln in lines), lines
    assert calls == ["focus"]  # the finished steps are not measured again
    from calibration.artifact import CalibrationArtifact

    art = CalibrationArtifact.load(out / "calibration.h5")
    assert list(art.meta.steps) == ["dark", "response", "focus"]
    assert art.meta.notes["resumed_from"] == ["dark", "response"]
    assert art.meta.notes["simulated"] is True
    assert "ptc_means_dn" in art.arrays  # the dark step's curves survived the interrupt
    assert not (out / "calibration.partial.h5").exists()


def test_calibrate_failing_step_says_the_finished_ones_are_kept(tmp_path, monkeypatch, cli):
    """A device failure mid-calibration is one line that says how to resume."""
    import calibration.runner as runner
    from drivers.errors import DeviceTimeout

    real_step = runner._run_step

    def step(name, ctx, opts):
        if name == "focus":
            raise DeviceTimeout("no reply", device_id="stage0", operation="move")
        return real_step(name, ctx, opts)

    monkeypatch.setattr(runner, "_run_step", step)
    out = tmp_path / "cal"
    argv = ["calibrate", "--sim", "--quick", "--no-progress", "--steps", "dark,focus"]
    code, lines = cli([*argv, "--out", str(out)])
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert code == 2 and errors == lines[-1:], lines  # one line, the last, no traceback
    assert "DeviceTimeout" in errors[0] and "stage0" in errors[0]
    assert "dark kept" in errors[0] and f"--out {out}" in errors[0]
    assert (out / "calibration.partial.h5").is_file()


def test_train_interrupted_keeps_finished_epochs_and_resumes(tmp_path, monkeypatch, cli):
    import onnlab.training.loop as loop

    real_log = loop._log_epoch

    def log_then_interrupt(*args, **kwargs):
        real_log(*args, **kwargs)
        raise KeyboardInterrupt  # right after epoch 1 was saved

    out = tmp_path / "train"
    argv = ["train", "--task", "mnist", "--limit", "256", "--eval-limit", "64", "--epochs", "2"]
    argv += ["--no-progress", "--device", "cpu", "--out", str(out)]
    monkeypatch.setattr(loop, "_log_epoch", log_then_interrupt)
    code, lines = cli(argv)
    assert_interrupt_line(code, lines, out)
    assert any("student seed 0 (none): epoch 1/2" in ln for ln in lines), lines  # who trains

    monkeypatch.setattr(loop, "_log_epoch", real_log)
    code, lines = cli(argv)
    assert code == 0, lines
    assert any("resuming after epoch 1/2" in ln for ln in lines), lines
    assert not any("epoch 1/2  loss" in ln for ln in lines)  # epoch 1 is not trained again


def test_finetune_interrupted_keeps_trained_models_and_resumes(tmp_path, monkeypatch, cli):
    import onnlab.finetune.sim as sim

    experiment = tmp_path / "exp.yaml"
    experiment.write_text(
        yaml.safe_dump(
            {
                "task": "mnist",
                "data": {"train_limit": 200, "test_limit": 50},
                "teacher": {"train": {"epochs": 1}},
                "student": {"method": "none", "train": {"epochs": 1}},
            }
        )
    )

    def fabricate_interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # after the teacher and student are trained and saved

    monkeypatch.setattr(sim, "run_one_fabrication", fabricate_interrupted)
    out = tmp_path / "ft"
    argv = ["finetune", "--sim", "--experiment", str(experiment), "--no-progress"]
    argv += ["--out", str(out)]
    code, lines = cli(argv)
    assert_interrupt_line(code, lines, out)
    assert any(ln.startswith("mnist teacher: epoch 1/1") for ln in lines), lines
    assert (out / "teacher" / "model.pt").is_file() and (out / "student" / "model.pt").is_file()

    code, lines = cli(argv)  # interrupted again, but after reusing both models
    assert_interrupt_line(code, lines, out)
    assert any("mnist teacher: reusing" in ln for ln in lines), lines
    assert any("mnist student: reusing" in ln for ln in lines), lines
    assert not any("epoch 1/1" in ln for ln in lines), lines


def test_interrupt_before_anything_finished_keeps_no_folder(tmp_path, monkeypatch, cli):
    import onnlab.training.loop as loop

    def interrupt_at_once(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "_make_batch", interrupt_at_once)
    out = tmp_path / "train"
    argv = ["train", "--task", "mnist", "--limit", "256", "--eval-limit", "64", "--epochs", "1"]
    code, lines = cli([*argv, "--no-progress", "--out", str(out)])
    assert code == 130 and lines[-1].startswith("interrupted") and "nothing" in lines[-1]
    assert not out.exists()
