"""Alert rules over run history: what each signal measures, and whether a rule fires.

Owns: reading the facts alerts need from the run journals under the state folder
(`load_history`), the definition of each signal over a window, a flow's per-run budget,
evaluating a rule's `threshold` (CEL over `value`, compiled as `blocks validate` checked it),
and the runbook command a rule suggests (with the params it still needs).
Must not: print (the CLI renders `Outcome`s), start a runbook (an alert only suggests one),
write anything, or import litellm.

A window is the half-open interval `(at - window, at]`, and only journal records written at
or before `at` are read, so `--at` shows what a check at that moment would have shown. A
run is *in the window* when its last `run.finished` record is (a run still going at `at`,
or killed and never resumed, is in no window). Signals:

- `error_rate`: failed / all provider calls whose provider is the rule's `provider`, from the
  attempts each `llm` step attempt records (`detail.attempts` of its `step.succeeded`,
  `step.failed` or `step.retrying` record) and each `review` gate (`evidence.attempts` of
  its `gate.evaluated` record), each timed by that record. Attempts refused
  before any request (`circuit_open`, `budget`, `cancelled`) are not calls; any outcome but
  `ok` is a failed call.
- `latency_p95`: the nearest-rank 95th percentile of the `duration` (seconds) of runs in the
  window that succeeded, failed or timed out (cancelled runs say nothing about latency).
- `gate_pass_rate`: of the runs in the window that evaluated at least one blocking gate, the
  fraction whose blocking gates all passed (a gate's last verdict counts; inconclusive is
  not a pass; a skipped gate was not evaluated).
- `cost_usd`: the sum of `cost_usd` of every `step.succeeded`, `step.failed` and
  `step.retrying` record of the runs in the window (a failed attempt's calls cost too), and
  of the samples of their `review` gates (`gate.evaluated` evidence).
- `budget_burn_rate`: the spend of the runs in the window over what their budgets allow,
  `sum(cost) / sum(budget)`, where a run's budget is the most one run of its flow may spend
  (`engine.plan.run_budget_usd`: `limits.budget_usd`, or the sum of the routes'
  `budget_usd` when every route has one, whichever is smaller), as the run's `run.started`
  recorded it (the flow as it ran); for older runs, read from their flow file as it is now.
  1.0: runs spend their whole budget. Runs without a budget are left out.

`flow` narrows every signal to runs of that flow (by name); `provider` is read by
`error_rate` only. No runs (or calls) in the window: the value is `None` ("no data") and the
rule does not fire.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from engine import expressions as ex
from engine.errors import EngineError, ExecutionError, ExpressionError
from engine.executor.journal import read_journal
from engine.plan import run_budget_usd
from engine.providers import provider_of
from engine.spec import AlertRule, Flow, Runbook
from engine.validate import load_spec

__all__ = [
    "Attempt",
    "History",
    "Outcome",
    "RunFacts",
    "evaluate",
    "fold",
    "load_history",
    "runbook_command",
    "runbook_needs",
]

JOURNAL: Final = "journal.log"
NOT_CALLS: Final = frozenset({"circuit_open", "budget", "cancelled"})
"""Ledger outcomes of attempts that never reached the provider."""
TIMED_STATUSES: Final = frozenset({"succeeded", "failed", "timed_out"})
_MTIME_SLACK: Final = 2.0
"""Seconds: a journal's mtime may trail the `t` of its last record on coarse file systems."""

Status = Literal["firing", "ok", "no data"]
_SPENDS: Final = frozenset({"step.succeeded", "step.failed", "step.retrying"})
"""The step records that carry an attempt's provider calls and what they cost."""


@dataclass(frozen=True, slots=True)
class Attempt:
    """One provider call an llm step made, timed by the record that reported it."""

    t: float
    provider: str
    failed: bool


@dataclass(slots=True)
class RunFacts:
    """What alerts need from one run's journal (records up to `at` only)."""

    run_id: str
    flow: str = ""
    path: str = ""
    finished_at: float | None = None
    status: str = "running"
    duration: float | None = None
    cost_usd: float = 0.0
    budget_usd: float | None = None
    """The run's own budget, as its `run.started` recorded it (None: not recorded)."""
    budget_recorded: bool = False
    gates: dict[str, tuple[str, str]] = field(default_factory=dict)
    """Gate id -> (severity, last verdict status)."""
    attempts: list[Attempt] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class History:
    """The runs a check reads, and the per-run budget of each flow file they recorded."""

    runs: tuple[RunFacts, ...]
    budgets: Mapping[str, float | None] = field(default_factory=dict)
    skipped: tuple[str, ...] = ()
    """Journals that could not be read, each with why (a corrupt record)."""


@dataclass(frozen=True, slots=True)
class Outcome:
    rule: str
    spec: AlertRule
    value: float | None
    basis: str
    """What the value was computed from, or why there is none: `2 of 3 calls failed`."""
    status: Status


