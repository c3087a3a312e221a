"""The `onnlab` command line.

Each command group lives in its own module under `onnlab.commands` and registers itself via
`register(app)`; heavy imports (torch models, h5py, drivers) happen inside command bodies so
that `onnlab --help` stays instant. `main()` turns every user-fixable error (`OnnlabError`,
device errors, click usage errors) into one line on stderr and exit code 2; every other
exception is a bug and keeps its traceback (`ONNLAB_DEBUG=1` shows it for user errors too).
Long commands turn Ctrl-C into `Interrupted`: one line saying what was kept and how to resume.
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
    "onnlab.commands.design",
    "onnlab.commands.sweep",
)


def _plain_help() -> None:
    """Help that reads as words, not Python types.

    typer prints a '<bool>' type for every on/off flag (and --help), a '<file>' type next to
    an argument's name, and '{NAME}' for a required argument in the usage line. A flag takes
    no value and an argument's metavar already names it, so show neither; a required
    argument is written bare (`onnlab evaluate CHECKPOINT`), an optional one in brackets.
    Every option declares a word-like metavar (INT, DIR, KEY=VALUE, a|b|c), see
    `onnlab.commands.options`.
    """
    from typer.core import TyperArgument, TyperOption

    needed = (
        hasattr(TyperOption, "display_type_rich")
        and hasattr(TyperArgument, "display_type_rich")
        and hasattr(TyperArgument, "_usage_display_name")
    )
    if not needed:  # a typer without these hooks (older, e.g. a GPU image's): its own help
        return
    if getattr(TyperOption.display_type_rich, "_onnlab", False):
        return
    option_type = TyperOption.display_type_rich

    def display_option_type(self: TyperOption, ctx: object) -> str | None:
        if getattr(self, "is_flag", False):
            return None
        return option_type(self, ctx)  # type: ignore[arg-type]

    def display_argument_type(self: TyperArgument, ctx: object) -> str | None:
        return None

    def usage_name(self: TyperArgument) -> str:
        name = self.display_name_raw if self.required else f"[{self.display_name_raw}]"
        return name + ("..." if self.nargs != 1 else "")

    display_option_type._onnlab = True  # type: ignore[attr-defined]
    TyperOption.display_type_rich = display_option_type  # type: ignore[method-assign]
    TyperArgument.display_type_rich = display_argument_type  # type: ignore[method-assign]
    TyperArgument._usage_display_name = usage_name  # type: ignore[method-assign]


_plain_help()

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
    """Bad input or a bad bench: one line, exit 2. Anything else is a bug with a traceback."""
    from drivers.errors import DeviceError
    from onnlab.errors import OnnlabError

    return (OnnlabError, DeviceError)


def _describe(exc: BaseException) -> str:
    """The message of a user error; device errors keep their type (DeviceTimeout, ...)."""
    from drivers.errors import ConfigurationError, DeviceError

    if isinstance(exc, ConfigurationError) and exc.device_id == "?":
        return exc.message  # a bench-config error names file and field itself
    if isinstance(exc, DeviceError):
        return f"{type(exc).__name__}: {exc}"
    return str(exc)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _click_error(exc: Exception) -> str:
    """A click usage error as 'onnlab CMD: message' (no usage box, no panel)."""
    ctx = getattr(exc, "ctx", None)
    where = f"{ctx.command_path}: " if ctx is not None else ""
    text = exc.format_message().replace("Value error, ", "")  # type: ignore[attr-defined]
    return _one_line(where + text)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: one line and exit 2 for user errors, 130 on Ctrl-C."""
    from typer import Abort
    from typer._click.exceptions import ClickException, NoArgsIsHelpError

    from onnlab.errors import Interrupted

    if os.environ.get("WORLD_SIZE", "1") != "1":  # torchrun: join the DDP process group first
        from onnlab.training.distributed import init_from_env

        init_from_env(quiet=True)
    try:
        code = app(args=argv, standalone_mode=False)
    except NoArgsIsHelpError as exc:  # `onnlab` or `onnlab teacher` alone: show the help
        typer.echo(exc.ctx.get_help())  # type: ignore[union-attr]
        sys.exit(0)
    except ClickException as exc:
        print(f"error: {_click_error(exc)}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except Abort:
        print("aborted", file=sys.stderr)
        sys.exit(1)
    except Interrupted as exc:
        print(f"interrupted: {_one_line(str(exc))}", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - the filter below re-raises programming errors
        if os.environ.get("ONNLAB_DEBUG") or not isinstance(exc, _user_error_types()):
            raise
        print(f"error: {_one_line(_describe(exc))}", file=sys.stderr)
        sys.exit(2)
    if code == 130:  # typer turns a bare KeyboardInterrupt into exit code 130
        print("interrupted (this command keeps nothing to resume)", file=sys.stderr)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
