"""Semantic checks that run after the schema: references, cycles, expressions, files.

Owns: every rule that needs more than one field to judge (a `needs` that names no step, a
cycle, an expression over an unknown output, a secret that is not declared, `undo` on an
irreversible procedure, a prompt file that does not exist), with positions and hints.
Must not: run steps, import user code, or print. All findings of a file come back in one
list; the caller sorts them.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from engine import expressions as ex
from engine.errors import Diagnostic, SourceLocation, SpecError
from engine.graph import StepGraph, find_cycles
from engine.loader import LoadedDocument, Path, load_file, pointer_of
from engine.schema_errors import describe_value, did_you_mean
from engine.spec import (
    GATE_METRICS,
    IRREVERSIBLE,
    Alerts,
    Block,
    Document,
    Flow,
    FlowStep,
    LlmStep,
    MetricGate,
    PythonStep,
    ReviewGate,
    Runbook,
    SecretRef,
    ShellStep,
)
from engine.spec.common import value_matches
from engine.spec.flow import ContractGate

__all__ = ["check_document", "check_raw_graph", "find_project_root"]

_PROJECT_MARKERS = ("pyproject.toml", ".git", "blocks.toml")


def find_project_root(start: str) -> str:
    """The nearest folder at or above `start` holding pyproject.toml, .git or blocks.toml."""
    current = os.path.abspath(start if os.path.isdir(start) else os.path.dirname(start) or ".")
    while True:
        if any(os.path.exists(os.path.join(current, m)) for m in _PROJECT_MARKERS):
            return current
        parent = os.path.dirname(current)
        if parent == current:
            return os.path.abspath(os.path.dirname(start) or ".")
        current = parent


def check_document(doc: LoadedDocument, spec: Document, project_root: str) -> list[Diagnostic]:
    """Every semantic finding in one document."""
    ctx = _Context(doc, project_root)
    if isinstance(spec, Flow):
        _check_flow(ctx, spec)
    elif isinstance(spec, Runbook):
        _check_runbook(ctx, spec)
    elif isinstance(spec, Block):
        _check_block(ctx, spec)
    elif isinstance(spec, Alerts):
        _check_alerts(ctx, spec)
    return ctx.found


def check_raw_graph(doc: LoadedDocument) -> list[Diagnostic]:
    """Graph checks on raw data, for a flow whose schema check failed elsewhere.

    A typo in one step's field should not hide a cycle or an unknown `needs` in another, so
    these run on whatever step mappings have well-formed `needs` lists.
    """
    data = doc.data
    if not isinstance(data, dict) or data.get("kind") != "flow":
        return []
    steps = data.get("steps")
    if not isinstance(steps, dict):
        return []
    needs: dict[str, list[str]] = {}
    for sid, step in steps.items():
        raw = step.get("needs", []) if isinstance(step, dict) else []
        needs[sid] = [n for n in raw if isinstance(n, str)] if isinstance(raw, list) else []
    ctx = _Context(doc, "")
    _check_needs(ctx, needs)
    for cycle in find_cycles(needs):
        _report_cycle(ctx, cycle)
    gates = data.get("gates")
    for gid, gate in gates.items() if isinstance(gates, dict) else ():
        after = gate.get("after") if isinstance(gate, dict) else None
        items = [after] if isinstance(after, str) else after if isinstance(after, list) else []
        for i, sid in enumerate(items):
            if isinstance(sid, str) and sid not in steps:
                path = (
                    ("gates", gid, "after")
                    if isinstance(after, str)
                    else ("gates", gid, "after", i)
                )
                ctx.error(
                    "ref.unknown-step",
                    f"gate '{gid}' runs after unknown step '{sid}'",
                    path,
                    hint=did_you_mean(sid, steps),
                )
    return ctx.found


def _check_needs(ctx: _Context, needs: Mapping[str, list[str]]) -> None:
    for sid, deps in needs.items():
        for i, dep in enumerate(deps):
            path: Path = ("steps", sid, "needs", i)
            if dep in deps[:i]:
                ctx.error("spec.duplicate-need", f"'{dep}' is listed twice in needs", path)
            elif dep == sid:
                ctx.error("graph.self-dependency", f"step '{sid}' needs itself", path)
            elif dep not in needs:
                ctx.error(
                    "ref.unknown-step",
                    f"needs unknown step '{dep}'",
                    path,
                    hint=did_you_mean(dep, needs) or f"steps are: {', '.join(needs)}",
                )


@dataclass(frozen=True, slots=True)
class _Checked:
    """A checked expression and where it starts inside the string that holds it."""

    result: ex.CheckResult
    offset: int = 0


@dataclass
class _Context:
    doc: LoadedDocument
    root: str
    found: list[Diagnostic] = field(default_factory=list)

    def error(
        self,
        code: str,
        message: str,
        path: Path,
        *,
        hint: str | None = None,
        key: bool = False,
        related: tuple[SourceLocation, ...] = (),
    ) -> None:
        self.found.append(
            Diagnostic(
                code,
                message,
                self.doc.locate(path, key=key),
                pointer_of(path),
                hint,
                "error",
                related,
            )
        )

    def file_exists(self, rel: str | None, path: Path, what: str) -> None:
        if rel is None or ex.has_template(rel):
            return
        full = os.path.join(self.root, rel)
        if not os.path.exists(full):
            self.error(
                "spec.missing-file",
                f"{what} '{rel}' does not exist",
                path,
                hint=f"paths are relative to the project root ({self.root})",
            )

    def expression(
        self,
        source: str,
        path: Path,
        env: Mapping[str, ex.CelType],
        *,
        expect: ex.CelType | None = None,
        base_offset: int = 0,
    ) -> ex.CheckResult:
        result = ex.check_expression(source, env, expect=expect)
        for issue in result.issues:
            self.found.append(
                Diagnostic(
                    "expr.invalid",
                    issue.message,
                    self._expr_location(path, base_offset + issue.offset),
                    pointer_of(path),
                    issue.hint,
                )
            )
        return result

    def template(self, text: str, path: Path, env: Mapping[str, ex.CelType]) -> list[_Checked]:
        """Check every `${{ }}` in a string; returns each expression's result and offset."""
        if not ex.has_template(text):
            return []
        parts, issues = ex.split_template(text)
        for issue in issues:
            self.found.append(
                Diagnostic(
                    "expr.invalid",
                    issue.message,
                    self._expr_location(path, issue.offset),
                    pointer_of(path),
                    issue.hint,
                )
            )
        return [
            _Checked(self.expression(p.text, path, env, base_offset=p.offset), p.offset)
            for p in parts
            if p.is_expr
        ]

    def reference_error(self, code: str, message: str, path: Path, offset: int, hint: str) -> None:
        self.found.append(
            Diagnostic(code, message, self._expr_location(path, offset), pointer_of(path), hint)
        )

    def _expr_location(self, path: Path, offset: int) -> SourceLocation:
        loc = self.doc.locate(path)
        line_text = (
            self.doc.text.splitlines()[loc.line - 1]
            if loc.line - 1 < len(self.doc.text.splitlines())
            else ""
        )
        start = loc.col - 1
        if start < len(line_text) and line_text[start] in "\"'":
            start += 1
        if start + offset > len(line_text):  # a folded or multi-line scalar: point at its start
            return loc
        return SourceLocation(loc.file, loc.line, start + offset + 1)


