"""The post-incident review of a runbook run, in Markdown, from its journal.

Owns: the layout of `blocks runbook report`: summary, timeline, decisions (approvals),
what changed (ledger entries, circuits, overrides), what was undone, and the failures.
Must not: read anything but the records it is given, or write files.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

__all__ = ["render_report"]


def _time(t: Any) -> str:
    if not isinstance(t, int | float):
        return "-"
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _cell(value: Any, limit: int = 120) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _result(result: Any) -> str:
    """A procedure's result for people: a gate check says which gates fail and why."""
    if isinstance(result, Mapping) and "gates_passed" in result:
        bundle = str(result.get("bundle") or "")[:19]
        if result.get("gates_passed"):
            return f"bundle {bundle}: blocking gates pass"
        failed = "; ".join(str(f) for f in result.get("failed") or [])
        return f"bundle {bundle}: blocking gates FAIL: {_cell(failed, 300)}"
    return _cell(result, 100)


def _what(rec: Mapping[str, Any]) -> str:
    event = rec.get("event")
    if event == "step.started":
        do = rec.get("do") or {}
        args = {k: v for k, v in do.items() if k != "kind"}
        return f"start `{do.get('kind')}` {_cell(args, 100)}"
    if event == "step.succeeded":
        verify = f"; verify `{rec['verify']}` held" if rec.get("verify") else ""
        return f"done{verify}: {_result(rec.get('result'))}"
    if event == "step.failed":
        seen = _result(rec.get("result")) if rec.get("result") else ""
        seen = f" ({seen})" if seen else ""
        return f"**failed**: {_cell(rec.get('error'))}{seen} -> {rec.get('on_failure')}"
    if event == "step.skipped":
        return f"skipped ({_cell(rec.get('reason'))})"
    if event == "approval.given":
        return f"approved by **{rec.get('by')}**{_entered_by(rec)}"
    if event == "approval.refused":
        return "approval refused"
    if event == "runbook.paused":
        return f"paused: waiting for approval ({_cell(rec.get('why'))})"
    if event == "runbook.resumed":
        return f"resumed by {rec.get('by')}"
    if event == "undo.started":
        return f"undo `{(rec.get('do') or {}).get('kind')}` {_cell(rec.get('do'), 100)}"
    if event == "undo.succeeded":
        return "undone"
    if event == "undo.failed":
        return f"**undo failed**: {_cell(rec.get('error'))}"
    if event == "runbook.finished":
        return f"finished: **{rec.get('status')}**"
    if event == "runbook.started":
        return f"started by {rec.get('by')} ({rec.get('mode')})"
    return str(event)


def render_report(
    records: Sequence[Mapping[str, Any]],
    *,
    ledger: Sequence[Mapping[str, Any]] = (),
    bundle: str | None = None,
) -> str:
    """Markdown for a post-incident review."""
    if not records:
        return "# Runbook run\n\nThe journal is empty.\n"
    start = records[0]
    finished = next((r for r in reversed(records) if r.get("event") == "runbook.finished"), None)
    status = finished.get("status") if finished else "unfinished (paused or interrupted)"
    lines = [
        f"# Post-incident review: {start.get('runbook')} run {start.get('run')}",
        "",
    ]
    if start.get("mode") == "rehearsal":
        lines += [
            "> **Rehearsal**: ran against a sandbox copy of the state; nothing in "
            "production changed.",
            "",
        ]
    lines += [
        f"- **Runbook**: `{start.get('path')}` ({start.get('spec_digest')})",
        f"- **Started**: {_time(start.get('t'))} by {start.get('by')}",
        f"- **Finished**: {_time(finished.get('t')) if finished else '-'}",
        f"- **Outcome**: {status}",
        f"- **Parameters**: {_cell(start.get('params'), 300)}",
    ]
    if bundle:
        lines.append(f"- **Incident bundle**: `{bundle}` (`blocks bundle verify {bundle[:19]}`)")
    lines += ["", "## Timeline", "", "| Time | Step | What happened |", "|---|---|---|"]
    for rec in records:
        lines.append(f"| {_time(rec.get('t'))} | {rec.get('step') or ''} | {_what(rec)} |")
    approvals = [r for r in records if r.get("event") in ("approval.given", "approval.refused")]
    lines += ["", "## Decisions", ""]
    if approvals:
        for r in approvals:
            who = r.get("by") or "(refused at the prompt)"
            lines.append(
                f"- {_time(r.get('t'))}: step `{r.get('step')}` approved by {who}{_entered_by(r)}"
                if r.get("event") == "approval.given"
                else f"- {_time(r.get('t'))}: step `{r.get('step')}` refused"
            )
    else:
        lines.append("- No approvals were asked for or given.")
    lines += ["", "## What changed", ""]
    if ledger:
        for e in ledger:
            what = e.get("action")
            target = (
                f"{str(e.get('previous') or 'nothing')[:19]} -> {str(e.get('bundle'))[:19]}"
                if e.get("bundle")
                else ""
            )
            lines.append(
                f"- ledger entry {e.get('seq')}: {what} `{e.get('channel')}` {target}"
                f" ({e.get('at')}, {e.get('by')}: {e.get('reason') or '-'})"
            )
    for r in records:
        if r.get("event") == "step.succeeded":
            res = r.get("result") or {}
            if isinstance(res, Mapping) and "provider" in res and "state" in res:
                lines.append(
                    f"- circuit `{res['provider']}`: {res.get('before')} -> {res['state']}"
                )
            if isinstance(res, Mapping) and "limits" in res and "flow" in res:
                lines.append(f"- limits of `{res['flow']}`: {_cell(res['limits'])}")
            if isinstance(res, Mapping) and "route" in res and "use" in res:
                lines.append(
                    f"- route `{res['route']}` of `{res.get('flow')}`: {res['use']} "
                    f"({res.get('model')})"
                )
    if lines[-1] == "":
        lines.append("- Nothing in channels, circuits or overrides.")
    undone = [r for r in records if r.get("event") in ("undo.succeeded", "undo.failed")]
    lines += ["", "## Rolled back and undone", ""]
    if undone:
        for r in undone:
            ok = (
                "undone" if r.get("event") == "undo.succeeded" else f"undo FAILED: {r.get('error')}"
            )
            lines.append(f"- step `{r.get('step')}`: {ok}")
    else:
        lines.append("- No step was undone.")
    failures = [r for r in records if r.get("event") == "step.failed"]
    lines += ["", "## Failures", ""]
    if failures:
        for r in failures:
            lines.append(
                f"- `{r.get('step')}`: {_cell(r.get('error'), 300)} (then {r.get('on_failure')})"
            )
    else:
        lines.append("- None.")
    return "\n".join(lines) + "\n"


def _entered_by(rec: Mapping[str, Any]) -> str:
    """Who typed the approver's name, when that account is not the name itself: names are
    not authenticated, so the record keeps both."""
    holder = str(rec.get("recorded_by") or "")
    account = holder.split("@", 1)[0]
    if not holder or account == rec.get("by"):
        return ""
    how = "at the prompt" if rec.get("via") == "prompt" else "with --approve-as"
    return f" (entered {how} by {holder})"
