"""What the run-time CEL library provides, as tables the checker reads.

Owns: the function and method signatures, operator typing rules and built-in names of
common-expression-language 0.10.0 (the Rust `cel` crate behind `cel.compile`/`cel.evaluate`,
default library only). Must not: walk syntax trees or import the CEL runtime; it is data.

Facts probed with `cel.evaluate` (keep them true when upgrading the runtime):

Functions (global form only): `int uint double` (from int, uint, double, string; not bool,
not timestamp/duration), `string` (from int, uint, double, string, bytes, duration,
timestamp; not bool or null), `bytes` (string, bytes), `duration` and `timestamp` (from a
string or their own type), `dyn(x)`, `type(x)` (a type value; `type(1) == int`).
`size` works both as `size(x)` and `x.size()` on string, bytes, list and map.
Methods only (`x.f(..)`, never `f(x, ..)`): `contains startsWith endsWith matches` on
strings (not bytes, not lists); `getFullYear getMonth getDate getDayOfMonth getDayOfWeek
getDayOfYear` on timestamps and `getHours getMinutes getSeconds getMilliseconds` on
timestamps and durations, all without a time-zone argument.
Macros: `has(a.b)`; `e.all(x, p)`, `e.exists(x, p)`, `e.exists_one(x, p)`, `e.map(x, t)`,
`e.map(x, p, t)`, `e.filter(x, p)` over lists, and over maps (iterating keys).
Not available: `bool()`, `min max sum`, `lowerAscii upperAscii trim split join replace
substring charAt indexOf`, `math.*`, `strings.*`, list `contains`, `fold/reduce`.
`optional.of/none/...` exist but optional values are useless to the engine; the checker
rejects them. Type names `int uint double string bool bytes list map null_type type`
are values; `dyn` is not.

Operators:
  - no implicit numeric conversion in arithmetic: `1 + 2.0`, `1u + 1`, `2 * 3.0` fail;
    `+` also joins strings, bytes and lists (of any element types), and - a quirk -
    `list + map` appends the map's keys (`map + list` fails); `%` is int/uint only
    (`5.0 % 2.0` fails); `-` on uint fails. timestamp + duration, timestamp - duration,
    timestamp - timestamp, duration +/- duration work; duration + timestamp and
    duration * int do not.
  - int overflow, `x / 0` and `x % 0` fail at run time; `1.0 / 0.0` is inf.
  - `== !=` accept any two values (different types are simply unequal, `1 == 1.0` and
    `1 == 1u` are true, lists and maps compare deeply).
  - `< <= > >=` compare int, uint and double with each other, and string, bytes, bool,
    timestamp, duration with their own type; not null, lists, maps.
  - `x in list` accepts any x; `k in map` needs k of int, uint, bool or string (a double
    or null key is a type error).
  - `&& ||` short-circuit and absorb errors (`false && 1`, `1 || true` are accepted, but
    `true && 1` fails); the checker requires bool operands all the same.
  - `!` needs a bool; unary `-` works on int, double and, oddly, bool (`-true` is false);
    the parser drops pairs (`!!1` is `1`, `--'a'` is 'a') but `!(!1)` fails.
  - `c ? a : b` needs a bool condition; the branches may differ in type.
  - `list[i]` needs an int or uint index; `map[k]` and `map.k` fail when the key is absent;
    map keys must be int, uint, bool or string; strings cannot be indexed.
  - a map literal with a double, null, list or map key fails at run time.
"""

from __future__ import annotations

from typing import Final

from ._types import (
    BOOL,
    BYTES,
    DOUBLE,
    DURATION,
    DYN,
    INT,
    STRING,
    TIMESTAMP,
    TYPE,
    UINT,
    CelType,
    ListType,
    MapType,
    ObjectType,
)

__all__ = [
    "ARITHMETIC",
    "BUILTIN_NAMES",
    "FUNCTIONS",
    "MACROS",
    "MAP_KEY_TYPES",
    "METHODS",
    "NUMERIC",
    "ORDERED",
    "SIZED",
    "Kinds",
    "describe_kinds",
    "fits",
]

