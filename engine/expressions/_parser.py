"""A recursive-descent parser for the CEL grammar the runtime accepts, with a parse cache.

Owns: `parse(source) -> Expr` (cached by source text) and the syntax rules, kept equal to
what `cel.compile` of common-expression-language 0.10.0 accepts (a property test holds the
two together). Must not: type-check, evaluate, or import the CEL runtime.

Grammar facts confirmed against the runtime:
  - precedence, loosest first: `?:` (right-assoc), `||`, `&&`, relations `== != < <= > >= in`
    (left-assoc, so `1 < 2 < 3` parses), `+ -`, `* / %`, unary `!` / `-`, member access.
  - the middle of `c ? a : b` cannot itself be a conditional without parentheses.
  - a single `-` directly before an int or double literal is part of the literal (so
    `-9223372036854775808` and `- 9223372036854775808.a` are fine); two or more `-` are
    operators. After `!` only a member may follow, so `!-1` parses but `!-x` and `-!x` do not.
  - lists, maps and messages allow one trailing comma, even alone (`[,]`); calls do not.
  - `name{f: v}` and `.a.b{}` parse as message construction (which then fails at run time).
  - a leading `.` is allowed on names and calls and kept in the name.
  - reserved words cannot name variables, functions or macro variables, but may follow `.`.
  - optional syntax (`.?`, `[?`, `{?`) and backquoted names are rejected.
  - `has(x)` needs a field selection as its single argument (parentheses around it are fine);
    `all exists exists_one filter` with 2 arguments and `map` with 2 or 3 are macros whose
    first argument must be a simple name; any other arity is an ordinary call.
  - nesting deeper than 96 expression levels is rejected (parentheses, list and map items,
    call arguments, indexes and `?:` else-branches each add one).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Final, NoReturn, cast

from ._ast import (
    BINARY_LEVEL,
    Binary,
    Call,
    Expr,
    Ident,
    Index,
    ListExpr,
    Literal,
    LiteralValue,
    MapExpr,
    Select,
    StructExpr,
    Ternary,
    Unary,
)
from ._lexer import INT64_MAX, RESERVED, CelSyntaxError, Token, tokenize

__all__ = ["MAX_DEPTH", "CelSyntaxError", "parse"]

MAX_DEPTH: Final = 96
_MACROS: Final = {"all": (2,), "exists": (2,), "exists_one": (2,), "filter": (2,), "map": (2, 3)}
_LITERAL_KINDS: Final = frozenset({"int", "uint", "double", "string", "bytes"})
_CONSTANTS: Final = {"true": ("bool", True), "false": ("bool", False), "null": ("null", None)}


@lru_cache(maxsize=8192)
def parse(source: str) -> Expr:
    """Parse `source`; raises `CelSyntaxError` (offset, message) on the first error."""
    if not source.strip():
        raise CelSyntaxError(0, "empty expression", max(len(source), 1))
    try:
        return _Parser(source).parse_all()
    except RecursionError:
        # Only reachable when the caller's own stack is already deep; MAX_DEPTH keeps
        # normal use far from the interpreter limit.
        raise CelSyntaxError(0, "expression is nested too deeply", len(source)) from None


class _Parser:
    __slots__ = ("depth", "pos", "source", "toks")

    def __init__(self, source: str) -> None:
        self.source = source
        self.toks: list[Token] = tokenize(source)
        self.pos = 0
        self.depth = 0

    # -- helpers -----------------------------------------------------------------------

    def fail(self, message: str, tok: Token | None = None) -> NoReturn:
        t = tok if tok is not None else self.toks[self.pos]
        raise CelSyntaxError(t[1], "syntax error: " + message, max(t[2] - t[1], 1))

    def text(self, tok: Token) -> str:
        if tok[0] == "eof":
            return "end of expression"
        snippet = self.source[tok[1] : tok[2]]
        return repr(snippet if len(snippet) <= 20 else snippet[:17] + "...")

    def expect(self, kind: str, context: str) -> Token:
        tok = self.toks[self.pos]
        if tok[0] != kind:
            self.fail(f"expected '{kind}' {context}, got {self.text(tok)}")
        self.pos += 1
        return tok

    # -- grammar -----------------------------------------------------------------------

    def parse_all(self) -> Expr:
        node = self.expr()
        tok = self.toks[self.pos]
        if tok[0] != "eof":
            if tok[0] in ")]}":
                self.fail(f"unmatched {self.text(tok)}")
            self.fail(f"unexpected {self.text(tok)} after a complete expression")
        return node

    def expr(self) -> Expr:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            self.fail(f"expression is nested too deeply (more than {MAX_DEPTH} levels)")
        node = self.binary()
        if self.toks[self.pos][0] == "?":
            q = self.toks[self.pos]
            self.pos += 1
            then = self.binary()
            if self.toks[self.pos][0] == "?":
                self.fail("a conditional in the middle of '?:' needs parentheses")
            self.expect(":", "in a conditional expression")
            otherwise = self.expr()
            node = Ternary(node, then, otherwise, offset=q[1], start=node.start, end=otherwise.end)
        self.depth -= 1
        return node

    def binary(self) -> Expr:
        """Binary operators by precedence, with explicit stacks instead of recursion so
        that the Python stack grows only with bracket nesting (bounded by MAX_DEPTH)."""
        toks = self.toks
        operands = [self.unary()]
        ops: list[Token] = []
        while True:
            tok = toks[self.pos]
            level = BINARY_LEVEL.get(tok[0])
            if level is None:
                break
            while ops and BINARY_LEVEL[ops[-1][0]] >= level:  # left-associative
                _reduce(operands, ops.pop())
            ops.append(tok)
            self.pos += 1
            operands.append(self.unary())
        while ops:
            _reduce(operands, ops.pop())
        return operands[0]

    def unary(self) -> Expr:
        toks = self.toks
        first = toks[self.pos]
        op = first[0]
        if op not in ("!", "-"):
            return self.member()
        count = 1
        while toks[self.pos + count][0] == op:
            count += 1
        if op == "-" and count == 1 and toks[self.pos + 1][0] in ("int", "double"):
            return self.member()  # a negative literal, possibly with member access after it
        self.pos += count
        operand = self.member()
        return Unary(op, count, operand, offset=first[1], end=operand.end)

    def member(self) -> Expr:
        node = self.primary()
        toks = self.toks
        while True:
            tok = toks[self.pos]
            if tok[0] == ".":
                name = toks[self.pos + 1]
                if name[0] != "ident":
                    if name[0] == "?":
                        self.fail("optional field selection '.?' is not supported", name)
                    self.fail(f"expected a field name after '.', got {self.text(name)}", name)
                self.pos += 2
                if toks[self.pos][0] == "(":
                    args, end = self.arguments()
                    node = self.macro_check(
                        Call(str(name[3]), args, node, offset=name[1], start=node.start, end=end)
                    )
                else:
                    node = Select(node, str(name[3]), offset=name[1], start=node.start, end=name[2])
            elif tok[0] == "[":
                self.pos += 1
                if toks[self.pos][0] == "?":
                    self.fail("optional index '[?' is not supported")
                index = self.expr()
                close = self.expect("]", "to close '['")
                node = Index(node, index, offset=tok[1], start=node.start, end=close[2])
            else:
                return node

    def primary(self) -> Expr:
        toks = self.toks
        tok = toks[self.pos]
        kind = tok[0]
        if kind in _LITERAL_KINDS:
            self.pos += 1
            if kind == "int" and isinstance(tok[3], int) and tok[3] > INT64_MAX:
                self.fail("int literal out of range (max 9223372036854775807)", tok)
            return Literal(kind, cast(LiteralValue, tok[3]), offset=tok[1], end=tok[2])
        if kind in _CONSTANTS:
            self.pos += 1
            lit_kind, value = _CONSTANTS[kind]
            return Literal(lit_kind, value, offset=tok[1], end=tok[2])
        if kind == "-":
            return self.negative_literal(tok)
        if kind in ("ident", "."):
            return self.name_or_call(tok)
        if kind == "(":
            self.pos += 1
            node = self.expr()
            self.expect(")", f"to close '(' at {tok[1]}")
            return node
        if kind == "[":
            return self.list_expr(tok)
        if kind == "{":
            return self.map_expr(tok)
        prev = toks[self.pos - 1] if self.pos else None
        if prev is not None:
            if kind == "eof":
                self.fail(f"expected an operand after {self.text(prev)}")
            self.fail(f"expected an operand after {self.text(prev)}, got {self.text(tok)}")
        self.fail(f"unexpected {self.text(tok)}")

    def negative_literal(self, minus: Token) -> Expr:
        num = self.toks[self.pos + 1]
        if num[0] not in ("int", "double"):
            prev = self.toks[self.pos - 1]
            self.fail(f"'-' cannot follow {self.text(prev)} here; add parentheses")
        self.pos += 2
        value = num[3]
        assert isinstance(value, int | float)
        if num[0] == "int" and isinstance(value, int) and value > INT64_MAX + 1:
            self.fail("int literal out of range (min -9223372036854775808)", num)
        return Literal(num[0], -value, offset=minus[1], end=num[2])

    def name_or_call(self, tok: Token) -> Expr:
        toks = self.toks
        start = tok[1]
        dot = ""
        if tok[0] == ".":
            name_tok = toks[self.pos + 1]
            if name_tok[0] != "ident":
                self.fail(f"expected a name after '.', got {self.text(name_tok)}", name_tok)
            self.pos += 1
            dot = "."
        else:
            name_tok = tok
        # `a.b.c{` is a message name; look ahead before treating `a` as a variable.
        j = self.pos
        while toks[j + 1][0] == "." and toks[j + 2][0] == "ident":
            j += 2
        if toks[j + 1][0] == "{":
            name = dot + ".".join(str(toks[k][3]) for k in range(self.pos, j + 1, 2))
            self.pos = j + 1
            return self.struct_expr(name, start)
        name = dot + str(name_tok[3])
        if name_tok[3] in RESERVED:
            self.fail(f"'{name_tok[3]}' is a reserved word and cannot be used as a name", name_tok)
        self.pos += 1
        if toks[self.pos][0] == "(":
            args, end = self.arguments()
            call = Call(name, args, offset=start, start=start, end=end)
            if name == "has" and len(args) == 1 and not isinstance(args[0], Select):
                self.fail("has() needs a field selection, like has(a.b)", _first_token(args[0]))
            return call
        return Ident(name, offset=start, end=name_tok[2])

    def macro_check(self, call: Call) -> Call:
        arities = _MACROS.get(call.function)
        if arities and len(call.args) in arities and not isinstance(call.args[0], Ident):
            self.fail(
                f"the first argument of {call.function}() must be a simple name",
                _first_token(call.args[0]),
            )
        return call

    def arguments(self) -> tuple[tuple[Expr, ...], int]:
        toks = self.toks
        self.pos += 1  # '('
        args: list[Expr] = []
        if toks[self.pos][0] != ")":
            while True:
                args.append(self.expr())
                if toks[self.pos][0] != ",":
                    break
                self.pos += 1
        close = self.expect(")", "after the arguments")
        return tuple(args), close[2]

    def list_expr(self, open_tok: Token) -> Expr:
        toks = self.toks
        self.pos += 1
        elements: list[Expr] = []
        if toks[self.pos][0] == "," and toks[self.pos + 1][0] == "]":
            self.pos += 1
        while toks[self.pos][0] != "]":
            if toks[self.pos][0] == "?":
                self.fail("optional list element '?' is not supported")
            elements.append(self.expr())
            if toks[self.pos][0] != ",":
                break
            self.pos += 1
        close = self.expect("]", f"to close '[' at {open_tok[1]}")
        return ListExpr(tuple(elements), offset=open_tok[1], end=close[2])

    def map_expr(self, open_tok: Token) -> Expr:
        toks = self.toks
        self.pos += 1
        entries: list[tuple[Expr, Expr]] = []
        if toks[self.pos][0] == "," and toks[self.pos + 1][0] == "}":
            self.pos += 1
        while toks[self.pos][0] != "}":
            if toks[self.pos][0] == "?":
                self.fail("optional map entry '?' is not supported")
            key = self.expr()
            self.expect(":", "after a map key")
            entries.append((key, self.expr()))
            if toks[self.pos][0] != ",":
                break
            self.pos += 1
        close = self.expect("}", f"to close '{{' at {open_tok[1]}")
        return MapExpr(tuple(entries), offset=open_tok[1], end=close[2])

    def struct_expr(self, name: str, start: int) -> Expr:
        toks = self.toks
        self.pos += 1  # '{'
        fields: list[tuple[str, Expr]] = []
        if toks[self.pos][0] == "," and toks[self.pos + 1][0] == "}":
            self.pos += 1
        while toks[self.pos][0] != "}":
            tok = toks[self.pos]
            if tok[0] == "?":
                self.fail("optional field '?' is not supported")
            if tok[0] != "ident":
                self.fail(f"expected a field name, got {self.text(tok)}")
            self.pos += 1
            self.expect(":", "after a field name")
            fields.append((str(tok[3]), self.expr()))
            if toks[self.pos][0] != ",":
                break
            self.pos += 1
        close = self.expect("}", "to close the message")
        return StructExpr(name, tuple(fields), offset=start, end=close[2])


def _reduce(operands: list[Expr], op: Token) -> None:
    right = operands.pop()
    left = operands.pop()
    operands.append(Binary(op[0], left, right, offset=op[1], start=left.start, end=right.end))


def _first_token(node: Expr) -> Token:
    return ("", node.start, node.end, None)
