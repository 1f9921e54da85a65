"""Turning pydantic validation errors into diagnostics a person can act on.

Owns: the wording of every structural error (unknown field, wrong type, bad kind, missing
field), "did you mean" for field and kind names, and mapping pydantic's error locations back
to data paths (and so to `file:line:col`).
Must not: decide what is valid (the models do), or print.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ValidationError

from engine.errors import Diagnostic
from engine.loader import LoadedDocument, Path, pointer_of

__all__ = ["convert_validation_error", "describe_value", "did_you_mean"]


def did_you_mean(name: str, choices: Iterable[str]) -> str | None:
    """A hint naming the closest choice, if one is close enough."""
    options = sorted(set(choices))
    close = difflib.get_close_matches(name, options, n=1, cutoff=0.6)
    if not close:
        lowered = {o.lower(): o for o in options}
        if name.lower() in lowered:
            close = [lowered[name.lower()]]
    return f"did you mean '{close[0]}'?" if close else None


def describe_value(value: Any) -> str:
    """How a YAML value reads to the person who wrote it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, float):
        return f"number {getattr(value, 'text', value)}"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"string {shown!r}"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, Sequence):
        return "a list"
    return type(value).__name__


_EXPECTED = {
    "string_type": "a string",
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "int_from_float": "an integer",
}

_PATTERN_HELP = {
    r"^[a-z_][a-z0-9_]*$": "an id in lower snake_case (a-z, 0-9, _), usable in expressions",
    r"^[a-z0-9][a-z0-9._-]*$": "a name in lowercase letters, digits, '.', '_' or '-'",
    r"^[A-Z_][A-Z0-9_]*$": "an environment variable name (A-Z, 0-9, _)",
    r"^sha256:[0-9a-f]{64}$": "a digest like sha256:<64 hex digits>",
    r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*$": (
        "a Python callable written module:function (e.g. examples.basel.build:render_block)"
    ),
    r"^\d+\.\d+\.\d+([-+][0-9A-Za-z.-]+)?$": "a semantic version like 1.4.0",
    r"^(/.*)?$": "a JSON pointer starting with / (or empty)",
}

_UNION_NOUN = {
    "steps": "step kind",
    "gates": "gate kind",
    "do": "procedure kind",
    "undo": "procedure kind",
}


def convert_validation_error(
    exc: ValidationError, model: type[BaseModel], doc: LoadedDocument
) -> list[Diagnostic]:
    """One diagnostic per pydantic error, positioned in the source."""
    out: list[Diagnostic] = []
    seen: set[tuple[str, str]] = set()
    for error in exc.errors(include_url=False):
        path, fields = _data_path(doc.data, error["loc"], model)
        diag = _diagnostic(error, path, fields, doc)
        key = (diag.pointer, diag.message)
        if key not in seen:
            seen.add(key)
            out.append(diag)
    return out


def _diagnostic(
    error: Mapping[str, Any], path: Path, fields: Sequence[str] | None, doc: LoadedDocument
) -> Diagnostic:
    kind = str(error["type"])
    loc = error["loc"]
    value = error.get("input")
    ctx = error.get("ctx") or {}
    last = loc[-1] if loc else ""
    pointer = pointer_of(path)
    hint: str | None = None
    if kind == "extra_forbidden":
        message = f"unknown field '{last}'"
        hint = did_you_mean(str(last), fields or ())
        if hint is None and fields:
            hint = "expected one of: " + ", ".join(sorted(fields))
        return Diagnostic("spec.unknown-field", message, doc.locate(path, key=True), pointer, hint)
    if kind == "missing":
        message = f"missing required field '{last}'"
        return Diagnostic("spec.missing-field", message, doc.locate(path[:-1]), pointer, None)
    location = doc.locate(path)
    if kind == "union_tag_invalid":
        noun = _UNION_NOUN.get(str(path[-2]) if len(path) >= 2 else "", "kind")
        if path and path[-1] in ("do", "undo"):
            noun = "procedure kind"
        tags = [t.strip(" '") for t in str(ctx.get("expected_tags", "")).split(",")]
        message = f"unknown {noun} '{ctx.get('tag')}'; expected one of: {', '.join(tags)}"
        hint = did_you_mean(str(ctx.get("tag")), tags)
        return Diagnostic("spec.unknown-kind", message, doc.locate((*path, "kind")), pointer, hint)
    if kind == "union_tag_not_found":
        message = "missing required field 'kind'"
        return Diagnostic("spec.missing-field", message, location, pointer + "/kind", None)
    if kind == "literal_error":
        expected = str(ctx.get("expected", ""))
        options = [o.strip(" '") for o in expected.replace(" or ", ",").split(",") if o.strip()]
        message = f"expected {expected}, got {describe_value(value)}"
        if isinstance(value, str):
            hint = did_you_mean(value, options)
        return Diagnostic("spec.bad-value", message, location, pointer, hint)
    if kind in _EXPECTED:
        message = f"expected {_EXPECTED[kind]}, got {describe_value(value)}"
        if kind == "string_type" and isinstance(value, bool):
            hint = f"quote it: '{str(value).lower()}'"
        return Diagnostic("spec.wrong-type", message, location, pointer, hint)
    if kind == "string_pattern_mismatch":
        pattern = str(ctx.get("pattern", ""))
        wanted = _PATTERN_HELP.get(pattern, f"text matching {pattern}")
        message = f"{describe_value(value)} is not {wanted}"
        return Diagnostic("spec.bad-value", message, location, pointer, None)
    if kind == "too_short" and isinstance(value, Mapping | list):
        noun = "entry" if isinstance(value, Mapping) else "item"
        message = f"needs at least {ctx.get('min_length', 1)} {noun}, got none"
        return Diagnostic("spec.bad-value", message, location, pointer, None)
    if kind == "value_error":
        message = str(error["msg"]).removeprefix("Value error, ")
        return Diagnostic("spec.bad-value", message, location, pointer, None)
    message = str(error["msg"])
    message = message[0].lower() + message[1:] if message else kind
    return Diagnostic(
        "spec.bad-value", f"{message}, got {describe_value(value)}", location, pointer, None
    )


