"""From a gate kind's measurement to a verdict: pass, fail or inconclusive, and why.

Owns: evaluating a gate's `require` over its metrics, the no-data policy (a metric that is
missing or NaN never passes: the verdict is `fail`, or `inconclusive` with
`on_missing: inconclusive`), and the one-sentence explanation a person reads first
("coverage: percent >= 80.0 is false: percent = 71.4 (71.4 % of 212 lines ...)").
Must not: run tools (gate kinds do) or decide what a failed blocker stops (the executor does).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from engine.errors import ExpressionError, GateError
from engine.plan import PlannedGate
from engine.plugins import GateContext, Measurement

__all__ = ["Verdict", "baseline_for", "judge", "run_gate"]

Status = Literal["pass", "fail", "inconclusive"]


@dataclass(frozen=True, slots=True)
class Verdict:
    status: Status
    explanation: str
    metrics: Mapping[str, Any] = field(default_factory=dict)
    evidence: Mapping[str, Any] = field(default_factory=dict)
    summary: str = ""

    def as_record(self, gate: PlannedGate) -> dict[str, Any]:
        return {
            "gate": gate.id,
            "kind": gate.spec.kind,
            "severity": gate.spec.severity,
            "status": self.status,
            "require": gate.spec.require,
            "explanation": self.explanation,
            "summary": self.summary,
            "metrics": {k: _json_safe(v) for k, v in self.metrics.items()},
            "evidence": dict(self.evidence),
            "after": list(gate.after),
        }


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # the journal is strict JSON; NaN reads as "no data"
    return value


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def judge(
    gate: PlannedGate, measurement: Measurement, baseline: Mapping[str, Any] | None = None
) -> Verdict:
    """The verdict for one measurement."""
    metrics = dict(measurement.metrics)
    absent = [m for m in gate.metrics_read if _missing(metrics.get(m))]
    shown = ", ".join(f"{m} = {metrics.get(m)!r}" for m in gate.metrics_read if m not in absent)
    tail = f" ({measurement.summary})" if measurement.summary else ""
    if absent:
        status: Status = "inconclusive" if gate.spec.on_missing == "inconclusive" else "fail"
        return Verdict(
            status,
            f"{gate.id}: no data for {', '.join(absent)}, so "
            f"`{gate.spec.require}` cannot pass{tail}",
            metrics,
            measurement.evidence,
            measurement.summary,
        )
    activation = dict(metrics)
    if baseline is None and isinstance(metrics.get("baseline"), Mapping):
        baseline = metrics["baseline"]  # a metric gate exposes the baseline it was given
    if baseline is not None:
        activation["baseline"] = dict(baseline)
    elif "baseline" in gate.spec.require:
        channel = getattr(getattr(gate.spec, "baseline", None), "channel", "?")
        return Verdict(
            "inconclusive",
            f"{gate.id}: no baseline to compare with: no bundle is "
            f"promoted on channel '{channel}' yet ({shown})",
            metrics,
            measurement.evidence,
            measurement.summary,
        )
    try:
        value = gate.require.evaluate(activation)
    except ExpressionError as exc:
        return Verdict(
            "inconclusive",
            f"{gate.id}: `{gate.spec.require}` could not be evaluated: {exc}{tail}",
            metrics,
            measurement.evidence,
            measurement.summary,
        )
    if value is True:
        return Verdict(
            "pass",
            f"{gate.id}: `{gate.spec.require}` holds: {shown}{tail}",
            metrics,
            measurement.evidence,
            measurement.summary,
        )
    return Verdict(
        "fail",
        f"{gate.id}: `{gate.spec.require}` is false: {shown}{tail}",
        metrics,
        measurement.evidence,
        measurement.summary,
    )


async def run_gate(gate: PlannedGate, ctx: GateContext) -> Verdict:
    """Measure with the gate's kind and judge. A broken gate is inconclusive, with why."""
    if gate.kind is None:
        return Verdict(
            "inconclusive",
            f"{gate.id}: no gate kind '{gate.spec.kind}' is installed in this engine",
        )
    try:
        measurement = await gate.kind.measure(ctx, gate.spec)
    except GateError as exc:
        return Verdict("inconclusive", f"{gate.id}: the gate could not run: {exc}")
    return judge(gate, measurement, baseline_for(ctx))


def baseline_for(ctx: GateContext) -> Mapping[str, Any] | None:
    """The baseline metrics the engine resolved for this gate (`resources["baselines"]`,
    by gate id), or a single `resources["baseline"]` given by a caller."""
    found = (ctx.resources.get("baselines") or {}).get(ctx.gate_id)
    if isinstance(found, Mapping):
        metrics = found.get("metrics")
        return metrics if isinstance(metrics, Mapping) else None
    single = ctx.resources.get("baseline")
    return single if isinstance(single, Mapping) else None