def fold(records: Iterable[Mapping[str, Any]], *, at: float, run_id: str = "") -> RunFacts:
    """The facts of one run from its journal records, ignoring records written after `at`."""
    facts = RunFacts(run_id)
    for rec in records:
        t = rec.get("t")
        if not isinstance(t, int | float) or t > at:
            continue
        event = rec.get("event")
        if event in ("run.started", "run.resumed"):
            facts.run_id = str(rec.get("run") or facts.run_id)
            facts.flow = str(rec.get("flow") or facts.flow)
            facts.path = str(rec.get("path") or facts.path)
            if "budget_usd" in rec:
                budget = rec["budget_usd"]
                facts.budget_recorded = True
                facts.budget_usd = float(budget) if isinstance(budget, int | float) else None
            facts.finished_at, facts.status = None, "running"
        elif event == "run.finished":
            facts.finished_at, facts.status = float(t), str(rec.get("status") or "unknown")
            duration = rec.get("duration")
            facts.duration = float(duration) if isinstance(duration, int | float) else None
        elif event in _SPENDS:
            facts.cost_usd += _usd(rec.get("cost_usd"))
            facts.attempts.extend(_attempts(rec.get("detail"), float(t)))
        elif event == "gate.evaluated" and isinstance(rec.get("gate"), str):
            facts.gates[rec["gate"]] = (str(rec.get("severity")), str(rec.get("status")))
            # a `review` gate's model calls: what they cost, and each provider attempt
            evidence = rec.get("evidence")
            if isinstance(evidence, Mapping):
                samples = evidence.get("samples")
                for sample in samples if isinstance(samples, list) else ():
                    if isinstance(sample, Mapping):
                        facts.cost_usd += _usd(sample.get("cost_usd"))
                facts.attempts.extend(_attempts(evidence, float(t)))
    return facts


def _usd(value: object) -> float:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else 0.0


def _attempts(detail: object, t: float) -> list[Attempt]:
    """The provider calls in a record's `detail` (a step's) or `evidence` (a review gate's)."""
    rows = detail.get("attempts") if isinstance(detail, Mapping) else None
    if not isinstance(rows, list):
        return []
    out = []
    for row in rows:
        if not isinstance(row, Mapping) or not isinstance(row.get("model_asked"), str):
            continue
        outcome = str(row.get("outcome"))
        if outcome not in NOT_CALLS:
            out.append(Attempt(t, provider_of(row["model_asked"]), failed=outcome != "ok"))
    return out


def load_history(
    runs_dir: Path, *, at: float, horizon: float, project_root: Path, budgets: bool = True
) -> History:
    """The runs under `runs_dir` that may have records in `(at - horizon, at]`.

    A journal last written before that interval is not read. With `budgets`, the per-run
    budget of every flow file a finished run names is read too, for runs whose `run.started`
    does not record its budget (runs from before it did; see `engine.plan.run_budget_usd`).
    """
    runs: list[RunFacts] = []
    skipped: list[str] = []
    entries = sorted(runs_dir.iterdir()) if runs_dir.is_dir() else []
    for entry in entries:
        journal = entry / JOURNAL
        try:
            if journal.stat().st_mtime < at - horizon - _MTIME_SLACK:
                continue
            records = read_journal(journal).records
        except FileNotFoundError:
            continue
        except (OSError, ExecutionError) as exc:  # JournalCorrupt is an ExecutionError
            skipped.append(f"{entry.name}: {exc}")
            continue
        runs.append(fold(records, at=at, run_id=entry.name))
    table: dict[str, float | None] = {}
    if budgets:
        # runs from before `run.started` recorded the budget: read it from their flow file
        older = {r.path for r in runs if r.finished_at is not None and r.path}
        older -= {r.path for r in runs if r.budget_recorded}
        for path in sorted(older):
            table[path] = _budget_of_file(path, project_root)
    return History(tuple(runs), table, tuple(skipped))


def _budget_of_file(path: str, project_root: Path) -> float | None:
    full = Path(path) if os.path.isabs(path) else project_root / path
    if not full.is_file():
        return None
    try:
        _, spec = load_spec(str(full), project_root=str(project_root))
    except (EngineError, OSError):
        return None
    return run_budget_usd(spec) if isinstance(spec, Flow) else None


# ---- signals ------------------------------------------------------------------------------

Measure = tuple[float | None, str]


def _finished_in(rule: AlertRule, history: History, at: float) -> list[RunFacts]:
    low = at - rule.window
    return [
        r
        for r in history.runs
        if r.finished_at is not None
        and low < r.finished_at <= at
        and (rule.flow is None or r.flow == rule.flow)
    ]


def _of(rule: AlertRule, count: int | None = None) -> str:
    """`3 runs of basel`, `1 run of basel`; without a count, `runs of basel`."""
    noun = "run" if count == 1 else "runs"
    head = noun if count is None else f"{count} {noun}"
    return f"{head} of {rule.flow}" if rule.flow else head


def _error_rate(rule: AlertRule, history: History, at: float) -> Measure:
    low = at - rule.window
    calls = [
        a
        for r in history.runs
        if rule.flow is None or r.flow == rule.flow
        for a in r.attempts
        if low < a.t <= at and (rule.provider is None or a.provider == rule.provider)
    ]
    to = f"calls to {rule.provider}" if rule.provider else "provider calls"
    if not calls:
        return None, f"no {to} recorded in the window"
    failed = sum(1 for a in calls if a.failed)
    return failed / len(calls), f"{failed} of {len(calls)} {to} failed"


