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


# Commands whose options follow the grammar of onnlab.commands.options (issue 17); commands
# added since join the list once their options do.
GRAMMAR = {
    ("devices",),
    ("calibrate",),
    ("capture",),
    ("finetune",),
    ("train",),
    ("teacher",),
    ("teacher", "train"),
    ("evaluate",),
    ("estimate",),
    ("bench",),
    ("design", "realise"),
    ("design", "export"),
    ("sweep",),
}


@pytest.mark.parametrize("path", sorted(GRAMMAR), ids=lambda p: " ".join(p))
def test_help_reads_as_words_with_help_text_and_defaults(path: tuple[str, ...]) -> None:
    """No '<bool>', '<list[str]>' or '{NAME}' placeholders; every option says what it does in
    one capitalised sentence ending with a full stop, and shows its default."""
    import re

    from typer.testing import CliRunner

    result = CliRunner(env={"COLUMNS": "200"}).invoke(app, [*path, "--help"])
    assert result.exit_code == 0
    assert not re.search(r"<[a-z][\w\[\], |]*>", result.output), result.output
    usage = next(line for line in result.output.splitlines() if "Usage:" in line)
    assert "{" not in usage, usage
    command = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]  # type: ignore[attr-defined]
    if hasattr(command, "commands"):
        return
    for param in command.params:
        if param.name == "help":
            continue
        text = (param.help or "").strip()
        assert text, f"{param.name}: no help text"
        assert text[0].isupper() and text.endswith("."), f"{param.name}: {text!r}"
        is_flag = getattr(param, "is_flag", False)
        if param.param_type_name == "option" and not param.required and not is_flag:
            shows = param.default is not None or isinstance(param.show_default, str)
            assert shows or "default" in text, f"{param.name}: default not shown"
