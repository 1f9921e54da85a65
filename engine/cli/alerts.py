"""`blocks alerts check`: evaluate `kind: alerts` rules over the project's run history.

Owns: finding the alerts files (FILES, or every `kind: alerts` file under `pipelines/`),
`--at`, the table and `--json`, the suggested runbook command, and the exit code: 0 nothing
fires, 1 a rule fires (or a spec is invalid), 2 a wrong command line or no alerts file.
Must not: hold the signals' definitions (`engine.alerts` does) or start a runbook.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from engine.alerts import History, Outcome
    from engine.spec import Alerts

__all__ = ["alerts_app"]

alerts_app = typer.Typer(
    help="Alert rules over run history: which fire, and the runbook each suggests.",
    no_args_is_help=True,
)


@alerts_app.command("check")
def check(
    files: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="FILES",
            help="Alerts files or folders (default: every `kind: alerts` file under pipelines).",
        ),
    ] = None,
    at: Annotated[
        str | None,
        typer.Option(
            "--at",
            metavar="TIME",
            help="Evaluate as of TIME (ISO 8601, e.g. 2026-11-01T00:00:00Z); default now.",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Evaluate every rule over its window ending at TIME. Exit 0 when none fires, 1 when any
    fires (the output names the runbook to dry-run first)."""
    from engine.alerts import evaluate, load_history, runbook_needs  # noqa: PLC0415
    from engine.cli import EXIT_CODES  # noqa: PLC0415  (engine.cli imports this module)
    from engine.runtime import load_settings  # noqa: PLC0415

    when = time.time() if at is None else _parse_at(at)
    documents = _alert_documents(files)
    settings = load_settings(documents[0][0])
    rules = [(path, doc, rid, rule) for path, doc in documents for rid, rule in doc.rules.items()]
    history = load_history(
        settings.runs_dir,
        at=when,
        horizon=max(rule.window for *_, rule in rules),
        project_root=settings.project_root,
        budgets=any(rule.signal == "budget_burn_rate" for *_, rule in rules),
    )
    rows = [
        (path, doc, evaluate(rid, rule, history, when), runbook_needs(rule, settings.project_root))
        for path, doc, rid, rule in rules
    ]
    for problem in history.skipped:
        typer.echo(f"blocks: warning: skipped an unreadable journal: {problem}", err=True)
    if as_json:
        sys.stdout.write(json.dumps(_as_json(rows, when, history), indent=2) + "\n")
    else:
        for line in _text(rows, when, history, _shown(settings.runs_dir)):
            typer.echo(line)
    firing = any(row[2].status == "firing" for row in rows)
    raise typer.Exit(EXIT_CODES["invalid"] if firing else EXIT_CODES["ok"])


def _alert_documents(files: Sequence[str] | None) -> list[tuple[str, Alerts]]:
    """(path, spec) of each alerts document: FILES as given (a file that is not an alerts
    document is a usage error), or those found in folders (other kinds are passed over)."""
    from engine.errors import UsageError  # noqa: PLC0415
    from engine.loader import load_file  # noqa: PLC0415
    from engine.spec import Alerts  # noqa: PLC0415
    from engine.validate import find_spec_files, load_spec  # noqa: PLC0415

    given = list(files or ["pipelines"])
    found, missing = find_spec_files(given)
    if missing:
        raise UsageError("no such file or folder: " + ", ".join(missing))
    named = {os.path.normpath(p) for p in given if os.path.isfile(p)}
    out: list[tuple[str, Alerts]] = []
    for path in found:
        if path not in named:
            data = load_file(path).data  # bad YAML: SpecError with file:line:col
            if not isinstance(data, dict) or data.get("kind") != "alerts":
                continue
        _, spec = load_spec(path)
        if not isinstance(spec, Alerts):
            raise UsageError(f"{path} is a {spec.kind} document, not kind: alerts")
        out.append((path, spec))
    if not out:
        raise UsageError(
            "no `kind: alerts` file under " + " ".join(given) + ": pass the alerts files"
        )
    return out