def _latency_p95(rule: AlertRule, history: History, at: float) -> Measure:
    durations = sorted(
        r.duration
        for r in _finished_in(rule, history, at)
        if r.status in TIMED_STATUSES and r.duration is not None
    )
    if not durations:
        return None, f"no {_of(rule)} finished in the window"
    rank = math.ceil(0.95 * len(durations))  # nearest rank, 1-based
    return durations[rank - 1], f"p95 of {_of(rule, len(durations))}"


def _gate_pass_rate(rule: AlertRule, history: History, at: float) -> Measure:
    judged = [
        [status for severity, status in r.gates.values() if severity == "blocker"]
        for r in _finished_in(rule, history, at)
    ]
    judged = [verdicts for verdicts in judged if verdicts]
    if not judged:
        return None, f"no {_of(rule)} evaluated a blocking gate in the window"
    passed = sum(1 for verdicts in judged if all(v == "pass" for v in verdicts))
    return passed / len(judged), f"{passed} of {_of(rule, len(judged))} passed every blocker"


def _cost_usd(rule: AlertRule, history: History, at: float) -> Measure:
    runs = _finished_in(rule, history, at)
    if not runs:
        return None, f"no {_of(rule)} finished in the window"
    return math.fsum(r.cost_usd for r in runs), _of(rule, len(runs))


def _budget_burn_rate(rule: AlertRule, history: History, at: float) -> Measure:
    runs = _finished_in(rule, history, at)
    if not runs:
        return None, f"no {_of(rule)} finished in the window"
    budgeted = [
        (r, r.budget_usd if r.budget_recorded else history.budgets.get(r.path)) for r in runs
    ]
    counted = [(r.cost_usd, b) for r, b in budgeted if b is not None]
    if not counted:
        return None, (
            "no budget: neither limits.budget_usd nor a budget_usd on every route "
            f"({_of(rule, len(runs))})"
        )
    allowed = math.fsum(b for _, b in counted)
    if allowed <= 0:
        return None, "no data: the budget is $0"
    spent = math.fsum(c for c, _ in counted)
    return spent / allowed, f"{usd(spent)} of {usd(allowed)} allowed ({_of(rule, len(counted))})"


SIGNALS: Final[Mapping[str, Callable[[AlertRule, History, float], Measure]]] = {
    "error_rate": _error_rate,
    "latency_p95": _latency_p95,
    "gate_pass_rate": _gate_pass_rate,
    "cost_usd": _cost_usd,
    "budget_burn_rate": _budget_burn_rate,
}


def usd(amount: float) -> str:
    """Dollars as people read them; sub-cent amounts keep their digits ($0.000021)."""
    if amount == 0 or abs(amount) >= 0.01:
        return f"${amount:,.2f}"
    return "$" + f"{amount:.9f}".rstrip("0")


# ---- rules --------------------------------------------------------------------------------


def evaluate(rule_id: str, rule: AlertRule, history: History, at: float) -> Outcome:
    """Measure the rule's signal over its window ending at `at` and judge its threshold.

    Raises `ExpressionError` if the threshold fails at run time or gives no bool (validation
    type-checks it against `value: double`, so only a broken spec gets here).
    """
    value, basis = SIGNALS[rule.signal](rule, history, at)
    if value is None:
        return Outcome(rule_id, rule, None, basis, "no data")
    program = ex.compile_expression(rule.threshold)
    try:
        verdict = program.evaluate({"value": float(value)})
    except ExpressionError as exc:
        raise ExpressionError(
            f"rule '{rule_id}': threshold `{rule.threshold}` failed: {exc}",
            source=rule.threshold,
        ) from None
    if not isinstance(verdict, bool):
        raise ExpressionError(
            f"rule '{rule_id}': threshold `{rule.threshold}` gave {verdict!r}, not a bool",
            source=rule.threshold,
        )
    return Outcome(rule_id, rule, float(value), basis, "firing" if verdict else "ok")


def runbook_command(rule: AlertRule) -> list[str] | None:
    """The argv that starts the rule's runbook as a dry run (what to try first), or None."""
    if rule.runbook is None:
        return None
    params = [arg for k, v in rule.params.items() for arg in ("-p", f"{k}={v}")]
    return ["blocks", "runbook", "run", rule.runbook, *params, "--dry-run"]


def runbook_needs(rule: AlertRule, project_root: Path) -> list[tuple[str, str | None]]:
    """The runbook's required params (no default) the rule does not give, with their
    descriptions: what the on-call must add (the id of the failed run, say). Empty when the
    runbook cannot be read (`blocks validate` reports that)."""
    if rule.runbook is None:
        return []
    try:
        _, spec = load_spec(str(project_root / rule.runbook), project_root=str(project_root))
    except (EngineError, OSError):
        return []
    if not isinstance(spec, Runbook):
        return []
    return [
        (name, param.description)
        for name, param in spec.params.items()
        if param.default is None and name not in rule.params
    ]
