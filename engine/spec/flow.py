"""The `flow` kind: inputs, model routes, limits, steps and gates.

Owns: the shape of a flow document and of each step and gate kind, as frozen models.
Must not: check references between parts (that is `engine.checks`), read the files a flow
names, or run anything.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from engine.spec.common import (
    DocumentHeader,
    Duration,
    EnvName,
    Expression,
    Identifier,
    InputSpec,
    Pattern,
    RelPath,
    SpecModel,
    Text,
    ValueType,
)

__all__ = [
    "GATE_METRICS",
    "ContractGate",
    "CoverageGate",
    "Flow",
    "FlowStep",
    "ForEach",
    "Gate",
    "Limits",
    "LlmStep",
    "MetricGate",
    "MetricSource",
    "ModelRoute",
    "MutationGate",
    "OutputSpec",
    "PythonStep",
    "Retry",
    "ReviewGate",
    "SecretRef",
    "SecurityGate",
    "ShellStep",
    "Step",
]

FailureCategory = Literal["timeout", "rate_limit", "server_error", "connection", "exit_code"]
DEFAULT_TRANSIENT: tuple[FailureCategory, ...] = (
    "timeout",
    "rate_limit",
    "server_error",
    "connection",
)


class Retry(SpecModel):
    """How often and how patiently a step is retried. Permanent errors are never retried."""

    attempts: Annotated[int, Field(ge=1, le=100)] = 1
    """Total attempts, the first included."""
    backoff: Literal["constant", "exponential"] = "exponential"
    initial: Duration = 1.0
    """Delay before the second attempt."""
    max: Duration = 60.0
    """No delay is longer than this."""
    jitter: bool = True
    """Randomise each delay by up to ±50 % so retries do not synchronise."""
    on: list[FailureCategory] = Field(default_factory=lambda: list(DEFAULT_TRANSIENT))
    """Which failures count as transient. `exit_code` retries a shell step that exits non-zero."""

    def base_delay(self, attempt: int) -> float:
        """The wait after failed attempt `attempt` (1-based), before jitter and Retry-After:
        `initial`, doubled each time for exponential backoff, never more than `max`."""
        factor = 2 ** (attempt - 1) if self.backoff == "exponential" else 1
        return float(min(self.initial * factor, self.max))


class ModelRoute(SpecModel):
    """A named way to reach a model: a primary, ordered fallbacks, and how to call them."""

    model: Text
    """litellm model name, e.g. `anthropic/claude-sonnet-4-5` or `local/echo` (offline)."""
    fallbacks: list[Text] = Field(default_factory=list)
    params: dict[str, Any] = Field(default_factory=dict)
    """Passed to the provider (temperature, max_tokens, ...)."""
    timeout: Duration | None = None
    retry: Retry | None = None
    budget_usd: Annotated[float, Field(ge=0)] | None = None
    """Spend limit for this route within one run."""
    degrade_to: Identifier | None = None
    """Route to use when this one's budget is spent, instead of failing."""
    rpm: Annotated[int, Field(ge=1)] | None = None
    """Requests per minute to this route's provider, shared by every step of a run."""
    tpm: Annotated[int, Field(ge=1)] | None = None
    """Tokens per minute to this route's provider, shared by every step of a run."""


class Limits(SpecModel):
    """Flow-wide limits."""

    concurrency: Annotated[int, Field(ge=1, le=10_000)] = 8
    budget_usd: Annotated[float, Field(ge=0)] | None = None
    budget_tokens: Annotated[int, Field(ge=0)] | None = None
    timeout: Duration | None = None
    """Wall-clock limit for the whole run."""


class SecretRef(SpecModel):
    """A value read from the environment at run time, masked everywhere it could appear."""

    secret: EnvName


class OutputSpec(SpecModel):
    """A typed output of a step, and where its value comes from."""

    type: ValueType = "string"
    description: Text | None = None
    source: Literal["result", "stdout", "file"] = "result"
    """`result`: the step's result (an llm step's parsed output, a python step's return
    value, a shell step's stdout parsed as JSON); `stdout`: a shell step's stdout as text;
    `file`: the file at `file`."""
    file: RelPath | None = None
    pointer: Annotated[Text, Pattern(r"^(/.*)?$")] | None = None
    """JSON pointer into the result or file; default `/<output name>` for `result`."""

    @model_validator(mode="after")
    def _file_needs_path(self) -> OutputSpec:
        if self.source == "file" and not self.file:
            raise ValueError("an output with source 'file' needs `file: PATH`")
        return self


