"""Turn pydantic validation errors into lines a person can act on."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails, PydanticCustomError

from clawd.core.redact import is_secret_key, shown_value

# The error type of checks that involve several keys (see `cross_field`).
CROSS_FIELD = "clawd_cross_field"
# Values under these sections are never echoed beyond numbers: any string may be a credential.
SECRET_SECTIONS = ("postgres", "notify")


def cross_field(problems: Sequence[tuple[str, str]]) -> PydanticCustomError:
    """One error holding (key relative to the model, message) pairs, one line each."""
    summary = "; ".join(f"{key}: {message}" for key, message in problems)
    return PydanticCustomError(CROSS_FIELD, "{summary}", {"summary": summary, "problems": problems})


def _is_secret(loc: tuple[int | str, ...]) -> bool:
    return any(isinstance(part, str) and is_secret_key(part) for part in loc)


def _shown(value: Any, loc: tuple[int | str, ...]) -> str:
    if _is_secret(loc):
        return "'***'"
    return shown_value(value, strict=bool(loc) and loc[0] in SECRET_SECTIONS)


def _model_at(model: type[BaseModel] | None, loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The model class validating the value at `loc` (None past a plain value)."""
    current: Any = model
    for part in loc:
        if isinstance(part, int) or current is None:
            continue
        fields = getattr(current, "model_fields", {})
        match = next((f for n, f in fields.items() if part in {n, f.alias}), None)
        if match is None:
            return None
        current = _model_of(match.annotation)
    return current if isinstance(current, type) else None


def _keys_of(model: type[BaseModel] | None) -> list[str]:
    fields = getattr(model, "model_fields", {})
    return [f.alias or n for n, f in fields.items()]


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def _path(loc: Sequence[int | str]) -> str:
    """`peers[0].ip`, as a person would write it."""
    text = ""
    for part in loc:
        if isinstance(part, str) and not part.isprintable():
            part = repr(part)  # a key holding "\n" must not forge a line of its own
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _join(loc: tuple[int | str, ...], key: str) -> str:
    """A model's path plus a key relative to it (`detection` + `phiSuspect`)."""
    base = _path(loc) if loc else ""
    if not base:
        return key
    return f"{base}{key}" if key.startswith("[") else f"{base}.{key}"


def _number(value: Any) -> str:
    """5.0 -> 5, 0.5 -> 0.5: bounds as a person writes them."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _describe(err: ErrorDetails, model: type[BaseModel] | None) -> list[str]:
    loc_parts = tuple(err["loc"])
    loc = _path(loc_parts)
    kind = err["type"]
    ctx = err.get("ctx", {})
    value = err.get("input")
    shown = _shown(value, loc_parts)
    if kind == CROSS_FIELD:
        return [f"{_join(loc_parts, key)}: {message}" for key, message in ctx["problems"]]
    if kind == "literal_error":
        allowed = str(ctx.get("expected", "")).replace("'", "").replace(" or ", ", ")
        return [f"{loc}: {shown} is not one of {allowed}"]
    if kind == "extra_forbidden":
        key = str(loc_parts[-1])
        known = _keys_of(_model_at(model, loc_parts[:-1]))
        close = difflib.get_close_matches(key, known, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        allowed = f"; allowed keys: {', '.join(sorted(known))}" if known and not close else ""
        return [f"{loc}: unknown key{hint}{allowed}"]
    if kind == "less_than_equal":
        return [f"{loc}: {shown} is too large (maximum {_number(ctx.get('le'))})"]
    if kind == "less_than":
        return [f"{loc}: {shown} is too large (must be less than {_number(ctx.get('lt'))})"]
    if kind == "greater_than_equal":
        return [f"{loc}: {shown} is too small (minimum {_number(ctx.get('ge'))})"]
    if kind == "greater_than":
        return [f"{loc}: {shown} is too small (must be greater than {_number(ctx.get('gt'))})"]
    if kind == "missing":
        return [f"{loc}: required but missing"]
    if kind in {"model_type", "model_attributes_type", "dict_type"}:
        keys = _keys_of(_model_at(model, loc_parts))
        what = f"an object with keys {', '.join(keys)}" if keys else "an object"
        if isinstance(value, str) and "://" in value:
            what += " (a connection URL is not accepted here)"
        return [f"{loc}: must be {what}, got {shown}"]
    msg = err["msg"].removeprefix("Value error, ")
    if _is_secret(loc_parts):
        return [f"{loc}: {msg}"]
    return [f"{loc}: {msg}, got {shown}"]


def describe_validation_error(exc: ValidationError, source: str, model: type[BaseModel]) -> str:
    """One line per problem, each naming the key, the bad value and what is allowed.

    `model` is the one that raised `exc` (for the keys an unknown one may be a typo of);
    it is passed in, so that this module does not import the settings it describes.
    """
    lines = [line for err in exc.errors(include_url=False) for line in _describe(err, model)]
    noun = "problem" if len(lines) == 1 else "problems"
    return f"{source}: {len(lines)} {noun}:\n  " + "\n  ".join(lines)
