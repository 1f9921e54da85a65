"""The spec reference, `docs/reference/spec.md`, generated from the spec models and schemas.

Owns: rendering every document kind, step kind, gate kind and runbook procedure as a table
of fields (type and constraints from the JSON Schemas of `engine.schema`, order, defaults and
required-ness from the models of `engine.spec`, descriptions from the attribute docstrings),
the example snippets cut verbatim from the shipped examples (`pipelines/`, `runbooks/`), and
the semantic rules of `engine.checks` in plain words. `python -m engine.schema_docs` writes
the file; `--check` exits 1 when the file on disk differs (tests/test_docs.py does the same).
Must not: validate specs (the tests validate the files the snippets come from), import
`engine.checks` or anything above this layer, or import pydantic, `engine.spec` or
`engine.schema` at module import time (`blocks --help` must stay light).

Over the 700-line budget on purpose: most of it is the prose of the reference (the notes on
fields and the semantic rules), kept next to the code that places it.
"""

from __future__ import annotations

import json
import re
import sys
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import BaseModel
    from pydantic.fields import FieldInfo

__all__ = [
    "EXAMPLES",
    "FIELD_NOTES",
    "FIELD_STATUS",
    "OUTPUT",
    "ROOT",
    "Example",
    "cut_example",
    "main",
    "render_reference",
]

ROOT = Path(__file__).resolve().parent.parent
"""The project the reference documents: the checkout holding `engine/`."""
OUTPUT = Path("docs") / "reference" / "spec.md"
"""Where the reference lives, relative to `ROOT`."""

_DURATION_TEXT = "seconds, or a duration such as 500ms, 30s, 15m, 2h, 1d"


@dataclass(frozen=True, slots=True)
class Example:
    """A snippet cut verbatim from a shipped example file.

    `cuts` are key paths; each component is a mapping key, or `[id=X]` for the list item
    whose `id` is X. Each cut yields its key line and everything indented below it, under
    the key lines of its ancestors.
    """

    file: str
    cuts: tuple[tuple[str, ...], ...]


EXAMPLES: dict[str, Example] = {
    "flow": Example(
        "pipelines/bc-anneal-promotion.yaml",
        (
            ("version",),
            ("kind",),
            ("name",),
            ("revision",),
            ("owner",),
            ("description",),
            ("inputs",),
            ("limits",),
            ("outputs",),
        ),
    ),
    "route": Example("pipelines/basel-attestation.yaml", (("models", "drafter"),)),
    "limits": Example("pipelines/basel-attestation.yaml", (("limits",),)),
    "step:shell": Example("pipelines/basel-attestation.yaml", (("steps", "test"),)),
    "step:python": Example("pipelines/bc-anneal-promotion.yaml", (("steps", "audit"),)),
    "step:llm": Example("pipelines/basel-attestation.yaml", (("steps", "draft"),)),
    "gate:contract": Example("pipelines/basel-attestation.yaml", (("gates", "contract"),)),
    "gate:coverage": Example("pipelines/basel-attestation.yaml", (("gates", "coverage"),)),
    "gate:mutation": Example("pipelines/basel-attestation.yaml", (("gates", "mutation"),)),
    "gate:security": Example("pipelines/basel-attestation.yaml", (("gates", "security"),)),
    "gate:review": Example("pipelines/basel-attestation.yaml", (("gates", "review"),)),
    "gate:metric": Example(
        "pipelines/bc-anneal-promotion.yaml", (("gates", "promote"), ("gates", "no_regression"))
    ),
    "runbook": Example(
        "runbooks/provider-outage.yaml",
        (
            ("version",),
            ("kind",),
            ("name",),
            ("revision",),
            ("owner",),
            ("description",),
            ("params",),
            ("steps", "[id=open_circuit]"),
        ),
    ),
    "procedure:rollback": Example("runbooks/flow-failure.yaml", (("steps", "[id=rollback]"),)),
    "procedure:freeze": Example("runbooks/provider-outage.yaml", (("steps", "[id=freeze]"),)),
    "procedure:unfreeze": Example("runbooks/provider-outage.yaml", (("steps", "[id=freeze]"),)),
    "procedure:circuit": Example(
        "runbooks/provider-outage.yaml", (("steps", "[id=open_circuit]"),)
    ),
    "procedure:route": Example("runbooks/rate-limit.yaml", (("steps", "[id=failover]"),)),
    "procedure:limits": Example("runbooks/rate-limit.yaml", (("steps", "[id=back_off]"),)),
    "procedure:run": Example("runbooks/flow-failure.yaml", (("steps", "[id=rerun_failed]"),)),
    "procedure:gate": Example("runbooks/flow-failure.yaml", (("steps", "[id=inspect]"),)),
    "procedure:shell": Example(
        "runbooks/security-incident.yaml", (("steps", "[id=verify_restored]"),)
    ),
    "procedure:notify": Example("runbooks/provider-outage.yaml", (("steps", "[id=announce]"),)),
    "procedure:approval": Example(
        "runbooks/security-incident.yaml", (("steps", "[id=approve_rollback]"),)
    ),
    "procedure:export": Example(
        "runbooks/security-incident.yaml", (("steps", "[id=export_suspect]"),)
    ),
    "block": Example(
        "pipelines/blocks/basel-renderer.yaml",
        (
            ("version",),
            ("kind",),
            ("name",),
            ("structure",),
            ("ui",),
            ("integration",),
            ("logic",),
            ("input",),
            ("output",),
        ),
    ),
    "alerts": Example(
        "pipelines/alerts.yaml",
        (
            ("version",),
            ("kind",),
            ("name",),
            ("owner",),
            ("rules", "anthropic_outage"),
            ("rules", "basel_budget_burn"),
        ),
    ),
}
"""Which shipped example illustrates which section. Keys: a document kind, `route`,
`limits`, or `step:KIND`, `gate:KIND`, `procedure:KIND`."""


