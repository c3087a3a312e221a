"""`cli(argv)`: run `onnlab.cli.main` in-process -> (exit code, non-empty output lines)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from onnlab.cli import main


@pytest.fixture
def cli(capsys) -> Callable[[list[str]], tuple[int, list[str]]]:
    """The console script's entry point, with stdout and stderr lines together."""

    def run(argv: list[str]) -> tuple[int, list[str]]:
        with pytest.raises(SystemExit) as exc:
            main([str(a) for a in argv])
        captured = capsys.readouterr()
        lines = [ln for ln in (captured.out + captured.err).splitlines() if ln.strip()]
        return int(exc.value.code or 0), lines

    return run
