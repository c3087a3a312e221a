"""The Carvana code path end to end, as a user with the Kaggle data runs it (issue 15, item 1).

`onnlab teacher train` and `onnlab train` on a Carvana layout under --data-root: the teacher
registers as the Carvana one, and the (default) NTKD student trains against it, on Carvana's
car-disjoint splits, and is scored on the Carvana test cars.
"""

from __future__ import annotations

import json

import pytest

from onnlab.cli import main


def _run(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    return int(exc.value.code or 0)


def test_teacher_then_ntkd_student_on_a_carvana_layout(tmp_path, monkeypatch, make_carvana):
    monkeypatch.delenv("ONNLAB_DATA", raising=False)
    make_carvana(tmp_path / "data", cars=10, angles=2)
    common = ["--data-root", tmp_path / "data", "--epochs", "1", "--no-progress"]
    common += ["--device", "cpu"]
    assert _run(["teacher", "train", "--task", "segmentation", *common]) == 0
    teacher = tmp_path / "runs" / "teachers" / "segmentation" / "carvana.pt"
    assert teacher.is_file()
    assert not (teacher.parent / "synthetic.pt").exists()  # the synthetic one is not touched

    out = tmp_path / "student"
    argv = ["train", "--task", "segmentation", "--method", "ntkd", "--seeds", "1", "--out", out]
    assert _run([*argv, *common]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dataset"]["dataset"] == "carvana"
    assert summary["teacher"] == str(teacher)
    run = summary["runs"][0]
    assert summary["metric"] == "miou" and 0.0 <= run["test"]["miou"] <= 1.0
    assert (out / "seed-0" / "model.pt").is_file()
