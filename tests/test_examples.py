"""The shipped example specs validate, their Python steps work on the shipped data, and
every file they name exists.

The example functions are called directly, as a python step would call them; files they
write go to a temporary folder, never to the project's `out/`.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import inspect
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from engine.expressions import compile_expression, has_template
from engine.spec import Alerts, Block, Flow, LlmStep, PythonStep, Runbook
from engine.spec.flow import ContractGate, MetricGate, ReviewGate
from engine.validate import find_spec_files, load_spec
from examples.basel.build import render_block
from examples.basel.policy import load_policy
from examples.bc_anneal import make_data
from examples.bc_anneal.anneal import anneal, cosine_schedule
from examples.bc_anneal.audit import audit_dataset
from examples.bc_anneal.train import train_behaviour_cloning

ROOT = Path(__file__).resolve().parents[1]
DEMOS = ROOT / "examples" / "bc_anneal" / "data" / "demos.jsonl"
CONTRACTS = ROOT / "schemas" / "contracts"
BLOCKS = os.path.join(os.path.dirname(sys.executable), "blocks")


@functools.cache
def _spec_paths() -> tuple[str, ...]:
    files, _ = find_spec_files([str(ROOT / "pipelines"), str(ROOT / "runbooks")])
    return tuple(files)


@functools.cache
def _load(rel: str) -> Any:
    return load_spec(str(ROOT / rel), project_root=str(ROOT))[1]


def _schema(name: str) -> dict[str, Any]:
    return json.loads((CONTRACTS / name).read_text())


def _attestation() -> dict[str, Any]:
    example: dict[str, Any] = _schema("attestation.schema.json")["examples"][0]
    return example


def _resolve_pointer(document: Any, pointer: str) -> Any:
    for token in pointer.split("/")[1:]:
        key = token.replace("~1", "/").replace("~0", "~")
        document = document[int(key)] if isinstance(document, list) else document[key]
    return document


# ---------------------------------------------------------------------------------------
# (a) the specs validate


def test_blocks_validate_accepts_every_shipped_spec() -> None:
    done = subprocess.run(
        [BLOCKS, "validate", "pipelines", "runbooks"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "all valid" in done.stdout


def test_the_shipped_specs_cover_every_kind() -> None:
    kinds = {type(_load(os.path.relpath(p, ROOT))).__name__ for p in _spec_paths()}
    assert kinds == {"Flow", "Runbook", "Alerts", "Block"}
    names = {Path(p).name for p in _spec_paths()}
    assert {
        "flow-failure.yaml",
        "timeout.yaml",
        "rate-limit.yaml",
        "provider-outage.yaml",
        "security-incident.yaml",
    } <= names


def test_every_spec_names_its_schema_on_the_first_line() -> None:
    for path in _spec_paths():
        spec = _load(os.path.relpath(path, ROOT))
        first = Path(path).read_text().splitlines()[0]
        depth = len(Path(path).relative_to(ROOT).parts) - 1
        expected = "../" * depth + f"schemas/{spec.kind}.schema.json"
        assert first == f"# yaml-language-server: $schema={expected}", path


# ---------------------------------------------------------------------------------------
# (b) the example functions work on the shipped data


def test_shipped_demonstrations_are_what_make_data_generates() -> None:
    assert DEMOS.read_text() == make_data.render(make_data.generate())


def test_audit_passes_the_shipped_data() -> None:
    report = audit_dataset(str(DEMOS))
    assert report["ok"], report["issues"]
    assert report["rows"] == len(DEMOS.read_text().splitlines())
    assert report["invalid_rows"] == report["duplicate_rows"] == 0
    assert report["sha256"] == hashlib.sha256(DEMOS.read_bytes()).hexdigest()


def test_audit_counts_bad_rows(tmp_path: Path) -> None:
    first, second = (json.loads(line) for line in DEMOS.read_text().splitlines()[:2])
    rows = [first, first, {"episode": 0}, dict(second, action="jump")]
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = audit_dataset(str(path), min_rows=10)
    assert report["invalid_rows"] == 2
    assert report["duplicate_rows"] == 1
    assert not report["ok"]
    assert any("at least 10" in issue for issue in report["issues"])


def test_behaviour_cloning_reaches_the_gate_threshold(tmp_path: Path) -> None:
    result = train_behaviour_cloning(str(DEMOS), model_out=str(tmp_path / "policy.json"))
    assert result["accuracy"] >= 0.92
    assert result["eval_rows"] > 50
    assert json.loads((tmp_path / "policy.json").read_text())["accuracy"] == result["accuracy"]


def test_behaviour_cloning_accuracy_comes_from_the_data(tmp_path: Path) -> None:
    rows = [json.loads(line) for line in DEMOS.read_text().splitlines()]
    path, policy = tmp_path / "demos.jsonl", str(tmp_path / "policy.json")
    # a demonstrator who always walks away from the goal is just as consistent: learnable
    opposite = {"right": "left", "left": "right", "up": "down", "down": "up"}
    path.write_text(make_data.render([dict(r, action=opposite[r["action"]]) for r in rows]))
    assert train_behaviour_cloning(str(path), model_out=policy)["accuracy"] >= 0.92
    # in every other episode the demonstrator only ever pressed "right": not learnable
    path.write_text(
        make_data.render([dict(r, action="right") if r["episode"] % 2 else r for r in rows])
    )
    assert train_behaviour_cloning(str(path), model_out=policy)["accuracy"] < 0.92


def _promote_gate() -> MetricGate:
    flow = _load("pipelines/bc-anneal-promotion.yaml")
    gate = flow.gates["promote"]
    assert isinstance(gate, MetricGate)
    return gate


def _gate_verdict(gate: MetricGate, summary_path: Path) -> bool:
    """Evaluate the gate the way its spec says: metrics from the summary at their pointers."""
    summary = json.loads(summary_path.read_text())
    metrics = {}
    for name, source in gate.metrics.items():
        assert source.file == "out/anneal/summary.json", "the gate should read the summary"
        metrics[name] = _resolve_pointer(summary, source.pointer or f"/{name}")
    verdict = compile_expression(gate.require).evaluate(metrics)
    assert isinstance(verdict, bool)
    return verdict


@pytest.fixture(scope="module")
def trained_policy(tmp_path_factory: pytest.TempPathFactory) -> str:
    policy = str(tmp_path_factory.mktemp("bc") / "policy.json")
    train_behaviour_cloning(str(DEMOS), model_out=policy)
    return policy


def test_anneal_summary_passes_the_promotion_gate(tmp_path: Path, trained_policy: str) -> None:
    summary = anneal(str(DEMOS), policy=trained_policy, out_dir=str(tmp_path / "an"))
    path = tmp_path / "an" / "summary.json"
    assert json.loads(path.read_text()) == summary
    jsonschema.validate(summary, _schema("anneal-summary.schema.json"))
    assert summary["anneal_loss_flag"] is False
    assert summary["drill"] is False
    assert _gate_verdict(_promote_gate(), path) is True


def test_flipping_anneal_loss_flag_in_the_summary_fails_the_gate(
    tmp_path: Path, trained_policy: str
) -> None:
    anneal(str(DEMOS), policy=trained_policy, out_dir=str(tmp_path / "an"))
    path = tmp_path / "an" / "summary.json"
    summary = json.loads(path.read_text())
    summary["anneal_loss_flag"] = True
    path.write_text(json.dumps(summary))
    assert _gate_verdict(_promote_gate(), path) is False


def test_the_drill_input_flips_the_flag_and_says_so(tmp_path: Path, trained_policy: str) -> None:
    drill = anneal(
        str(DEMOS), policy=trained_policy, out_dir=str(tmp_path / "an"), drill_flip_loss_flag=True
    )
    assert drill["drill"] is True
    assert drill["anneal_loss_flag"] is not drill["computed_anneal_loss_flag"]
    assert _gate_verdict(_promote_gate(), tmp_path / "an" / "summary.json") is False


def test_anneal_loss_flag_is_computed_from_the_losses(tmp_path: Path, trained_policy: str) -> None:
    # huge steps throw the policy far from its optimum: held-out loss gets worse
    summary = anneal(
        str(DEMOS), policy=trained_policy, out_dir=str(tmp_path / "an"), lr_max=200.0, lr_min=100.0
    )
    assert summary["final_loss"] > summary["initial_loss"] * (1 + summary["tolerance"])
    assert summary["computed_anneal_loss_flag"] is True
    assert summary["anneal_loss_flag"] is True


def test_cosine_schedule_runs_from_max_to_min() -> None:
    schedule = cosine_schedule(5, 0.5, 0.01)
    assert schedule[0] == pytest.approx(0.5)
    assert schedule[-1] == pytest.approx(0.01)
    assert schedule == sorted(schedule, reverse=True)


def test_load_policy_reads_the_example_policy() -> None:
    policy = ROOT / "examples" / "basel_i_policy.md"
    result = load_policy(str(policy))
    assert result["sha256"] == hashlib.sha256(policy.read_bytes()).hexdigest()
    assert "Basel I" in str(result["text"])


def test_basel_renderer_writes_a_block_whose_tests_pass(tmp_path: Path) -> None:
    out = tmp_path / "basel"
    manifest = render_block(_attestation(), out_dir=str(out))
    jsonschema.validate(manifest, _schema("basel-block.schema.json"))
    jsonschema.validate(
        json.loads((out / "attestation.json").read_text()), _schema("attestation.schema.json")
    )
    for rel, digest in manifest["files"].items():
        assert hashlib.sha256((out / rel).read_bytes()).hexdigest() == digest
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", manifest["tests_dir"]],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert " passed" in done.stdout


def _import_module(path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(f"basel_capital_{id(path)}", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_basel_renderer_renders_what_was_attested(tmp_path: Path) -> None:
    attestation = _attestation()
    attestation["risk_weights"][-1]["weight"] = 0.5  # fixed assets at 50 % instead of 100 %
    attestation["minimum_total_ratio"]["value"] = 0.1
    manifest = render_block(attestation, out_dir=str(tmp_path / "basel"))
    module = _import_module(Path(manifest["module"]))
    assert module.RISK_WEIGHTS["fixed_assets"] == 0.5
    assert module.MINIMUM_TOTAL_RATIO == 0.1
    result = module.assess(60.0, 30.0, [("fixed_assets", 1000.0)])
    assert result["rwa"] == pytest.approx(500.0)
    assert result["total_ratio"] == pytest.approx(0.18)
    assert result["adequate"] is True
    assert module.assess(30.0, 10.0, [("fixed_assets", 1000.0)])["adequate"] is False


@pytest.mark.parametrize(
    ("change", "message"),
    [
        pytest.param(
            lambda a: a["risk_weights"].append(dict(a["risk_weights"][0])),
            "attested twice",
            id="duplicate-class",
        ),
        pytest.param(
            lambda a: [w.update(weight=0) for w in a["risk_weights"]],
            "no asset class",
            id="no-positive-weight",
        ),
        pytest.param(
            lambda a: a["minimum_tier1_ratio"].update(value=0.5),
            "Tier 1 minimum",
            id="tier1-above-total",
        ),
    ],
)
def test_basel_renderer_refuses_inconsistent_attestations(
    tmp_path: Path, change: Any, message: str
) -> None:
    attestation = _attestation()
    change(attestation)
    with pytest.raises(ValueError, match=message):
        render_block(attestation, out_dir=str(tmp_path / "basel"))


def test_basel_renderer_enforces_the_contract(tmp_path: Path) -> None:
    attestation = _attestation()
    attestation["risk_weights"][0]["weight"] = 0.3  # not a Basel I weight
    with pytest.raises(jsonschema.ValidationError):
        render_block(attestation, out_dir=str(tmp_path / "basel"))


# ---------------------------------------------------------------------------------------
# (c) every file the specs name exists, and every python step's call fits its function


def _flow_paths(flow: Flow) -> Iterator[tuple[str, str]]:
    for sid, step in flow.steps.items():
        if isinstance(step, LlmStep):
            yield f"{sid}.prompt", step.prompt
            yield from (
                (f"{sid}.{k}", v)
                for k, v in (("system", step.system), ("output_schema", step.output_schema))
                if v
            )
    for gid, gate in flow.gates.items():
        if isinstance(gate, ContractGate):
            yield f"{gid}.schema", gate.schema_
        if isinstance(gate, ReviewGate):
            yield f"{gid}.rubric", gate.rubric
    for name, item in flow.inputs.items():
        if isinstance(item.default, str) and "/" in item.default:
            yield f"inputs.{name}", item.default


def _runbook_paths(runbook: Runbook) -> Iterator[tuple[str, str]]:
    if "flow" in runbook.params:
        yield "params.flow", runbook.params["flow"].default
    for step in runbook.steps:
        for proc in (step.do, step.undo):
            flow = getattr(proc, "flow", None)
            if isinstance(flow, str) and not has_template(flow):
                yield f"{step.id}.flow", flow


def _alerts_paths(alerts: Alerts) -> Iterator[tuple[str, str]]:
    for rid, rule in alerts.rules.items():
        if rule.runbook:
            yield f"{rid}.runbook", rule.runbook
        if "flow" in rule.params:
            yield f"{rid}.params.flow", rule.params["flow"]


def _block_paths(block: Block) -> Iterator[tuple[str, str]]:
    yield from (("structure", p) for p in block.structure.paths)
    yield from (("logic.tests", p) for p in block.logic.tests)
    yield from (("integration.flows", p) for p in block.integration.flows)
    yield "input.schema", block.input.schema_
    yield "output.schema", block.output.schema_
    if block.ui.template:
        yield "ui.template", block.ui.template


def _literal_paths(spec: Any) -> Iterator[tuple[str, str]]:
    """(what, path) for every project file a spec names (not files its runs produce)."""
    walkers = {
        Flow: _flow_paths,
        Runbook: _runbook_paths,
        Alerts: _alerts_paths,
        Block: _block_paths,
    }
    return walkers[type(spec)](spec)


@pytest.mark.parametrize("path", _spec_paths(), ids=lambda p: os.path.relpath(p, ROOT))
def test_every_referenced_file_exists(path: str) -> None:
    spec = _load(os.path.relpath(path, ROOT))
    missing = [f"{what}: {rel}" for what, rel in _literal_paths(spec) if not (ROOT / rel).exists()]
    assert not missing


def _resolve_call(call: str) -> Any:
    module_name, _, function = call.partition(":")
    return getattr(importlib.import_module(module_name), function)


def _python_calls() -> Iterator[Any]:
    for path in _spec_paths():
        spec = _load(os.path.relpath(path, ROOT))
        if isinstance(spec, Flow):
            for sid, step in spec.steps.items():
                if isinstance(step, PythonStep):
                    where = f"{spec.name}.{sid}"
                    yield pytest.param(where, step.call, step.with_, id=where)
        elif isinstance(spec, Block):
            yield pytest.param(spec.name, spec.logic.call, {}, id=spec.name)


@pytest.mark.parametrize(("where", "call", "given"), list(_python_calls()))
def test_every_python_call_resolves_and_fits(where: str, call: str, given: dict[str, Any]) -> None:
    function = _resolve_call(call)
    params = inspect.signature(function).parameters
    unknown = set(given) - set(params)
    assert not unknown, f"{where}: {call} takes no {sorted(unknown)}"
    if given:
        required = {n for n, p in params.items() if p.default is inspect.Parameter.empty}
        assert required <= set(given), f"{where}: {call} also needs {sorted(required - set(given))}"


def test_python_step_outputs_are_keys_the_function_returns(tmp_path: Path) -> None:
    """Run the BC/anneal steps as the flow wires them and compare outputs with returns."""
    flow = _load("pipelines/bc-anneal-promotion.yaml")
    results = {
        "audit": audit_dataset(str(DEMOS)),
        "train": train_behaviour_cloning(str(DEMOS), model_out=str(tmp_path / "p.json")),
    }
    results["anneal"] = anneal(
        str(DEMOS), policy=str(tmp_path / "p.json"), out_dir=str(tmp_path / "an")
    )
    for sid, step in flow.steps.items():
        assert set(step.outputs) <= set(results[sid]), sid
    build = _load("pipelines/basel-attestation.yaml").steps["build"]
    manifest = render_block(_attestation(), out_dir=str(tmp_path / "basel"))
    assert set(build.outputs) <= set(manifest)
