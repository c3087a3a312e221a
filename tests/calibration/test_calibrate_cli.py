"""`onnlab calibrate --slm slm0 --sim` writes the artifact, report and summary; bad input is
one line."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from calibration.artifact import CalibrationArtifact
from drivers.registry import default_config_path, load_bench_config
from onnlab.cli import app, main


def test_calibrate_sim_writes_artifact_and_report(tmp_path) -> None:
    out = tmp_path / "cal"
    result = CliRunner().invoke(
        app, ["calibrate", "--slm", "slm0", "--sim", "--quick", "--out", str(out), "--json"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert result.stderr.splitlines()[0].startswith("SIMULATED")  # said first, not buried
    names = {p.name for p in out.iterdir()}
    assert names == {"calibration.h5", "report.png", "summary.json"}
    assert (out / "report.png").stat().st_size > 10_000
    assert summary["simulated"] is True
    art = CalibrationArtifact.load(
        summary["artifact"], bench_config=load_bench_config(default_config_path())
    )
    assert set(art.meta.steps) == set(summary["steps"])
    assert art.meta.notes["simulated"] is True  # recorded in the artifact itself
    # the default sim bench is the physical one: its fabricated optic is not the calibration
    # model, so the fit leaves a little beyond noise (a legacy bench leaves chi ~ 1)
    assert summary["steps"]["psf"]["residual"] < 3.0
    assert summary["steps"]["psf"]["unexplained_fraction"] < 0.01


def test_calibrate_partial_rerun_reuses_a_previous_artifact(tmp_path, calibrated) -> None:
    cfg, _devices, run = calibrated
    prev = run.artifact.save(tmp_path / "prev.h5")
    bench = yaml.safe_load(default_config_path().read_text())
    bench["sim"]["model"] = "legacy"  # the bench the `calibrated` fixture measured
    (tmp_path / "legacy.yaml").write_text(yaml.safe_dump(bench))
    result = CliRunner().invoke(
        app,
        [
            "calibrate",
            "--sim",
            "--config",
            str(tmp_path / "legacy.yaml"),
            "--steps",
            "dark",
            "--previous",
            str(prev),
            "--out",
            str(tmp_path / "runs"),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    art = CalibrationArtifact.load(json.loads(result.stdout)["artifact"], bench_config=cfg)
    assert list(art.meta.steps) == ["dark"]
    assert art.psfs.tolist() == run.artifact.psfs.tolist()  # PSFs carried over, not defaults


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--steps", "dark,teleport"], "--steps"),
        (["--slm", "cam0"], "is not an SLM"),
        (["--steps", "psf"], "psf step needs the dark, response, registration step(s)"),
    ],
)
def test_bad_requests_are_one_line(args, message, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["calibrate", "--sim", "--no-progress", *args])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
