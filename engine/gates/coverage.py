"""The `coverage` gate kind: reads coverage.py's JSON report (`coverage json`, `--cov-report=json`).

Owns: parsing the report (format 2 and 3 of coverage.py 6 and 7: `meta`, `files.*.summary`,
`totals`), the metrics `percent` (coverage.py's own total: statements and, when branches were
measured, branches together), `branch_percent` (covered / total branches; absent when the
report has no branch data), `lines_covered`, `lines_total` and `files_under_floor` (files whose
percent is below `file_floor`; 0 when there is no floor), and evidence: the report's
coverage.py version and timestamp, its digest, and the files under the floor with their
missing lines.
Must not: run the tests (the flow's test step writes the report), or trust a report that
does not look like coverage.py's (it is then a measurement without metrics, saying why).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from engine.errors import GateError
from engine.gates._common import capped, file_digest, fmt_number, measurement, project_path
from engine.plugins import GateContext, Measurement
from engine.spec.flow import CoverageGate

__all__ = ["CoverageKind"]

MAX_MISSING_LINES = 50
"""Missing lines listed per file under the floor."""


class CoverageKind:
    """Turns a coverage.py JSON report into coverage metrics."""

    name: str = "coverage"

    async def measure(self, ctx: GateContext, gate: Any) -> Measurement:
        if not isinstance(gate, CoverageGate):
            raise GateError(f"the coverage kind was given a {type(gate).__name__}")
        path = project_path(ctx, gate.report, "report")
        evidence: dict[str, Any] = {
            "report": gate.report,
            "report_sha256": file_digest(path),
            "file_floor": gate.file_floor,
        }
        if not path.is_file():
            evidence["reason"] = f"the report {gate.report} does not exist"
            return measurement(
                ctx, {}, evidence, f"no coverage report: {gate.report} does not exist"
            )
        try:
            report = json.loads(path.read_text(encoding="utf-8"))
            totals = report["totals"]
            files = report.get("files", {})
            statements = int(totals["num_statements"])
            covered = int(totals["covered_lines"])
            percent = float(totals["percent_covered"])
            if not isinstance(files, Mapping):
                raise TypeError("`files` is not an object")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            return _unreadable(ctx, evidence, gate.report, f"cannot be read as JSON: {exc}")
        except (KeyError, TypeError, ValueError) as exc:
            return _unreadable(
                ctx, evidence, gate.report, f"is not a coverage.py JSON report ({exc!r} missing)"
            )
        meta = report.get("meta") if isinstance(report.get("meta"), Mapping) else {}
        evidence.update(
            tool="coverage.py",
            coverage_version=meta.get("version"),
            report_format=meta.get("format"),
            report_timestamp=meta.get("timestamp"),
            branch_coverage=bool(meta.get("branch_coverage", "num_branches" in totals)),
            files=len(files),
        )
        metrics: dict[str, Any] = {
            "percent": percent,
            "lines_covered": covered,
            "lines_total": statements,
        }
        branch = _branch_percent(totals) if evidence["branch_coverage"] else None
        if branch is not None:
            metrics["branch_percent"] = branch
            evidence["branches"] = {
                "covered": int(totals.get("covered_branches", 0)),
                "total": int(totals.get("num_branches", 0)),
                "partial": int(totals.get("num_partial_branches", 0)),
            }
        else:
            evidence["branch_percent_absent"] = "the report has no branch data (run with --branch)"
        under = _under_floor(files, gate.file_floor)
        listed, omitted = capped(under)
        metrics["files_under_floor"] = len(under)
        evidence.update(files_under_floor=listed, files_under_floor_omitted=omitted)
        evidence["percent_by_file"] = dict(
            capped(
                sorted(
                    (name, _file_percent(entry))
                    for name, entry in files.items()
                    if _file_percent(entry) is not None
                )
            )[0]
        )
        summary = f"{fmt_number(percent)} % of {statements} lines"
        if branch is not None:
            summary += f" (branches {fmt_number(branch)} %)"
        if gate.file_floor is not None:
            summary += (
                f"; {len(under)} file{'s' if len(under) != 1 else ''} under the "
                f"{fmt_number(gate.file_floor)} % floor"
            )
            if under:
                summary += ": " + ", ".join(
                    f"{u['file']} {fmt_number(u['percent'])} %" for u in under[:3]
                )
                summary += ", …" if len(under) > 3 else ""
        return measurement(ctx, metrics, evidence, summary)


def _unreadable(ctx: GateContext, evidence: dict[str, Any], rel: str, why: str) -> Measurement:
    evidence["reason"] = f"the report {rel} {why}"
    return measurement(ctx, {}, evidence, f"no coverage data: {rel} {why}")


def _branch_percent(totals: Mapping[str, Any]) -> float | None:
    if "percent_branches_covered" in totals:  # coverage.py >= 7.9 computes it
        return float(totals["percent_branches_covered"])
    if "num_branches" not in totals or "covered_branches" not in totals:
        return None
    total = int(totals["num_branches"])
    # coverage.py's own convention: nothing to cover is fully covered
    return 100.0 if total == 0 else 100.0 * int(totals["covered_branches"]) / total


def _file_percent(entry: Any) -> float | None:
    if not isinstance(entry, Mapping):
        return None
    summary = entry.get("summary")
    if not isinstance(summary, Mapping) or "percent_covered" not in summary:
        return None
    try:
        return float(summary["percent_covered"])
    except (TypeError, ValueError):
        return None


def _under_floor(files: Mapping[str, Any], floor: float | None) -> list[dict[str, Any]]:
    if floor is None:
        return []
    under = []
    for name, entry in sorted(files.items()):
        percent = _file_percent(entry)
        if percent is None or percent >= floor:
            continue
        summary = entry["summary"]
        missing = entry.get("missing_lines") or []
        shown, more = capped(list(missing), MAX_MISSING_LINES)
        under.append(
            {
                "file": name,
                "percent": percent,
                "lines_covered": summary.get("covered_lines"),
                "lines_total": summary.get("num_statements"),
                "missing_lines": shown,
                "missing_lines_omitted": more,
                "missing_branches": len(entry.get("missing_branches") or []),
            }
        )
    under.sort(key=lambda u: (u["percent"], u["file"]))
    return under
