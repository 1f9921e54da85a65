"""The contracts extensions implement: step kinds (and, later, gate kinds, stores, hooks).

Owns: `StepKind`, `StepContext`, `StepResult`, `Registry` and the entry-point group names.
Small protocols with keyword-only signatures that can grow without breaking implementers.
Must not: import a concrete step kind (runtime registers them), or do I/O.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from engine.errors import PluginError
from engine.redact import Redactor

__all__ = [
    "ENTRY_POINT_GROUPS",
    "GateContext",
    "GateKind",
    "Measurement",
    "Registry",
    "Render",
    "StepContext",
    "StepKind",
    "StepResult",
]

ENTRY_POINT_GROUPS = {
    "steps": "blocks.steps",
    "gates": "blocks.gates",
    "stores": "blocks.stores",
    "hooks": "blocks.hooks",
}
"""Where third-party packages register kinds (`[project.entry-points."blocks.steps"]`)."""

Render = Callable[[Any], Any]
"""Renders `${{ }}` templates in a value (strings, and strings inside lists and mappings)."""


@dataclass(frozen=True, slots=True)
class StepResult:
    """What a step produced. The executor extracts the declared outputs from it."""

    result: Any = None
    """The step's structured result: an llm step's parsed answer, a python step's return
    value, a shell step's stdout parsed as JSON when it is JSON (else None)."""
    stdout: str = ""
    """Captured standard output (shell), capped; used by outputs with `source: stdout`."""
    detail: Mapping[str, Any] = field(default_factory=dict)
    """Kind-specific facts for the record: exit code, model that answered, bytes dropped."""
    cost_usd: float = 0.0
    tokens: int = 0


class StepContext:
    """Everything a step kind may use while running one attempt of one step instance.

    A kind reads it and never changes it. `workdir` may be given as a string: the `Path` is
    built on first use (pathlib's parsing was a visible per-step cost, and most steps never
    look). Plain attributes, not a frozen dataclass: one is built per attempt.
    """

    __slots__ = (
        "_workdir",
        "_workdir_path",
        "attempt",
        "env",
        "instance",
        "log",
        "project_root",
        "redactor",
        "resources",
        "run_id",
        "step_id",
    )

    _workdir: str | Path
    _workdir_path: Path | None
    run_id: str
    step_id: str
    instance: str
    """`step` or `step[3]` for the fourth item of a fan-out."""
    attempt: int
    project_root: Path
    env: Mapping[str, str]
    """Resolved environment additions for this step (secrets included, never logged)."""
    redactor: Redactor
    log: Callable[[str, str], None]
    """`log(stream, line)`: stream a line of output (already redacted by the executor)."""
    resources: Mapping[str, Any]
    """Objects shared by every step of the run, by name (`"llm"`: the provider gateway)."""

    def __init__(
        self,
        *,
        run_id: str,
        step_id: str,
        instance: str,
        attempt: int,
        project_root: Path,
        workdir: str | Path,
        env: Mapping[str, str],
        redactor: Redactor,
        log: Callable[[str, str], None],
        resources: Mapping[str, Any] | None = None,
    ) -> None:
        self.run_id = run_id
        self.step_id = step_id
        self.instance = instance
        self.attempt = attempt
        self.project_root = project_root
        self._workdir = workdir
        self._workdir_path = workdir if isinstance(workdir, Path) else None
        self.env = env
        self.redactor = redactor
        self.log = log
        self.resources = {} if resources is None else resources

    @property
    def workdir(self) -> Path:
        """A folder of this attempt's own, for logs and scratch files. Created by the kind
        when it first writes there (`mkdir(parents=True, exist_ok=True)`): most steps never
        need it, and three mkdirs per step were the executor's largest per-step cost."""
        path: Path | None = self._workdir_path
        if path is None:
            path = self._workdir_path = Path(self._workdir)
        return path

    def __repr__(self) -> str:
        return (
            f"StepContext(run_id={self.run_id!r}, instance={self.instance!r}, "
            f"attempt={self.attempt}, workdir={str(self._workdir)!r})"
        )


