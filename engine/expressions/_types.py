"""The static types the checker reasons with, and the records it hands back.

Owns: `CelType` and its kinds (primitive singletons, `ListType`, `MapType`, `ObjectType`),
the few type algebra helpers the checker needs (`join`, `assignable`, `describe`), and the
frozen result records `ExprIssue`, `Reference` and `CheckResult`.
Must not: parse, check or evaluate anything, or import the CEL runtime. Every value here is
immutable and hashable, because parses and types are cached and shared across threads.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Final

__all__ = [
    "BOOL",
    "BYTES",
    "DOUBLE",
    "DURATION",
    "DYN",
    "INT",
    "NULL",
    "STRING",
    "TIMESTAMP",
    "TYPE",
    "UINT",
    "CelType",
    "CheckResult",
    "ExprIssue",
    "ListType",
    "MapType",
    "ObjectType",
    "PrimitiveType",
    "Reference",
    "assignable",
    "join",
    "type_from_schema_name",
]


class CelType:
    """Base of every static CEL type. Instances are immutable and compare by value."""

    __slots__ = ()

    def __str__(self) -> str:
        return type(self).__name__


@dataclass(frozen=True, slots=True)
class PrimitiveType(CelType):
    """A type with no parameters (`int`, `string`, `dyn`, ...); use the module singletons."""

    name: str

    def __str__(self) -> str:
        return self.name


BOOL: Final = PrimitiveType("bool")
INT: Final = PrimitiveType("int")
UINT: Final = PrimitiveType("uint")
DOUBLE: Final = PrimitiveType("double")
STRING: Final = PrimitiveType("string")
BYTES: Final = PrimitiveType("bytes")
NULL: Final = PrimitiveType("null")
DURATION: Final = PrimitiveType("duration")
TIMESTAMP: Final = PrimitiveType("timestamp")
# The type of type values: `int`, `type(x)`. Comparable with `==` only.
TYPE: Final = PrimitiveType("type")
# Unknown until run time: compatible with everything, so it never causes an issue.
DYN: Final = PrimitiveType("dyn")


@dataclass(frozen=True, slots=True)
class ListType(CelType):
    elem: CelType

    def __str__(self) -> str:
        return f"list({self.elem})"


@dataclass(frozen=True, slots=True)
class MapType(CelType):
    key: CelType
    value: CelType

    def __str__(self) -> str:
        return f"map({self.key}, {self.value})"


class _FrozenFields(Mapping[str, CelType]):
    """A read-only, hashable name -> type mapping (a dict cannot sit in a frozen dataclass)."""

    __slots__ = ("_data", "_hash")

    def __init__(self, fields: Mapping[str, CelType]) -> None:
        self._data: dict[str, CelType] = dict(fields)
        self._hash: int | None = None

    def __getitem__(self, key: str) -> CelType:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def get(self, key: str, default: CelType | None = None) -> CelType | None:  # type: ignore[override]  # one signature instead of typeshed overloads
        # Mapping.get goes through __getitem__ and an exception; this is on the hot path.
        return self._data.get(key, default)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, _FrozenFields):
            return self._data == other._data
        return NotImplemented

    def __hash__(self) -> int:
        # Computed once: big `steps` objects are hashed whenever a type is compared in a set.
        if self._hash is None:
            self._hash = hash(frozenset(self._data.items()))
        return self._hash

    def __repr__(self) -> str:
        return repr(self._data)


@dataclass(frozen=True, slots=True)
class ObjectType(CelType):
    """A record with known fields, such as the `steps` namespace or one step's result.

    `what` names what the fields are, for messages ("unknown step 'buidl'"). When `open` is
    true, fields not listed are `dyn` instead of an issue.
    At run time the value is a plain map, so everything a map allows works on it too.
    """

    fields: Mapping[str, CelType]
    what: str = "field"
    open: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.fields, _FrozenFields):
            object.__setattr__(self, "fields", _FrozenFields(self.fields))

    def __str__(self) -> str:
        return "object"


_SCHEMA_TYPES: Final[Mapping[str, CelType]] = {
    "string": STRING,
    "integer": INT,
    "number": DOUBLE,
    "boolean": BOOL,
    "array": ListType(DYN),
    "object": MapType(STRING, DYN),
    "any": DYN,
}


def type_from_schema_name(name: str) -> CelType:
    """Map a spec's JSON-Schema-style type name to the CEL type its values have.

    Raises `ValueError` for a name that is not one of the seven known ones.
    """
    try:
        return _SCHEMA_TYPES[name]
    except KeyError:
        known = ", ".join(sorted(_SCHEMA_TYPES))
        raise ValueError(f"unknown schema type {name!r} (known: {known})") from None


def join(a: CelType, b: CelType) -> CelType:
    """The most precise type covering both `a` and `b` (for `?:` branches and literals)."""
    if a == b:
        return a
    if isinstance(a, ListType) and isinstance(b, ListType):
        return ListType(join(a.elem, b.elem))
    if isinstance(a, MapType) and isinstance(b, MapType):
        return MapType(join(a.key, b.key), join(a.value, b.value))
    return DYN


def assignable(expected: CelType, actual: CelType) -> bool:
    """Whether a value of static type `actual` may be used where `expected` is wanted."""
    if expected == actual or expected is DYN or actual is DYN:
        return True
    if isinstance(expected, ListType) and isinstance(actual, ListType):
        return assignable(expected.elem, actual.elem)
    if isinstance(expected, MapType):
        if isinstance(actual, MapType):
            return assignable(expected.key, actual.key) and assignable(expected.value, actual.value)
        if isinstance(actual, ObjectType):
            return assignable(expected.key, STRING)
    return False


@dataclass(frozen=True, slots=True)
class ExprIssue:
    """One problem in an expression.

    `offset` is the 0-based character offset of the offending token in the expression
    source, `length` how many characters it spans (at least 1 where there is a token).
    """

    offset: int
    length: int
    message: str
    hint: str | None = None


@dataclass(frozen=True, slots=True)
class Reference:
    """A member chain rooted at an environment name, such as `steps.build.outputs.x`.

    `offset` is where the root identifier starts. Constant string indexes extend the chain
    (`inputs['a-b']` gives `("inputs", "a-b")`); anything else ends it.
    """

    path: tuple[str, ...]
    offset: int


@dataclass(frozen=True, slots=True)
class CheckResult:
    type: CelType
    issues: tuple[ExprIssue, ...]
    references: tuple[Reference, ...]

    @property
    def ok(self) -> bool:
        return not self.issues
