"""Run-time evaluation through the real CEL library, imported only when first needed.

Owns: `Program`, `compile_expression` and `render_template` - the only code that touches
the `cel` package (common-expression-language), and the translation of everything it
raises into `engine.errors.ExpressionError`.
Must not: import `cel` at module import time (validation must stay fast and must not pay
its ~300 ms import), use Python eval/exec, or type-check (validation already did that).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from engine.errors import ExpressionError

from ._parser import CelSyntaxError, parse
from ._template import split_template, stringify

__all__ = ["Program", "compile_expression", "render_template"]


class Program:
    """An expression compiled once and evaluated many times. Safe to share across threads."""

    __slots__ = ("_compiled", "_lock", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self._compiled: Any = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Program({self.source!r})"

    def evaluate(self, activation: Mapping[str, object]) -> object:
        """Evaluate with `activation` as the variables; raises `ExpressionError` on failure."""
        compiled = self._compiled if self._compiled is not None else self._compile()
        try:
            return compiled.execute(dict(activation))
        except Exception as exc:
            raise ExpressionError(_describe(exc), source=self.source) from exc

    def _compile(self) -> Any:
        with self._lock:
            if self._compiled is None:
                import cel  # noqa: PLC0415 - deliberately lazy: importing cel costs ~300 ms

                try:
                    self._compiled = cel.compile(self.source)
                except Exception as exc:
                    raise ExpressionError(_describe(exc), source=self.source) from exc
            return self._compiled


@lru_cache(maxsize=4096)
def compile_expression(source: str) -> Program:
    """Parse `source` (a syntax error raises `ExpressionError`) and return its `Program`.

    The runtime compile happens lazily, on the first evaluation.
    """
    try:
        parse(source)
    except CelSyntaxError as exc:
        raise ExpressionError(
            f"{exc.message} (at offset {exc.offset} of {source!r})", source=source
        ) from exc
    return Program(source)


def render_template(text: str, activation: Mapping[str, object]) -> object:
    """Evaluate the `${{ }}` expressions in `text`.

    A text that is exactly one `${{ e }}` yields the value of `e` itself, of any type;
    otherwise the parts are joined into a string (see `stringify`). Text without
    templates is returned unchanged.
    """
    parts, issues = split_template(text)
    if issues:
        raise ExpressionError(issues[0].message, source=text)
    if len(parts) == 1 and parts[0].is_expr:
        return compile_expression(parts[0].text).evaluate(activation)
    out: list[str] = []
    for part in parts:
        if part.is_expr:
            out.append(stringify(compile_expression(part.text).evaluate(activation)))
        else:
            out.append(part.text)
    return "".join(out)


def _describe(exc: Exception) -> str:
    if isinstance(exc, KeyError):
        return f"no such key: {exc.args[0]!r}" if exc.args else "no such key"
    message = str(exc).strip() or type(exc).__name__
    return message.split("\n| ", 1)[0]  # drop the runtime's ASCII-art source excerpt
