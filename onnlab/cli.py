"""The `onnlab` command line.

Each command group lives in its own module under `onnlab.commands` and registers itself via
`register(app)`; heavy imports (torch models, h5py, drivers) happen inside command bodies so
that `onnlab --help` stays instant. `main()` turns every user-fixable error into one line on
stderr (exit code 2) instead of a traceback; `ONNLAB_DEBUG=1` shows the traceback.
"""

from __future__ import annotations

import os
import sys
from importlib import import_module

import typer

from onnlab import __version__

COMMAND_MODULES = (
    "onnlab.commands.train",
    "onnlab.commands.estimate",
    "onnlab.commands.devices",
    "onnlab.commands.calibrate",
    "onnlab.commands.capture",
    "onnlab.commands.finetune",
    "onnlab.commands.bench",
)

app = typer.Typer(
    name="onnlab",
    help="Hybrid optical neural networks: estimate, train (NTKD), calibrate, fine-tune.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"onnlab {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version."
    ),
) -> None:
    """Hybrid optical neural networks: estimate, train (NTKD), calibrate, fine-tune."""


for _name in COMMAND_MODULES:
    import_module(_name).register(app)


def _user_error_types() -> tuple[type[BaseException], ...]:
    """Exceptions that mean 'bad input or bad bench', shown as one line, not a traceback."""
    from pydantic import ValidationError

    from drivers.errors import DeviceError
    from onnlab.errors import OnnlabError

    return (OnnlabError, DeviceError, ValueError, FileNotFoundError, ValidationError)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"error: {type(exc).__name__}: {text}"


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    try:
        app(args=argv, standalone_mode=True)
    except SystemExit:
        raise
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - the filter below re-raises programming errors
        if os.environ.get("ONNLAB_DEBUG") or not isinstance(exc, _user_error_types()):
            raise
        print(_one_line(exc), file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