FIELD_NOTES: dict[tuple[str, str], str] = {
    # Descriptions for fields whose model has no attribute docstring; a docstring, once
    # written, wins. ("*", NAME) applies to a field NAME of any model.
    ("*", "kind"): "Selects this kind.",
    ("*", "reason"): "Recorded with the change.",
    ("*", "description"): "What it is for, in words.",
    ("DocumentHeader", "description"): "One or two sentences on what the document is for.",
    ("LlmStep", "budget_usd"): "Spend limit of this step's LLM calls (all samples), nested "
    "in its route's and the run's.",
    ("LlmStep", "budget_tokens"): "Token limit of this step's LLM calls, like `budget_usd`.",
    ("MetricGate", "baseline"): "Compare with the bundle a channel points at.",
    ("Flow", "inputs"): "Typed inputs, given with `blocks run -i NAME=VALUE`.",
    ("Flow", "models"): "Named model routes that `llm` steps and `review` gates refer to.",
    ("Flow", "limits"): "Concurrency, budget and wall-clock limits of a run.",
    ("Flow", "steps"): "The steps, by id. Order comes from `needs`, not from the file.",
    ("Flow", "gates"): "Quality gates, by id, judged after the steps they name.",
    ("InputSpec", "type"): "The value's type; `-i` strings are converted to it.",
    ("ModelRoute", "fallbacks"): "Models tried in order when the primary keeps failing "
    "with transient errors or its circuit is open.",
    ("ModelRoute", "timeout"): "Per call; default 60s.",
    ("ModelRoute", "retry"): "Retries of transient errors per model, before the next "
    "fallback. Default: 3 attempts, 1s initial, 20s max.",
    ("Retry", "backoff"): "`exponential` doubles the delay each attempt; `constant` keeps "
    "`initial`.",
    ("Limits", "concurrency"): "Steps (and fan-out items) running at once.",
    ("Limits", "budget_usd"): "Spend limit of the run's LLM calls; a call that would pass "
    "it fails its step without being sent.",
    ("Limits", "budget_tokens"): "Token limit of the run's LLM calls, checked like `budget_usd`.",
    ("SecretRef", "secret"): "The variable's name; it must be listed in the flow's `secrets`.",
    ("OutputSpec", "type"): "The output's type, as expressions see it.",
    ("OutputSpec", "file"): "The file to read, relative to the project root (`source: file`).",
    ("ForEach", "concurrency"): "Items running at once (default: all, within "
    "`limits.concurrency`).",
    ("_StepBase", "description"): "What the step is for.",
    ("_StepBase", "retry"): "Default: one attempt.",
    ("_StepBase", "timeout"): "Per attempt. A timeout counts as the `timeout` failure category.",
    ("_StepBase", "for_each"): "Run one instance per item; the step's outputs become lists.",
    ("_StepBase", "outputs"): "Named, typed values other steps read as `steps.ID.outputs.NAME`.",
    ("ShellStep", "run"): "argv list; each `${{ }}` value is exactly one argument. "
    "Exactly one of `run` and `script`.",
    ("ShellStep", "env"): "Extra environment variables: a string (templates allowed) or "
    "`{secret: NAME}`. Only PATH, HOME, LANG, LC_ALL, TMPDIR, PYTHONPATH and SYSTEMROOT are "
    "inherited.",
    ("ShellStep", "cwd"): "Working folder, relative to the project root (default: the root).",
    ("ShellStep", "max_output_bytes"): "How much stdout is kept for the result; the full "
    "output is in the attempt's `stdout.log`.",
    ("PythonStep", "call"): "`module:function`, imported once per process.",
    ("PythonStep", "with"): "Keyword arguments (JSON values; templates allowed).",
    ("LlmStep", "system"): "System prompt file, rendered like `prompt`.",
    ("LlmStep", "vars"): "Values for the prompt's `${{ vars.NAME }}` (templates allowed).",
    ("LlmStep", "samples"): "Independent answers; with more than one the result is "
    "`{samples: [...]}`.",
    ("FlowStep", "flow"): "The sub-flow file.",
    ("FlowStep", "digest"): "`sha256:<hex>` the sub-flow file must have.",
    ("FlowStep", "inputs"): "The sub-flow's inputs (templates allowed).",
    ("_GateBase", "description"): "What the gate protects.",
    ("ContractGate", "artifact"): "The JSON file to check.",
    ("ContractGate", "schema"): "The JSON Schema it must meet.",
    ("CoverageGate", "report"): "coverage.py's JSON report (`--cov-report=json:PATH`).",
    ("MutationGate", "paths"): "Source files or folders to mutate.",
    ("MutationGate", "timeout"): "Wall-clock limit of the mutation run.",
    ("SecurityGate", "paths"): "Source files or folders to scan.",
    ("SecurityGate", "tool"): "The scanner.",
    ("ReviewGate", "model"): "A route from the flow's `models`.",
    ("ReviewGate", "rubric"): "The rubric file the model judges against.",
    ("ReviewGate", "target"): "The file(s) under review.",
    ("ReviewGate", "samples"): "Independent reviews; `pass_rate` is the share that pass.",
    ("MetricGate", "metrics"): "The metrics `require` may use, by name.",
    ("MetricSource", "type"): "The metric's type, as `require` sees it.",
    ("MetricSource", "file"): "A JSON file to read the metric from (with `pointer`).",
    ("MetricSource", "pointer"): "JSON pointer into `file`.",
    ("Baseline", "channel"): "The channel whose current bundle is the baseline.",
    ("Runbook", "params"): "Typed parameters, like a flow's inputs.",
    ("Runbook", "steps"): "Run in order, top to bottom.",
    ("RunbookStep", "id"): "Unique within the runbook; later steps read `steps.ID`.",
    ("RunbookStep", "description"): "What the step is for.",
    ("RunbookStep", "do"): "The procedure to run.",
    ("RunbookStep", "undo"): "The procedure that takes `do` back; not allowed for "
    "irreversible procedures.",
    ("RunbookStep", "when"): "Run only if this CEL expression is true.",
    ("RunbookStep", "timeout"): "Limit for the step.",
    ("RunbookStep", "idempotent"): "May it be re-run after a crash without asking?",
    ("GotoTarget", "goto"): "The id of the step to jump to.",
    ("PromoteProc", "channel"): "The channel to move.",
    ("RollbackProc", "channel"): "The channel to move.",
    ("FreezeProc", "channel"): "The channel, or `all`.",
    ("UnfreezeProc", "channel"): "The channel, or `all`.",
    ("CircuitProc", "provider"): "As in model names: `anthropic` in `anthropic/...`.",
    ("CircuitProc", "state"): "`open` stops all calls to the provider until closed by hand.",
    ("CircuitProc", "reason"): "Recorded in the circuit state file.",
    ("RouteProc", "flow"): "The flow file.",
    ("RouteProc", "route"): "A route id of that flow (a literal id, not a template).",
    ("RouteProc", "use"): "Which model of the route later runs call.",
    ("LimitsProc", "flow"): "The flow file.",
    ("LimitsProc", "concurrency"): "New `limits.concurrency` for later runs.",
    ("LimitsProc", "timeout"): "New `limits.timeout` for later runs.",
    ("RunProc", "flow"): "The flow file.",
    ("RunProc", "inputs"): "The flow's inputs.",
    ("GateProc", "channel"): "Check the bundle this channel points at.",
    ("GateProc", "bundle"): "Or check this bundle.",
    ("GateProc", "gate"): "Only this gate (default: all).",
    ("ShellProc", "run"): "argv list; each `${{ }}` value is exactly one argument.",
    ("ShellProc", "env"): "Extra environment variables.",
    ("NotifyProc", "message"): "The text to send (templates allowed).",
    ("ApprovalProc", "approvers"): "How many different people must approve.",
    ("ApprovalProc", "message"): "What the approvers are asked.",
    ("ExportProc", "bundle"): "A bundle id or `${{ }}` expression.",
    ("ExportProc", "to"): "The folder to export into.",
    ("Block", "structure"): "Where the code lives.",
    ("Block", "ui"): "How the result is shown.",
    ("Block", "integration"): "What it provides and needs.",
    ("Block", "logic"): "Entry point and tests.",
    ("Block", "input"): "Contract of what goes in.",
    ("Block", "output"): "Contract of what comes out.",
    ("StructureFace", "paths"): "Files and folders of the block's code.",
    ("UiFace", "renders"): "The format the block's result is shown in.",
    ("UiFace", "template"): "The template that renders it.",
    ("IntegrationFace", "provides"): "What the block offers, in words.",
    ("IntegrationFace", "requires"): "What the block needs, in words.",
    ("IntegrationFace", "flows"): "Flows that use the block.",
    ("LogicFace", "call"): "`module:function`, the entry point.",
    ("LogicFace", "tests"): "Test files that pin its behaviour.",
    ("ContractFace", "schema"): "JSON Schema file.",
    ("Alerts", "rules"): "Alert rules, by id.",
    ("AlertRule", "signal"): "What is measured over `window`.",
    ("AlertRule", "flow"): "Only runs of this flow (by name).",
    ("AlertRule", "provider"): "Only calls to this provider.",
    ("AlertRule", "runbook"): "The runbook the alert suggests.",
    ("AlertRule", "params"): "Parameters for that runbook.",
    ("AlertRule", "severity"): "How loudly to alert.",
}
"""(model class name, field name) -> words for the reference. A class named with a leading
underscore is the shared base of a family of kinds (`_StepBase`, `_GateBase`)."""

