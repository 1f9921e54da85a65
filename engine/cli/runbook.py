"""`blocks runbook run | list | show | report`: runbooks during an incident.

Owns: these commands' arguments, output and exit codes: 0 the runbook succeeded; 1 a step
failed (aborted and undone, or a `goto` path was taken), or the runbook is invalid; 2 a
wrong command line or an unknown run; 4 the run is held by another process; 5 paused for an
approval (resume with `--resume RUN_ID --approve-as NAME`). Must not: hold runbook logic
(`engine.runbook` does).
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from engine.runtime import Runtime

__all__ = ["runbook_app"]

runbook_app = typer.Typer(
    help="Runbooks: executable incident procedures with verify, undo and approvals.",
    no_args_is_help=True,
)

AsJson = Annotated[bool, typer.Option("--json", help="Print JSON.")]
RunId = Annotated[str, typer.Argument(metavar="RUN_ID", help="A runbook run id.")]


def _code(name: str) -> int:
    from engine.cli import EXIT_CODES  # noqa: PLC0415  (engine.cli imports this module)

    return EXIT_CODES[name]


def _runtime(path: str | None = None) -> Runtime:
    from engine.runtime import Runtime, load_settings  # noqa: PLC0415  (heavy: only when asked)

    return Runtime(load_settings(path))


def _params(values: list[str]) -> dict[str, str]:
    from engine.errors import UsageError  # noqa: PLC0415

    out: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--param expects key=value, got {item!r}")
        out[key.strip()] = value
    return out


def _short(value: Any) -> str:
    if isinstance(value, dict):
        keep = (
            "channel",
            "bundle",
            "entry",
            "provider",
            "state",
            "status",
            "run",
            "gates_passed",
            "approved_by",
            "to",
            "flow",
            "route",
            "use",
            "limits",
        )
        parts = []
        for k in keep:
            if k in value and value[k] not in ("", None, {}):
                v = value[k]
                v = v[:19] if isinstance(v, str) and v.startswith("sha256:") else v
                parts.append(f"{k}={v}")
        return " ".join(parts)
    return str(value)


def _printer(as_json: bool) -> Any:
    def show(rec: dict[str, Any]) -> None:
        if as_json:
            return
        event, sid = rec.get("event"), rec.get("step", "")
        if event == "runbook.started":
            mode = (
                " REHEARSAL (sandbox: {})".format(rec.get("sandbox"))
                if rec.get("mode") == "rehearsal"
                else ""
            )
            typer.echo(
                f"runbook {rec.get('runbook')} run {rec.get('run')} by {rec.get('by')}{mode}"
            )
        elif event == "runbook.resumed":
            typer.echo(f"resumed by {rec.get('by')}")
        elif event == "step.succeeded":
            verify = "  verify ok" if rec.get("verify") else ""
            typer.echo(f"  ok      {sid:<20} {_short(rec.get('result'))}{verify}")
        elif event == "step.failed":
            typer.echo(f"  FAILED  {sid:<20} {rec.get('error')} -> {rec.get('on_failure')}")
        elif event == "step.skipped":
            typer.echo(f"  skip    {sid:<20} {rec.get('reason')}")
        elif event == "approval.given":
            typer.echo(f"  approve {sid:<20} by {rec.get('by')}")
        elif event == "runbook.paused":
            typer.echo(f"  WAITING {sid:<20} {rec.get('why')}: {rec.get('message')}")
        elif event == "undo.succeeded":
            typer.echo(f"  undone  {sid:<20} {_short(rec.get('result'))}")
        elif event == "undo.failed":
            typer.echo(f"  UNDO FAILED {sid:<16} {rec.get('error')}")
        elif event == "bundle.failed":
            typer.echo(
                f"warning: the incident bundle was not written: {rec.get('error')}", err=True
            )

    return show


def _cel(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _prompt(step: str, message: str) -> str | None:
    typer.echo(f"\napproval needed for step {step}: {message}")
    answer: str = typer.prompt(
        "type your name to approve, or 'no' to refuse", default="", show_default=False
    )
    answer = answer.strip()
    if answer.lower() in ("no", "n", ""):
        return None
    return answer


@runbook_app.command("run")
def run_command(
    runbook: Annotated[str, typer.Argument(metavar="RUNBOOK", help="The runbook file.")],
    params: Annotated[
        list[str],
        typer.Option("--param", "-p", metavar="KEY=VALUE", help="A runbook param (repeatable)."),
    ] = [],  # noqa: B006
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Print each step and what it would change; change nothing."),
    ] = False,
    rehearse: Annotated[
        bool,
        typer.Option(
            "--rehearse",
            help="Run for real against a sandbox copy of the channels, circuits and overrides.",
        ),
    ] = False,
    approve_as: Annotated[
        list[str],
        typer.Option(
            "--approve-as",
            metavar="NAME",
            help="Approve approval steps as NAME (repeatable; the starter alone is never enough).",
        ),
    ] = [],  # noqa: B006
    resume: Annotated[
        str | None,
        typer.Option("--resume", metavar="RUN_ID", help="Continue a paused or interrupted run."),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="With --resume: run an interrupted step that is not idempotent again."
        ),
    ] = False,
    as_json: AsJson = False,
) -> None:
    """Run RUNBOOK: each step, its verify, undo on abort, approvals; journaled and bundled."""
    import os  # noqa: PLC0415

    import anyio  # noqa: PLC0415

    from engine.errors import UsageError  # noqa: PLC0415
    from engine.executor.lock import RunLocked  # noqa: PLC0415
    from engine.runbook import RunbookOptions, RunbookRunner  # noqa: PLC0415

    if not os.path.isfile(runbook):
        raise UsageError(f"no such runbook file: {runbook}")
    if dry_run and (rehearse or resume):
        raise UsageError(
            "--dry-run changes nothing; it cannot be combined with --rehearse or --resume"
        )
    runtime = _runtime(runbook)
    values = _params(params)
    if dry_run:
        rows = RunbookRunner(runtime).dry_run(runbook, values)
        if as_json:
            sys.stdout.write(json.dumps(rows, indent=2, default=str) + "\n")
            return
        typer.echo(f"dry run of {runbook}: nothing will be changed")
        for i, row in enumerate(rows, 1):
            when = (
                "" if row["when"] is None else f"  (when, as things stand now: {_cel(row['when'])})"
            )
            typer.echo(f"{i:>2}. {row['step']} [{row['kind']}]{when}")
            typer.echo(f"      would: {row['change']}")
            if row["verify"]:
                typer.echo(f"      verify: {row['verify']}")
            if row["undo"]:
                undo = row["undo"]
                args = ", ".join(f"{k}: {v}" for k, v in undo.items() if k != "kind")
                typer.echo(f"      undo: {undo['kind']} {args}".rstrip())
            if row["on_failure"] != "abort":
                typer.echo(f"      on failure: {row['on_failure']}")
        return
    interactive = sys.stdin.isatty() and not as_json
    runner = RunbookRunner(
        runtime, on_event=_printer(as_json), approver=_prompt if interactive else None
    )
    options = RunbookOptions(
        params=values, approvers=approve_as, resume=resume, force=force, rehearse=rehearse
    )
    try:
        outcome = anyio.run(runner.run, runbook, options)
    except RunLocked as exc:
        typer.echo(f"blocks: {exc}", err=True)
        raise typer.Exit(_code("conflict")) from None
    if as_json:
        sys.stdout.write(
            json.dumps(
                {
                    "run_id": outcome.run_id,
                    "status": outcome.status,
                    "mode": outcome.mode,
                    "bundle": outcome.bundle,
                    "waiting": outcome.waiting,
                    "steps": outcome.steps,
                },
                indent=2,
                default=str,
            )
            + "\n"
        )
    elif outcome.status == "paused":
        typer.echo(
            f"paused for approval: blocks runbook run {runbook} --resume "
            f"{outcome.run_id} --approve-as NAME"
        )
    else:
        typer.echo(
            f"runbook {outcome.status}; incident bundle {outcome.bundle or '(none)'}; "
            f"report: blocks runbook report {outcome.run_id}"
        )
    code = {"succeeded": "ok", "paused": "waiting"}.get(outcome.status, "invalid")
    raise typer.Exit(_code(code))


def _records(run_id: str) -> tuple[list[dict[str, Any]], Runtime, bool]:
    from engine.errors import UsageError  # noqa: PLC0415
    from engine.executor.journal import read_journal  # noqa: PLC0415
    from engine.runbook.sandbox import JOURNAL, find_run, sandbox_runtime  # noqa: PLC0415

    runtime = _runtime()
    found = find_run(runtime.settings.state_dir, run_id)
    if found is None:
        raise UsageError(f"no runbook run {run_id} (see blocks runbook list)")
    run_dir, sandbox = found
    if sandbox is not None:
        runtime = sandbox_runtime(runtime, sandbox)
    return read_journal(run_dir / JOURNAL).records, runtime, sandbox is not None


@runbook_app.command("list")
def list_command(as_json: AsJson = False) -> None:
    """Every runbook run of this project (rehearsals marked)."""
    from engine.executor.journal import read_journal  # noqa: PLC0415
    from engine.runbook.sandbox import JOURNAL, list_runs  # noqa: PLC0415

    runtime = _runtime()
    rows = []
    for run_id, folder, rehearsal in list_runs(runtime.settings.state_dir):
        records = read_journal(folder / JOURNAL).records
        start = records[0] if records else {}
        end: dict[str, Any] = next(
            (
                r
                for r in reversed(records)
                if r.get("event") in ("runbook.finished", "runbook.paused")
            ),
            {},
        )
        status = end.get("status") or (
            "paused" if end.get("event") == "runbook.paused" else "interrupted"
        )
        rows.append(
            {
                "run": run_id,
                "runbook": start.get("runbook"),
                "by": start.get("by"),
                "status": status,
                "rehearsal": rehearsal,
            }
        )
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    if not rows:
        typer.echo("no runbook runs yet")
    for r in rows:
        tag = "  (rehearsal)" if r["rehearsal"] else ""
        typer.echo(f"{r['run']}  {r['runbook'] or '?':<22} {r['status']:<11} by {r['by']}{tag}")


@runbook_app.command("show")
def show_command(run_id: RunId, as_json: AsJson = False) -> None:
    """A runbook run's journal, record by record."""
    records, _, _ = _records(run_id)
    if as_json:
        sys.stdout.write(json.dumps(records, indent=2, default=str) + "\n")
        return
    show = _printer(False)
    for rec in records:
        show(rec)


@runbook_app.command("report")
def report_command(
    run_id: RunId,
    out: Annotated[
        str | None,
        typer.Option(
            "--out", "-o", metavar="FILE", help="Write the Markdown to FILE instead of printing it."
        ),
    ] = None,
) -> None:
    """The post-incident review of a run in Markdown: timeline, decisions, what changed."""
    from pathlib import Path  # noqa: PLC0415

    from engine.channels import Channels  # noqa: PLC0415
    from engine.errors import EngineError  # noqa: PLC0415
    from engine.runbook.report import render_report  # noqa: PLC0415

    records, runtime, _ = _records(run_id)
    store = runtime.store()
    ledger = [
        {**e.as_dict(), "digest": e.digest}
        for e in Channels(store, user=runtime.settings.user).entries()
        if e.via == run_id
    ]
    try:
        bundle: str | None = store.resolve(run_id)
    except EngineError:
        bundle = None
    text = render_report(records, ledger=ledger, bundle=bundle)
    if out is None:
        sys.stdout.write(text)
        return
    Path(out).write_text(text, encoding="utf-8")
    typer.echo(f"wrote {out}")