class ForEach(SpecModel):
    """Fan the step out over a list; each item runs as its own instance."""

    items: Any
    """A list, or a `${{ }}` expression that yields one."""
    as_: Identifier = Field(default="item", alias="as")
    """The name each item has in the step's expressions."""
    concurrency: Annotated[int, Field(ge=1, le=10_000)] | None = None


class _StepBase(SpecModel):
    description: Text | None = None
    needs: list[Identifier] = Field(default_factory=list)
    """Steps that must succeed first. The step starts the moment they have."""
    when: Expression | None = None
    """Run only if this CEL expression is true; otherwise the step is skipped."""
    retry: Retry | None = None
    timeout: Duration | None = None
    for_each: ForEach | None = None
    idempotent: bool = True
    """May the engine re-run it after a crash mid-flight without asking (`--force`)?"""
    continue_on_failure: bool = False
    """A failure is recorded but does not stop dependent steps."""
    cache: bool | None = None
    """Skip the step when its resolved inputs, spec, code and `deps` digests match an earlier
    success. Default: on for idempotent steps, off for the others."""
    deps: list[RelPath] = Field(default_factory=list)
    """Files or folders the step reads outside its inputs; their contents join the cache key."""
    outs: list[RelPath] = Field(default_factory=list)
    """Files or folders the step writes (as DVC's `outs`). The step fails if one is missing
    when it ends; their digests go into the run's record; the step cache keeps a copy and
    puts them back on a cache hit. Files named by `source: file` outputs count too."""
    outputs: dict[Identifier, OutputSpec] = Field(default_factory=dict)


class ShellStep(_StepBase):
    """Run a program. `run` is an argv list: each `${{ }}` value lands in exactly one argument."""

    kind: Literal["shell"]
    run: Annotated[list[Text], Field(min_length=1)] | None = None
    script: Text | None = None
    """A bash script, for pipes and loops. It receives values only through `env`:
    `${{ }}` inside a script is rejected."""
    env: dict[EnvName, Text | SecretRef] = Field(default_factory=dict)
    cwd: RelPath | None = None
    max_output_bytes: Annotated[int, Field(ge=1024)] = 1_048_576

    @model_validator(mode="after")
    def _exactly_one_program(self) -> ShellStep:
        if (self.run is None) == (self.script is None):
            raise ValueError("a shell step needs exactly one of `run` (argv list) or `script`")
        return self


