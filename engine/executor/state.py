"""Reading a run back from its journal: what finished, what failed, what was in flight.

Owns: replaying journal records into per-step states, the summary `blocks runs` shows, and
the rule that decides what a resume may re-run. Must not: write journals or run steps.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.executor.local import DONE, StepState

__all__ = ["RunSummary", "replay"]


@dataclass
class RunSummary:
    """A run as its journal tells it."""

    run_id: str = ""
    flow: str = ""
    path: str = ""
    spec_digest: str = ""
    inputs: dict[str, Any] = field(default_factory=dict)
    started_at: float | None = None
    finished_at: float | None = None
    status: str = "unknown"
    holder: str = ""
    steps: dict[str, StepState] = field(default_factory=dict)
    in_flight: dict[str, list[str]] = field(default_factory=dict)
    """Step id -> instances that started and never finished (a crash, a kill -9)."""
    outputs: dict[str, Any] = field(default_factory=dict)
    resumed: int = 0
    use_cache: bool = True


def replay(records: Iterable[Mapping[str, Any]]) -> RunSummary:
    """Fold journal records into a summary. Later records win."""
    summary = RunSummary()
    open_instances: dict[str, set[str]] = {}
    for rec in records:
        _apply(summary, open_instances, rec)
    summary.in_flight = {sid: sorted(v) for sid, v in open_instances.items() if v}
    if (summary.status == "running" and summary.in_flight) or summary.status == "running":
        summary.status = "interrupted"
    return summary


def _apply(
    summary: RunSummary, open_instances: dict[str, set[str]], rec: Mapping[str, Any]
) -> None:
    event = rec.get("event")
    if event in ("run.started", "run.resumed"):
        summary.run_id = rec.get("run", summary.run_id)
        summary.flow = rec.get("flow", summary.flow)
        summary.path = rec.get("path", summary.path)
        summary.spec_digest = rec.get("spec_digest", summary.spec_digest)
        summary.inputs = rec.get("inputs", summary.inputs)
        summary.holder = rec.get("holder", summary.holder)
        summary.use_cache = bool(rec.get("use_cache", summary.use_cache))
        if event == "run.started":
            summary.started_at = rec.get("t")
        else:
            summary.resumed += 1
        summary.status = "running"
        open_instances.clear()
        return
    if event == "run.finished":
        summary.status = str(rec.get("status", "unknown"))
        summary.finished_at = rec.get("t")
        summary.outputs = rec.get("outputs") or {}
        return
    sid = rec.get("step")
    if not isinstance(sid, str):
        return
    state = summary.steps.setdefault(sid, StepState())
    instance = str(rec.get("instance", sid))
    if event == "step.started":
        open_instances.setdefault(sid, set()).add(instance)
        state.status = "running"
        state.attempts = int(rec.get("attempt", state.attempts))
        return
    if event in ("step.succeeded", "step.failed", "step.cached", "step.cancelled"):
        open_instances.get(sid, set()).discard(instance)
    if instance != sid and event != "step.cached":
        return  # one item of a fan-out: the step's own record follows when all are done
    _apply_step(state, event, rec)


def _apply_step(state: StepState, event: Any, rec: Mapping[str, Any]) -> None:
    if event == "step.succeeded":
        state.status = "succeeded"
        state.outputs = rec.get("outputs") or {}
        state.result = rec.get("result")
        state.duration = float(rec.get("duration") or 0.0)
        state.result_digest = str(rec.get("result_digest") or "")
        state.error = None
    elif event == "step.cached" and rec.get("instance", rec["step"]) == rec["step"]:
        state.status = "cached"
        state.outputs = rec.get("outputs") or {}
        state.result = rec.get("result")
        state.cached_from = rec.get("from_run")
        state.result_digest = str(rec.get("result_digest") or "")
    elif event == "step.failed":
        state.status = "failed"
        state.error = rec.get("error")
        state.duration = float(rec.get("duration") or 0.0)
    elif event == "step.skipped":
        state.status = "skipped"
        state.reason = rec.get("reason")
    elif event == "step.blocked":
        state.status = "blocked"
        state.reason = rec.get("reason")
    elif event == "step.cancelled":
        state.status = "cancelled"


def resumable(summary: RunSummary) -> dict[str, StepState]:
    """The steps a resume keeps: everything that finished well."""
    return {sid: s for sid, s in summary.steps.items() if s.status in DONE}
