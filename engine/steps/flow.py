"""The `flow` step kind: run another flow as one step, optionally pinned by digest.

Owns: resolving the sub-flow's path and inputs, checking a pinned `digest` against the file
before anything runs, and turning the child run's outcome into this step's result (the
child's flow outputs, its run id, status and bundle).
Must not: plan or execute flows itself (the runtime does, through the `subflow` resource it
puts in `StepContext.resources`), or install signal handlers (the parent run owns them).

The child is a run of its own: its own run id (`<parent run>.<step instance>.<attempt>`),
journal, lock, cache and bundle, listed by `blocks runs`. Cancelling the parent step
cancels the child. A child that fails fails this step permanently with the child's reason;
its run can be inspected and resumed like any run.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from engine.errors import StepFailed
from engine.plugins import Render, StepContext, StepResult
from engine.spec.flow import FlowStep
from engine.steps import file_digest

__all__ = ["SUBFLOW_RESOURCE", "FlowKind", "SubflowRunner"]

SUBFLOW_RESOURCE = "subflow"
"""Key of `StepContext.resources` under which the runtime passes the sub-flow runner."""

SubflowRunner = Callable[[str, Mapping[str, Any], str], Awaitable[Mapping[str, Any]]]
"""`(flow path, inputs, child run id) -> outcome` with keys run_id, status, outputs,
bundle, failed (step ids that failed) and reason."""

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


class FlowKind:
    """Runs a sub-flow to completion; its flow outputs are this step's result."""

    name: str = "flow"

    def resolve(self, step: Any, render: Render) -> dict[str, Any]:
        if not isinstance(step, FlowStep):
            raise TypeError(f"flow kind got a {type(step).__name__}")
        return {"flow": step.flow, "digest": step.digest, "inputs": render(dict(step.inputs))}

    def code_digest(self, step: Any, project_root: Path) -> str | None:
        """The sub-flow file's digest: editing the sub-flow invalidates the parent's cache.
        (Code the sub-flow's own steps run is keyed in the child run's own cache.)"""
        return file_digest(project_root / step.flow) if isinstance(step, FlowStep) else None

    async def run(self, ctx: StepContext, resolved: Mapping[str, Any]) -> StepResult:
        runner = ctx.resources.get(SUBFLOW_RESOURCE)
        if runner is None:
            raise StepFailed("this engine was started without a sub-flow runner")
        path = ctx.project_root / str(resolved["flow"])
        pinned = resolved.get("digest")
        if pinned:
            actual = file_digest(path)
            if actual != pinned:
                raise StepFailed(
                    f"sub-flow {resolved['flow']} is pinned to {pinned} but the file is "
                    f"{actual or 'missing'}: review the change and update `digest`"
                )
        child = _UNSAFE.sub("-", f"{ctx.run_id}.{ctx.instance}.{ctx.attempt}")[:128]
        outcome = await runner(str(path), dict(resolved.get("inputs") or {}), child)
        detail = {
            "run": outcome.get("run_id"),
            "status": outcome.get("status"),
            "bundle": outcome.get("bundle"),
        }
        if outcome.get("status") != "succeeded":
            failed = ", ".join(outcome.get("failed") or []) or "-"
            raise StepFailed(
                f"sub-flow {resolved['flow']} run {outcome.get('run_id')} "
                f"{outcome.get('status')} (failed: {failed}){_reason(outcome)}"
            )
        outputs = dict(outcome.get("outputs") or {})
        return StepResult(result=outputs, detail=detail)


def _reason(outcome: Mapping[str, Any]) -> str:
    reason = outcome.get("reason")
    return f": {reason}" if reason else ""