def _walk_strings(value: Any, path: Path) -> Iterator[tuple[str, Path]]:
    if isinstance(value, str):
        yield value, path
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from _walk_strings(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _walk_strings(v, (*path, i))


# ---------------------------------------------------------------------------------------
# flows


def _input_types(inputs: Mapping[str, Any], what: str) -> ex.ObjectType:
    return ex.ObjectType(
        {k: ex.type_from_schema_name(v.type) for k, v in inputs.items()}, what=what
    )


_STEP_FIELDS = {"status": ex.STRING, "output": ex.DYN, "duration": ex.DOUBLE, "attempts": ex.INT}


def _step_type(step_id: str, step: Any) -> ex.ObjectType:
    """What `steps.<id>` offers an expression. A fan-out step's outputs are lists, one
    value per item, in item order."""
    fan_out = step.for_each is not None

    def typed(name: str) -> ex.CelType:
        base = ex.type_from_schema_name(name)
        return ex.ListType(base) if fan_out else base

    outputs = ex.ObjectType(
        {k: typed(v.type) for k, v in step.outputs.items()},
        what=f"output of step '{step_id}'",
    )
    return ex.ObjectType({**_STEP_FIELDS, "outputs": outputs}, what="step field")


_RUN_TYPE = ex.ObjectType({"id": ex.STRING, "flow": ex.STRING}, what="run field")


def _check_flow(ctx: _Context, flow: Flow) -> None:
    steps = flow.steps
    graph = StepGraph({sid: list(s.needs) for sid, s in steps.items()})
    step_types = {sid: _step_type(sid, s) for sid, s in steps.items()}
    inputs = _input_types(flow.inputs, "input")
    _check_inputs(ctx, flow.inputs, ("inputs",))
    for route_id, route in flow.models.items():
        if route.degrade_to is not None and route.degrade_to not in flow.models:
            ctx.error(
                "ref.unknown-model",
                f"unknown model route '{route.degrade_to}'",
                ("models", route_id, "degrade_to"),
                hint=did_you_mean(route.degrade_to, flow.models),
            )
    _check_needs(ctx, {sid: list(s.needs) for sid, s in steps.items()})
    # one type for the whole `steps` namespace: a per-step copy is quadratic in big flows;
    # a step reading itself is reported by _refs
    all_steps = ex.ObjectType(step_types, what="step")
    known = frozenset(steps)
    for sid, step in steps.items():
        base: Path = ("steps", sid)
        upstream = graph.ancestors(sid)
        env: dict[str, ex.CelType] = {"inputs": inputs, "steps": all_steps, "run": _RUN_TYPE}
        if step.for_each is not None:
            env[step.for_each.as_] = ex.DYN
            items = step.for_each.items
            if isinstance(items, str):
                _refs(
                    ctx,
                    ctx.template(items, (*base, "for_each", "items"), env),
                    sid,
                    upstream,
                    (*base, "for_each", "items"),
                    known,
                )
            elif not isinstance(items, list):
                ctx.error(
                    "spec.bad-value",
                    "for_each.items must be a list or a ${{ }} expression",
                    (*base, "for_each", "items"),
                )
        if step.when is not None:
            result = ctx.expression(step.when, (*base, "when"), env, expect=ex.BOOL)
            _refs(ctx, [_Checked(result)], sid, upstream, (*base, "when"), known)
        _check_step_kind(ctx, flow, sid, step, env, upstream, known)
        for i, out in enumerate(step.outs):
            _check_out(ctx, out, (*base, "outs", i))
    for cycle in graph.cycles():
        _report_cycle(ctx, cycle)
    _check_gates(ctx, flow, step_types, inputs)
    out_env = {"inputs": inputs, "steps": ex.ObjectType(step_types, what="step"), "run": _RUN_TYPE}
    for text, path in _walk_strings(flow.outputs, ("outputs",)):
        ctx.template(text, path, out_env)


def _check_out(ctx: _Context, out: str, path: Path) -> None:
    """An out is written by the step and put back by the cache: it must be a path inside the
    project, and not the project itself or the engine's own state."""
    norm = posixpath.normpath(out.replace("\\", "/"))
    first = norm.split("/", 1)[0]
    if out.startswith(("/", "\\")) or (len(out) > 1 and out[1] == ":"):
        problem = "is an absolute path"
    elif first == "..":
        problem = "is outside the project"
    elif norm == ".":
        problem = "is the whole project"
    elif first in (".blocks", ".git"):
        problem = f"is inside {first}/, which the engine or git owns"
    else:
        return
    ctx.error(
        "spec.bad-value",
        f"outs: {out} {problem}",
        path,
        hint="name a file or folder inside the project, relative to its root",
    )


def _check_inputs(ctx: _Context, inputs: Mapping[str, Any], base: Path) -> None:
    for name, spec in inputs.items():
        if spec.default is not None and not value_matches(spec.type, spec.default):
            ctx.error(
                "spec.bad-default",
                f"default {describe_value(spec.default)} does not match type '{spec.type}'",
                (*base, name, "default"),
            )
        if spec.enum is not None and spec.default is not None and spec.default not in spec.enum:
            ctx.error(
                "spec.bad-default",
                "default is not one of the enum values",
                (*base, name, "default"),
            )


def _refs(
    ctx: _Context,
    checked: list[_Checked],
    sid: str,
    upstream: frozenset[str],
    path: Path,
    known: frozenset[str],
) -> None:
    """A step may read only steps it waits for: anything else would be a race.

    Reported once per step read, at the reference. Unknown steps are the checker's to report.
    """
    seen: set[str] = set()
    for item in checked:
        for ref in item.result.references:
            if len(ref.path) < 2 or ref.path[0] != "steps":
                continue
            other = ref.path[1]
            if other in upstream or other in seen or other not in known:
                continue
            seen.add(other)
            if other == sid:
                ctx.reference_error(
                    "ref.self",
                    f"step '{sid}' reads its own outputs, which do not exist yet",
                    path,
                    item.offset + ref.offset,
                    "read an upstream step instead",
                )
                continue
            ctx.reference_error(
                "ref.not-upstream",
                f"step '{sid}' reads steps.{other} but does not wait for it",
                path,
                item.offset + ref.offset,
                f"add '{other}' to needs",
            )


def _gate_refs(
    ctx: _Context,
    gid: str,
    checked: list[_Checked],
    visible: frozenset[str],
    path: Path,
    known: frozenset[str],
) -> None:
    """A gate reads only steps that have finished when it runs: its `after` and their needs."""
    for item in checked:
        for ref in item.result.references:
            if (
                len(ref.path) >= 2
                and ref.path[0] == "steps"
                and ref.path[1] not in visible
                and ref.path[1] in known
            ):
                ctx.reference_error(
                    "ref.not-upstream",
                    f"gate '{gid}' reads steps.{ref.path[1]} but runs before it finishes",
                    path,
                    item.offset + ref.offset,
                    f"add '{ref.path[1]}' to the gate's after",
                )
                return


def _check_step_kind(
    ctx: _Context,
    flow: Flow,
    sid: str,
    step: Any,
    env: Mapping[str, ex.CelType],
    upstream: frozenset[str],
    known: frozenset[str],
) -> None:
    base: Path = ("steps", sid)

    def template(text: str, path: Path) -> None:
        _refs(ctx, ctx.template(text, path, env), sid, upstream, path, known)

    if isinstance(step, ShellStep):
        for i, arg in enumerate(step.run or []):
            template(arg, (*base, "run", i))
        if step.script is not None and ex.has_template(step.script):
            path = (*base, "script")
            where = ctx.doc.find_after(path, "${{") or ctx.doc.locate(path)
            ctx.found.append(
                Diagnostic(
                    "spec.template-in-script",
                    "a script may not contain ${{ }}: values would become shell code",
                    where,
                    pointer_of(path),
                    'pass the value through env and use "$NAME"',
                )
            )
        for name, value in step.env.items():
            if isinstance(value, SecretRef):
                if value.secret not in flow.secrets:
                    ctx.error(
                        "ref.unknown-secret",
                        f"secret '{value.secret}' is not declared",
                        (*base, "env", name, "secret"),
                        hint=did_you_mean(value.secret, flow.secrets)
                        or "list it under the flow's `secrets`",
                    )
            else:
                template(value, (*base, "env", name))
    elif isinstance(step, PythonStep):
        for text, path in _walk_strings(step.with_, (*base, "with")):
            template(text, path)
        for i, folder in enumerate(step.pythonpath):
            ctx.file_exists(folder, (*base, "pythonpath", i), "folder")
    elif isinstance(step, LlmStep):
        if step.model not in flow.models:
            ctx.error(
                "ref.unknown-model",
                f"unknown model route '{step.model}'",
                (*base, "model"),
                hint=did_you_mean(step.model, flow.models)
                or "declare it under the flow's `models`",
            )
        ctx.file_exists(step.prompt, (*base, "prompt"), "prompt file")
        ctx.file_exists(step.system, (*base, "system"), "system prompt file")
        ctx.file_exists(step.output_schema, (*base, "output_schema"), "output schema")
        for text, path in _walk_strings(step.vars, (*base, "vars")):
            template(text, path)
    elif isinstance(step, FlowStep):
        ctx.file_exists(step.flow, (*base, "flow"), "sub-flow")
        for text, path in _walk_strings(step.inputs, (*base, "inputs")):
            template(text, path)


def _report_cycle(ctx: _Context, cycle: tuple[str, ...]) -> None:
    if len(cycle) == 1:
        return  # a self-dependency, already reported at its `needs` entry
    locations = [ctx.doc.locate(("steps", s), key=True) for s in cycle]
    shown = " → ".join(f"{s} (line {loc.line})" for s, loc in zip(cycle, locations, strict=True))
    ctx.error(
        "graph.cycle",
        f"dependency cycle: {shown} → {cycle[0]}",
        ("steps", cycle[0]),
        key=True,
        related=tuple(locations[1:]),
        hint="remove one of these needs",
    )


def _check_gates(
    ctx: _Context, flow: Flow, step_types: Mapping[str, ex.ObjectType], inputs: ex.ObjectType
) -> None:
    for gid, gate in flow.gates.items():
        base: Path = ("gates", gid)
        after = [gate.after] if isinstance(gate.after, str) else list(gate.after)
        for i, sid in enumerate(after):
            if sid not in flow.steps:
                path = (*base, "after") if isinstance(gate.after, str) else (*base, "after", i)
                ctx.error(
                    "ref.unknown-step",
                    f"gate '{gid}' runs after unknown step '{sid}'",
                    path,
                    hint=did_you_mean(sid, flow.steps),
                )
        if isinstance(gate, MetricGate):
            metrics = {k: ex.type_from_schema_name(v.type) for k, v in gate.metrics.items()}
            value_env = {
                "inputs": inputs,
                "steps": ex.ObjectType(dict(step_types), what="step"),
                "run": _RUN_TYPE,
            }
            graph = StepGraph({sid: list(s.needs) for sid, s in flow.steps.items()})
            visible = frozenset(a for a in after if a in flow.steps).union(
                *(graph.ancestors(a) for a in after if a in flow.steps)
            )
            for name, source in gate.metrics.items():
                for text, path in _walk_strings(source.value, (*base, "metrics", name, "value")):
                    _gate_refs(
                        ctx,
                        gid,
                        ctx.template(text, path, value_env),
                        visible,
                        path,
                        frozenset(flow.steps),
                    )
            env: dict[str, ex.CelType] = dict(metrics)
            if gate.baseline is not None:
                env["baseline"] = ex.ObjectType(metrics, what="baseline metric")
        else:
            env = {k: ex.type_from_schema_name(v) for k, v in GATE_METRICS[gate.kind].items()}
        ctx.expression(gate.require, (*base, "require"), env, expect=ex.BOOL)
        if isinstance(gate, ReviewGate):
            if gate.model not in flow.models:
                ctx.error(
                    "ref.unknown-model",
                    f"unknown model route '{gate.model}'",
                    (*base, "model"),
                    hint=did_you_mean(gate.model, flow.models),
                )
            ctx.file_exists(gate.rubric, (*base, "rubric"), "rubric")
        if isinstance(gate, ContractGate):
            ctx.file_exists(gate.schema_, (*base, "schema"), "schema")


# ---------------------------------------------------------------------------------------
# runbooks, blocks, alerts

_CHANNEL = ex.ObjectType(
    {
        "frozen": ex.BOOL,
        "current": ex.ObjectType(
            {"bundle": ex.STRING, "gates_passed": ex.BOOL, "promoted_at": ex.STRING},
            what="bundle field",
        ),
        "previous": ex.DYN,
    },
    what="channel field",
)
_CIRCUIT = ex.ObjectType({"state": ex.STRING, "failures": ex.INT}, what="circuit field")


def _check_runbook(ctx: _Context, runbook: Runbook) -> None:
    params = _input_types(runbook.params, "param")
    _check_inputs(ctx, runbook.params, ("params",))
    first_seen: dict[str, int] = {}
    ids = [s.id for s in runbook.steps]
    earlier: dict[str, ex.CelType] = {}
    for i, step in enumerate(runbook.steps):
        base: Path = ("steps", i)
        if step.id in first_seen:
            line = ctx.doc.locate(("steps", first_seen[step.id], "id")).line
            ctx.error(
                "spec.duplicate-id",
                f"duplicate step id '{step.id}' (first at line {line})",
                (*base, "id"),
            )
        first_seen.setdefault(step.id, i)
        env: dict[str, ex.CelType] = {
            "params": params,
            "steps": ex.ObjectType(dict(earlier), what="earlier step"),
            "channels": ex.MapType(ex.STRING, _CHANNEL),
            "circuits": ex.MapType(ex.STRING, _CIRCUIT),
            "run": _RUN_TYPE,
        }
        for proc_name in ("do", "undo"):
            proc = getattr(step, proc_name)
            if proc is None:
                continue
            for text, path in _walk_strings(proc.model_dump(by_alias=True), (*base, proc_name)):
                ctx.template(text, path, env)
            for rel_field in ("flow",):
                rel = getattr(proc, rel_field, None)
                if isinstance(rel, str):
                    ctx.file_exists(rel, (*base, proc_name, rel_field), "flow")
        if step.undo is not None and step.do.kind in IRREVERSIBLE:
            ctx.error(
                "spec.irreversible-undo",
                f"'{step.do.kind}' cannot be undone, so this step may not have `undo`",
                (*base, "undo"),
                key=True,
            )
        if step.when is not None:
            ctx.expression(step.when, (*base, "when"), env, expect=ex.BOOL)
        if step.verify is not None:
            ctx.expression(
                step.verify, (*base, "verify"), {**env, "result": ex.DYN}, expect=ex.BOOL
            )
        if not isinstance(step.on_failure, str):
            target = step.on_failure.goto
            if target not in ids:
                ctx.error(
                    "ref.unknown-step",
                    f"goto unknown step '{target}'",
                    (*base, "on_failure", "goto"),
                    hint=did_you_mean(target, ids),
                )
            elif target == step.id:
                ctx.error(
                    "spec.bad-value",
                    "a step cannot go to itself on failure",
                    (*base, "on_failure", "goto"),
                )
        earlier[step.id] = ex.ObjectType(
            {"status": ex.STRING, "outputs": ex.DYN, "result": ex.DYN}, what="step field"
        )


def _check_block(ctx: _Context, block: Block) -> None:
    for i, rel in enumerate(block.structure.paths):
        ctx.file_exists(rel, ("structure", "paths", i), "path")
    ctx.file_exists(block.input.schema_, ("input", "schema"), "schema")
    ctx.file_exists(block.output.schema_, ("output", "schema"), "schema")
    ctx.file_exists(block.ui.template, ("ui", "template"), "template")
    for i, rel in enumerate(block.logic.tests):
        ctx.file_exists(rel, ("logic", "tests", i), "test path")


def _check_alerts(ctx: _Context, alerts: Alerts) -> None:
    env = {"value": ex.DOUBLE}
    declared: dict[str, frozenset[str] | None] = {}
    for rid, rule in alerts.rules.items():
        ctx.expression(rule.threshold, ("rules", rid, "threshold"), env, expect=ex.BOOL)
        ctx.file_exists(rule.runbook, ("rules", rid, "runbook"), "runbook")
        if rule.runbook is not None and rule.params:
            if rule.runbook not in declared:
                declared[rule.runbook] = _runbook_params(ctx.root, rule.runbook)
            names = declared[rule.runbook]
            for name in rule.params:
                if names is not None and name not in names:
                    # the command the alert prints would be refused, mid-incident
                    ctx.error(
                        "ref.unknown-param",
                        f"runbook {rule.runbook} has no param '{name}'",
                        ("rules", rid, "params", name),
                        hint=did_you_mean(name, sorted(names))
                        or f"its params: {', '.join(sorted(names)) or 'none'}",
                    )
        if rule.provider is not None and rule.signal != "error_rate":
            # silently ignored, it would look like a scope that is not there
            ctx.error(
                "spec.bad-value",
                f"provider narrows error_rate only, not {rule.signal}",
                ("rules", rid, "provider"),
                hint="use `flow` to narrow this signal, or drop `provider`",
            )
        if rule.params and rule.runbook is None:
            ctx.error(
                "spec.bad-value",
                "params are for the runbook, and this rule names none",
                ("rules", rid, "params"),
                hint="add `runbook: runbooks/NAME.yaml`, or drop `params`",
            )


def _runbook_params(root: str, rel: str) -> frozenset[str] | None:
    """The params a runbook file declares, or None when it cannot be read as a runbook
    (a missing file is reported on its own; a broken runbook when it is validated)."""
    try:
        data = load_file(os.path.join(root, rel)).data
    except (SpecError, OSError):
        return None
    if not isinstance(data, dict) or data.get("kind") != "runbook":
        return None
    params = data.get("params")
    return frozenset(params) if isinstance(params, dict) else frozenset()
