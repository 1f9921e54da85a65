"""The syntax tree of a parsed expression, and printing it back to CEL source.

Owns: the node classes (never mutated; positions are excluded from equality so two parses
of differently spaced text compare equal) and `to_source`, whose output parses back to an
equal tree.
Must not: parse, type-check or evaluate. Macros (`has`, `all`, `map`, ...) are plain `Call`
nodes here; the parser validates their shape and the checker gives them meaning.

Positions: `offset` is the anchor a message points at (the operator, the field or function
name, the identifier); `start`/`end` span the node's own tokens (parentheses around a node
are not part of it).
"""

from __future__ import annotations

from typing import ClassVar, Final

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


class _Node:
    """Value semantics over `_fields`; positions are left out of equality and hashing.

    Plain slotted classes rather than frozen dataclasses: they cost a fraction to define
    (this module is imported by every `blocks validate`) and to construct. Nodes are shared
    through the parse cache, so nothing may assign to them after construction.
    """

    __slots__ = ()
    _fields: ClassVar[tuple[str, ...]] = ()

    def _key(self) -> tuple[object, ...]:
        return tuple(getattr(self, f) for f in self._fields)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, _Node)
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash((type(self).__name__, *self._key()))

    def __repr__(self) -> str:
        args = ", ".join(f"{f}={getattr(self, f)!r}" for f in self._fields)
        return f"{type(self).__name__}({args})"


class Literal(_Node):
    __slots__ = ("end", "kind", "offset", "value")
    _fields = ("kind", "value")

    def __init__(self, kind: str, value: LiteralValue, *, offset: int = 0, end: int = 0) -> None:
        self.kind = kind  # "int" | "uint" | "double" | "string" | "bytes" | "bool" | "null"
        self.value = value
        self.offset = offset
        self.end = end

    @property
    def start(self) -> int:
        return self.offset


class Ident(_Node):
    __slots__ = ("end", "name", "offset")
    _fields = ("name",)

    def __init__(self, name: str, *, offset: int = 0, end: int = 0) -> None:
        self.name = name  # keeps a leading '.', which the runtime treats as part of the name
        self.offset = offset
        self.end = end

    @property
    def start(self) -> int:
        return self.offset


class Select(_Node):
    __slots__ = ("end", "field", "offset", "operand", "start")
    _fields = ("operand", "field")

    def __init__(
        self, operand: Expr, field: str, *, offset: int = 0, start: int = 0, end: int = 0
    ) -> None:
        self.operand = operand
        self.field = field
        self.offset = offset
        self.start = start
        self.end = end


class Index(_Node):
    __slots__ = ("end", "index", "offset", "operand", "start")
    _fields = ("operand", "index")

    def __init__(
        self, operand: Expr, index: Expr, *, offset: int = 0, start: int = 0, end: int = 0
    ) -> None:
        self.operand = operand
        self.index = index
        self.offset = offset
        self.start = start
        self.end = end


class Call(_Node):
    __slots__ = ("args", "end", "function", "offset", "start", "target")
    _fields = ("function", "args", "target")

    def __init__(
        self,
        function: str,
        args: tuple[Expr, ...],
        target: Expr | None = None,  # the receiver of `x.f(y)`
        *,
        offset: int = 0,
        start: int = 0,
        end: int = 0,
    ) -> None:
        self.function = function
        self.args = args
        self.target = target
        self.offset = offset
        self.start = start
        self.end = end


class Unary(_Node):
    """`count` repeats of `op` written together: the runtime drops pairs (`!!x` is `x`)."""

    __slots__ = ("count", "end", "offset", "op", "operand")
    _fields = ("op", "count", "operand")

    def __init__(
        self, op: str, count: int, operand: Expr, *, offset: int = 0, end: int = 0
    ) -> None:
        self.op = op  # "!" | "-"
        self.count = count
        self.operand = operand
        self.offset = offset
        self.end = end

    @property
    def start(self) -> int:
        return self.offset


class Binary(_Node):
    __slots__ = ("end", "left", "offset", "op", "right", "start")
    _fields = ("op", "left", "right")

    def __init__(
        self, op: str, left: Expr, right: Expr, *, offset: int = 0, start: int = 0, end: int = 0
    ) -> None:
        self.op = op
        self.left = left
        self.right = right
        self.offset = offset
        self.start = start
        self.end = end


class Ternary(_Node):
    __slots__ = ("cond", "end", "offset", "otherwise", "start", "then")
    _fields = ("cond", "then", "otherwise")

    def __init__(
        self,
        cond: Expr,
        then: Expr,
        otherwise: Expr,
        *,
        offset: int = 0,
        start: int = 0,
        end: int = 0,
    ) -> None:
        self.cond = cond
        self.then = then
        self.otherwise = otherwise
        self.offset = offset
        self.start = start
        self.end = end


class ListExpr(_Node):
    __slots__ = ("elements", "end", "offset")
    _fields = ("elements",)

    def __init__(self, elements: tuple[Expr, ...], *, offset: int = 0, end: int = 0) -> None:
        self.elements = elements
        self.offset = offset
        self.end = end

    @property
    def start(self) -> int:
        return self.offset


class MapExpr(_Node):
    __slots__ = ("end", "entries", "offset")
    _fields = ("entries",)

    def __init__(
        self, entries: tuple[tuple[Expr, Expr], ...], *, offset: int = 0, end: int = 0
    ) -> None:
        self.entries = entries
        self.offset = offset
        self.end = end

    @property
    def start(self) -> int:
        return self.offset


class StructExpr(_Node):
    """`a.b{f: v}` message construction: parsed (the runtime parses it) but never valid."""

    __slots__ = ("end", "fields", "name", "offset")
    _fields = ("name", "fields")

    def __init__(
        self, name: str, fields: tuple[tuple[str, Expr], ...], *, offset: int = 0, end: int = 0
    ) -> None:
        self.name = name
        self.fields = fields
        self.offset = offset
        self.end = end

    @property
    def start(self) -> int:
        return self.offset


Expr = (
    Literal | Ident | Select | Index | Call | Unary | Binary | Ternary
    | ListExpr | MapExpr | StructExpr
)  # fmt: skip

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


def _fmt(node: Expr) -> tuple[str, int]:
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
        return f"{v!r}u"
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