def _data_path(
    data: Any, loc: Sequence[str | int], model: type[BaseModel]
) -> tuple[Path, list[str] | None]:
    """Map pydantic's `loc` to a path in the data, skipping union tags and validator names.

    Also returns the field names allowed where the error is, for "did you mean".
    """
    path: list[str | int] = []
    node: Any = data
    annotation: Any = model
    for index, part in enumerate(loc):
        annotation = _select(annotation, node)
        if isinstance(node, Mapping) and part in node:
            annotation = _child_annotation(annotation, part)
            path.append(part)
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            annotation = _item_annotation(annotation)
            path.append(part)
            node = node[part]
        elif index == len(loc) - 1 and isinstance(node, Mapping) and _is_model(annotation):
            # a missing field: the path ends at the mapping that should hold it
            path.append(part)
            break
        # anything else is pydantic's own bookkeeping (a union tag, a validator name): skip
    annotation = _select(annotation, node)
    fields = _field_names(annotation) if _is_model(annotation) else None
    if fields is None and loc and path and path[-1] == loc[-1]:
        parent = _select(_annotation_at(model, data, path[:-1]), _node_at(data, path[:-1]))
        fields = _field_names(parent) if _is_model(parent) else None
    return tuple(path), fields


def _node_at(data: Any, path: Sequence[str | int]) -> Any:
    for part in path:
        data = data[part]
    return data


def _annotation_at(model: type[BaseModel], data: Any, path: Sequence[str | int]) -> Any:
    annotation: Any = model
    node = data
    for part in path:
        annotation = _select(annotation, node)
        annotation = (
            _item_annotation(annotation)
            if isinstance(part, int)
            else _child_annotation(annotation, part)
        )
        node = node[part]
    return annotation


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _field_names(model: type[BaseModel]) -> list[str]:
    return [info.alias or name for name, info in model.model_fields.items()]


def _strip(annotation: Any) -> Any:
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation


def _members(annotation: Any) -> list[Any]:
    annotation = _strip(annotation)
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        out: list[Any] = []
        for arg in typing.get_args(annotation):
            out.extend(_members(arg))
        return out
    return [annotation]


def _select(annotation: Any, node: Any) -> Any:
    """Pick the union member that fits `node` (by `kind`, else the first model / container)."""
    members = [m for m in _members(annotation) if m is not type(None)]
    if len(members) == 1:
        return members[0]
    models = [m for m in members if _is_model(m)]
    if isinstance(node, Mapping):
        kind = node.get("kind")
        for candidate in models:
            field = candidate.model_fields.get("kind")
            if field is not None and kind in typing.get_args(_strip(field.annotation)):
                return candidate
        if models:
            return models[0]
        for m in members:
            if typing.get_origin(m) is dict:
                return m
    if isinstance(node, list):
        for m in members:
            if typing.get_origin(m) is list:
                return m
    return members[0] if members else annotation


def _child_annotation(annotation: Any, key: str | int) -> Any:
    if _is_model(annotation):
        for name, info in annotation.model_fields.items():
            if key in (name, info.alias):
                return info.annotation
        return Any
    if typing.get_origin(annotation) is dict:
        return typing.get_args(annotation)[1]
    return Any


def _item_annotation(annotation: Any) -> Any:
    if typing.get_origin(annotation) is list:
        return typing.get_args(annotation)[0]
    return Any
