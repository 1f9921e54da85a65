"""Typed step outputs: where each declared output's value comes from, and its type check.

Owns: turning a `StepResult` into the step's declared outputs (`source: result | stdout |
file`, JSON pointers), and rendering `${{ }}` templates inside parameter values.
Must not: run steps or journal anything.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from engine import expressions as ex
from engine.errors import StepFailed
from engine.plugins import StepResult
from engine.spec import OutputSpec
from engine.spec.common import value_matches

__all__ = ["extract_outputs", "render_value", "resolve_pointer"]


def render_value(value: Any, activation: Mapping[str, Any]) -> Any:
    """Render every `${{ }}` in strings, recursively; other values pass through."""
    if isinstance(value, str):
        return ex.render_template(value, activation) if ex.has_template(value) else value
    if isinstance(value, Mapping):
        return {k: render_value(v, activation) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [render_value(v, activation) for v in value]
    return value


def resolve_pointer(document: Any, pointer: str) -> Any:
    """RFC 6901. Raises KeyError naming the first part that is missing."""
    if pointer in ("", "/"):
        return document
    node = document
    for raw in pointer.lstrip("/").split("/"):
        part = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise KeyError(part)
    return node


def extract_outputs(
    step_id: str, outputs: Mapping[str, OutputSpec], result: StepResult, project_root: Path
) -> dict[str, Any]:
    """The declared outputs' values, type-checked. Raises `StepFailed` (permanent)."""
    values: dict[str, Any] = {}
    for name, spec in outputs.items():
        value = _raw_value(step_id, name, spec, result, project_root)
        _check_type(step_id, name, spec.type, value)
        # CEL never mixes int and double in arithmetic: a `number` is always a double
        values[name] = float(value) if spec.type == "number" else value
    return values


def _raw_value(
    step_id: str, name: str, spec: OutputSpec, result: StepResult, project_root: Path
) -> Any:
    where: str
    if spec.source == "stdout":
        text = result.stdout.strip()
        document: Any = (
            text
            if spec.type == "string" and not spec.pointer
            else _json(step_id, name, text, "stdout")
        )
        where = "stdout"
    elif spec.source == "file":
        path = project_root / str(spec.file)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise StepFailed(
                f"output '{name}': cannot read {spec.file}: {exc.strerror}", step=step_id
            ) from None
        document = (
            text
            if spec.type == "string" and not spec.pointer
            else _json(step_id, name, text, str(spec.file))
        )
        where = str(spec.file)
    else:
        document = result.result
        where = "the step's result"
    pointer = (
        spec.pointer
        if spec.pointer is not None
        else (f"/{name}" if spec.source == "result" else "")
    )
    try:
        return resolve_pointer(document, pointer)
    except KeyError as exc:
        raise StepFailed(
            f"output '{name}': nothing at {pointer} in {where} (missing '{exc.args[0]}')",
            step=step_id,
        ) from None


def _json(step_id: str, name: str, text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        raise StepFailed(f"output '{name}': {where} is not JSON", step=step_id) from None


def _check_type(step_id: str, name: str, kind: str, value: Any) -> None:
    if not value_matches(kind, value):
        got = "null" if value is None else type(value).__name__
        raise StepFailed(f"output '{name}' should be {kind}, got {got}", step=step_id)