FIELD_STATUS: dict[tuple[str, str], str] = {
    ("MetricGate", "baseline"): "The baseline is the metrics this gate recorded in the bundle "
    "the channel serves now (`blocks promote`); while the channel serves nothing, or a bundle "
    "of another flow, a `require` that reads `baseline.*` is inconclusive.",
}
"""What the engine does not do yet, appended to a field's description."""

_STATUS: dict[str, str] = {
    "flow": "`blocks validate`, `plan`, `graph`, `run` and `verify` read flows.",
    "runbook": "`blocks runbook run` executes runbooks: verify after each step, undo in "
    "reverse on abort, approvals, `--dry-run`, `--rehearse`, `--resume`, and an incident "
    "bundle (see docs/guides/runbooks-and-rollback.md).",
    "block": "Blocks are validated only; nothing runs them yet.",
    "alerts": "`blocks alerts check` evaluates the rules over the run history and names the "
    "runbook to run when one fires; nothing runs it on a schedule (see docs/guides/alerts.md).",
    "step:flow": "The sub-flow runs as a run of its own (`<run>.<step>.<attempt>`); its flow "
    "`outputs` are the step's result; `digest` refuses a changed sub-flow.",
    "gates": "`blocks run` evaluates a gate once its `after` steps have succeeded. A "
    "`blocker` that does not pass (fail or inconclusive) blocks every step downstream of "
    "its `after` steps and fails the run; a `warn` gate is recorded only. `blocks verify` "
    "evaluates every gate on demand, for CI. See "
    "[running flows](../guides/running-flows.md#gates).",
    "procedures": "Procedures are validated only; runbook execution is future work.",
}

_RULES_ALL = (
    "YAML 1.2 core schema: `yes`, `no`, `on` and `off` are strings; `012` is not octal; a "
    "plain number where a string is expected keeps its text (`1.10` stays `1.10`).",
    "One document per file (`yaml.multi-document`). No duplicate keys (`yaml.duplicate-key`). "
    "Keys are plain strings (`yaml.key`). No custom tags such as `!!python/object` "
    "(`yaml.tag`). Spaces, not tabs, indent (`yaml.tab`).",
    "UTF-8 without a byte-order mark (`yaml.bom`, `yaml.encoding`); no NUL, NEL, LS or PS "
    "characters, which YAML 1.1 and 1.2 read differently (`yaml.encoding`).",
    "At most 16 MiB per file (`yaml.too-large`), 64 levels of nesting (`yaml.too-deep`) and "
    "1,000,000 nodes with aliases expanded (`yaml.too-many-nodes`). Anchors, aliases and "
    "merge keys (`<<`) are allowed within these limits.",
    "The top level is a mapping (`spec.not-a-mapping`) with `version: 1` "
    "(`spec.bad-version`) and a known `kind` (`spec.unknown-kind`).",
    'Unknown fields are errors, with a "did you mean" (`spec.unknown-field`). Missing '
    'required fields are errors (`spec.missing-field`). Values are not coerced: `"3"` is '
    "not an integer and `1` is not a boolean (`spec.wrong-type`, `spec.bad-value`).",
    "Every error of a file is reported in one pass, sorted by position. While a flow fails "
    "its schema, the `needs` and gate `after` references and cycles are still checked; the "
    "other rules below wait until the schema passes.",
    "Paths are relative to the project root: the nearest folder at or above the spec that "
    "holds `pyproject.toml`, `.git` or `blocks.toml`. A path the spec names that does not "
    "exist is an error (`spec.missing-file`), except paths holding `${{ }}` and files a "
    "run produces (gate artifacts and reports, output files).",
)

