"""The `contract` gate kind: a produced JSON artifact must meet a JSON Schema.

Owns: reading the artifact and the schema, validating with `jsonschema` (the schema's own
`$schema` dialect, Draft 2020-12 when it names none; `format` asserted), resolving `$ref`s to
files beside the schema (never over the network), and listing every violation with its JSON
path, pointer, keyword and message. Metrics: `valid`, `violations`.
Must not: repair the artifact, or fetch a schema from anywhere but the project.

A missing artifact is a measurement without metrics (the step did not produce it); a missing,
unreadable or invalid schema is a broken gate (`GateError`). An artifact that is not JSON at
all is one violation (`keyword: json`) of an invalid artifact.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from engine.errors import GateError
from engine.gates._common import (
    capped,
    file_digest,
    measurement,
    project_path,
    tool_version,
)
from engine.plugins import GateContext, Measurement
from engine.spec.flow import ContractGate

__all__ = ["ContractKind"]

MAX_MESSAGE = 300
"""A violation's message is cut here: some quote the whole offending value."""


class ContractKind:
    """JSON Schema validation of one artifact file."""

    name: str = "contract"

    async def measure(self, ctx: GateContext, gate: Any) -> Measurement:
        if not isinstance(gate, ContractGate):
            raise GateError(f"the contract kind was given a {type(gate).__name__}")
        artifact = project_path(ctx, gate.artifact, "artifact")
        schema_path = project_path(ctx, gate.schema_, "schema")
        schema = _read_schema(schema_path, gate.schema_)
        evidence: dict[str, Any] = {
            "artifact": gate.artifact,
            "artifact_sha256": file_digest(artifact),
            "schema": gate.schema_,
            "schema_sha256": file_digest(schema_path),
            "schema_id": schema.get("$id") if isinstance(schema, dict) else None,
            "validator": f"jsonschema {tool_version('jsonschema')}",
        }
        if not artifact.is_file():
            evidence["reason"] = f"the artifact {gate.artifact} does not exist"
            return measurement(
                ctx, {}, evidence, f"no artifact to check: {gate.artifact} does not exist"
            )
        try:
            instance = json.loads(artifact.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            where = (
                f" at line {exc.lineno} column {exc.colno}"
                if isinstance(exc, json.JSONDecodeError)
                else ""
            )
            detail = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
            violation = {
                "path": "$",
                "pointer": "",
                "keyword": "json",
                "message": f"not JSON: {detail}{where}",
                "schema_path": "",
            }
            evidence.update(violations=[violation], violations_omitted=0)
            return measurement(
                ctx,
                {"valid": False, "violations": 1},
                evidence,
                f"{gate.artifact} is not JSON ({detail}{where}), so it cannot meet {gate.schema_}",
            )
        violations, dialect = _validate(instance, schema, schema_path, ctx, gate.schema_)
        listed, omitted = capped(violations)
        evidence.update(dialect=dialect, violations=listed, violations_omitted=omitted)
        count = len(violations)
        if count == 0:
            summary = f"{gate.artifact} meets {gate.schema_}: no violations"
        else:
            first = violations[0]
            summary = (
                f"{count} violation{'s' if count != 1 else ''} of {gate.schema_} in "
                f"{gate.artifact}; first at {first['path']}: {first['message']}"
            )
        return measurement(ctx, {"valid": count == 0, "violations": count}, evidence, summary)


def _read_schema(path: Path, rel: str) -> Any:
    try:
        schema = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GateError(f"the schema {rel} does not exist") from None
    except OSError as exc:
        raise GateError(f"cannot read the schema {rel}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GateError(f"the schema {rel} is not JSON: {exc}") from None
    if not isinstance(schema, dict | bool):
        raise GateError(f"the schema {rel} is a JSON {type(schema).__name__}, not a schema")
    return schema


def _validate(
    instance: Any, schema: Any, schema_path: Path, ctx: GateContext, rel: str
) -> tuple[list[dict[str, Any]], str]:
    import jsonschema  # noqa: PLC0415  (only contract and review gates pay for it)
    import referencing  # noqa: PLC0415
    import referencing.exceptions  # noqa: PLC0415
    import referencing.jsonschema  # noqa: PLC0415

    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "/" + "/".join(str(p) for p in exc.absolute_path)
        raise GateError(
            f"the schema {rel} is not a valid schema at {where}: {exc.message}"
        ) from None
    root = schema
    if isinstance(schema, dict) and "$id" not in schema:
        # relative `$ref`s then resolve against the schema file itself
        root = {**schema, "$id": schema_path.as_uri()}
    base = str(root.get("$id", "")) if isinstance(root, dict) else ""

    def retrieve(uri: str) -> referencing.Resource[Any]:
        target = _local_file(uri, base, schema_path, ctx)
        if target is None:
            raise referencing.exceptions.NoSuchResource(ref=uri)  # type: ignore[call-arg]
        contents = json.loads(target.read_text(encoding="utf-8"))
        return referencing.Resource.from_contents(
            contents, default_specification=referencing.jsonschema.DRAFT202012
        )

    validator = cls(
        root,
        registry=referencing.Registry(retrieve=retrieve),  # type: ignore[call-arg]
        format_checker=cls.FORMAT_CHECKER,
    )
    try:
        errors = sorted(validator.iter_errors(instance), key=_error_order)
    except referencing.exceptions.Unresolvable as exc:
        raise GateError(
            f"the schema {rel} refers to {exc}, which is neither inside it nor a file beside "
            f"it in the project (schemas are never fetched over the network)"
        ) from None
    dialect = str(cls.META_SCHEMA.get("$schema", ""))
    return [_violation(e) for e in errors], dialect


def _local_file(uri: str, base: str, schema_path: Path, ctx: GateContext) -> Path | None:
    """The project file a `$ref` URI names: a `file:` URI inside the project, or a URI under
    the root schema's `$id` folder mapped onto the schema's own folder."""
    from urllib.parse import unquote, urlsplit  # noqa: PLC0415

    root = ctx.project_root.resolve()
    candidate: Path | None = None
    parts = urlsplit(uri)
    if parts.scheme == "file":
        candidate = Path(unquote(parts.path))
    elif base and "/" in base:
        folder = base.rsplit("/", 1)[0] + "/"
        if uri.startswith(folder):
            candidate = schema_path.parent / unquote(uri[len(folder) :].split("#", 1)[0])
    if candidate is None:
        return None
    candidate = candidate.resolve()
    if not candidate.is_relative_to(root) or not candidate.is_file():
        return None
    return candidate


def _error_order(error: Any) -> tuple[list[str], str]:
    return [str(p) for p in error.absolute_path], str(error.message)


def _violation(error: Any) -> dict[str, Any]:
    pointer = "".join(
        "/" + str(p).replace("~", "~0").replace("/", "~1") for p in error.absolute_path
    )
    message = str(error.message)
    if len(message) > MAX_MESSAGE:
        message = message[: MAX_MESSAGE - 1] + "…"
    return {
        "path": str(error.json_path),
        "pointer": pointer,
        "keyword": str(error.validator),
        "message": message,
        "schema_path": "/" + "/".join(str(p) for p in error.absolute_schema_path),
    }
