"""`onnlab bench design` returns the four keys of issue 13 (fast: a small-N free student)."""

from __future__ import annotations

import math

import torch

from onnlab.bench.design import GOALS, run
from onnlab.models.zoo import build_student
from onnlab.training.checkpoint import save_checkpoint


def test_bench_design_reports_the_issue_keys(tmp_path):
    torch.manual_seed(0)
    # A free student that records a coarse phase grid (N = 16) for its realisation.
    ckpt = save_checkpoint(tmp_path / "free.pt", build_student("mnist", phase_samples=16))
    out = run(quick=True, seed=0, checkpoint=ckpt)
    assert set(GOALS) <= set(out)
    for key in GOALS:
        assert math.isfinite(out[key]), key
    assert out["system"]["phase_samples"] == 16
    assert 0 <= out["realisation_rel_error"] <= max(out["realisation"]["rel_error"])
    assert out["gds_roundtrip_max_rel_psf_error"] <= 1e-3
    ev = out["evaluation"]
    assert math.isclose(out["realised_accuracy_drop_points"], 100 * (ev["free"] - ev["realised"]))
    assert out["phase_frontend_over_free_step_time"] > 0