_RULES: dict[str, tuple[str, ...]] = {
    "flow": (
        "An input's `default` must have the input's `type` and be one of its `enum` values "
        "(`spec.bad-default`). An input without a default is required by `blocks run`.",
        "`degrade_to` must name a route of `models` (`ref.unknown-model`).",
        "Every `${{ }}` in `outputs` is compiled and type-checked (`expr.invalid`).",
    ),
    "steps": (
        '`needs` names existing steps (`ref.unknown-step`, with a "did you mean"), each '
        "once (`spec.duplicate-need`), never the step itself (`graph.self-dependency`); the "
        "steps form no cycle (`graph.cycle`, which lists every step of the cycle with its "
        "line).",
        "`when` is a CEL expression that yields a boolean; every `${{ }}` template in the "
        "step is compiled and type-checked (`expr.invalid`): unknown inputs, steps or "
        "outputs, and type mismatches, are errors.",
        "A step reads `steps.X` only if it waits for X, directly or through other steps "
        "(`ref.not-upstream`: add X to `needs`), and never its own outputs (`ref.self`).",
        "`for_each.items` is a list or a `${{ }}` expression (`spec.bad-value`). The item is "
        "`item` in expressions unless `as` names it. A fan-out step's outputs are lists, "
        "one value per item, in item order.",
        "`output.source: file` needs `file`.",
    ),
    "step:shell": (
        "Exactly one of `run` (argv list) and `script`.",
        "`script` may not contain `${{ }}` (`spec.template-in-script`): pass values through "
        '`env` and use `"$NAME"`.',
        "An `env` value `{secret: NAME}` needs NAME in the flow's `secrets` "
        "(`ref.unknown-secret`).",
        "Exit code 0 is success; stdout that parses as JSON is the step's result, from "
        "which `outputs` are read. `retry.on: [exit_code]` retries non-zero exits.",
    ),
    "step:python": (
        "`call` is `module:function` (`spec.bad-value` otherwise); the function may be "
        "`async`. Its return value must be JSON-able and is the step's result.",
        "Each `pythonpath` folder must exist (`spec.missing-file`).",
    ),
    "step:llm": (
        "`model` names a route of the flow's `models` (`ref.unknown-model`).",
        "The `prompt`, `system` and `output_schema` files must exist (`spec.missing-file`). "
        "`${{ vars.NAME }}` placeholders inside the prompt files are filled at run time, "
        "not checked by `blocks validate`.",
        "The answer is parsed strictly against `output_schema`; a violation, or an answer "
        "cut off by the token limit, is re-asked up to `reask` times with the violations, "
        "then fails the step. The parsed answer is the step's result.",
        "The cache key names the route, not the route's model or params: after changing a "
        "route's model, run with `--no-cache`.",
    ),
    "step:flow": ("The `flow` file must exist (`spec.missing-file`).",),
    "gates": (
        "`after` names existing steps (`ref.unknown-step`).",
        "`require` is a CEL expression that yields a boolean, over the gate kind's metrics "
        "(`expr.invalid`: an unknown metric or a type mismatch is an error).",
        "A missing or NaN metric never passes: the verdict is `fail` or, with "
        "`on_missing: inconclusive`, inconclusive.",
    ),
    "gate:contract": ("The `schema` file must exist (`spec.missing-file`).",),
    "gate:review": (
        "`model` names a route of the flow's `models` (`ref.unknown-model`); the `rubric` "
        "file must exist (`spec.missing-file`).",
    ),
    "gate:metric": (
        "Each metric has exactly one of `value` and `file`.",
        "`require` sees the declared metrics by name, and `baseline.NAME` when `baseline` is set.",
        "A `value` template reads only the `after` steps and the steps they wait for "
        "(`ref.not-upstream`: add the step to `after`).",
    ),
    "runbook": (
        "Parameter defaults follow the rules of flow inputs (`spec.bad-default`).",
        "Step ids are unique (`spec.duplicate-id`).",
        "Templates in `do` and `undo` see `params`, the earlier steps "
        "(`steps.ID.status`, `.outputs`, `.result`), `channels[NAME]` (`.frozen`, "
        "`.current.bundle`, `.current.gates_passed`, `.current.promoted_at`, `.previous`), "
        "`circuits[NAME]` (`.state`, `.failures`) and `run` (`expr.invalid`).",
        "`when` and `verify` yield booleans; `verify` also sees `result`, what the "
        "procedure returned.",
        "A procedure's `flow` file must exist (`spec.missing-file`).",
        "`undo` is not allowed on a step whose `do` cannot be undone: "
        "`run`, `gate`, `notify`, `approval`, `export` (`spec.irreversible-undo`).",
        "`on_failure: {goto: ID}` names an existing step (`ref.unknown-step`) other than "
        "itself (`spec.bad-value`).",
    ),
    "block": (
        "Every `structure.paths` entry, the `input` and `output` schemas, the `ui.template` "
        "and every `logic.tests` entry must exist (`spec.missing-file`).",
    ),
    "alerts": (
        "`threshold` is a CEL expression over `value` (a number) that yields a boolean "
        "(`expr.invalid`).",
        "The `runbook` file must exist (`spec.missing-file`).",
        "`provider` narrows `error_rate` only, and `params` need a `runbook` (`spec.bad-value`).",
        "Each of `params` is a param the runbook declares (`ref.unknown-param`).",
    ),
}