@runtime_checkable
class StepKind(Protocol):
    """One kind of step (`shell`, `python`, `llm`, `flow`, ...).

    The executor owns retries, timeouts (it cancels `run` through anyio), journaling and
    outputs; a kind only turns resolved parameters into a result, raising
    `engine.errors.StepFailed` with a `category` so the retry policy can decide.
    """

    name: str

    def resolve(self, step: Any, render: Render) -> dict[str, Any]:
        """The step's parameters with every template rendered: JSON-able, and hashed into
        the cache key, so two attempts with equal parameters are the same work."""
        ...

    def code_digest(self, step: Any, project_root: Path) -> str | None:
        """A digest of the code the step runs (a python module's source), or None."""
        ...

    def run(self, ctx: StepContext, resolved: Mapping[str, Any]) -> Awaitable[StepResult]:
        """Do the work. Must stop promptly when cancelled (and stop child processes)."""
        ...


@dataclass(frozen=True, slots=True)
class Measurement:
    """What a gate kind measured. The engine, not the kind, turns it into a verdict: it
    evaluates the gate's `require` over `metrics` and applies the no-data policy."""

    metrics: Mapping[str, Any]
    """By name, as GATE_METRICS declares them; a metric that could not be measured is absent
    (or NaN), which never passes."""
    evidence: Mapping[str, Any] = field(default_factory=dict)
    """For the record: tool name and version, digests of the inputs, findings with file:line,
    survivors, violations with JSON paths..."""
    summary: str = ""
    """One line a person reads first ("71.4 % of 212 lines; 3 files under the 60 % floor")."""


@dataclass(frozen=True, slots=True)
class GateContext:
    """Everything a gate kind may use while measuring."""

    run_id: str
    gate_id: str
    project_root: Path
    workdir: Path
    """A folder of this gate's own (exists) for reports and scratch files."""
    redactor: Redactor
    render: Render
    """Renders `${{ }}` over inputs and the outputs of the steps the gate runs after."""
    resources: Mapping[str, Any] = field(default_factory=dict)
    """`"llm"`: the provider gateway (for review gates)."""


@runtime_checkable
class GateKind(Protocol):
    """One kind of gate (`contract`, `coverage`, `mutation`, `security`, `review`, `metric`).

    Runs the real tool and parses its real output. Raises `engine.errors.GateError` only when
    the gate itself cannot run (a missing report is a measurement without the metric)."""

    name: str

    def measure(self, ctx: GateContext, gate: Any) -> Awaitable[Measurement]: ...


class Registry:
    """Step kinds by name. Built by `engine.runtime` and passed down: no global registry."""

    def __init__(self) -> None:
        self._steps: dict[str, StepKind] = {}
        self._gates: dict[str, GateKind] = {}

    def add_gate_kind(self, kind: GateKind) -> None:
        if kind.name in self._gates:
            raise PluginError(f"gate kind '{kind.name}' is registered twice")
        self._gates[kind.name] = kind

    def find_gate_kind(self, name: str) -> GateKind | None:
        return self._gates.get(name)

    def gate_kind(self, name: str) -> GateKind:
        try:
            return self._gates[name]
        except KeyError:
            known = ", ".join(sorted(self._gates)) or "none"
            raise PluginError(f"no gate kind '{name}' is registered (known: {known})") from None

    def add_step_kind(self, kind: StepKind) -> None:
        if kind.name in self._steps:
            raise PluginError(f"step kind '{kind.name}' is registered twice")
        self._steps[kind.name] = kind

    def step_kind(self, name: str) -> StepKind:
        try:
            return self._steps[name]
        except KeyError:
            known = ", ".join(sorted(self._steps)) or "none"
            raise PluginError(f"no step kind '{name}' is registered (known: {known})") from None

    @property
    def step_kinds(self) -> Mapping[str, StepKind]:
        return dict(self._steps)
