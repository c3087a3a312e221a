"""The help cosmetics patch typer internals; a typer without them must still run the CLI.

Found on a GPU image whose typer had no `TyperOption.display_type_rich`: importing
`onnlab.cli` raised AttributeError, so no command could run there.
"""

from __future__ import annotations

import pytest
from typer.core import TyperArgument, TyperOption

from onnlab import cli


@pytest.mark.parametrize(
    ("cls", "name"),
    [
        (TyperOption, "display_type_rich"),
        (TyperArgument, "display_type_rich"),
        (TyperArgument, "_usage_display_name"),
    ],
)
def test_plain_help_leaves_a_typer_without_the_hooks_alone(monkeypatch, cls, name) -> None:
    for klass in cls.__mro__:  # hide the attribute wherever typer/click define it
        if name in vars(klass):
            monkeypatch.delattr(klass, name)
    assert not hasattr(cls, name)
    cli._plain_help()  # must not raise
    assert not hasattr(cls, name)  # and must not invent the hook


def test_plain_help_is_installed_once_with_a_current_typer() -> None:
    cli._plain_help()
    assert getattr(TyperOption.display_type_rich, "_onnlab", False)
