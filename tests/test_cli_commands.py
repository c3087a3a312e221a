"""The command line as a user meets it: every command has --help, errors are one line."""

from __future__ import annotations

import subprocess
import sys

import pytest
import typer.main

from onnlab import __version__
from onnlab.cli import app


def _command_paths(group: object, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """All command paths below a (typer-vendored click) group, found by duck typing."""
    paths = [prefix]
    commands = getattr(group, "commands", None)
    if isinstance(commands, dict):
        for name, sub in commands.items():
            paths.extend(_command_paths(sub, (*prefix, name)))
    return paths


COMMANDS = _command_paths(typer.main.get_command(app))


def test_expected_commands_exist() -> None:
    names = {" ".join(p) for p in COMMANDS}
    for expected in (
        "devices",
        "calibrate",
        "capture",
        "finetune",
        "train",
        "teacher train",
        "evaluate",
        "estimate",
        "bench",
    ):
        assert expected in names, f"missing command: onnlab {expected}"


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "root")
def test_every_command_has_help(path: tuple[str, ...]) -> None:
    from typer.testing import CliRunner

    result = CliRunner().invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_version() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "onnlab.cli", "--version"], capture_output=True, text=True
    )
    assert out.returncode == 0
    assert out.stdout.strip() == f"onnlab {__version__}"


def test_user_error_is_one_line_not_a_traceback() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "onnlab.cli", "bench", "no-such-benchmark"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "no-such-benchmark" in lines[0]
