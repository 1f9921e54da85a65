"""What a run would do, without running it: the decisions `blocks plan` shows.

Owns: walking a plan in order with the cache, as the executor would, and saying for each
step "cached", "runs", or "skipped", with the reason. A step is known to be cached only if
every step it needs is known too (cached or skipped), because its key includes their results.
Must not: run steps or write anything.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from engine.errors import ExpressionError
from engine.executor.cache import StepCache, key_for_step
from engine.executor.outputs import render_value
from engine.plan import Plan
from engine.providers.prices import estimate_call_usd

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
    return Forecast(decisions, _cost_text(plan, decisions))


def _cost_text(plan: Plan, decisions: Mapping[str, str]) -> str:
    """The estimated cost of the model calls that would run: each `llm` step that is not
    cached or skipped (`samples` calls) and each `review` gate (`samples` calls), priced by
    `engine.providers.prices` on the route's primary model with the gateway's own
    estimate. Re-asks, retries and fallbacks can only add to it."""
    total = 0.0
    calls = {"llm": 0, "review": 0}
    unpriced: set[str] = set()
    fan_outs: list[str] = []
    items: list[tuple[str, str, int, list[str], int]] = []  # kind, route, samples, files, chars
    for sid, ps in plan.steps.items():
        if ps.spec.kind != "llm" or not decisions[sid].startswith("runs"):
            continue
        if ps.spec.for_each is not None:
            fan_outs.append(sid)
            continue
        spec: Any = ps.spec
        files = [f for f in (spec.prompt, spec.system) if f]
        filled = len(json.dumps(spec.vars, default=str)) if spec.vars else 0
        items.append(("llm", spec.model, spec.samples, files, filled))
    for gate in plan.gates.values():
        if gate.spec.kind == "review":
            review: Any = gate.spec
            targets = [review.target] if isinstance(review.target, str) else list(review.target)
            items.append(("review", review.model, review.samples, [review.rubric, *targets], 0))
    for kind, route_name, samples, files, filled in items:
        route = plan.flow.models.get(route_name)
        if route is None:
            continue
        one = estimate_call_usd(
            route.model, filled + sum(_size(plan.project_root, f) for f in files)
        )
        calls[kind] += samples
        if one is None:
            unpriced.add(route.model)
        else:
            total += one * samples
    count = calls["llm"] + calls["review"]
    if not count and not fan_outs:
        return "$0.00 (no model call would run)"
    money = "$0.00" if total == 0 else f"${total:.4f}" if total < 1 else f"${total:,.2f}"
    parts = [f"{calls['llm']} from llm steps"] if calls["llm"] else []
    parts += [f"{calls['review']} from review gates"] if calls["review"] else []
    text = (
        f"{money} for {count} model call(s) ({', '.join(parts) or 'none known yet'}; "
        "litellm's price table, the budget check's estimate; re-asks, retries and fallbacks "
        "add to it)"
    )
    if unpriced:
        text += f"; no price for {', '.join(sorted(unpriced))}: not counted"
    if fan_outs:
        text += f"; plus each item of {', '.join(fan_outs)} (a fan-out: items known at run time)"
    return text


def _size(root: Path, item: str) -> int:
    """Characters of a prompt, rubric or target file (0 if it cannot be read)."""
    try:
        return len((root / item).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        return 0
