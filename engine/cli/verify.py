"""`blocks verify [PATH...]`: evaluate the gates of flows for CI, and report them.

Owns: finding the flows under PATH, printing verdicts as text, JSON, GitHub annotations,
SARIF 2.1.0 or JUnit XML, and the exit code (1 when a blocker did not pass; warnings never
fail the build). Must not: hold gate logic (engine.runtime.verify and the gate kinds do).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from enum import StrEnum
from typing import Annotated, Any
from xml.sax.saxutils import escape, quoteattr

import typer

__all__ = ["verify"]


class VerifyFormat(StrEnum):
    text = "text"
    json = "json"
    github = "github"
    sarif = "sarif"
    junit = "junit"


Row = tuple[str, Any, Any]  # (flow path, PlannedGate, Verdict)


def verify(
    paths: Annotated[
        list[str] | None,
        typer.Argument(metavar="[PATH]...", help="Flow files or folders (default: pipelines)."),
    ] = None,
    fmt: Annotated[VerifyFormat, typer.Option("--format", "-f")] = VerifyFormat.text,
    shadow: Annotated[
        bool,
        typer.Option(
            "--shadow",
            help="Re-judge the verdicts recorded in past bundles with the current "
            "thresholds and list the runs that would flip. Never fails.",
        ),
    ] = False,
) -> None:
    """Evaluate every gate of the flows in PATH now. Exit 1 if a blocker does not pass."""
    import anyio  # noqa: PLC0415

    from engine.cli import EXIT_CODES  # noqa: PLC0415
    from engine.errors import UsageError  # noqa: PLC0415
    from engine.runtime import Runtime, load_settings  # noqa: PLC0415
    from engine.spec import Flow  # noqa: PLC0415
    from engine.validate import find_spec_files, load_spec  # noqa: PLC0415

    files, missing = find_spec_files(paths or ["pipelines"])
    if missing:
        raise UsageError("no such file or folder: " + ", ".join(missing))
    rows: list[Row] = []
    if shadow:
        _shadow(files, fmt)
        raise typer.Exit(EXIT_CODES["ok"])
    for path in files:
        _, spec = load_spec(path)
        if not isinstance(spec, Flow) or not spec.gates:
            continue
        runtime = Runtime(load_settings(path))
        plan = runtime.plan(path)
        rows.extend((path, gate, verdict) for gate, verdict in anyio.run(runtime.verify, plan))
    sys.stdout.write(_RENDER[fmt](rows))
    failed = any(g.blocker and v.status != "pass" for _, g, v in rows)
    raise typer.Exit(EXIT_CODES["invalid"] if failed else EXIT_CODES["ok"])


def _shadow(files: Sequence[str], fmt: VerifyFormat) -> None:
    from engine.runtime import Runtime, load_settings  # noqa: PLC0415
    from engine.spec import Flow  # noqa: PLC0415
    from engine.validate import load_spec  # noqa: PLC0415

    found: list[dict[str, Any]] = []
    for path in files:
        _, spec = load_spec(path)
        if isinstance(spec, Flow) and spec.gates:
            runtime = Runtime(load_settings(path))
            found.extend({"flow": path, **row} for row in runtime.shadow(runtime.plan(path)))
    if fmt is VerifyFormat.json:
        sys.stdout.write(json.dumps(found, indent=2) + "\n")
        return
    for row in found:
        mark = "FLIPS" if row["flipped"] else "same "
        sys.stdout.write(
            f"{mark} {row['run']}  gate {row['gate']}: {row['then']} -> {row['now']}\n"
        )
    flips = sum(1 for r in found if r["flipped"])
    runs = len({r["run"] for r in found})
    sys.stdout.write(f"{len(found)} recorded verdicts in {runs} runs: {flips} would flip\n")


def _text(rows: Sequence[Row]) -> str:
    out = []
    for path, gate, verdict in rows:
        mark = {"pass": "✓", "fail": "✗"}.get(verdict.status, "?")
        level = "blocker" if gate.blocker else "warn"
        out.append(f"{mark} {path} gate {gate.id} ({gate.spec.kind}, {level}): {verdict.status}")
        out.append(f"    {verdict.explanation}")
    blockers = sum(1 for _, g, v in rows if g.blocker and v.status != "pass")
    warns = sum(1 for _, g, v in rows if not g.blocker and v.status != "pass")
    out.append(
        f"{len(rows)} gates: {len(rows) - blockers - warns} passed, {blockers} blocking, "
        f"{warns} warnings"
    )
    return "\n".join(out) + "\n"


def _json(rows: Sequence[Row]) -> str:
    return (
        json.dumps([{"flow": p, **v.as_record(g)} for p, g, v in rows], indent=2, default=str)
        + "\n"
    )


def _level(gate: Any, verdict: Any) -> str:
    if verdict.status == "pass":
        return "notice"
    return "error" if gate.blocker else "warning"


def _github(rows: Sequence[Row]) -> str:
    out = []
    for path, gate, verdict in rows:
        message = verdict.explanation.replace("%", "%25").replace("\n", "%0A")
        title = f"blocks gate {gate.id}".replace(":", "%3A").replace(",", "%2C")
        out.append(f"::{_level(gate, verdict)} file={path},title={title}::{message}")
    return "\n".join(out) + "\n"


def _sarif(rows: Sequence[Row]) -> str:
    from engine import __version__  # noqa: PLC0415

    results = [
        {
            "ruleId": f"gate/{gate.spec.kind}",
            "level": {"notice": "note"}.get(_level(gate, verdict), _level(gate, verdict)),
            "message": {"text": verdict.explanation},
            "locations": [
                {
                    "physicalLocation": {
                        "artifactLocation": {
                            "uri": os.path.relpath(path).replace(os.sep, "/"),
                            "uriBaseId": "%SRCROOT%",
                        }
                    }
                }
            ],
            "properties": {
                "gate": gate.id,
                "status": verdict.status,
                "metrics": {
                    k: v
                    for k, v in verdict.metrics.items()
                    if isinstance(v, int | float | bool | str)
                },
            },
        }
        for path, gate, verdict in rows
    ]
    kinds = sorted({g.spec.kind for _, g, _ in rows})
    sarif = {
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "blocks verify",
                        "version": __version__,
                        "rules": [{"id": f"gate/{k}"} for k in kinds],
                    }
                },
                "results": results,
            }
        ],
    }
    return json.dumps(sarif, indent=2) + "\n"


def _junit(rows: Sequence[Row]) -> str:
    failures = sum(1 for _, g, v in rows if v.status != "pass" and g.blocker)
    out = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<testsuite name="blocks verify" tests="{len(rows)}" failures="{failures}">',
    ]
    for path, gate, verdict in rows:
        name = quoteattr(f"{gate.id} ({gate.spec.kind})")
        out.append(f"  <testcase classname={quoteattr(path)} name={name}>")
        if verdict.status != "pass" and gate.blocker:
            out.append(
                f"    <failure message={quoteattr(verdict.status)}>"
                f"{escape(verdict.explanation)}</failure>"
            )
        elif verdict.status != "pass":
            out.append(f"    <system-out>{escape(verdict.explanation)}</system-out>")
        out.append("  </testcase>")
    out.append("</testsuite>")
    return "\n".join(out) + "\n"


_RENDER = {
    VerifyFormat.text: _text,
    VerifyFormat.json: _json,
    VerifyFormat.github: _github,
    VerifyFormat.sarif: _sarif,
    VerifyFormat.junit: _junit,
}
