"""From a checked flow to a plan: kinds bound, order fixed, expressions compiled, inputs typed.

Owns: `Plan` and `PlannedStep` (immutable), the topological order (networkx, through
`engine.graph`), which steps each step's expressions read, and turning `-i key=value` strings
into typed inputs. Must not: run anything or read the run journal.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine import expressions as ex
from engine.errors import UsageError
from engine.graph import StepGraph
from engine.loader import LoadedDocument
from engine.plugins import GateKind, Registry, StepKind
from engine.spec import GATE_METRICS, Flow, Gate, InputSpec, MetricGate, Retry, Step

__all__ = ["Plan", "PlannedGate", "PlannedStep", "build_plan", "coerce_inputs", "run_budget_usd"]


@dataclass(frozen=True, slots=True)
class PlannedStep:
    id: str
    spec: Step
    kind: StepKind
    needs: tuple[str, ...]
    dependents: tuple[str, ...]
    when: ex.Program | None
    reads: frozenset[str]
    """The steps this step's expressions read (a subset of its ancestors)."""
    retry: Retry
    timeout: float | None
    cache: bool
    idempotent: bool
    spec_dump: Mapping[str, Any]
    """The step's fields as JSON-able data, computed once (the cache key hashes it)."""
    outs: tuple[str, ...] = ()
    """The files and folders the step writes: its `outs`, then its `source: file` outputs."""


@dataclass(frozen=True, slots=True)
class PlannedGate:
    id: str
    spec: Gate
    kind: GateKind | None
    """None when no kind of that name is registered: the gate is reported, not skipped."""
    after: tuple[str, ...]
    require: ex.Program
    metrics_read: tuple[str, ...]
    """The metric names `require` reads, in order: the explanation shows their values."""
    blocker: bool


@dataclass(frozen=True, slots=True)
class Plan:
    flow: Flow
    path: str
    spec_digest: str
    """sha256 of the spec file's bytes, as written."""
    project_root: Path
    order: tuple[str, ...]
    steps: Mapping[str, PlannedStep]
    gates: Mapping[str, PlannedGate]
    gate_waits: Mapping[str, tuple[str, ...]]
    """Step id -> the blocker gates it waits for: those that run after one of its ancestors."""
    overrides: Mapping[str, Any] = field(default_factory=dict)
    """Operational overrides applied to the flow (`engine.overrides`); empty when none."""

    def graph(self) -> StepGraph:
        return StepGraph({sid: list(s.needs) for sid, s in self.steps.items()})


def build_plan(doc: LoadedDocument, flow: Flow, registry: Registry, project_root: Path) -> Plan:
    """Bind every step to its kind and fix the order. The flow must have validated."""
    graph = StepGraph({sid: list(s.needs) for sid, s in flow.steps.items()})
    order = tuple(graph.order())
    dependents: dict[str, list[str]] = {sid: [] for sid in flow.steps}
    for sid, step in flow.steps.items():
        for dep in step.needs:
            dependents[dep].append(sid)
    planned = {}
    for sid in order:
        step = flow.steps[sid]
        planned[sid] = PlannedStep(
            id=sid,
            spec=step,
            kind=registry.step_kind(step.kind),
            needs=tuple(step.needs),
            dependents=tuple(dependents[sid]),
            when=ex.compile_expression(step.when) if step.when else None,
            reads=_reads(step),
            retry=step.retry or Retry(),
            timeout=step.timeout,
            cache=step.cache if step.cache is not None else step.idempotent,
            idempotent=step.idempotent,
            spec_dump=_work_spec(flow, step),
            outs=_outs(step),
        )
    gates = {gid: _plan_gate(gid, gate, registry) for gid, gate in flow.gates.items()}
    waits = {
        sid: tuple(
            gid for gid, g in gates.items() if g.blocker and set(g.after) & graph.ancestors(sid)
        )
        for sid in order
    }
    digest = "sha256:" + hashlib.sha256(doc.raw).hexdigest()
    return Plan(flow, doc.path, digest, project_root, order, planned, gates, waits)


def run_budget_usd(flow: Flow) -> float | None:
    """The most one run of `flow` may spend (USD): `limits.budget_usd`, or the sum of the
    routes' `budget_usd` when every route has one, whichever is smaller; None when nothing
    limits it. Recorded in `run.started` for `blocks alerts check`."""
    limits = [] if flow.limits.budget_usd is None else [flow.limits.budget_usd]
    routes = [route.budget_usd for route in flow.models.values()]
    if routes and all(b is not None for b in routes):
        limits.append(math.fsum(b for b in routes if b is not None))
    return min(limits) if limits else None


