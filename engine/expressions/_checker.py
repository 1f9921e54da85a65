"""Static type checking of a parsed expression against the names it may reference.

Owns: `check_expression` - parse (cached), infer the type of every node, collect issues that
the runtime would reject for type reasons and the member chains rooted at environment names.
Must not: import the CEL runtime, raise on bad input, or flag what the runtime accepts (the
typing rules live in `_functions`, which documents how they were established). `dyn` is
compatible with everything and propagates.

Left-nested chains (`a.b.c...`, `1 + 1 + ...`) are walked iteratively so that long but
valid expressions cannot exhaust the Python stack; other nesting is bounded by the parser.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from ._ast import (
    Binary,
    Call,
    Expr,
    Ident,
    Index,
    ListExpr,
    Literal,
    MapExpr,
    Select,
    StructExpr,
    Ternary,
    Unary,
)
from ._calls import check_function, check_method, suggest
from ._functions import (
    ARITHMETIC,
    BUILTIN_NAMES,
    MAP_KEY_TYPES,
    NUMERIC,
    ORDERED,
)
from ._parser import CelSyntaxError, parse
from ._types import (
    BOOL,
    BYTES,
    DOUBLE,
    DYN,
    INT,
    NULL,
    STRING,
    TYPE,
    UINT,
    CelType,
    CheckResult,
    ExprIssue,
    ListType,
    MapType,
    ObjectType,
    Reference,
    assignable,
    join,
)

__all__ = ["check_expression"]

_LITERAL_TYPES: Final = {
    "int": INT, "uint": UINT, "double": DOUBLE, "string": STRING, "bytes": BYTES,
    "bool": BOOL, "null": NULL,
}  # fmt: skip
_RELATIONS: Final = frozenset({"<", "<=", ">", ">="})


def check_expression(
    source: str, env: Mapping[str, CelType], *, expect: CelType | None = None
) -> CheckResult:
    """Parse and type-check `source` against `env`; never raises for bad input.

    With `expect`, a result type that cannot be used as `expect` is an issue
    (`expect=BOOL` for conditions).
    """
    try:
        tree = parse(source)
    except CelSyntaxError as exc:
        return CheckResult(DYN, (ExprIssue(exc.offset, exc.length, exc.message),), ())
    checker = _Checker(env)
    try:
        result = checker.check(tree)
    except RecursionError:  # only if the caller's stack is already deep; never raise
        issue = ExprIssue(0, max(len(source), 1), "expression is nested too deeply to check")
        return CheckResult(DYN, (issue,), ())
    if expect is not None and not assignable(expect, result):
        checker.issue(
            tree.start,
            tree.end - tree.start,
            f"expected {_article(str(expect))} expression, got {result}",
        )
    refs = checker.refs
    if len(refs) > 1:
        refs.sort(key=lambda r: r.offset)
    return CheckResult(result, tuple(checker.issues), tuple(refs))


def _article(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


class _Checker:
    __slots__ = ("env", "issues", "refs", "scopes")

    def __init__(self, env: Mapping[str, CelType]) -> None:
        self.env = env
        self.scopes: list[tuple[str, CelType]] = []  # macro variables, innermost last
        self.issues: list[ExprIssue] = []
        self.refs: list[Reference] = []

    def issue(self, offset: int, length: int, message: str, hint: str | None = None) -> None:
        self.issues.append(ExprIssue(offset, max(length, 1), message, hint))

    def issue_at(self, node: Expr, message: str, hint: str | None = None) -> None:
        self.issue(node.start, node.end - node.start, message, hint)

    # -- traversal ---------------------------------------------------------------------

    def check(self, node: Expr) -> CelType:
        node, spine = _left_spine(node)
        path: list[str] | None = None
        if isinstance(node, Ident):
            t, rooted = self.ident(node)
            if rooted:
                path = [node.name]
        else:
            t = self.leaf(node)
        for outer in reversed(spine):
            if isinstance(outer, Select):
                if path is not None:
                    path.append(outer.field)
                t = self.select(t, outer.field, outer.offset)
                continue
            if path is not None and not _extends_path(outer, path):
                self.refs.append(Reference(tuple(path), node.start))
                path = None
            if isinstance(outer, Binary):
                # Checked here rather than in binary(): one stack frame per nested operand.
                t = self.binary(t, outer, self.check(outer.right))
            elif isinstance(outer, Index):
                t = self.index(t, outer)
            else:
                t = check_method(self, t, outer)
        if path is not None:
            self.refs.append(Reference(tuple(path), node.start))
        return t

    def leaf(self, node: Expr) -> CelType:
        if isinstance(node, Literal):
            return _LITERAL_TYPES[node.kind]
        if isinstance(node, Unary):
            return self.unary(node)
        if isinstance(node, Ternary):
            return self.ternary(node)
        if isinstance(node, Call):
            return check_function(self, node)
        if isinstance(node, ListExpr):
            elem: CelType | None = None
            for e in node.elements:
                et = self.check(e)
                elem = et if elem is None else join(elem, et)
            return ListType(elem or DYN)
        if isinstance(node, MapExpr):
            return self.map_literal(node)
        if isinstance(node, StructExpr):
            for _, value in node.fields:
                self.check(value)
            self.issue(node.offset, len(node.name), "message construction is not supported")
            return DYN
        raise AssertionError(f"not a leaf: {node!r}")  # check() handles chains and names

    # -- names and members -------------------------------------------------------------

    def ident(self, node: Ident) -> tuple[CelType, bool]:
        name = node.name
        for var, var_type in reversed(self.scopes):
            if var == name:
                return var_type, False
        t = self.env.get(name)
        if t is not None:
            return t, True
        if name in BUILTIN_NAMES:
            return TYPE, False
        length = node.end - node.offset
        if name == "optional":
            self.issue(node.offset, length, "optional values are not supported")
            return DYN, False
        names = [*self.env, *(var for var, _ in self.scopes)]
        self.issue(node.offset, length, f"unknown name '{name}'", suggest(name, names))
        return DYN, False

    def select(self, t: CelType, name: str, offset: int) -> CelType:
        if isinstance(t, ObjectType):
            found = t.fields.get(name)
            if found is not None:
                return found
            if not t.open:
                self.issue(offset, len(name), f"unknown {t.what} '{name}'", suggest(name, t.fields))
            return DYN
        if isinstance(t, MapType):
            if t.key in (STRING, DYN):
                return t.value
            self.issue(
                offset, len(name), f"cannot select '{name}' on {t}: its keys are not strings"
            )
            return DYN
        if t is not DYN:
            self.issue(offset, len(name), f"cannot select field '{name}' on {t}")
        return DYN

    def index(self, t: CelType, node: Index) -> CelType:
        k = self.check(node.index)
        if isinstance(t, ListType):
            if k not in (INT, UINT, DYN):
                self.issue_at(node.index, f"list index must be int or uint, got {k}")
            return t.elem
        if isinstance(t, MapType):
            if k not in MAP_KEY_TYPES:
                self.issue_at(node.index, f"{k} cannot be a map key")
            elif t.key is not DYN and k is not DYN and k != t.key:
                self.issue_at(node.index, f"the keys of {t} are {t.key}, got {k}")
            return t.value
        if isinstance(t, ObjectType):
            if isinstance(node.index, Literal) and node.index.kind == "string":
                return self.select(t, str(node.index.value), node.index.start)
            if k not in (STRING, DYN):
                self.issue_at(node.index, f"object keys are strings, got {k}")
            return DYN
        if t is not DYN:
            self.issue(node.offset, 1, f"cannot index {t}")
        return DYN

    # -- operators ---------------------------------------------------------------------

    def unary(self, node: Unary) -> CelType:
        t = self.check(node.operand)
        if node.count % 2 == 0:
            return t  # the runtime drops operator pairs entirely
        if node.op == "!":
            if t not in (BOOL, DYN):
                self.issue(node.offset, 1, f"'!' needs a bool, got {t}")
            return BOOL
        if t in (INT, DOUBLE, BOOL, DYN):
            return t
        self.issue(node.offset, 1, f"cannot negate {t}")
        return DYN

    def binary(self, left: CelType, node: Binary, right: CelType) -> CelType:
        op = node.op
        if op in ("&&", "||"):
            for side, t in ((node.left, left), (node.right, right)):
                if t not in (BOOL, DYN):
                    self.issue_at(side, f"'{op}' needs bool operands, got {t}")
        elif op in _RELATIONS:
            if not _orderable(left, right):
                self.issue(node.offset, len(op), f"cannot compare {left} and {right} with '{op}'")
        elif op == "in":
            if isinstance(right, MapType | ObjectType):
                if left not in MAP_KEY_TYPES:
                    self.issue_at(node.left, f"{left} cannot be a map key")
            elif not isinstance(right, ListType) and right is not DYN:
                self.issue_at(node.right, f"'in' needs a list or map on the right, got {right}")
        elif op not in ("==", "!="):
            return self.arithmetic(left, right, node)
        return BOOL

    def arithmetic(self, left: CelType, right: CelType, node: Binary) -> CelType:
        op = node.op
        divisor = node.right
        if (
            op in "/%"
            and isinstance(divisor, Literal)
            and divisor.kind in ("int", "uint")
            and divisor.value == 0
        ):
            self.issue_at(divisor, "division by zero" if op == "/" else "modulo by zero")
        if left is DYN or right is DYN:
            return DYN
        if op == "+" and isinstance(left, ListType):
            if isinstance(right, ListType):
                return ListType(join(left.elem, right.elem))
            if isinstance(right, MapType):  # a runtime quirk: appends the map's keys
                return ListType(join(left.elem, right.key))
            if isinstance(right, ObjectType):
                return ListType(join(left.elem, STRING))
        result = ARITHMETIC.get((op, left, right))
        if result is not None:
            return result
        hint = None
        if left in NUMERIC and right in NUMERIC:
            hint = "CEL never converts numbers implicitly; use int(), uint() or double()"
        elif STRING in (left, right) and op == "+":
            hint = "convert the other side with string()"
        self.issue(node.offset, len(op), f"cannot apply '{op}' to {left} and {right}", hint)
        return DYN

    def ternary(self, node: Ternary) -> CelType:
        cond = self.check(node.cond)
        if cond not in (BOOL, DYN):
            self.issue_at(node.cond, f"the condition of '?:' must be bool, got {cond}")
        return join(self.check(node.then), self.check(node.otherwise))

    def map_literal(self, node: MapExpr) -> CelType:
        key: CelType | None = None
        value: CelType | None = None
        for k_node, v_node in node.entries:
            k = self.check(k_node)
            if k not in MAP_KEY_TYPES:
                self.issue_at(k_node, f"{k} cannot be a map key (use int, uint, bool or string)")
            v = self.check(v_node)
            key = k if key is None else join(key, k)
            value = v if value is None else join(value, v)
        return MapType(key or DYN, value or DYN)


def _left_spine(node: Expr) -> tuple[Expr, list[Binary | Select | Index | Call]]:
    """The innermost left operand of `node`, and the nodes above it, outermost first."""
    spine: list[Binary | Select | Index | Call] = []
    while True:
        if isinstance(node, Select):
            spine.append(node)
            node = node.operand
        elif isinstance(node, Binary):
            spine.append(node)
            node = node.left
        elif isinstance(node, Index):
            spine.append(node)
            node = node.operand
        elif isinstance(node, Call) and node.target is not None:
            spine.append(node)
            node = node.target
        else:
            return node, spine


def _extends_path(node: Binary | Index | Call, path: list[str]) -> bool:
    """Whether `node` continues a reference chain (`x['key']`); if so, extend `path`."""
    if isinstance(node, Index) and isinstance(node.index, Literal) and node.index.kind == "string":
        path.append(str(node.index.value))
        return True
    return False


def _orderable(a: CelType, b: CelType) -> bool:
    if a is DYN or b is DYN:
        return True
    if a in NUMERIC and b in NUMERIC:
        return True
    return a == b and a in ORDERED