_CODES: tuple[tuple[str, str], ...] = (
    ("io.unreadable", "The file cannot be read (missing, permissions)."),
    ("yaml.too-large", "The file is over 16 MiB."),
    ("yaml.bom", "The file starts with a byte-order mark."),
    ("yaml.encoding", "Not UTF-8, or holds NUL, NEL, LS or PS."),
    ("yaml.empty", "No document, or only comments."),
    ("yaml.tab", "A tab in indentation."),
    ("yaml.syntax", "YAML syntax error."),
    ("yaml.multi-document", "More than one YAML document in the file."),
    ("yaml.too-deep", "Nested deeper than 64 levels."),
    ("yaml.too-many-nodes", "More than 1,000,000 nodes with aliases expanded."),
    ("yaml.tag", "A custom tag (`!!python/...`, `!foo`)."),
    ("yaml.key", "A mapping key that is not a plain string."),
    ("yaml.duplicate-key", "A key appears twice in one mapping."),
    ("spec.not-a-mapping", "The top level is not a mapping."),
    ("spec.bad-version", "`version` is not 1."),
    ("spec.unknown-kind", "`kind` (of the document, a step, a gate or a procedure) is unknown."),
    ("spec.missing-field", "A required field is missing."),
    ("spec.unknown-field", "A field the kind does not have."),
    ("spec.wrong-type", "A value of the wrong type."),
    ("spec.bad-value", "A value of the right type that breaks a constraint."),
    ("spec.bad-default", "An input's default does not match its type or enum."),
    ("spec.duplicate-need", "A step lists the same step twice in `needs`."),
    ("spec.duplicate-id", "Two runbook steps share an id."),
    ("spec.missing-file", "A file the spec names does not exist."),
    ("spec.template-in-script", "`${{ }}` inside a shell `script`."),
    ("spec.irreversible-undo", "`undo` on a procedure that cannot be undone."),
    ("ref.unknown-step", "`needs`, a gate's `after` or a `goto` names no step."),
    ("ref.unknown-model", "A step, gate or `degrade_to` names no model route."),
    ("ref.unknown-secret", "`{secret: NAME}` with NAME not in the flow's `secrets`."),
    ("ref.unknown-param", "An alert rule's `params` name a param its runbook does not declare."),
    ("ref.not-upstream", "An expression reads a step that has not finished when it runs."),
    ("ref.self", "A step's expression reads the step's own outputs."),
    ("graph.self-dependency", "A step needs itself."),
    ("graph.cycle", "Steps need each other in a cycle."),
    ("expr.invalid", "A CEL expression or `${{ }}` template does not compile or type-check."),
)
"""Every diagnostic code `blocks validate` reports, and what it means."""


# ---------------------------------------------------------------------------------------
# entry points


