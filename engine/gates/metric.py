"""The `metric` gate kind: thresholds over metrics a flow declares itself.

Owns: reading each declared metric, from a rendered `value` template (`ctx.render`) or from a
JSON `file` and `pointer`, and typing it as its `MetricSource.type` says (`number` -> float,
`integer` -> int, `boolean` -> bool, `string` -> str; text that a template rendered is parsed
when it spells the type, e.g. "0.93" as a number). A metric that cannot be read (the file or
pointer is missing, the template fails, the value has another type, a number is NaN) is absent,
and the evidence says which and why. A baseline (the metrics of the bundle a channel points
at) is given to the gate by the engine as `ctx.resources["baseline"]`: a mapping of metric
name to value, or None when there is none; when present it is exposed as the metric
`baseline`, so `require` can say `accuracy >= baseline.accuracy - 0.01`.
Must not: look the baseline up itself (the engine resolves channels), or judge.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from engine.errors import EngineError, GateError
from engine.gates._common import file_digest, measurement, project_path, resolve_pointer
from engine.plugins import GateContext, Measurement
from engine.spec.flow import MetricGate, MetricSource

__all__ = ["BASELINE_RESOURCE", "MetricKind"]

BASELINE_RESOURCE = "baseline"
"""Key of `GateContext.resources` under which the engine passes baseline metrics."""


class MetricKind:
    """Declared metrics, read and typed."""

    name: str = "metric"

    async def measure(self, ctx: GateContext, gate: Any) -> Measurement:
        if not isinstance(gate, MetricGate):
            raise GateError(f"the metric kind was given a {type(gate).__name__}")
        metrics: dict[str, Any] = {}
        sources: dict[str, Any] = {}
        absent: dict[str, str] = {}
        documents: dict[str, Any] = {}
        for name, source in gate.metrics.items():
            origin, value, problem = _read(ctx, source, documents)
            record: dict[str, Any] = {"type": source.type, **origin}
            if problem is None:
                value, problem = _typed(value, source.type)
            if problem is None:
                metrics[name] = value
                record["value"] = value
            else:
                absent[name] = problem
                record["absent"] = problem
            sources[name] = record
        evidence: dict[str, Any] = {"metrics": sources}
        if absent:
            evidence["absent"] = absent
        files = {rel: doc["sha256"] for rel, doc in documents.items() if doc.get("sha256")}
        if files:
            evidence["files"] = files
        resolved = (ctx.resources.get("baselines") or {}).get(ctx.gate_id)
        baseline = (
            resolved.get("metrics")
            if isinstance(resolved, Mapping)
            else ctx.resources.get(BASELINE_RESOURCE)
        )
        if gate.baseline is not None:
            evidence["baseline_channel"] = gate.baseline.channel
        if isinstance(resolved, Mapping):
            evidence["baseline_bundle"] = resolved.get("bundle")
        if isinstance(baseline, Mapping):
            metrics["baseline"] = dict(baseline)
            evidence["baseline"] = dict(baseline)
        elif gate.baseline is not None:
            evidence["baseline"] = None
            evidence["baseline_absent"] = (
                f"no baseline metrics for channel '{gate.baseline.channel}' were given to the gate"
            )
        summary = "; ".join(
            f"{name} = {_show(metrics[name])}" if name in metrics else f"{name} absent ({why})"
            for name, why in ((n, absent.get(n, "")) for n in gate.metrics)
        )
        if isinstance(baseline, Mapping):
            summary += f"; baseline: {len(baseline)} metric{'s' if len(baseline) != 1 else ''}"
        elif gate.baseline is not None:
            summary += f"; no baseline for channel '{gate.baseline.channel}'"
        return measurement(ctx, metrics, evidence, summary)


def _read(
    ctx: GateContext, source: MetricSource, documents: dict[str, Any]
) -> tuple[dict[str, Any], Any, str | None]:
    """Where the metric comes from (for the record), its raw value, and why it has none."""
    if source.file is None:
        origin: dict[str, Any] = {"value_template": source.value}
        try:
            return origin, ctx.render(source.value), None
        except (EngineError, LookupError, TypeError, ValueError) as exc:
            return origin, None, f"the template did not render: {exc}"
    pointer = source.pointer or ""
    origin = {"file": source.file, "pointer": pointer}
    if source.file not in documents:
        documents[source.file] = _load(project_path(ctx, source.file, "file"), source.file)
    document = documents[source.file]
    if "problem" in document:
        return origin, None, str(document["problem"])
    try:
        return origin, resolve_pointer(document["json"], pointer), None
    except LookupError as exc:
        where = pointer or "(whole file)"
        return origin, None, f"pointer {where} not found in {source.file}: {exc}"


def _load(path: Path, rel: str) -> dict[str, Any]:
    if not path.is_file():
        return {"problem": f"{rel} does not exist"}
    try:
        return {
            "json": json.loads(path.read_text(encoding="utf-8")),
            "sha256": file_digest(path),
        }
    except OSError as exc:
        return {"problem": f"{rel} cannot be read: {exc.strerror or exc}"}
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return {"problem": f"{rel} is not JSON: {exc}", "sha256": file_digest(path)}


def _typed(value: Any, kind: str) -> tuple[Any, str | None]:
    """`value` as `kind`, or why it is not one."""
    if value is None:
        return None, "the value is null"
    if kind == "number":
        number: float | None = None
        if isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                number = None
        if number is None:
            return None, f"expected a number, got {_describe(value)}"
        if math.isnan(number):
            return None, "the value is NaN"
        return number, None
    if kind == "integer":
        if isinstance(value, bool):
            return None, f"expected an integer, got {_describe(value)}"
        if isinstance(value, int):
            return value, None
        if isinstance(value, float) and value.is_integer():
            return int(value), None
        if isinstance(value, str):
            try:
                return int(value.strip()), None
            except ValueError:
                pass
        return None, f"expected an integer, got {_describe(value)}"
    if kind == "boolean":
        if isinstance(value, bool):
            return value, None
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true", None
        return None, f"expected a boolean, got {_describe(value)}"
    if isinstance(value, str):
        return value, None
    return None, f"expected a string, got {_describe(value)}"


def _describe(value: Any) -> str:
    text = json.dumps(value, default=str)
    if len(text) > 60:
        text = text[:59] + "…"
    kind = {bool: "boolean", int: "integer", float: "number", str: "string"}.get(
        type(value), "list" if isinstance(value, list) else "object"
    )
    return f"{kind} {text}"


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return json.dumps(value) if isinstance(value, str | bool) else str(value)
