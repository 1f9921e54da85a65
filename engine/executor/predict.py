"""What a run would do, without running it: the decisions `blocks plan` shows.

Owns: walking a plan in order with the cache, as the executor would, and saying for each
step "cached", "runs", or "skipped", with the reason. A step is known to be cached only if
every step it needs is known too (cached or skipped), because its key includes their results.
Must not: run steps or write anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from engine.errors import ExpressionError
from engine.executor.cache import StepCache, key_for_step
from engine.executor.outputs import render_value
from engine.plan import Plan

__all__ = ["Forecast", "predict"]


def _render(value: Any, *, activation: Mapping[str, Any]) -> Any:
    return render_value(value, activation)


@dataclass(frozen=True, slots=True)
class Forecast:
    decisions: Mapping[str, str]
    cost_text: str


def predict(plan: Plan, inputs: Mapping[str, Any], cache_dir: Path) -> Forecast:
    cache = StepCache(cache_dir)
    known: dict[str, dict[str, Any]] = {}
    digests: dict[str, str] = {}
    code: dict[str, str | None] = {}
    decisions: dict[str, str] = {}
    base = {"inputs": dict(inputs), "run": {"id": "(planned)", "flow": plan.flow.name}}
    for sid in plan.order:
        ps = plan.steps[sid]
        if not ps.cache:
            decisions[sid] = "runs (not cached: " + (
                "idempotent: false)" if not ps.idempotent else "cache: false)"
            )
            continue
        missing = [d for d in ps.needs if d not in known]
        if missing:
            decisions[sid] = f"runs (after {missing[0]} runs)"
            continue
        activation = {**base, "steps": {d: known[d] for d in ps.reads if d in known}}
        try:
            if ps.when is not None and ps.when.evaluate(activation) is False:
                decisions[sid] = "skipped (when is false)"
                known[sid] = {"status": "skipped", "outputs": {}, "output": None}
                digests[sid] = ""
                continue
            if ps.spec.for_each is not None:
                decisions[sid] = "runs (fan-out: items decided at run time)"
                continue
            resolved = ps.kind.resolve(ps.spec, partial(_render, activation=activation))
        except ExpressionError as exc:
            decisions[sid] = f"runs (cannot predict: {exc})"
            continue
        upstream = {d: digests.get(d, "") for d in ps.needs}
        entry = cache.get(key_for_step(plan, ps, resolved, upstream, code))
        if entry is None:
            decisions[sid] = "runs"
            continue
        decisions[sid] = f"cached (from run {entry.run_id})"
        known[sid] = {"status": "cached", "outputs": entry.outputs, "output": entry.result}
        digests[sid] = entry.result_digest
    return Forecast(
        decisions,
        "$0.00 (no priced model routes)"
        if not any(s.spec.kind == "llm" for s in plan.steps.values())
        else "not priced yet",
    )
