"""One-line messages for pydantic validation errors of config files (shared by every layer).

A leaf module (imports only pydantic and the standard library), so that the bench config of
`drivers.registry` and the experiment configs of `onnlab.finetune` explain a bad field the same
way: the file, the dotted field path, the value given and what was expected, and for an
unknown key the nearest valid one (``gap_pz`` -> did you mean ``gap_px``?).
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import BaseModel, ValidationError


def nearest(word: str, choices: Iterable[str]) -> str | None:
    """The closest of `choices` to `word` (difflib ratio >= 0.6), or None."""
    found = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return found[0] if found else None


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """BaseModel classes an annotation can hold directly (through Optional/Union/Annotated)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _models_in(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return []


def _mapping_value(annotation: Any) -> Any | None:
    """The value type of a dict annotation (None when it is not a mapping)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _mapping_value(typing.get_args(annotation)[0])
    if origin is dict:
        args = typing.get_args(annotation)
        return args[1] if len(args) == 2 else Any
    return None


def _keys_at(model: type[BaseModel], loc: Sequence[Any]) -> set[str]:
    """Field names (and aliases) valid at `loc` below `model`; empty when it cannot tell."""
    current: list[type[BaseModel]] = [model]
    parts = list(loc)
    while parts:
        part = str(parts.pop(0))
        nxt: list[Any] = []
        for m in current:
            field = m.model_fields.get(part)
            if field is None:
                continue
            ann = field.annotation
            value = _mapping_value(ann)
            if value is not None and parts:  # dict[str, X]: the next part is a user key
                parts.pop(0)
                ann = value
            nxt.extend(_models_in(ann))
        if not nxt and current:
            # a discriminated-union tag pydantic inserts (e.g. 'sim'): keep the members that
            # carry it in a Literal field, else all of them
            tagged = [m for m in current if any(part in _literal_values(f) for f in _fields(m))]
            nxt = tagged or []
        current = nxt
        if not current:
            return set()
    keys: set[str] = set()
    for m in current:
        for name, field in m.model_fields.items():
            keys.add(field.alias or name)
    return keys


def _fields(model: type[BaseModel]) -> list[Any]:
    return [f.annotation for f in model.model_fields.values()]


def _literal_values(annotation: Any) -> tuple[Any, ...]:
    if typing.get_origin(annotation) is typing.Literal:
        return typing.get_args(annotation)
    return ()


def describe_error(
    error: dict[str, Any], model: type[BaseModel] | None = None, drop: Iterable[str] = ()
) -> str:
    """'field.path: expectation, got VALUE' for one pydantic error (see `format_validation`)."""
    loc = [str(p) for p in error["loc"]]
    raw_loc = list(error["loc"])
    hidden = set(drop)
    shown = [p for i, p in enumerate(loc) if not (i >= 2 and p in hidden)]
    where = ".".join(shown) or "<root>"
    kind = error["type"]
    if kind == "extra_forbidden":
        text = f"{where}: unknown key"
        if model is not None:
            keys = _keys_at(model, raw_loc[:-1])
            guess = nearest(loc[-1], keys)
            if guess is not None:
                text += f"; did you mean {guess!r}?"
            elif keys:
                text += f"; expected one of {', '.join(sorted(keys))}"
        return text
    if kind == "missing":
        return f"{where}: is required"
    msg = str(error.get("msg", "invalid"))
    for prefix in ("Value error, ", "Assertion failed, "):
        msg = msg.removeprefix(prefix)
    value = error.get("input")
    got = "" if isinstance(value, dict) else f", got {value!r}"
    return f"{where}: {msg[:1].lower() + msg[1:]}{got}"


def format_validation(
    source: str,
    exc: ValidationError,
    model: type[BaseModel] | None = None,
    drop: Iterable[str] = (),
) -> str:
    """One line for a ValidationError: 'source: field: expectation, got X (and N more)'.

    `model` (the validated class) enables nearest-key suggestions for unknown keys; `drop`
    names loc parts to hide from the third level on (union tags pydantic inserts, e.g. the
    driver in ``devices.slm0.sim.kind``, which the user never wrote).
    """
    errors = exc.errors()
    first = describe_error(errors[0], model, drop)
    more = len(errors) - 1
    extra = f" (and {more} more error{'s' if more > 1 else ''})" if more else ""
    return f"{source}: {first}{extra}"
