"""`onnlab design realise|export` as a user meets it: files, numbers, one-line errors."""

from __future__ import annotations

import json

import pytest
import torch

from onnlab.cli import main
from onnlab.design.source import sha256_file
from onnlab.models.zoo import build_student, build_teacher
from onnlab.training.checkpoint import save_checkpoint


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    free = save_checkpoint(root / "free.pt", build_student("mnist"))
    phase = save_checkpoint(
        root / "phase.pt", build_student("mnist", frontend="phase", phase_samples=16)
    )
    teacher = save_checkpoint(root / "teacher.pt", build_teacher("mnist"))
    return {"free": free, "phase": phase, "teacher": teacher}


def _run(argv, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


FAST = ["--n-phase", "16", "--restarts", "1", "--steps", "10"]


@pytest.mark.parametrize(
    "kind, argv, word",
    [
        ("free", ["design", "export", "{ckpt}", "--levels", "1"], "levels"),
        ("teacher", ["design", "realise", "{ckpt}"], "optical frontend"),
        ("free", ["design", "export", "{ckpt}", "--material", "cauchy:0.9,0"], "material"),
        ("free", ["design", "export", "{ckpt}", "--material", "unobtainium"], "material"),
        ("free", ["design", "realise", "{ckpt}", "--n-phase", "4"], "n_phase"),
        ("phase", ["design", "realise", "{ckpt}"], "phase-mask frontend"),
        ("phase", ["design", "export", "{ckpt}", "--material", "TiO2"], "material"),
        ("free", ["design", "realise", "{ckpt}", "--match", "energy"], "match"),
    ],
)
def test_bad_input_is_one_line_naming_the_parameter(checkpoints, capsys, kind, argv, word):
    argv = [str(checkpoints[kind]) if a == "{ckpt}" else a for a in argv]
    code, _, err = _run(argv, capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert word in lines[0], lines[0]


def test_realise_then_export_a_free_student(checkpoints, capsys, tmp_path):
    ckpt = checkpoints["free"]
    code, out, err = _run(
        ["design", "realise", ckpt, "--out", tmp_path / "r", "--eval-limit", "64", *FAST], capsys
    )
    assert code == 0, err
    assert "rel. L2 error" in out and "efficiency" in out and "realised" in out
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert len(summary["realisation"]["rel_error"]) == 8
    assert summary["evaluation"]["n_images"] == 64
    assert (tmp_path / "r" / "psfs.png").is_file()
    code, out, err = _run(
        [
            *("design", "export", ckpt, "--out", tmp_path / "e", "--levels", "4"),
            *("--n-phase", "16", "--realised", tmp_path / "r" / "realisation.npz"),
        ],
        capsys,
    )
    assert code == 0, err
    meta = json.loads((tmp_path / "e" / "metadata.json").read_text())
    assert meta["provenance"]["checkpoint_sha256"] == sha256_file(ckpt)
    assert meta["gds_roundtrip_max_rel_psf_error"] <= 1e-3
    assert meta["phase_samples"] == 16 and meta["levels"] == 4
    # A realisation made for another N is refused, in one line.
    code, _, err = _run(
        ["design", "export", ckpt, "--realised", tmp_path / "r" / "realisation.npz"], capsys
    )
    assert code == 2 and "realised" in err and len(err.strip().splitlines()) == 1


def test_export_a_phase_student_uses_its_design_phases(checkpoints, capsys, tmp_path):
    code, out, err = _run(
        ["design", "export", checkpoints["phase"], "--out", tmp_path, "--levels", "8"], capsys
    )
    assert code == 0, err
    meta = json.loads((tmp_path / "metadata.json").read_text())
    assert meta["provenance"]["frontend"] == "phase"
    assert meta["material"]["name"] == "SiO2" and meta["phase_samples"] == 16
    for name in ("design.h5", "phase.png", "height.png", "mask.gds"):
        assert (tmp_path / name).is_file()