def _parse_at(text: str) -> float:
    from engine.channels import parse_time  # noqa: PLC0415
    from engine.errors import UsageError  # noqa: PLC0415

    try:
        iso = parse_time(text)
    except UsageError as exc:
        raise UsageError(f"--at {exc}") from None
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _shown(path: os.PathLike[str]) -> str:
    """A path relative to the working folder when it is inside it (shorter to read)."""
    rel = os.path.relpath(path)
    return os.fspath(path) if rel.startswith("..") else rel


def _iso(t: float) -> str:
    when = datetime.fromtimestamp(t, UTC)
    spec = "microseconds" if when.microsecond else "seconds"
    return when.isoformat(timespec=spec).replace("+00:00", "Z")


def _window(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def _value(outcome: Outcome) -> str:
    from engine.alerts import usd  # noqa: PLC0415

    v = outcome.value
    if v is None:
        return "no data"
    if outcome.spec.signal == "latency_p95":
        return f"{v:.2f}s"
    if outcome.spec.signal == "cost_usd":
        return usd(v)
    return f"{v:.4g}"  # a rate: 0.5, 0.0001234 (not 0.000)


def _scope(outcome: Outcome) -> str:
    rule = outcome.spec
    if rule.signal == "error_rate":
        parts = [f"provider {rule.provider or '*'}"] + ([f"flow {rule.flow}"] if rule.flow else [])
        return ", ".join(parts)
    return f"flow {rule.flow or '*'}"


def _command(outcome: Outcome) -> str | None:
    from engine.alerts import runbook_command  # noqa: PLC0415

    argv = runbook_command(outcome.spec)
    return shlex.join(argv) if argv else None


Row = tuple[str, "Alerts", "Outcome", list[tuple[str, str | None]]]
"""(file, document, outcome, the runbook's required params the rule does not give)."""
_COLUMNS = (
    "RULE",
    "SEVERITY",
    "SIGNAL",
    "SCOPE",
    "WINDOW",
    "VALUE",
    "THRESHOLD",
    "STATUS",
    "BASIS",
)


def _text(rows: list[Row], at: float, history: History, runs_dir: str) -> list[str]:
    lines = [f"alerts at {_iso(at)} ({len(history.runs)} runs read from {runs_dir})"]
    table: list[Sequence[str]] = [_COLUMNS]
    table += [
        (
            o.rule,
            o.spec.severity,
            o.spec.signal,
            _scope(o),
            _window(o.spec.window),
            _value(o),
            o.spec.threshold,
            o.status.upper() if o.status == "firing" else o.status,
            o.basis,
        )
        for _, _, o, _ in rows
    ]
    widths = [max(len(r[i]) for r in table) for i in range(len(_COLUMNS))]

    def fmt(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    lines.extend(fmt(cells) for cells in table)
    for path, doc, o, needs in rows:
        if o.status != "firing":
            continue
        lines.append("")
        lines.append(f"FIRING {o.rule} ({o.spec.severity}, {doc.name} in {path}): {o.basis}")
        command = _command(o)
        if command is None:
            lines.append("  no runbook named by the rule")
        else:
            lines.append("  suggested runbook (dry run first, then without --dry-run):")
            lines.append(f"    {command}")
        for name, about in needs:
            lines.append(
                f"  add -p {name}=VALUE (the alert cannot know it)"
                + (f": {about}" if about else "")
            )
    counts = {s: sum(1 for r in rows if r[2].status == s) for s in ("firing", "ok", "no data")}
    lines.append("")
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items()))
    return lines


def _as_json(rows: list[Row], at: float, history: History) -> dict[str, Any]:
    return {
        "at": _iso(at),
        "runs_read": len(history.runs),
        "skipped": list(history.skipped),
        "firing": sum(1 for r in rows if r[2].status == "firing"),
        "rules": [
            {
                "file": path,
                "alerts": doc.name,
                "rule": o.rule,
                "severity": o.spec.severity,
                "signal": o.spec.signal,
                "flow": o.spec.flow,
                "provider": o.spec.provider,
                "window": o.spec.window,
                "value": o.value,
                "basis": o.basis,
                "threshold": o.spec.threshold,
                "status": o.status,
                "runbook": o.spec.runbook,
                "params": dict(o.spec.params),
                "command": _command(o),
                "needs": [name for name, _ in needs],
            }
            for path, doc, o, needs in rows
        ],
    }
