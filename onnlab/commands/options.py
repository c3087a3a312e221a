"""The one option grammar every `onnlab` command shares.

- `--task` names the dataset/task everywhere; `--device` is always the torch compute device;
  bench devices are named by kind (`--slm`, `--camera`); `--out` is always a run folder
  (created, or reused to resume); `--seed0 S` is the first (or only) seed and `--seeds N` how
  many; `--data-root` is always a folder; `--json` prints only JSON on stdout;
  `--progress/--no-progress` toggles progress bars.
- Every choice is an Enum, so `--help` lists the values and a typo fails at parse time naming
  them. Every option has a help sentence (capitalised, ending with a full stop) and a metavar
  that reads as a word (INT, PATH, KEY=VALUE), not as a Python type.
"""

from __future__ import annotations

import re
from enum import Enum
from pathlib import Path
from typing import Any

import typer


class Task(str, Enum):
    """The three systems of the paper."""

    mnist = "mnist"
    cifar10 = "cifar10"
    segmentation = "segmentation"


class Method(str, Enum):
    """Transfer methods: the task loss alone, Hinton KD, NTK distillation."""

    none = "none"
    kd = "kd"
    ntkd = "ntkd"


class Split(str, Enum):
    """Dataset splits (val is carved from train with the split seed)."""

    train = "train"
    val = "val"
    test = "test"


def choices(enum: type[Enum]) -> str:
    """'a|b|c' for the metavar of an Enum option."""
    return "|".join(str(m.value) for m in enum)


def value(member: Enum | str | None) -> str | None:
    """The plain string of an Enum member (or the string itself)."""
    return None if member is None else str(getattr(member, "value", member))


_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def check_device(name: str) -> str:
    """Parse-time check of `--device`: auto | cpu | cuda | cuda:N | mps, and that it exists."""
    if not _DEVICE.match(name):
        raise typer.BadParameter(f"{name!r} is not one of auto, cpu, cuda, cuda:N, mps")
    if name.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            why = "built without CUDA" if torch.version.cuda is None else "sees no GPU"
            raise typer.BadParameter(
                f"{name!r}: this torch {torch.__version__} {why}; use --device cpu or auto"
            )
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise typer.BadParameter(
                f"{name!r}: only {torch.cuda.device_count()} CUDA device(s) visible"
            )
    if name == "mps":
        import torch

        if not torch.backends.mps.is_available():
            raise typer.BadParameter("'mps' is not available on this machine; use --device cpu")
    return name


def device_option() -> Any:
    return typer.Option(
        "auto",
        "--device",
        metavar="auto|cpu|cuda[:N]",
        callback=check_device,
        help="Torch compute device; auto picks CUDA when present.",
    )


def task_option(default: Task | None = None) -> Any:
    return typer.Option(
        ... if default is None else default,
        "--task",
        metavar=choices(Task),
        case_sensitive=False,
        help="Task (and its dataset).",
    )


def data_root_option() -> Any:
    return typer.Option(
        None,
        "--data-root",
        metavar="DIR",
        file_okay=False,
        help="Dataset folder (default: $ONNLAB_DATA, else the bundled sample).",
    )


def out_option(what: str = "a fresh folder under runs/") -> Any:
    return typer.Option(
        None,
        "--out",
        metavar="DIR",
        file_okay=False,
        help=f"Run folder; rerun with the same folder to resume (default: {what}).",
    )


def limit_option() -> Any:
    """`--limit N`: at most N training images (default: all)."""
    return typer.Option(
        None,
        "--limit",
        min=1,
        metavar="INT",
        show_default="all",
        help="Use at most this many training images.",
    )


def eval_limit_option() -> Any:
    """`--eval-limit N`: at most N validation and test images (default: all)."""
    return typer.Option(
        None,
        "--eval-limit",
        min=1,
        metavar="INT",
        show_default="all",
        help="Use at most this many validation and test images.",
    )


def seed0_option(help: str = "First (or only) seed.") -> Any:
    return typer.Option(0, "--seed0", metavar="INT", help=help)


def progress_option() -> Any:
    return typer.Option(True, "--progress/--no-progress", help="Show progress bars.")


def json_option() -> Any:
    return typer.Option(False, "--json", help="Print only the JSON result on stdout.")


def config_option() -> Any:
    return typer.Option(
        None,
        "--config",
        "-c",
        metavar="FILE",
        dir_okay=False,
        help="Bench config YAML (default: configs/bench/sim.yaml, a simulated bench).",
    )


def bench_config(path: Path | None) -> tuple[Any, bool]:
    """Load the bench config (default: the simulated one); (config, any device simulated).

    A missing or broken file is a one-line `ConfigError`-style device error, never a traceback.
    """
    from drivers.registry import default_config_path, load_bench_config
    from onnlab.errors import ConfigError

    source = path if path is not None else default_config_path()
    if not Path(source).is_file():
        raise ConfigError(f"--config: bench config not found: {source}")
    try:
        config = load_bench_config(source)
    except UnicodeDecodeError as exc:
        raise ConfigError(f"--config: {source} is not a text (YAML) file") from exc
    return config, any(d.driver == "sim" for d in config.devices.values())


def check_data(task: str, data_root: Path | None) -> None:
    """Load one test image now, so a wrong --data-root fails before any run folder or work.

    Sources are memoised per process, so the run itself does not read them twice.
    """
    from onnlab.data import load_dataset

    load_dataset(task, "test", data_root, limit=1)


def console(stderr: bool = False) -> Any:
    """A rich Console that never wraps at 80 columns when piped (paths stay on one line)."""
    import sys

    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    if stream.isatty():
        return Console(stderr=stderr)
    return Console(stderr=stderr, width=200, soft_wrap=True)
