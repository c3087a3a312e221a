"""Shipped experiment configs validate; mistakes are one-line ConfigErrors naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from onnlab.errors import ConfigError
from onnlab.finetune.config import CONFIG_DIR, load_experiment, train_config


@pytest.mark.parametrize("task", ["mnist", "cifar10", "segmentation"])
def test_shipped_configs_validate(task: str) -> None:
    for tiny in (False, True):
        cfg = load_experiment(task, tiny=tiny)
        assert cfg.task == task and 0 < cfg.capture.fraction <= 1
        for role, spec in (("teacher", cfg.teacher), ("student", cfg.student)):
            train_config(task, role, spec.train, str(cfg.source))
        train_config(task, "student", cfg.finetune.train, str(cfg.source))
    full, tiny = load_experiment(task), load_experiment(task, tiny=True)
    assert full.finetune.train.get("epochs", 99) >= tiny.finetune.train.get("epochs", 0)


def test_errors_name_file_and_field(tmp_path: Path) -> None:
    data = yaml.safe_load((CONFIG_DIR / "mnist.yaml").read_text())
    data["capture"]["fraction"] = 1.5
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"bad.yaml: capture.fraction: .*1.5"):
        load_experiment(path=path)
    data["capture"]["fraction"] = 0.1
    data["finetune"]["train"]["epoks"] = 3
    path.write_text(yaml.safe_dump(data))
    cfg = load_experiment(path=path)
    with pytest.raises(ConfigError, match="epoks"):
        train_config("mnist", "student", cfg.finetune.train, str(path))
    with pytest.raises(ConfigError, match="task"):
        load_experiment("cifar10", path=CONFIG_DIR / "mnist.yaml")


def test_physical_fabrication_sections_are_valid_height_domain_errors() -> None:
    """Every experiment's fabrication.physical is a FabricationErrors (SI units) and, today,
    the documented defaults; model stays legacy until calibration meets its goals on it."""
    from onnlab.finetune.config import load_experiment
    from onnlab.optics.fabrication import FabricationErrors

    for task in ("mnist", "cifar10", "segmentation"):
        fab = load_experiment(task).fabrication
        assert fab.model in ("legacy", "physical")
        assert FabricationErrors(**fab.physical) == FabricationErrors()
