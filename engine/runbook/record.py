"""The incident bundle of a runbook run: what it did, who approved, what moved.

Owns: `incident_members`, the bundle members built from a runbook run's journal records
(the runbook as written, the journal, each step's records, approvals, and the channel
ledger entries the run made), with secrets masked before anything is hashed.
Must not: write to a store (the runner does) or run anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from engine.redact import Redactor

if TYPE_CHECKING:
    from engine.runtime import Runtime

__all__ = ["incident_members"]


def incident_members(
    records: Sequence[dict[str, Any]], spec: bytes, spec_name: str, runtime: Runtime
) -> dict[str, bytes]:
    """The incident bundle: the runbook as written, the journal, every step's record, the
    approvals, and the channel ledger entries this run made. Secrets in the environment
    that look like API keys are masked before anything is hashed."""
    from engine.bundle import canonical_bytes  # noqa: PLC0415

    redactor = Redactor(
        v
        for k, v in runtime.environ.items()
        if k.endswith(("_KEY", "_TOKEN", "_SECRET", "_PASSWORD")) and v
    )
    started = records[0]
    run_id = str(started.get("run"))
    finished: dict[str, Any] = next(
        (r for r in reversed(records) if r.get("event") == "runbook.finished"), {}
    )
    steps: dict[str, dict[str, Any]] = {}
    approvals: list[dict[str, Any]] = []
    for rec in records:
        sid = rec.get("step")
        if isinstance(sid, str):
            steps.setdefault(sid, {"step": sid, "records": []})["records"].append(rec)
        if rec.get("event") == "approval.given":
            approvals.append(
                {
                    "step": sid,
                    "by": rec.get("by"),
                    "at": _utc(rec.get("t")),
                    "recorded_by": rec.get("recorded_by"),
                    "via": rec.get("via"),
                }
            )
    from engine.channels import Channels  # noqa: PLC0415

    ledger = [
        {**e.as_dict(), "digest": e.digest}
        for e in Channels(runtime.store(), user=runtime.settings.user).entries()
        if e.via == run_id
    ]
    run = {
        "kind": "runbook",
        "run": run_id,
        "runbook": started.get("runbook"),
        "flow": None,
        "spec": {
            "member": f"runbook/{spec_name}",
            "path": started.get("path"),
            "digest": started.get("spec_digest"),
        },
        "params": started.get("params"),
        "mode": started.get("mode"),
        "by": started.get("by"),
        "started_at": _utc(started.get("t")),
        "finished_at": _utc(finished.get("t")),
        "status": finished.get("status", "unfinished"),
        "steps": {sid: _last_status(s["records"]) for sid, s in steps.items()},
        "approvals": approvals,
        "ledger": ledger,
        "gates": {},
    }

    def member(value: Any) -> bytes:
        return canonical_bytes(redactor.value(value)) + b"\n"

    members: dict[str, bytes] = {
        f"runbook/{spec_name}": redactor.text(spec.decode("utf-8", "replace")).encode(),
        "run.json": member(run),
        "journal.jsonl": b"".join(member(r) for r in records),
    }
    for sid, s in steps.items():
        members[f"steps/{sid}.json"] = member(s)
    return members


def _last_status(records: Sequence[dict[str, Any]]) -> str:
    status = "pending"
    for rec in records:
        event = str(rec.get("event"))
        if event in ("step.succeeded", "step.failed", "step.skipped"):
            status = event.removeprefix("step.")
        elif event == "runbook.paused":
            status = "waiting"
        elif event == "undo.succeeded":
            status = "undone"
        elif event == "undo.failed":
            status = "undo failed"
    return status


def _utc(t: Any) -> str | None:
    if not isinstance(t, int | float):
        return None
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