def render_reference(root: Path | None = None) -> str:
    """The whole of `docs/reference/spec.md`, from the models, schemas and examples."""
    from engine.schema import all_schemas  # noqa: PLC0415  (pydantic: see the docstring)
    from engine.spec import DOCUMENT_KINDS  # noqa: PLC0415

    doc = _Doc(root or ROOT, all_schemas())
    doc.preamble()
    for kind, model in DOCUMENT_KINDS.items():
        doc.document(kind, model)
    doc.codes()
    return doc.text()


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m engine.schema_docs [--check]`: write the reference, or check it is current."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args not in ([], ["--check"]):
        sys.stderr.write("usage: python -m engine.schema_docs [--check]\n")
        return 2
    target = ROOT / OUTPUT
    text = render_reference()
    if args:
        current = target.read_text(encoding="utf-8") if target.exists() else ""
        if current != text:
            sys.stderr.write(f"{OUTPUT} is out of date: run `python -m engine.schema_docs`\n")
            return 1
        return 0
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text, encoding="utf-8", newline="\n")
    sys.stdout.write(f"wrote {OUTPUT}\n")
    return 0


# ---------------------------------------------------------------------------------------
# snippets


def cut_example(example: Example, root: Path) -> str:
    """The snippet of `example`: its cuts in file order, verbatim, under their parents' keys."""
    lines = (root / example.file).read_text(encoding="utf-8").splitlines()
    blocks = sorted((_locate(lines, cut, example.file) for cut in example.cuts), key=lambda b: b[1])
    out: list[str] = []
    shown: set[int] = set()
    for ancestors, start, end in blocks:
        for index in ancestors:
            if index not in shown:
                shown.add(index)
                out.append(lines[index])
        out.extend(lines[start:end])
    return "\n".join(out)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _content(line: str) -> bool:
    stripped = line.strip()
    return bool(stripped) and not stripped.startswith("#")


def _locate(lines: list[str], cut: Sequence[str], file: str) -> tuple[list[int], int, int]:
    """The key lines of the ancestors of `cut`, and the [start, end) lines of its block."""
    start, end = 0, len(lines)
    ancestors: list[int] = []
    found = -1
    for part in cut:
        if found >= 0:
            ancestors.append(found)
        level = next((_indent(ln) for ln in lines[start:end] if _content(ln)), 0)
        if part.startswith("[id=") and part.endswith("]"):
            pattern = re.compile(r"-\s+id:\s*" + re.escape(part[4:-1]) + r"\s*$")
        else:
            pattern = re.compile(re.escape(part) + r":(\s|$)")
        hit = next(
            (
                i
                for i in range(start, end)
                if _indent(lines[i]) == level and pattern.match(lines[i], level)
            ),
            None,
        )
        if hit is None:
            raise LookupError(f"{file}: no '{'.'.join(cut)}' to cut an example from")
        found = hit
        stop = hit + 1
        while stop < end and (not lines[stop].strip() or _indent(lines[stop]) > level):
            stop += 1
        while stop > hit + 1 and not lines[stop - 1].strip():
            stop -= 1
        start, end = hit + 1, stop
    return ancestors, found, end


# ---------------------------------------------------------------------------------------
# the document


@dataclass
class _Doc:
    root: Path
    schemas: Mapping[str, Mapping[str, Any]]
    out: list[str] = field(default_factory=list)
    done: set[str] = field(default_factory=set)
    anchors: set[str] = field(default_factory=set)

    def text(self) -> str:
        return "\n".join(self.out).rstrip("\n") + "\n"

    def add(self, *lines: str) -> None:
        self.out.extend(lines)

    # ---- sections ---------------------------------------------------------------------

    def preamble(self) -> None:
        from engine.spec import LANGUAGE_VERSION, DocumentHeader  # noqa: PLC0415
        from engine.spec.common import DURATION_PATTERN  # noqa: PLC0415

        self.add(
            "# Spec reference",
            "",
            "<!-- Generated by `python -m engine.schema_docs` from engine/spec and the JSON "
            "Schemas it publishes. Do not edit by hand: tests/test_docs.py fails when this "
            "file and the models disagree. -->",
            "",
            f"Every field of every document kind of spec language version {LANGUAGE_VERSION}: "
            "its type, whether it is required, its default and what it means. Each kind has "
            "an example cut from the shipped examples (`pipelines/`, `runbooks/`; all of "
            "them validate) and the rules `blocks validate` checks beyond the schema, with "
            "the diagnostic code each rule reports. Editors read the same schemas from "
            "`schemas/*.schema.json` (see [the CLI quick-start](../guides/cli-quickstart.md)).",
            "",
            "Contents: [every document](#every-document) · [value types](#value-types) · "
            "[expressions](#expressions) · [flow](#kind-flow) ([steps](#steps), "
            "[gates](#gates)) · [runbook](#kind-runbook) ([procedures](#procedures)) · "
            "[block](#kind-block) · [alerts](#kind-alerts) · "
            "[diagnostic codes](#diagnostic-codes)",
            "",
        )
        self.heading(2, "Every document")
        self.bullets(_RULES_ALL)
        self.add("Every document starts with these fields, then `kind`:", "")
        self.table(
            DocumentHeader, self.schemas["flow.schema.json"], list(DocumentHeader.model_fields)
        )
        self.heading(2, "Value types")
        self.add(
            "| Type | Written as |",
            "|---|---|",
            f"| id | `{_pattern('Identifier')}` (lower snake_case), at most 64 characters: "
            "ids of steps, gates, inputs, outputs, routes and runbook steps, so expressions "
            "can say `steps.build` |",
            f"| name | `{_pattern('Name')}`, at most 100 characters: document names |",
            f"| env name | `{_pattern('EnvName')}`: environment variables and secrets |",
            "| path | relative to the project root |",
            f"| duration | seconds as a number, or `{_cell(DURATION_PATTERN)}`: `500ms`, "
            "`30s`, `15m`, `2h`, `1d` |",
            "| CEL expression | [CEL](https://cel.dev): `&&`, `\\|\\|`, `!`, `==`, `in`, "
            "`size()`; compiled and type-checked by `blocks validate` |",
            "| template | a string holding `${{ CEL }}`. A template that is the whole string "
            "keeps the value's type; one inside other text is rendered into it |",
            "",
            "`blocks validate` enforces the patterns of ids, names and env names; the "
            "published JSON Schemas do not carry them yet, so an editor does not flag them.",
            "",
        )
        self.heading(2, "Expressions")
        self.add(
            "What an expression can read, by where it is written:",
            "",
            "| Where | In scope |",
            "|---|---|",
            "| step `when`; templates in `run`, `env`, `with`, `vars`, `inputs`, "
            "`for_each.items` | `inputs.NAME`; for the steps it waits for, `steps.ID.status`, "
            "`.output` (the result), `.outputs.NAME`, `.duration`, `.attempts`; `run.id`, "
            "`run.flow`; the `for_each` item |",
            "| flow `outputs` | the same, for every step |",
            "| gate `require` | the gate kind's metrics; a `metric` gate's own metrics and "
            "`baseline.NAME` |",
            "| `metric` gate `value` | `inputs`, `run`, and `steps` for the `after` steps and "
            "the steps they wait for |",
            "| runbook `when`, `verify`, templates | `params`, `steps` (earlier steps), "
            "`channels[NAME]`, `circuits[NAME]`, `run`; `verify` also `result` |",
            "| alert `threshold` | `value` |",
            "| prompt and system prompt files | `vars.NAME`, filled at run time |",
            "",
        )

    def document(self, kind: str, model: type[BaseModel]) -> None:
        schema = self.schemas[f"{kind}.schema.json"]
        self.done.add(model.__name__)
        self.heading(2, f"Kind `{kind}`")
        self.add(_clean(schema.get("description", "")), "")
        self.status(kind)
        self.example(kind)
        self.rules(kind)
        self.heading(3, f"`{kind}` fields")
        header = set(_header_fields())
        self.table(model, schema, [n for n in model.model_fields if n not in header])
        self.children(model, schema)

    def children(self, model: type[BaseModel], schema: Mapping[str, Any]) -> None:
        """The sections of the models `model`'s fields use, in field order."""
        for name, info in model.model_fields.items():
            for what, found in _walk(info.annotation, info.discriminator is not None):
                if what == "union":
                    for nested in self.kinds(name, found, schema):
                        self.model(nested, schema)
                else:
                    self.model(found[0], schema)

    def model(self, model: type[BaseModel], schema: Mapping[str, Any]) -> None:
        if model.__name__ in self.done:
            return
        self.done.add(model.__name__)
        self.heading(3, f"`{model.__name__}`")
        self.describe(model, schema)
        self.example(_EXAMPLE_OF.get(model.__name__, ""))
        self.table(model, schema, list(model.model_fields))
        self.children(model, schema)

    def kinds(
        self, field_name: str, members: Sequence[type[BaseModel]], schema: Mapping[str, Any]
    ) -> list[type[BaseModel]]:
        """A family of kinds (steps, gates, procedures): shared fields, then each kind.
        Returns the models the kinds use, for the caller to document next."""
        title = _UNION_TITLES.get(field_name, field_name)
        family = _KIND_DOC.get(title, title + "s")
        if f"family:{family}" in self.done:
            return []
        self.done.add(f"family:{family}")
        self.heading(3, family.capitalize())
        self.status(family)
        self.rules(family)
        base = _common_base(members)
        shared = [n for n in base.model_fields if n != "kind"] if base is not None else []
        if shared:
            self.add(f"Fields every {title} has, whatever its `kind`:", "")
            self.table(members[0], schema, shared, base=base)
        nested: list[type[BaseModel]] = []
        for member in members:
            kind = _kind_of(member)
            self.done.add(member.__name__)
            self.heading(4, f"{title.capitalize()} kind `{kind}`")
            self.describe(member, schema)
            self.status(f"{title}:{kind}")
            if title == "procedure":
                self.undo_line(kind)
            self.example(f"{title}:{kind}")
            self.rules(f"{title}:{kind}")
            self.table(member, schema, [n for n in member.model_fields if n not in shared])
            if title == "gate":
                self.gate_metrics(kind)
            for info in member.model_fields.values():
                for what, found in _walk(info.annotation, info.discriminator is not None):
                    if what == "model" and found[0] not in nested:
                        nested.append(found[0])
        return nested

    def undo_line(self, kind: str) -> None:
        from engine.spec import IRREVERSIBLE  # noqa: PLC0415

        if kind in IRREVERSIBLE:
            self.add("Cannot be undone: a step doing it may not have `undo`.", "")
        else:
            self.add("Can be undone: give the step an `undo`.", "")

    def gate_metrics(self, kind: str) -> None:
        from engine.spec import GATE_METRICS  # noqa: PLC0415

        metrics = GATE_METRICS.get(kind)
        if not metrics:
            self.add("Metrics `require` can use: the ones it declares under `metrics`.", "")
            return
        shown = ", ".join(f"`{name}` ({type_})" for name, type_ in metrics.items())
        self.add(f"Metrics `require` can use: {shown}.", "")

    def codes(self) -> None:
        self.heading(2, "Diagnostic codes")
        self.add(
            "`blocks validate` reports these stable codes (in `--format json`, as GitHub "
            "annotation titles and as SARIF rule ids), so tools can match on them.",
            "",
            "| Code | Meaning |",
            "|---|---|",
            *(f"| `{code}` | {text} |" for code, text in _CODES),
            "",
        )

    # ---- pieces -----------------------------------------------------------------------

    def heading(self, level: int, text: str) -> None:
        slug = _slug(text)
        if slug in self.anchors:
            raise ValueError(f"two sections would share the anchor #{slug}")
        self.anchors.add(slug)
        self.add("#" * level + " " + text, "")

    def describe(self, model: type[BaseModel], schema: Mapping[str, Any]) -> None:
        own = _clean(_defs(schema).get(model.__name__, {}).get("description", ""))
        text = own or _MODEL_NOTES.get(model.__name__, "")
        if text:
            self.add(text, "")

    def status(self, key: str) -> None:
        if key in _STATUS:
            self.add(f"**Status:** {_STATUS[key]}", "")

    def rules(self, key: str) -> None:
        if key in _RULES:
            self.add("Rules `blocks validate` checks:", "")
            self.bullets(_RULES[key])

    def bullets(self, items: Sequence[str]) -> None:
        self.add(*(f"- {item}" for item in items), "")

    def example(self, key: str) -> None:
        example = EXAMPLES.get(key)
        if example is not None:
            snippet = cut_example(example, self.root)
            self.add(f"From `{example.file}`:", "", "```yaml", snippet, "```", "")

    def table(
        self,
        model: type[BaseModel],
        schema: Mapping[str, Any],
        names: Sequence[str],
        *,
        base: type[BaseModel] | None = None,
    ) -> None:
        props = _properties(schema, model)
        rows = ["| Field | Type | Required | Default | Description |", "|---|---|---|---|---|"]
        for name in names:
            info = model.model_fields[name]
            key = info.alias or name
            prop = props.get(key, {})
            owner = _owner(model, name, base)
            rows.append(
                f"| `{key}` | {_cell(_type(prop))} | {'yes' if info.is_required() else ''} "
                f"| {_default_text(info, prop)} | {_cell(_description(owner, key, prop))} |"
            )
        self.add(*rows, "")


_EXAMPLE_OF = {"ModelRoute": "route", "Limits": "limits"}
_MODEL_NOTES = {
    "GotoTarget": "The `{goto: ID}` form of `on_failure`: jump to another step.",
    "UnfreezeProc": "Allow promotions to a channel again (`channel: all` unfreezes every channel).",
}
"""Descriptions for models without a docstring; a docstring, once written, wins."""
_UNION_TITLES = {"steps": "step", "gates": "gate", "do": "procedure", "undo": "procedure"}
_KIND_DOC = {"step": "steps", "gate": "gates", "procedure": "procedures"}


# ---------------------------------------------------------------------------------------
# models and schemas


def _header_fields() -> list[str]:
    from engine.spec import DocumentHeader  # noqa: PLC0415

    return list(DocumentHeader.model_fields)


def _pattern(alias_name: str) -> str:
    """The regular expression of a constrained string type of `engine.spec.common`."""
    from engine.spec import common  # noqa: PLC0415

    for meta in typing.get_args(getattr(common, alias_name))[1:]:
        for inner in getattr(meta, "metadata", [meta]):
            pattern = getattr(inner, "pattern", None)
            if isinstance(pattern, str):
                return pattern
    raise LookupError(f"engine.spec.common.{alias_name} has no pattern")


def _defs(schema: Mapping[str, Any]) -> Mapping[str, Any]:
    defs = schema.get("$defs", {})
    return defs if isinstance(defs, Mapping) else {}


def _properties(schema: Mapping[str, Any], model: type[BaseModel]) -> Mapping[str, Any]:
    """The JSON Schema properties of `model`: its `$defs` entry, else the document's own."""
    own = _defs(schema).get(model.__name__, schema)
    props = own.get("properties", {})
    return props if isinstance(props, Mapping) else {}


def _walk(
    annotation: Any, discriminated: bool
) -> Iterator[tuple[str, tuple[type[BaseModel], ...]]]:
    """The models an annotation refers to: ("model", (M,)), or ("union", (K1, K2, ...)) for a
    family of kinds told apart by `kind`."""
    from pydantic import BaseModel  # noqa: PLC0415

    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        tagged = discriminated or any(getattr(m, "discriminator", None) for m in args[1:])
        yield from _walk(args[0], tagged)
    elif origin is typing.Union or origin is types.UnionType:
        models = tuple(a for a in args if isinstance(a, type) and issubclass(a, BaseModel))
        if discriminated and len(models) > 1:
            yield "union", models
        else:
            for arg in args:
                yield from _walk(arg, discriminated=False)
    elif origin is not None:
        for arg in args:
            yield from _walk(arg, discriminated)
    elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield "model", (annotation,)


def _common_base(members: Sequence[type[BaseModel]]) -> type[BaseModel] | None:
    """The private base class every member of a family shares (`_StepBase`), if any."""
    from pydantic import BaseModel  # noqa: PLC0415

    for candidate in members[0].__mro__[1:]:
        if (
            issubclass(candidate, BaseModel)
            and candidate.__name__.startswith("_")
            and all(issubclass(m, candidate) for m in members)
        ):
            return candidate
    return None


def _owner(model: type[BaseModel], name: str, base: type[BaseModel] | None) -> str:
    """The name of the class that declares field `name` (the key of FIELD_NOTES)."""
    if base is not None and name in base.model_fields:
        return base.__name__
    for klass in model.__mro__:
        if name in vars(klass).get("__annotations__", {}):
            return klass.__name__
    return model.__name__


def _kind_of(model: type[BaseModel]) -> str:
    args = typing.get_args(model.model_fields["kind"].annotation)
    return str(args[0]) if args else model.__name__.lower()


# ---------------------------------------------------------------------------------------
# cells


def _slug(text: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def _clean(text: str) -> str:
    return " ".join(str(text).split())


def _cell(text: str) -> str:
    return _clean(text).replace("|", "\\|")


def _description(owner: str, name: str, prop: Mapping[str, Any]) -> str:
    text = _clean(prop.get("description", ""))
    if text == _DURATION_TEXT:
        text = ""  # the duration type's own description, not the field's
    text = text or FIELD_NOTES.get((owner, name)) or FIELD_NOTES.get(("*", name), "")
    status = FIELD_STATUS.get((owner, name))
    return f"{text} {status}".strip() if status else text


def _is_duration(prop: Mapping[str, Any]) -> bool:
    options = [o for o in prop.get("anyOf", []) if isinstance(o, Mapping)]
    return any(
        o.get("type") == "string" and "(ms|s|m|h|d)" in str(o.get("pattern", "")) for o in options
    ) or any(_is_duration(o) for o in options)


def _bounds(prop: Mapping[str, Any]) -> str:
    low, high = prop.get("minimum"), prop.get("maximum")
    if low is not None and high is not None:
        return f" {low}–{high}"
    if low is not None:
        return f" ≥ {low}"
    if high is not None:
        return f" ≤ {high}"
    return ""


def _link(name: str) -> str:
    return f"[`{name}`](#{_slug(name)})"


def _type(prop: Mapping[str, Any]) -> str:
    """A JSON Schema property in words: `list of string`, `integer 1–100`, a link."""
    if "$ref" in prop:
        return _link(str(prop["$ref"]).rsplit("/", 1)[-1])
    if "const" in prop:
        return f"`{json.dumps(prop['const'])}`"
    if "enum" in prop:
        return " | ".join(f"`{json.dumps(v)}`" for v in prop["enum"])
    if "oneOf" in prop and "discriminator" in prop:
        family = _family(prop)
        return f"a {family} (see [{_KIND_DOC[family]}](#{_KIND_DOC[family]}))"
    if _is_duration(prop):
        return "duration"
    if "anyOf" in prop:
        return " or ".join(_type(o) for o in prop["anyOf"] if o.get("type") != "null")
    kind = prop.get("type")
    if kind == "array":
        text = f"list of {_type(prop.get('items', {}))}"
        return text + (f" (at least {prop['minItems']})" if prop.get("minItems") else "")
    if kind == "object":
        value = prop.get("additionalProperties")
        key = _string_kind({"type": "string", **prop.get("propertyNames", {})})
        text = f"map of {key} → {_type(value) if isinstance(value, Mapping) else 'any'}"
        return text + (f" (at least {prop['minProperties']})" if prop.get("minProperties") else "")
    if kind == "string":
        return _string_kind(prop)
    if kind in ("integer", "number"):
        return f"{kind}{_bounds(prop)}"
    return "boolean" if kind == "boolean" else "any"


_STRING_KINDS = {64: "id", 100: "name", 128: "env name", 4096: "path"}
"""The constrained string types of engine.spec.common, told apart by their length limits
(the published schemas do not carry their patterns yet)."""


def _string_kind(prop: Mapping[str, Any]) -> str:
    if prop.get("format") == "cel":
        return "CEL expression"
    return _STRING_KINDS.get(int(prop.get("maxLength", 0)), "string")


def _family(prop: Mapping[str, Any]) -> str:
    targets = " ".join(str(v) for v in prop.get("discriminator", {}).get("mapping", {}).values())
    if "Proc" in targets:
        return "procedure"
    return "step" if "Step" in targets else "gate"


def _duration_text(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def _default_text(info: FieldInfo, prop: Mapping[str, Any]) -> str:
    from pydantic import BaseModel  # noqa: PLC0415

    if info.is_required():
        return ""
    value = info.get_default(call_default_factory=True)
    if value is None:
        return ""
    if isinstance(value, BaseModel):
        return "all defaults"
    if _is_duration(prop) and isinstance(value, int | float) and not isinstance(value, bool):
        return f"`{_duration_text(float(value))}`"
    return _cell(f"`{json.dumps(value, ensure_ascii=False)}`")


if __name__ == "__main__":
    raise SystemExit(main())
