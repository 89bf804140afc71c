"""Turn pydantic validation errors into lines a person can act on."""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

SECRET_HINTS = ("password", "pass", "secret", "token")


def _is_secret(loc: str) -> bool:
    lowered = loc.lower()
    return any(hint in lowered for hint in SECRET_HINTS)


def _shown(value: Any, loc: str) -> str:
    if _is_secret(loc):
        return "'***'"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _known_keys(model: type[BaseModel] | None, loc: tuple[int | str, ...]) -> list[str]:
    """The camelCase keys allowed at the parent of `loc`, for typo suggestions."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int) or current is None:
            continue
        fields = getattr(current, "model_fields", {})
        match = next(
            (f for n, f in fields.items() if part in {n, f.alias}),
            None,
        )
        if match is None:
            return []
        current = _model_of(match.annotation)
    fields = getattr(current, "model_fields", {})
    return [f.alias or n for n, f in fields.items()]


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def _path(loc: tuple[int | str, ...]) -> str:
    """`peers[0].ip`, as a person would write it."""
    text = ""
    for part in loc:
        if isinstance(part, str) and not part.isprintable():
            part = repr(part)  # a key holding "\n" must not forge a line of its own
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _describe(err: ErrorDetails, model: type[BaseModel] | None) -> str:
    loc = _path(err["loc"])
    kind = err["type"]
    ctx = err.get("ctx", {})
    value = err.get("input")
    shown = _shown(value, loc)
    if kind == "literal_error":
        allowed = str(ctx.get("expected", "")).replace("'", "").replace(" or ", ", ")
        return f"{loc}: {shown} is not one of {allowed}"
    if kind == "extra_forbidden":
        key = str(err["loc"][-1])
        known = _known_keys(model, err["loc"])
        close = difflib.get_close_matches(key, known, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        allowed = f"; allowed keys: {', '.join(sorted(known))}" if known and not close else ""
        return f"{loc}: unknown key{hint}{allowed}"
    if kind in {"less_than_equal", "less_than"}:
        return f"{loc}: {shown} is too large (maximum {ctx.get('le', ctx.get('lt'))})"
    if kind in {"greater_than_equal", "greater_than"}:
        return f"{loc}: {shown} is too small (minimum {ctx.get('ge', ctx.get('gt'))})"
    if kind == "missing":
        return f"{loc}: required but missing"
    msg = err["msg"].removeprefix("Value error, ")
    if _is_secret(loc):
        return f"{loc}: {msg}"
    return f"{loc}: {msg}, got {shown}"


def describe_validation_error(exc: ValidationError, source: str) -> str:
    """One line per problem, each naming the key, the bad value and what is allowed."""
    from clawd.settings import Settings

    lines = [_describe(err, Settings) for err in exc.errors(include_url=False)]
    noun = "problem" if len(lines) == 1 else "problems"
    return f"{source}: {len(lines)} {noun}:\n  " + "\n  ".join(lines)
