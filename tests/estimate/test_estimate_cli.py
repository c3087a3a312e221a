"""`onnlab estimate` end to end on the bundled MNIST sample (tiny n), and its one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from onnlab.cli import main

DESIGN = ["--aperture-mm", "1.1", "2.3", "--kernel-mm", "0.5", "--spacing-mm", "0.1"]


def _run(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code or 0


def test_cli_estimates_a_design_and_sweeps_on_the_bundled_sample(capsys):
    small = ["--n-train", "60", "--n-val", "30", "--n-test", "60"]
    code = _run(["estimate", *DESIGN, "--task", "mnist", *small, "--sweep", "--json"])
    out = capsys.readouterr().out
    assert code == 0
    result = json.loads(out)
    assert result["design"]["rows"] == 2 and result["design"]["n_kernels"] == 8
    assert 10.0 < result["predicted"] <= 100.0  # chance is 10 %
    assert 10.0 < result["predicted_infinite"] <= 100.0
    # the trained student: the task's backend, read at the whole bundled training split
    student = result["estimate_trained_student"]
    assert student["n_full"] == 4500 and student["hidden"] == [120]
    assert [p["n"] for p in student["points"]] == [62, 125, 250, 500, 1000]
    assert result["predicted_trained_student"] == pytest.approx(student["predicted"])
    assert student["points"][-1]["test"] * 100 < student["predicted"] <= 100.0
    ks = [row["n_kernels"] for row in result["sweep"]]
    assert ks == sorted(ks) and ks[0] == 1 and 8 in ks  # one kernel up to a 4x larger aperture
    run_dir = Path(result["run_dir"])
    assert (run_dir / "estimate.json").is_file()
    assert Path(result["sweep_png"]).read_bytes()[:4] == b"\x89PNG"


def test_cli_prints_layout_and_predictions_for_people(capsys):
    code = _run(["estimate", *DESIGN, "--n-train", "40", "--n-val", "20", "--n-test", "40"])
    out = capsys.readouterr().out
    assert code == 0
    assert "2 x 4 = 8 kernels" in out
    assert "infinitely many kernels" in out and "time:" in out


@pytest.mark.parametrize(
    ("change", "name"),
    [
        (["--kernel-mm", "3"], "--kernel-mm"),
        (["--aperture-mm", "-1", "2"], "--aperture-mm"),
        (["--spacing-mm", "-0.1"], "--spacing-mm"),
    ],
)
def test_cli_rejects_impossible_constraints_in_one_line(capsys, change, name):
    argv = list(DESIGN)
    flag = change[0]
    i = argv.index(flag)
    width = 3 if flag == "--aperture-mm" else 2
    argv[i : i + width] = change
    code = _run(["estimate", *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and name in err and err.startswith("error: ")
