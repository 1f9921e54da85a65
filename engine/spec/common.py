"""Shared building blocks of every spec kind: the base model, names, durations, value types.

Owns: `SpecModel` (frozen, `extra="forbid"`, strict), the constrained string types, duration
parsing, and the header every document carries (`version`, `kind`, `name`, ...).
Must not: read files, evaluate expressions, or know about execution.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema

__all__ = [
    "LANGUAGE_VERSION",
    "DocumentHeader",
    "Duration",
    "EnvName",
    "Expression",
    "Identifier",
    "InputSpec",
    "Name",
    "Pattern",
    "RelPath",
    "SpecModel",
    "Text",
    "ValueType",
    "parse_duration",
    "value_matches",
]

LANGUAGE_VERSION = 1


def _to_text(value: Any) -> Any:
    """YAML numbers where a string is expected keep their source text (`1.10` stays `1.10`)."""
    text = getattr(value, "text", None)
    if isinstance(text, str) and isinstance(value, float | int):
        return text
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


Text = Annotated[str, BeforeValidator(_to_text)]


def Pattern(regex: str, **kwargs: Any) -> Any:
    """`Field(pattern=...)` that also keeps the pattern in the published JSON Schema (behind
    a before-validator pydantic drops it there), so editors flag what validate flags."""
    extra: dict[str, Any] = {"pattern": regex}
    return Field(pattern=regex, json_schema_extra=extra, **kwargs)


"""A string field. Plain YAML numbers are accepted as their source text."""

IDENTIFIER_PATTERN = r"^[a-z_][a-z0-9_]*$"
Identifier = Annotated[
    Text,
    Pattern(IDENTIFIER_PATTERN, max_length=64),
]
"""A step, gate, input or output id: lower snake_case, so expressions can say `steps.build`."""

Name = Annotated[Text, Pattern(r"^[a-z0-9][a-z0-9._-]*$", max_length=100)]
"""A document name: lowercase words joined by `-`, `_` or `.`."""

EnvName = Annotated[Text, Pattern(r"^[A-Z_][A-Z0-9_]*$", max_length=128)]
"""An environment variable or secret name (`OPENAI_API_KEY`)."""

RelPath = Annotated[Text, Field(min_length=1, max_length=4096)]
"""A path relative to the project root (the folder holding `pyproject.toml` or `.git`)."""

Expression = Annotated[
    Text,
    Field(min_length=1, max_length=4096, json_schema_extra={"format": "cel"}),
]
"""A CEL expression, compiled and type-checked by `blocks validate`."""

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
DURATION_PATTERN = r"^\d+(\.\d+)?(ms|s|m|h|d)?$"


def parse_duration(value: Any) -> Any:
    """`500ms`, `30s`, `15m`, `2h`, `1d`, or a number of seconds, to seconds as a float."""
    if isinstance(value, bool):
        return value  # let the float validator reject it with its own message
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match is None:
            raise ValueError(f"expected a duration like 500ms, 30s, 15m, 2h or 1d, got {value!r}")
        return float(match.group(1)) * _UNIT[match.group(2)]
    return value


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    Field(ge=0),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "minimum": 0},
                {"type": "string", "pattern": DURATION_PATTERN},
            ],
            "description": "seconds, or a duration such as 500ms, 30s, 15m, 2h, 1d",
        }
    ),
]

ValueType = Literal["string", "integer", "number", "boolean", "array", "object", "any"]


def value_matches(kind: str, value: Any) -> bool:
    """Whether a JSON value is of a `ValueType` (booleans are not numbers, as in JSON Schema)."""
    if kind == "any":
        return True
    if isinstance(value, bool):
        return kind == "boolean"
    return isinstance(value, _PYTHON_TYPES[kind])


_PYTHON_TYPES: dict[str, type | tuple[type, ...]] = {
    "string": str,
    "integer": int,
    "number": (int, float),
    "boolean": bool,
    "array": list,
    "object": Mapping,
}


class SpecModel(BaseModel):
    """Base of every spec model: immutable, unknown fields rejected, no silent coercion."""

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        strict=True,
        populate_by_name=True,
        use_attribute_docstrings=True,
        json_schema_mode_override="validation",
        defer_build=True,  # build a kind's validators when a document of that kind first needs them
    )


class DocumentHeader(SpecModel):
    """Fields every document starts with."""

    version: Literal[1]
    """The spec language version. Always 1 for now."""
    name: Name
    """The document's name, unique within a project."""
    revision: Annotated[Text, Pattern(r"^\d+\.\d+\.\d+([-+][0-9A-Za-z.-]+)?$")] | None = None
    """Semantic version of this document (`1.4.0`)."""
    owner: Text | None = None
    """Who to ask about it: a team or a person."""
    description: Text | None = None


class InputSpec(SpecModel):
    """A typed input of a flow, or a parameter of a runbook."""

    type: ValueType = "string"
    default: Any = None
    """The value used when none is given. A flow input without a default is required."""
    description: Text | None = None
    enum: list[Any] | None = None
    """If set, the value must be one of these."""
    secret: bool = False
    """Masked in logs and redacted from bundles."""
