"""The `runbook` kind: ordered procedure steps with verify, undo and approvals.

Owns: the shape of a runbook and of each built-in procedure, and which procedures can be
undone. Must not: act on channels or circuits (that is `engine.runbook`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field

from engine.spec.common import (
    DocumentHeader,
    Duration,
    EnvName,
    Expression,
    Identifier,
    InputSpec,
    RelPath,
    SpecModel,
    Text,
)

__all__ = [
    "IRREVERSIBLE",
    "Procedure",
    "Runbook",
    "RunbookStep",
]


class _Proc(SpecModel):
    pass


class PromoteProc(_Proc):
    """Point a channel at a bundle whose blocking gates passed."""

    kind: Literal["promote"]
    channel: Text
    bundle: Text
    """A bundle id or `${{ }}` expression."""
    reason: Text | None = None


class RollbackProc(_Proc):
    """Move a channel back to its last good bundle, a named bundle, or the last before a time."""

    kind: Literal["rollback"]
    channel: Text
    to: Text = "last-good"
    """`last-good`, `previous` (undo the channel's latest move), a bundle id, or
    `before:2026-11-01T00:00:00Z`."""
    reason: Text | None = None


class FreezeProc(_Proc):
    """Block promotions to a channel (`channel: all` freezes every channel)."""

    kind: Literal["freeze"]
    channel: Text
    reason: Text | None = None


class UnfreezeProc(_Proc):
    kind: Literal["unfreeze"]
    channel: Text
    reason: Text | None = None


class CircuitProc(_Proc):
    """Open (stop routing to) or close a provider's circuit by hand."""

    kind: Literal["circuit"]
    provider: Text
    state: Literal["open", "closed"]
    reason: Text | None = None


class RouteProc(_Proc):
    """Send a flow's model route to its fallback (or back to its primary)."""

    kind: Literal["route"]
    flow: RelPath
    route: Identifier
    use: Literal["primary", "fallback"]


class LimitsProc(_Proc):
    """Override a flow's limits for later runs (lower concurrency, raise a timeout)."""

    kind: Literal["limits"]
    flow: RelPath
    concurrency: Annotated[int, Field(ge=1)] | None = None
    timeout: Duration | None = None
    rpm: Annotated[int, Field(ge=1)] | None = None
    """Requests per minute per provider."""


class RunProc(_Proc):
    """Run a flow (all of it, or only the steps that failed in a given run)."""

    kind: Literal["run"]
    flow: RelPath
    inputs: dict[Identifier, Any] = Field(default_factory=dict)
    rerun_failed_of: Text | None = None
    """A run id: re-run only what did not succeed in it."""


class GateProc(_Proc):
    """Check the gates recorded in a bundle (or the bundle a channel points at)."""

    kind: Literal["gate"]
    channel: Text | None = None
    bundle: Text | None = None
    gate: Identifier | None = None


class ShellProc(_Proc):
    """Run a program (argv list). Values reach it only as whole arguments or via `env`."""

    kind: Literal["shell"]
    run: list[Text] = Field(min_length=1)
    env: dict[EnvName, Text] = Field(default_factory=dict)


class NotifyProc(_Proc):
    """Tell people: POST to a webhook, or append to a file."""

    kind: Literal["notify"]
    to: Text
    """`https://...` for a webhook, anything else is a file path."""
    message: Text


class ApprovalProc(_Proc):
    """Pause until enough people approve. The person who started the runbook cannot be
    its only approver."""

    kind: Literal["approval"]
    approvers: Annotated[int, Field(ge=1, le=10)] = 1
    message: Text | None = None


class ExportProc(_Proc):
    """Export a bundle (with its provenance statement) as evidence."""

    kind: Literal["export"]
    bundle: Text
    to: RelPath


Procedure = Annotated[
    PromoteProc
    | RollbackProc
    | FreezeProc
    | UnfreezeProc
    | CircuitProc
    | RouteProc
    | LimitsProc
    | RunProc
    | GateProc
    | ShellProc
    | NotifyProc
    | ApprovalProc
    | ExportProc,
    Field(discriminator="kind"),
]

IRREVERSIBLE = frozenset({"run", "gate", "notify", "approval", "export"})
"""Procedures that cannot be undone: a runbook step doing one of these may not have `undo`."""


class GotoTarget(SpecModel):
    goto: Identifier


def _on_failure(value: Any) -> Any:
    if isinstance(value, str) and value not in ("abort", "continue"):
        raise ValueError(f"expected abort, continue or {{goto: STEP}}, got {value!r}")
    if not isinstance(value, str | dict):
        raise ValueError("expected abort, continue or {goto: STEP}")
    return value


OnFailure = Annotated[Literal["abort", "continue"] | GotoTarget, BeforeValidator(_on_failure)]


class RunbookStep(SpecModel):
    """One step of a runbook: do something, check it worked, know how to take it back."""

    id: Identifier
    description: Text | None = None
    do: Procedure
    verify: Expression | None = None
    """CEL checked after `do`; `result` is what the procedure returned."""
    undo: Procedure | None = None
    on_failure: OnFailure = "abort"
    """`abort` undoes completed steps in reverse; `continue` goes on; `{goto: STEP}` jumps."""
    when: Expression | None = None
    timeout: Duration | None = None
    idempotent: bool = True


class Runbook(DocumentHeader):
    """An executable incident procedure: `blocks runbook run`."""

    kind: Literal["runbook"]
    params: dict[Identifier, InputSpec] = Field(default_factory=dict)
    steps: list[RunbookStep] = Field(min_length=1)
