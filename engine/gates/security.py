"""The `security` gate kind: runs bandit over `paths` and counts its findings by severity.

Why bandit: it is maintained by PyCQA, the Python code-quality authority; it works offline
(no service, no account, no rule download), so a run is reproducible in CI and air-gapped;
its rules target exactly what generated Python gets wrong (a shell spawned from a string,
`eval`, weak hashes, unsafe deserialisation, hard-coded secrets); and it writes a documented
JSON report
(`-f json`) with test id, severity, confidence and line for every finding, which is what the
record needs. Runtime-only (dynamic) or dependency scanning is another gate's job.

Owns: running `bandit -r PATHS -f json -o REPORT` (the bandit of this interpreter's
environment) from the project root, parsing the report, the metrics `high`, `medium`, `low`
and `findings`, and evidence: every finding with file:line, test id and name, severity,
confidence and CWE, the files bandit could not scan, `# nosec` counts and bandit's version.
Must not: trust a partial scan. A file bandit could not parse (bandit still exits 0) leaves
the counts without meaning, so the metrics are then absent; so they are when a path is
missing (a measurement without metrics, saying which).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from engine.errors import GateError
from engine.gates._common import (
    capped,
    inputs_digest,
    measurement,
    project_path,
    relative,
    run_tool,
    tool_command,
    tool_version,
)
from engine.plugins import GateContext, Measurement
from engine.spec.flow import SecurityGate

__all__ = ["SecurityKind"]

SCAN_TIMEOUT = 600.0
"""bandit is fast (thousands of lines a second); this only bounds a hung scan."""
_SEVERITIES = ("HIGH", "MEDIUM", "LOW")
EXCLUDED = (
    # bandit's own default exclusions (`-x` replaces them, so they are repeated)...
    ".svn",
    "CVS",
    ".bzr",
    ".hg",
    ".git",
    "__pycache__",
    ".tox",
    ".eggs",
    "*.egg",
    # ...and what a project folder holds that is not the project's code
    "*/.venv/*",
    "*/venv/*",
    "*/node_modules/*",
    "*/.blocks/*",
    "*/mutants/*",
)
"""Paths bandit skips when a gate scans a folder (the engine's state, environments, mutants)."""


class SecurityKind:
    """bandit findings, counted by severity."""

    name: str = "security"

    async def measure(self, ctx: GateContext, gate: Any) -> Measurement:
        if not isinstance(gate, SecurityGate):
            raise GateError(f"the security kind was given a {type(gate).__name__}")
        if gate.tool != "bandit":  # pragma: no cover - the spec allows only bandit today
            raise GateError(f"security tool '{gate.tool}' is not supported")
        command = tool_command("bandit", "bandit")
        version = tool_version("bandit")
        targets = [project_path(ctx, p, "paths") for p in gate.paths]
        evidence: dict[str, Any] = {
            "tool": "bandit",
            "bandit_version": version,
            "paths": list(gate.paths),
            "excluded": list(EXCLUDED),
        }
        missing = [rel for rel, path in zip(gate.paths, targets, strict=True) if not path.exists()]
        if missing:
            evidence["reason"] = f"not found: {', '.join(missing)}"
            return measurement(
                ctx, {}, evidence, f"nothing scanned: {', '.join(missing)} does not exist"
            )
        evidence["inputs"] = inputs_digest(ctx, targets)
        report = ctx.workdir / "bandit.json"
        report.unlink(missing_ok=True)
        argv = [
            *command,
            "-r",
            *[relative(ctx, t) for t in targets],
            "-x",
            ",".join(EXCLUDED),
            "-f",
            "json",
            "-o",
            str(report),
        ]
        run = await run_tool(
            ctx, argv, cwd=ctx.project_root, log=ctx.workdir / "bandit.log", timeout=SCAN_TIMEOUT
        )
        evidence["run"] = run.record()
        # bandit exits 1 when it found something: that is a result, not a failure
        if run.timed_out or run.returncode not in (0, 1) or not report.is_file():
            why = (
                f"bandit did not finish within {SCAN_TIMEOUT:g}s"
                if run.timed_out
                else f"bandit exited with code {run.returncode} without a report"
            )
            evidence.update(reason=why, output_tail=run.tail)
            return measurement(ctx, {}, evidence, f"no scan result: {why}")
        try:
            data = json.loads(report.read_text(encoding="utf-8"))
            results = list(data.get("results", []))
            errors = list(data.get("errors", []))
        except (OSError, ValueError, AttributeError, TypeError) as exc:
            evidence["reason"] = f"bandit's report could not be read: {exc}"
            return measurement(ctx, {}, evidence, "no scan result: bandit's report is unreadable")
        findings = sorted(
            (_finding(r) for r in results if isinstance(r, Mapping)),
            key=lambda f: (
                _SEVERITIES.index(f["severity"]) if f["severity"] in _SEVERITIES else 9,
                f["file"],
                f["line"],
            ),
        )
        counts = {s.lower(): sum(1 for f in findings if f["severity"] == s) for s in _SEVERITIES}
        totals = data.get("metrics", {}).get("_totals", {}) if isinstance(data, Mapping) else {}
        listed, omitted = capped(findings)
        evidence.update(
            findings=listed,
            findings_omitted=omitted,
            lines_scanned=totals.get("loc"),
            nosec=totals.get("nosec"),
            files_scanned=sorted(
                _clean(name) for name in data.get("metrics", {}) if name != "_totals"
            ),
        )
        summary = (
            f"{len(findings)} finding{'s' if len(findings) != 1 else ''}: "
            f"{counts['high']} high, {counts['medium']} medium, {counts['low']} low"
        )
        if findings:
            top = findings[0]
            summary += (
                f"; first {top['file']}:{top['line']} {top['test_id']} "
                f"({top['severity'].lower()}): {top['message']}"
            )
        if errors:
            unscanned = [
                {"file": _clean(str(e.get("filename", ""))), "reason": str(e.get("reason", ""))}
                for e in errors
                if isinstance(e, Mapping)
            ]
            evidence.update(
                unscanned=unscanned,
                partial_counts={**counts, "findings": len(findings)},
                reason="bandit could not scan every file, so the counts are incomplete",
            )
            names = ", ".join(u["file"] for u in unscanned[:3])
            return measurement(
                ctx,
                {},
                evidence,
                f"incomplete scan: bandit could not scan {len(unscanned)} file(s) ({names}); "
                f"{summary} in the rest",
            )
        metrics = {**counts, "findings": len(findings)}
        return measurement(ctx, metrics, evidence, summary)


def _clean(name: str) -> str:
    return name.removeprefix("./")


def _finding(result: Mapping[str, Any]) -> dict[str, Any]:
    cwe = result.get("issue_cwe")
    return {
        "file": _clean(str(result.get("filename", ""))),
        "line": int(result.get("line_number") or 0),
        "test_id": str(result.get("test_id", "")),
        "test_name": str(result.get("test_name", "")),
        "severity": str(result.get("issue_severity", "")).upper(),
        "confidence": str(result.get("issue_confidence", "")).upper(),
        "cwe": cwe.get("id") if isinstance(cwe, Mapping) else None,
        "message": str(result.get("issue_text", "")),
        "more_info": result.get("more_info"),
    }
