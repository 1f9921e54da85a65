"""Typing of function, method and macro calls.

Owns: the call rules of the checker - arity and argument kinds from `_functions`, constant
arguments via `_constants`, the comprehension macros and their variable scopes, and
did-you-mean hints for unknown names.
Must not: walk other node kinds itself (it asks its host checker to) or import the CEL
runtime. Split from `_checker` only to keep each module small.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Protocol

from ._ast import Call, Expr, Ident, Literal
from ._constants import constant_problem
from ._functions import FUNCTIONS, MACROS, METHODS, describe_kinds, fits
from ._types import BOOL, DYN, STRING, CelType, ListType, MapType, ObjectType

__all__ = ["Host", "check_function", "check_method", "suggest"]


class Host(Protocol):
    """The checker, as seen from here."""

    scopes: list[tuple[str, CelType]]

    def check(self, node: Expr) -> CelType: ...

    def issue(self, offset: int, length: int, message: str, hint: str | None = None) -> None: ...

    def issue_at(self, node: Expr, message: str, hint: str | None = None) -> None: ...


def suggest(name: str, candidates: Iterable[str]) -> str | None:
    match = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f"did you mean '{match[0]}'?" if match else None


def check_function(host: Host, node: Call) -> CelType:
    """A global call: a conversion function, `size`, `type`, `dyn` or the `has` macro."""
    name = node.function
    if name == "has" and len(node.args) == 1:
        host.check(node.args[0])  # the parser made sure this is a field selection
        return BOOL
    arg_types = [host.check(a) for a in node.args]
    sig = FUNCTIONS.get(name)
    if sig is None:
        hint = (
            f"'{name}' is a method: write x.{name}(...)"
            if name in METHODS or name in MACROS
            else suggest(name, [*FUNCTIONS, "has"])
        )
        host.issue(node.offset, len(name), f"unknown function '{name}'", hint)
        return DYN
    kinds, result = sig
    if len(arg_types) != 1:
        host.issue(node.offset, len(name), f"{name}() takes 1 argument, got {len(arg_types)}")
    elif kinds is not None and not fits(arg_types[0], kinds):
        host.issue_at(
            node.args[0],
            f"{name}() does not accept {arg_types[0]}",
            f"{name}() accepts {describe_kinds(kinds)}",
        )
    else:
        arg = node.args[0]
        if isinstance(arg, Literal) and isinstance(arg.value, str):
            problem = constant_problem(name, arg.value)
            if problem is not None:
                host.issue_at(arg, *problem)
    return result


def check_method(host: Host, receiver: CelType, node: Call) -> CelType:
    """A call `x.f(..)` whose receiver has type `receiver`."""
    name = node.function
    arities = MACROS.get(name)
    if arities is not None:
        if len(node.args) in arities:
            return _macro(host, receiver, node)
        # The arguments were meant as a variable and a body; checking them would only add noise.
        message = f"{name}() takes " + " or ".join(map(str, arities)) + " arguments"
        host.issue(node.offset, len(name), f"{message}, got {len(node.args)}")
        return DYN
    arg_types = [host.check(a) for a in node.args]
    sig = METHODS.get(name)
    if sig is None:
        if isinstance(node.target, Ident) and node.target.name == "optional" and receiver is DYN:
            return DYN  # `optional` itself was reported; `.of()` after it is only noise
        hint = (
            f"'{name}' is not a method: write {name}(x)"
            if name in FUNCTIONS
            else suggest(name, [*METHODS, *MACROS])
        )
        host.issue(node.offset, len(name), f"unknown function '{name}'", hint)
        return DYN
    receivers, params, result = sig
    if not fits(receiver, receivers):
        host.issue(
            node.offset,
            len(name),
            f"{name}() is not defined on {receiver}",
            f"{name}() works on {describe_kinds(receivers)}",
        )
    if len(arg_types) != len(params):
        host.issue(
            node.offset,
            len(name),
            f"{name}() takes {len(params)} arguments, got {len(arg_types)}",
        )
    else:
        for arg, t, kinds in zip(node.args, arg_types, params, strict=True):
            if not fits(t, kinds):
                host.issue_at(arg, f"{name}() needs {describe_kinds(kinds)}, got {t}")
    return result


def _macro(host: Host, receiver: CelType, node: Call) -> CelType:
    name = node.function
    var = node.args[0]
    assert isinstance(var, Ident)  # the parser enforces a simple name
    if isinstance(receiver, ListType):
        elem = receiver.elem
    elif isinstance(receiver, MapType):
        elem = receiver.key
    elif isinstance(receiver, ObjectType):
        elem = STRING
    else:
        elem = DYN
        if receiver is not DYN:
            host.issue(node.offset, len(name), f"{name}() needs a list or map, got {receiver}")
    host.scopes.append((var.name, elem))
    try:
        body = [host.check(a) for a in node.args[1:]]
    finally:
        host.scopes.pop()
    predicates = body[:-1] if name == "map" else body
    for arg, t in zip(node.args[1:], predicates, strict=False):
        if t not in (BOOL, DYN):
            host.issue_at(arg, f"the predicate of {name}() must be bool, got {t}")
    if name == "map":
        return ListType(body[-1])
    if name == "filter":
        return ListType(elem)
    return BOOL
