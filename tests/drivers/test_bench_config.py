"""Bench configs: the shipped ones load, broken ones fail as ONE line naming file and field."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from drivers.errors import ConfigurationError
from drivers.registry import load_bench_config, open_devices, parse_bench_config
from onnlab.cli import main

REPO = Path(__file__).resolve().parents[2]
SIM = REPO / "configs" / "bench" / "sim.yaml"
LAB = REPO / "configs" / "bench" / "lab-example.yaml"


def test_shipped_configs_validate() -> None:
    sim = load_bench_config(SIM)
    assert {i: d.driver for i, d in sim.devices.items()} == {
        "slm0": "sim",
        "cam0": "sim",
        "stage0": "sim",
    }
    lab = load_bench_config(LAB)
    assert {d.driver for d in lab.devices.values()} == {"slmsuite", "genicam", "smc100"}
    assert lab.devices["slm0"].class_path.endswith("ScreenMirrored")


def test_open_devices_from_sim_yaml_by_id() -> None:
    with open_devices(SIM) as devs:
        assert set(devs) == {"slm0", "cam0", "stage0"}
        slm, cam = devs["slm0"], devs["cam0"]
        slm.show(np.full(slm.shape_hw, 255, np.uint8), pattern_id=42)
        frame = cam.capture()
        assert frame.pattern_id == 42 and frame.pixels.max() > 0
        assert cam.shape_hw == devs.sim_bench.truth.layout.sensor_hw
    assert not cam.is_open


def test_open_devices_uses_given_design_psfs(tmp_path) -> None:
    psfs = torch.zeros(2, 1, 3, 3)
    psfs[:, :, 1, 1] = 0.5
    np.save(tmp_path / "psfs.npy", psfs.numpy())
    data = yaml.safe_load(SIM.read_text())
    data["sim"]["design"] = {"psfs_path": "psfs.npy"}
    data["sim"]["model"] = "legacy"  # the physical model renders phase designs only
    data["sim"].pop("rows"), data["sim"].pop("cols")
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(data))
    with open_devices(path, ids=["cam0"]) as devs:
        assert list(devs) == ["cam0"]
        assert torch.equal(devs.sim_bench.truth.design_psfs, psfs)


def test_stage_through_registry_with_simulated_smc100(tmp_path) -> None:
    path = tmp_path / "bench.yaml"
    path.write_text(
        "devices:\n  stage0: {kind: stage, driver: smc100, port: 'sim://smc100?id=reg', "
        "limits_m: [0.0, 0.02], home_on_open: true}\n"
    )
    with open_devices(path) as devs:
        assert devs["stage0"].move_absolute(0.005) == pytest.approx(0.005)
        assert devs["stage0"].info()["implementation"] == "smc100"


@pytest.mark.parametrize(
    ("text", "field", "expected"),
    [
        (
            "devices: {cam0: {kind: camera, driver: genicam, exposure_s: -1}}",
            "devices.cam0.exposure_s",
            "greater than 0",
        ),
        ("devices: {cam0: {kind: camera, driver: pco}}", "devices.cam0", "driver: expected one of"),
        (
            "devices: {s: {kind: stage, driver: smc100, port: x, limits_m: [1, 0]}}",
            "devices.s.limits_m",
            "min < max",
        ),
        (
            "devices: {s: {kind: stage, driver: smc100, limits_m: [0, 1]}}",
            "devices.s.port",
            "is required",
        ),
        ("devices: {a: {kind: laser}}", "devices.a.kind", "'slm', 'camera' or 'stage'"),
        (
            "devices: {c: {kind: camera, driver: sim, exposure: 1}}",
            "devices.c.exposure",
            "unknown key",
        ),
        ("devices: {a: {kind: slm}, b: {kind: slm}}", "devices", "at most one simulated slm"),
        ("devices: {}", "devices", "at least one device"),
        (
            "devices: {c: {kind: camera}}\nsim: {faults: {p: {camera.melt: 1}}}",
            "sim.faults.p",
            "unknown fault",
        ),
        (
            "devices: {c: {kind: camera}}\nsim: {design: {task: imagenet}}",
            "sim.design.task",
            "mnist",
        ),
        ("[1, 2]", "<root>", "expected a mapping"),
        ("devices: {c: {kind: camera}\n", "line", "not valid YAML"),
    ],
)
def test_broken_config_is_one_line_naming_file_and_field(tmp_path, text, field, expected) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    with pytest.raises(ConfigurationError) as info:
        load_bench_config(path)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"{path}: ")
    assert field in msg and expected in msg
    assert isinstance(info.value, ValueError)


def test_bad_sensor_section_named_when_building_the_bench() -> None:
    config = parse_bench_config(
        {"devices": {"c": {"kind": "camera"}}, "sim": {"sensor": {"bit_depth": 99}}}, "x.yaml"
    )
    with pytest.raises(ConfigurationError, match=r"x.yaml: sim.sensor: .*bit_depth"):
        open_devices(config)


def test_cli_devices_lists_and_probes_sim_bench(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["devices", "--json"])
    assert info.value.code == 0
    report = json.loads(capsys.readouterr().out)
    rows = {r["id"]: r for r in report["devices"]}
    assert all(r["ok"] for r in rows.values())
    assert rows["cam0"]["info"]["resolution_hw"] == [72, 136]
    assert rows["stage0"]["status"]["position_m"] == pytest.approx(0.0125)


def test_cli_devices_reports_failing_devices_and_broken_config(tmp_path, capsys) -> None:
    path = tmp_path / "bench.yaml"
    path.write_text(
        "devices:\n  cam0: {kind: camera, driver: genicam, cti: nowhere/}\n"
        "  stage0: {kind: stage, driver: smc100, port: /dev/nope-onnlab, limits_m: [0, 0.01]}\n"
    )
    with pytest.raises(SystemExit) as info:
        main(["devices", "--config", str(path), "--json"])
    assert info.value.code == 1
    rows = {r["id"]: r for r in json.loads(capsys.readouterr().out)["devices"]}
    assert rows["cam0"]["error"].startswith("DeviceNotFound") and "[cam0]" in rows["cam0"]["error"]
    assert rows["stage0"]["error"].startswith("DeviceNotFound")
    path.write_text("devices: {cam0: {kind: camera, driver: genicam, buffers: 0}}")
    with pytest.raises(SystemExit) as info:
        main(["devices", "--config", str(path)])
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and len(err.splitlines()) == 1
    assert "devices.cam0.buffers" in err and str(path) in err


# ---------------------------------------------------------------- issue 16: configs run no code


@pytest.mark.parametrize(
    "class_path",
    [
        "subprocess.Popen",
        "os.system",
        "builtins.eval",
        "slmsuite.hardware.slms._slm_win.Thing",  # private module of the right package
        "slmsuitex.hardware.slms.slm.SLM",  # look-alike package name
    ],
)
def test_malicious_slm_class_is_refused_at_load(tmp_path, class_path) -> None:
    """`class: subprocess.Popen` with `kwargs: {args: ..., shell: true}` used to resolve."""
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "devices": {
                    "slm0": {
                        "kind": "slm",
                        "driver": "slmsuite",
                        "class": class_path,
                        "kwargs": {"args": f"touch {marker}", "shell": True},
                    }
                }
            }
        )
    )
    with pytest.raises(ConfigurationError, match="only slmsuite SLM classes") as info:
        open_devices(path)
    assert "devices.slm0.class" in str(info.value)
    assert not marker.exists()


def test_slm_class_inside_slmsuite_must_be_an_slm_subclass(tmp_path) -> None:
    """The package check alone is not enough: a non-SLM class in it is refused at open."""
    from drivers.slm_slmsuite import SlmsuiteSLM

    slm = SlmsuiteSLM("slm0", "slmsuite.hardware.slms.slm.ABC")  # imported in that module
    with pytest.raises(ConfigurationError, match="not a subclass of slmsuite's SLM"):
        slm.open()
    with pytest.raises(ConfigurationError, match="only slmsuite SLM classes"):
        SlmsuiteSLM("slm0", "subprocess.Popen", {"args": "true"}).open()


def test_lab_example_documents_a_working_simulated_stage_port(tmp_path) -> None:
    """The example used to document `sim-smc100://`, which no handler serves."""
    import re

    port = re.search(r"`(sim\S*)` talks to the simulated controller", LAB.read_text()).group(1)
    data = yaml.safe_load(LAB.read_text())
    stage = {**data["devices"]["stage0"], "port": port}
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump({"devices": {"stage0": stage}}))
    with open_devices(path) as devs:
        assert devs["stage0"].info()["model"] == "TRA25CC"