# A set of acceptable argument types; a class stands for every type of that kind.
Kinds = tuple[CelType | type[CelType], ...]

SIZED: Final[Kinds] = (STRING, BYTES, ListType, MapType, ObjectType)
NUMERIC: Final = frozenset({INT, UINT, DOUBLE})
ORDERED: Final = frozenset({STRING, BYTES, BOOL, TIMESTAMP, DURATION})
MAP_KEY_TYPES: Final = frozenset({INT, UINT, BOOL, STRING, DYN})

# name -> (accepted argument kinds, result); every one takes exactly one argument.
FUNCTIONS: Final[dict[str, tuple[Kinds | None, CelType]]] = {
    "int": ((INT, UINT, DOUBLE, STRING), INT),
    "uint": ((INT, UINT, DOUBLE, STRING), UINT),
    "double": ((INT, UINT, DOUBLE, STRING), DOUBLE),
    "string": ((INT, UINT, DOUBLE, STRING, BYTES, DURATION, TIMESTAMP), STRING),
    "bytes": ((STRING, BYTES), BYTES),
    "duration": ((STRING, DURATION), DURATION),
    "timestamp": ((STRING, TIMESTAMP), TIMESTAMP),
    "dyn": (None, DYN),
    "type": (None, TYPE),
    "size": (SIZED, INT),
}

# name -> (receiver kinds, argument kinds, result)
METHODS: Final[dict[str, tuple[Kinds, tuple[Kinds, ...], CelType]]] = {
    "size": (SIZED, (), INT),
    "contains": ((STRING,), ((STRING,),), BOOL),
    "startsWith": ((STRING,), ((STRING,),), BOOL),
    "endsWith": ((STRING,), ((STRING,),), BOOL),
    "matches": ((STRING,), ((STRING,),), BOOL),
    **dict.fromkeys(
        ("getFullYear", "getMonth", "getDate", "getDayOfMonth", "getDayOfWeek", "getDayOfYear"),
        ((TIMESTAMP,), (), INT),
    ),
    **dict.fromkeys(
        ("getHours", "getMinutes", "getSeconds", "getMilliseconds"),
        ((TIMESTAMP, DURATION), (), INT),
    ),
}

# macro -> accepted argument counts (the first argument is always the variable name)
MACROS: Final = {"all": (2,), "exists": (2,), "exists_one": (2,), "filter": (2,), "map": (2, 3)}

BUILTIN_NAMES: Final = frozenset(
    {"int", "uint", "double", "string", "bool", "bytes", "list", "map", "null_type", "type"}
)

# (operator, left, right) -> result, for the concrete types the runtime accepts.
ARITHMETIC: Final[dict[tuple[str, CelType, CelType], CelType]] = {
    **{(op, t, t): t for op in "+-*/" for t in (INT, UINT, DOUBLE)},
    **{("%", t, t): t for t in (INT, UINT)},
    ("+", STRING, STRING): STRING,
    ("+", BYTES, BYTES): BYTES,
    ("+", TIMESTAMP, DURATION): TIMESTAMP,
    ("+", DURATION, DURATION): DURATION,
    ("-", TIMESTAMP, DURATION): TIMESTAMP,
    ("-", TIMESTAMP, TIMESTAMP): DURATION,
    ("-", DURATION, DURATION): DURATION,
}


def fits(t: CelType, kinds: Kinds) -> bool:
    """Whether a value of static type `t` is among `kinds` (`dyn` always may be)."""
    if t is DYN:
        return True
    for k in kinds:
        if isinstance(k, type):
            if isinstance(t, k):
                return True
        elif k == t:
            return True
    return False


def describe_kinds(kinds: Kinds) -> str:
    names = [
        k.__name__.removesuffix("Type").lower() if isinstance(k, type) else str(k) for k in kinds
    ]
    if len(names) == 1:
        return names[0]
    return ", ".join(names[:-1]) + " or " + names[-1]
