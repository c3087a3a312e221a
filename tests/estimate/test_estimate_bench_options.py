"""`onnlab bench estimate --opt KEY=VALUE` and `python -m onnlab.bench.estimate --KEY VALUE`
share one option table and one `run`: the options parse to the same types either way."""

from __future__ import annotations

import pytest

from onnlab.bench import estimate


def test_options_parse_to_their_types():
    opts = estimate.parse_options(
        ["task=cifar10", "n-train=300", "predict_only=yes", "kernels=4,8"]
    )
    assert opts == {"task": "cifar10", "n_train": 300, "predict_only": True, "kernels": "4,8"}


@pytest.mark.parametrize("bad", ["n_trian=3", "n_train", "n_train=many", "ce=maybe"])
def test_bad_options_name_the_problem(bad):
    with pytest.raises(ValueError, match="estimate option"):
        estimate.parse_options([bad])


def test_run_rejects_unknown_options_before_any_work():
    with pytest.raises(ValueError, match="unknown estimate option"):
        estimate.run(quick=True, n_trian=3)


def test_module_flags_cover_every_option(capsys):
    with pytest.raises(SystemExit):
        estimate.main(["--help"])
    text = capsys.readouterr().out
    assert all("--" + name.replace("_", "-") in text for name in estimate.OPTIONS)
