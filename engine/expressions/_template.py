"""Splitting `${{ ... }}` templates into literal text and expressions, and stringifying values.

Owns: `split_template`, `has_template`, `TemplatePart`, and `stringify`, the one rule for
turning an evaluated value into template text.
Must not: parse, check or evaluate expressions, or import the CEL runtime.

An expression ends at the first `}}` that is outside CEL string literals and outside braces
the expression opened itself, so `${{ {'a': {'b': 1}} }}` and `${{ '}}' }}` work. If that
scan runs off the end (for example an unterminated string inside), the first `}}` is used
instead, and checking the expression then reports the real problem.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

from ._types import ExprIssue

__all__ = ["CLOSE", "OPEN", "TemplatePart", "has_template", "split_template", "stringify"]

OPEN: Final = "${{"
CLOSE: Final = "}}"


@dataclass(frozen=True, slots=True)
class TemplatePart:
    """A piece of a template. For an expression, `text` is the source between the
    delimiters (spaces included) and `offset` is where that source starts in the template."""

    text: str
    offset: int
    is_expr: bool


def has_template(text: str) -> bool:
    return OPEN in text


@lru_cache(maxsize=8192)
def split_template(text: str) -> tuple[tuple[TemplatePart, ...], tuple[ExprIssue, ...]]:
    """Split `text` into literal and expression parts, in order; empty literals are omitted.

    An unterminated `${{` is an issue, and the rest of the text from it is kept as literal.
    """
    parts: list[TemplatePart] = []
    pos = 0
    while True:
        start = text.find(OPEN, pos)
        if start < 0:
            break
        inner = start + len(OPEN)
        end = _find_close(text, inner)
        if end < 0:
            issue = ExprIssue(start, len(OPEN), "unterminated '${{' (missing '}}')")
            if pos < len(text):
                parts.append(TemplatePart(text[pos:], pos, False))
            return tuple(parts), (issue,)
        if start > pos:
            parts.append(TemplatePart(text[pos:start], pos, False))
        parts.append(TemplatePart(text[inner:end], inner, True))
        pos = end + len(CLOSE)
    if pos < len(text):
        parts.append(TemplatePart(text[pos:], pos, False))
    return tuple(parts), ()


def _find_close(text: str, pos: int) -> int:
    n = len(text)
    depth = 0
    i = pos
    while i < n:
        ch = text[i]
        if ch in "'\"":
            i = _skip_string(text, i)
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            if depth == 0 and text.startswith(CLOSE, i):
                return i
            depth = max(depth - 1, 0)
        i += 1
    return text.find(CLOSE, pos)


def _skip_string(text: str, i: int) -> int:
    """Index just past the CEL string literal opening at `i` (or the end of `text`)."""
    raw = i > 0 and text[i - 1] in "rR"
    quote = text[i]
    delim = quote * 3 if text.startswith(quote * 3, i) else quote
    j = i + len(delim)
    n = len(text)
    while j < n:
        if text[j] == "\\" and not raw:
            j += 2
        elif text.startswith(delim, j):
            return j + len(delim)
        else:
            j += 1
    return n


def stringify(value: object) -> str:
    """Template text for one evaluated value.

    Strings as they are, `true`/`false`, `null`, numbers in JSON form, lists and maps as
    compact JSON with sorted keys; bytes as UTF-8 text (base64 if they are not UTF-8),
    timestamps as RFC 3339 and durations as seconds (`"90s"`), the same inside containers.
    """
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple | dict):
        return json.dumps(_jsonable(value), sort_keys=True, separators=(",", ":"))
    scalar = _jsonable(value)
    return scalar if isinstance(scalar, str) else json.dumps(scalar)


def _jsonable(value: object) -> object:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {_key(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            return base64.b64encode(value).decode()
    if isinstance(value, dt.datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, dt.timedelta):
        seconds = value.total_seconds()
        return f"{int(seconds) if seconds.is_integer() else seconds}s"
    return str(value)


def _key(key: object) -> str:
    # JSON object keys are strings; CEL map keys may also be int, uint or bool.
    if isinstance(key, bool):
        return "true" if key else "false"
    return key if isinstance(key, str) else str(key)
