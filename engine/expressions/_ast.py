"""The syntax tree of a parsed expression, and printing it back to CEL source.

Owns: the node classes (immutable; positions are excluded from equality so two parses of
differently spaced text compare equal) and `to_source`, whose output parses back to an
equal tree.
Must not: parse, type-check or evaluate. Macros (`has`, `all`, `map`, ...) are plain `Call`
nodes here; the parser validates their shape and the checker gives them meaning.

Positions: `offset` is the anchor a message points at (the operator, the field or function
name, the identifier); `start`/`end` span the node's own tokens (parentheses around a node
are not part of it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

__all__ = [
    "BINARY_LEVEL",
    "Binary",
    "Call",
    "Expr",
    "Ident",
    "Index",
    "ListExpr",
    "Literal",
    "LiteralValue",
    "MapExpr",
    "Select",
    "StructExpr",
    "Ternary",
    "Unary",
    "quote_string",
    "to_source",
]

LiteralValue = int | float | str | bytes | bool | None


@dataclass(frozen=True, slots=True)
class Literal:
    kind: str  # "int" | "uint" | "double" | "string" | "bytes" | "bool" | "null"
    value: LiteralValue
    offset: int = field(default=0, compare=False)
    end: int = field(default=0, compare=False)

    @property
    def start(self) -> int:
        return self.offset


@dataclass(frozen=True, slots=True)
class Ident:
    name: str  # keeps a leading '.', which the runtime treats as part of the name
    offset: int = field(default=0, compare=False)
    end: int = field(default=0, compare=False)

    @property
    def start(self) -> int:
        return self.offset


@dataclass(frozen=True, slots=True)
class Select:
    operand: Expr
    field: str
    offset: int = field(default=0, compare=False)
    start: int = field(default=0, compare=False)
    end: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class Index:
    operand: Expr
    index: Expr
    offset: int = field(default=0, compare=False)
    start: int = field(default=0, compare=False)
    end: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class Call:
    function: str
    args: tuple[Expr, ...]
    target: Expr | None = None  # the receiver of `x.f(y)`
    offset: int = field(default=0, compare=False)
    start: int = field(default=0, compare=False)
    end: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class Unary:
    """`count` repeats of `op` written together: the runtime drops pairs (`!!x` is `x`)."""

    op: str  # "!" | "-"
    count: int
    operand: Expr
    offset: int = field(default=0, compare=False)
    end: int = field(default=0, compare=False)

    @property
    def start(self) -> int:
        return self.offset


@dataclass(frozen=True, slots=True)
class Binary:
    op: str
    left: Expr
    right: Expr
    offset: int = field(default=0, compare=False)
    start: int = field(default=0, compare=False)
    end: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class Ternary:
    cond: Expr
    then: Expr
    otherwise: Expr
    offset: int = field(default=0, compare=False)
    start: int = field(default=0, compare=False)
    end: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class ListExpr:
    elements: tuple[Expr, ...]
    offset: int = field(default=0, compare=False)
    end: int = field(default=0, compare=False)

    @property
    def start(self) -> int:
        return self.offset


@dataclass(frozen=True, slots=True)
class MapExpr:
    entries: tuple[tuple[Expr, Expr], ...]
    offset: int = field(default=0, compare=False)
    end: int = field(default=0, compare=False)

    @property
    def start(self) -> int:
        return self.offset


@dataclass(frozen=True, slots=True)
class StructExpr:
    """`a.b{f: v}` message construction: parsed (the runtime parses it) but never valid."""

    name: str
    fields: tuple[tuple[str, Expr], ...]
    offset: int = field(default=0, compare=False)
    end: int = field(default=0, compare=False)

    @property
    def start(self) -> int:
        return self.offset


Expr = Literal | Ident | Select | Index | Call | Unary | Binary | Ternary | ListExpr | MapExpr | StructExpr

# Binding strength, loosest first; a child printed below its context's level gets parentheses.
BINARY_LEVEL: Final = {
    "||": 1, "&&": 2,
    "==": 3, "!=": 3, "<": 3, "<=": 3, ">": 3, ">=": 3, "in": 3,
    "+": 4, "-": 4, "*": 5, "/": 5, "%": 5,
}  # fmt: skip
_TERNARY, _UNARY, _MEMBER = 0, 6, 7


def to_source(node: Expr) -> str:
    """CEL text for `node`, with only the parentheses the grammar needs."""
    return _fmt(node)[0]


def _child(node: Expr, level: int) -> str:
    text, own = _fmt(node)
    return text if own >= level else f"({text})"


def _fmt(node: Expr) -> tuple[str, int]:  # noqa: PLR0911, PLR0912 - one branch per node kind
    if isinstance(node, Literal):
        return _literal(node), _MEMBER
    if isinstance(node, Ident):
        return node.name, _MEMBER
    if isinstance(node, Select):
        return f"{_child(node.operand, _MEMBER)}.{node.field}", _MEMBER
    if isinstance(node, Index):
        return f"{_child(node.operand, _MEMBER)}[{_child(node.index, _TERNARY)}]", _MEMBER
    if isinstance(node, Call):
        args = ", ".join(_child(a, _TERNARY) for a in node.args)
        if node.target is None:
            return f"{node.function}({args})", _MEMBER
        return f"{_child(node.target, _MEMBER)}.{node.function}({args})", _MEMBER
    if isinstance(node, ListExpr):
        return "[" + ", ".join(_child(e, _TERNARY) for e in node.elements) + "]", _MEMBER
    if isinstance(node, MapExpr):
        items = (f"{_child(k, _TERNARY)}: {_child(v, _TERNARY)}" for k, v in node.entries)
        return "{" + ", ".join(items) + "}", _MEMBER
    if isinstance(node, StructExpr):
        items = (f"{k}: {_child(v, _TERNARY)}" for k, v in node.fields)
        return node.name + "{" + ", ".join(items) + "}", _MEMBER
    if isinstance(node, Unary):
        inner = _child(node.operand, _MEMBER)
        # `-1` and `-1.a` lex as a negative literal, and `--1` as two '-' before `1`.
        if node.op == "-" and (
            inner.startswith("-") or (node.count == 1 and inner[0] in "0123456789.")
        ):
            inner = f"({inner})"
        return node.op * node.count + inner, _UNARY
    if isinstance(node, Binary):
        level = BINARY_LEVEL[node.op]
        left = _child(node.left, level)
        right = _child(node.right, level + 1)
        return f"{left} {node.op} {right}", level
    cond = _child(node.cond, 1)
    then = _child(node.then, 1)
    return f"{cond} ? {then} : {_child(node.otherwise, _TERNARY)}", _TERNARY


def _literal(node: Literal) -> str:
    v = node.value
    if node.kind == "bool":
        return "true" if v else "false"
    if node.kind == "null":
        return "null"
    if node.kind == "uint":
        return f"{v}u"
    if node.kind == "string":
        assert isinstance(v, str)
        return quote_string(v)
    if node.kind == "bytes":
        assert isinstance(v, bytes)
        return "b'" + "".join(_byte(b) for b in v) + "'"
    return repr(v)  # int, or a double: repr always has '.', 'e' or is not finite


_STRING_ESCAPES: Final = {"\\": "\\\\", "'": "\\'", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def quote_string(text: str) -> str:
    """A single-quoted CEL string literal whose value is `text`."""
    out = []
    for ch in text:
        esc = _STRING_ESCAPES.get(ch)
        if esc is not None:
            out.append(esc)
        elif ch.isprintable():
            out.append(ch)
        elif ord(ch) <= 0xFFFF:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    return "'" + "".join(out) + "'"


def _byte(b: int) -> str:
    ch = chr(b)
    if ch in "\\'":
        return "\\" + ch
    return ch if 0x20 <= b < 0x7F else f"\\x{b:02x}"