def _outs(step: Step) -> tuple[str, ...]:
    files = [o.file for o in step.outputs.values() if o.source == "file" and o.file]
    return tuple(dict.fromkeys([*step.outs, *files]))


def _work_spec(flow: Flow, step: Step) -> dict[str, Any]:
    """The step's fields, plus for an llm step its route (model, fallbacks, params): changing
    the model must not reuse answers cached from another one."""
    dump = step.model_dump(by_alias=True)
    model = getattr(step, "model", None)
    if step.kind == "llm" and isinstance(model, str) and model in flow.models:
        dump["route"] = flow.models[model].model_dump(by_alias=True)
    return dump


def _plan_gate(gid: str, gate: Gate, registry: Registry) -> PlannedGate:
    after = (gate.after,) if isinstance(gate.after, str) else tuple(gate.after)
    declared = (
        list(gate.metrics)
        if isinstance(gate, MetricGate)
        else list(GATE_METRICS.get(gate.kind, {}))
    )
    env: dict[str, ex.CelType] = dict.fromkeys(declared, ex.DYN)
    env["baseline"] = ex.DYN
    names: list[str] = []
    for ref in ex.check_expression(gate.require, env).references:
        if ref.path and ref.path[0] != "baseline" and ref.path[0] not in names:
            names.append(ref.path[0])
    return PlannedGate(
        id=gid,
        spec=gate,
        kind=registry.find_gate_kind(gate.kind),
        after=after,
        require=ex.compile_expression(gate.require),
        metrics_read=tuple(names),
        blocker=gate.severity == "blocker",
    )


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _strings(v)


def _reads(step: Step) -> frozenset[str]:
    """Step ids referenced by any expression of the step (`when` and every `${{ }}`)."""
    sources: list[str] = [step.when] if step.when else []
    for text in _strings(step.model_dump(by_alias=True, exclude={"when", "description"})):
        if ex.has_template(text):
            parts, _ = ex.split_template(text)
            sources.extend(p.text for p in parts if p.is_expr)
    found: set[str] = set()
    env = dict.fromkeys(("steps", "inputs", "run"), ex.DYN)
    for source in sources:
        for ref in ex.check_expression(source, env).references:
            if len(ref.path) >= 2 and ref.path[0] == "steps":
                found.add(ref.path[1])
    return frozenset(found)


_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}


def coerce_inputs(flow: Flow, given: Mapping[str, str]) -> dict[str, Any]:
    """Typed inputs from `-i key=value` strings plus defaults. Raises `UsageError`."""
    return coerce_values(flow.inputs, given)


def coerce_values(
    specs: Mapping[str, InputSpec],
    given: Mapping[str, str],
    *,
    what: str = "input",
    flag: str = "-i",
) -> dict[str, Any]:
    """Typed values of declared inputs (a flow's inputs, a runbook's params) from
    `key=value` strings plus defaults. Raises `UsageError` naming the flag to use."""
    unknown = sorted(set(given) - set(specs))
    if unknown:
        known = ", ".join(specs) or "none"
        raise UsageError(f"unknown {what} '{unknown[0]}' (the {what}s here: {known})")
    out: dict[str, Any] = {}
    for name, spec in specs.items():
        if name in given:
            out[name] = _coerce(name, spec.type, given[name])
        elif spec.default is not None:
            out[name] = float(spec.default) if spec.type == "number" else spec.default
        else:
            raise UsageError(f"{what} '{name}' is required: pass {flag} {name}=VALUE")
        if spec.enum is not None and out[name] not in spec.enum:
            raise UsageError(f"{what} '{name}' must be one of {spec.enum}, got {out[name]!r}")
    return out


def _coerce(name: str, kind: str, raw: str) -> Any:
    try:
        if kind == "integer":
            return int(raw)
        if kind == "number":
            return float(raw)
        if kind == "boolean":
            lowered = raw.strip().lower()
            if lowered in _TRUE | _FALSE:
                return lowered in _TRUE
            raise ValueError(raw)
        if kind in ("array", "object", "any"):
            value = json.loads(raw)
            if kind == "array" and not isinstance(value, list):
                raise ValueError(raw)
            if kind == "object" and not isinstance(value, dict):
                raise ValueError(raw)
            return value
    except ValueError:
        raise UsageError(f"input '{name}' expects {kind}, got {raw!r}") from None
    return raw
