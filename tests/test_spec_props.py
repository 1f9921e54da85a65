"""Property tests: generated valid specs validate; each kind of breakage is found where it is.

Specs are generated as data (a random DAG of steps of every kind, gates, expressions over
upstream outputs), written as block-style YAML by `emit` (which records the line of every
node), validated through the same code path as `blocks validate`, then broken one way at a
time: the diagnostic must carry the code and the line of the node that was broken.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.validate import validate_file

ident = st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True).filter(
    lambda s: s not in {"in", "as", "null", "true", "false", "if", "else", "for", "var", "let"}
)
OUTPUT_TYPES = {"string": "'x'", "integer": "1", "number": "1.5", "boolean": "true"}


@st.composite
def flows(draw: st.DrawFn) -> dict[str, Any]:
    ids = draw(st.lists(ident, min_size=1, max_size=8, unique=True))
    inputs = {
        "mode": {"type": "string", "default": "fast"},
        "limit": {"type": "integer", "default": 3},
    }
    steps: dict[str, Any] = {}
    outputs: dict[str, dict[str, str]] = {}
    for i, sid in enumerate(ids):
        needs = draw(st.lists(st.sampled_from(ids[:i]), unique=True, max_size=3)) if i else []
        kind = draw(st.sampled_from(["shell", "python", "llm"]))
        step: dict[str, Any] = {"kind": kind}
        if needs:
            step["needs"] = needs
        out_name = draw(ident)
        out_type = draw(st.sampled_from(sorted(OUTPUT_TYPES)))
        outputs[sid] = {out_name: out_type}
        step["outputs"] = {out_name: {"type": out_type}}
        if kind == "shell":
            step["run"] = ["echo", "${{ inputs.mode }}"]
        elif kind == "python":
            step["call"] = "examples.basel.build:render_block"
            step["with"] = {"n": "${{ inputs.limit }}"}
        else:
            step["model"] = "drafter"
            step["prompt"] = "prompts/draft.md"
        if needs and draw(st.booleans()):
            dep = needs[0]
            name, typ = next(iter(outputs[dep].items()))
            step["when"] = f"steps.{dep}.outputs.{name} == {OUTPUT_TYPES[typ]}"
        if draw(st.booleans()):
            step["retry"] = {"attempts": draw(st.integers(1, 5)), "initial": "1s", "max": "30s"}
        if draw(st.booleans()):
            step["timeout"] = draw(st.sampled_from(["30s", "2m", "1h", 45]))
        steps[sid] = step
    gates = {
        "coverage": {
            "kind": "coverage",
            "after": ids[-1],
            "report": "out/coverage.json",
            "require": "percent >= 80.0",
        },
    }
    return {
        "version": 1,
        "kind": "flow",
        "name": "generated-flow",
        "inputs": inputs,
        "models": {"drafter": {"model": "local/deterministic"}},
        "steps": steps,
        "gates": gates,
    }


def emit(
    value: Any,
    lines: list[str],
    where: dict[tuple[Any, ...], int],
    path: tuple[Any, ...] = (),
    indent: int = 0,
) -> None:
    """Block-style YAML with JSON scalars; records the 1-based line of every node."""
    pad = " " * indent
    items = value.items() if isinstance(value, dict) else enumerate(value)
    for key, child in items:
        lead = f"{pad}{key}:" if isinstance(value, dict) else f"{pad}-"
        where[(*path, key)] = len(lines) + 1
        if isinstance(child, dict | list) and child:
            lines.append(lead)
            emit(child, lines, where, (*path, key), indent + 2)
        else:
            lines.append(f"{lead} {json.dumps(child)}")


def write(tmp: Path, data: dict[str, Any]) -> tuple[Path, dict[tuple[Any, ...], int]]:
    lines: list[str] = []
    where: dict[tuple[Any, ...], int] = {}
    emit(data, lines, where)
    target = tmp / "flow.yaml"
    target.write_text("\n".join(lines) + "\n", encoding="utf-8")
    (tmp / "prompts").mkdir(exist_ok=True)
    (tmp / "prompts" / "draft.md").write_text("Draft ${{ vars.topic }}\n", encoding="utf-8")
    return target, where


SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def codes_at(path: Path) -> set[tuple[str, int]]:
    report = validate_file(str(path), project_root=str(path.parent))
    return {(d.code, d.location.line) for d in report.diagnostics}


@SETTINGS
@given(flows())
def test_generated_flows_validate(tmp_path: Path, flow: dict[str, Any]) -> None:
    target, _ = write(tmp_path, flow)
    report = validate_file(str(target), project_root=str(tmp_path))
    assert report.diagnostics == (), [str(d) for d in report.diagnostics]


@SETTINGS
@given(flows(), st.data())
def test_unknown_needs_is_reported_at_its_line(
    tmp_path: Path, flow: dict[str, Any], data: st.DataObject
) -> None:
    sid = data.draw(st.sampled_from(sorted(flow["steps"])))
    flow["steps"][sid]["needs"] = [*flow["steps"][sid].get("needs", []), "zz_missing_step"]
    target, where = write(tmp_path, flow)
    index = len(flow["steps"][sid]["needs"]) - 1
    assert ("ref.unknown-step", where[("steps", sid, "needs", index)]) in codes_at(target)


@SETTINGS
@given(flows(), st.data())
def test_unknown_field_is_reported_at_its_key(
    tmp_path: Path, flow: dict[str, Any], data: st.DataObject
) -> None:
    sid = data.draw(st.sampled_from(sorted(flow["steps"])))
    flow["steps"][sid]["retires"] = 3
    target, where = write(tmp_path, flow)
    assert ("spec.unknown-field", where[("steps", sid, "retires")]) in codes_at(target)


@SETTINGS
@given(flows().filter(lambda f: len(f["steps"]) >= 2), st.data())
def test_a_back_edge_is_reported_as_a_cycle(
    tmp_path: Path, flow: dict[str, Any], data: st.DataObject
) -> None:
    ids = list(flow["steps"])
    first, last = ids[0], ids[-1]
    flow["steps"][last]["needs"] = sorted({*flow["steps"][last].get("needs", []), first})
    flow["steps"][first]["needs"] = [last]
    flow["steps"][first].pop("when", None)
    target, where = write(tmp_path, flow)
    found = codes_at(target)
    assert any(code == "graph.cycle" for code, _ in found)
    cycle_lines = {line for code, line in found if code == "graph.cycle"}
    assert cycle_lines <= {where[("steps", s)] for s in ids}


@SETTINGS
@given(flows(), st.data())
def test_wrong_type_is_reported_at_the_value(
    tmp_path: Path, flow: dict[str, Any], data: st.DataObject
) -> None:
    sid = data.draw(st.sampled_from(sorted(flow["steps"])))
    flow["steps"][sid]["continue_on_failure"] = "sometimes"
    target, where = write(tmp_path, flow)
    assert ("spec.wrong-type", where[("steps", sid, "continue_on_failure")]) in codes_at(target)


@SETTINGS
@given(flows(), st.data())
def test_bad_expression_is_reported_at_its_line(
    tmp_path: Path, flow: dict[str, Any], data: st.DataObject
) -> None:
    sid = data.draw(st.sampled_from(sorted(flow["steps"])))
    flow["steps"][sid]["when"] = data.draw(
        st.sampled_from(
            [
                "inputs.mood == 'x'",
                "inputs.limit + ",
                "inputs.limit",
                "steps.zz_missing_step.status == 'ok'",
            ]
        )
    )
    target, where = write(tmp_path, flow)
    assert ("expr.invalid", where[("steps", sid, "when")]) in codes_at(target)