class PythonStep(_StepBase):
    """Call `module:function` with JSON-able keyword arguments (sync or async)."""

    kind: Literal["python"]
    call: Annotated[Text, Pattern(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*$")]
    with_: dict[Identifier, Any] = Field(default_factory=dict, alias="with")
    pythonpath: list[RelPath] = Field(default_factory=list)
    """Folders added to `sys.path` for this call, relative to the project root."""


class LlmStep(_StepBase):
    """Ask a model through a named route, with a prompt template and an output contract."""

    kind: Literal["llm"]
    model: Identifier
    """A route from the flow's `models`."""
    prompt: RelPath
    """Prompt template file; `${{ vars.NAME }}` placeholders are filled from `vars`."""
    system: RelPath | None = None
    vars: dict[Identifier, Any] = Field(default_factory=dict)
    output_schema: RelPath | None = None
    """JSON Schema the answer must meet; parsed strictly, never repaired."""
    samples: Annotated[int, Field(ge=1, le=100)] = 1
    reask: Annotated[int, Field(ge=0, le=3)] = 1
    """How many times to re-ask after a contract failure, with the violations."""
    budget_usd: Annotated[float, Field(ge=0)] | None = None
    budget_tokens: Annotated[int, Field(ge=0)] | None = None


class FlowStep(_StepBase):
    """Run another flow as one step, pinned by digest."""

    kind: Literal["flow"]
    flow: RelPath
    digest: Annotated[Text, Pattern(r"^sha256:[0-9a-f]{64}$")] | None = None
    inputs: dict[Identifier, Any] = Field(default_factory=dict)


Step = Annotated[
    ShellStep | PythonStep | LlmStep | FlowStep,
    Field(discriminator="kind"),
]


class _GateBase(SpecModel):
    description: Text | None = None
    after: Identifier | list[Identifier]
    """The step (or steps) whose completion triggers the gate."""
    require: Expression
    """CEL over the gate's metrics, e.g. `percent >= 80.0`."""
    severity: Literal["blocker", "warn"] = "blocker"
    """A blocker that fails stops dependent steps and fails the run; a warning is recorded."""
    on_missing: Literal["fail", "inconclusive"] = "fail"
    """Verdict when a metric is missing or NaN. Never pass."""


class ContractGate(_GateBase):
    """A produced artifact must meet a JSON Schema."""

    kind: Literal["contract"]
    artifact: RelPath
    schema_: RelPath = Field(alias="schema")


class CoverageGate(_GateBase):
    """Reads coverage.py's JSON report."""

    kind: Literal["coverage"]
    report: RelPath
    file_floor: Annotated[float, Field(ge=0, le=100)] | None = None
    """Optional per-file minimum percent; `files_under_floor` counts the files below it."""


class MutationGate(_GateBase):
    """Runs mutmut on `paths` with `tests` and computes the kill rate."""

    kind: Literal["mutation"]
    paths: list[RelPath] = Field(min_length=1)
    tests: list[Text] = Field(default_factory=lambda: ["tests"])
    """pytest arguments that select the tests mutants must fail."""
    max_mutants: Annotated[int, Field(ge=1)] = 200
    """Mutant budget, so CI time stays bounded."""
    timeout: Duration = 600.0


class SecurityGate(_GateBase):
    """Runs a security scanner (bandit) and counts findings by severity."""

    kind: Literal["security"]
    paths: list[RelPath] = Field(min_length=1)
    tool: Literal["bandit"] = "bandit"


class ReviewGate(_GateBase):
    """An LLM reviews `target` against a rubric; `samples` runs give a pass rate."""

    kind: Literal["review"]
    model: Identifier
    rubric: RelPath
    target: RelPath | list[RelPath]
    samples: Annotated[int, Field(ge=1, le=50)] = 1
    pass_score: Annotated[float, Field(ge=0, le=1)] = 0.7
    """A sample passes when its score reaches this."""


class MetricSource(SpecModel):
    """Where one metric of a `metric` gate comes from."""

    type: Literal["number", "integer", "boolean", "string"] = "number"
    value: Any = None
    """A `${{ }}` expression over inputs and step outputs."""
    file: RelPath | None = None
    pointer: Annotated[Text, Pattern(r"^(/.*)?$")] | None = None

    @model_validator(mode="after")
    def _one_source(self) -> MetricSource:
        if (self.value is None) == (self.file is None):
            raise ValueError("a metric needs exactly one of `value` or `file`")
        return self


class Baseline(SpecModel):
    """Compare against the bundle a channel points at; its metrics appear as `baseline.*`."""

    channel: Text = "prod"


class MetricGate(_GateBase):
    """A threshold over any metrics: `accuracy >= 0.92 && !anneal_loss_flag`."""

    kind: Literal["metric"]
    metrics: dict[Identifier, MetricSource] = Field(min_length=1)
    baseline: Baseline | None = None


GATE_METRICS: dict[str, dict[str, str]] = {
    "contract": {"valid": "boolean", "violations": "integer"},
    "coverage": {
        "percent": "number",
        "branch_percent": "number",
        "lines_covered": "integer",
        "lines_total": "integer",
        "files_under_floor": "integer",
    },
    "mutation": {
        "kill_rate": "number",
        "killed": "integer",
        "survived": "integer",
        "timeout": "integer",
        "skipped": "integer",
        "total": "integer",
    },
    "security": {"high": "integer", "medium": "integer", "low": "integer", "findings": "integer"},
    "review": {
        "pass_rate": "number",
        "score": "number",
        "min_score": "number",
        "samples": "integer",
    },
}
"""The metrics each built-in gate kind reports, by name and type; `require` may use these.
A `metric` gate declares its own."""

Gate = Annotated[
    ContractGate | CoverageGate | MutationGate | SecurityGate | ReviewGate | MetricGate,
    Field(discriminator="kind"),
]


class Flow(DocumentHeader):
    """A DAG of steps with gates: what `blocks run` executes."""

    kind: Literal["flow"]
    inputs: dict[Identifier, InputSpec] = Field(default_factory=dict)
    secrets: list[EnvName] = Field(default_factory=list)
    """Environment variables steps may read as secrets; masked and never stored."""
    models: dict[Identifier, ModelRoute] = Field(default_factory=dict)
    limits: Limits = Field(default_factory=Limits)
    steps: dict[Identifier, Step] = Field(min_length=1)
    gates: dict[Identifier, Gate] = Field(default_factory=dict)
    outputs: dict[Identifier, Any] = Field(default_factory=dict)
    """Values the run reports, usually `${{ steps.X.outputs.Y }}`."""
