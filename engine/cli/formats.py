"""Rendering validation reports: text for people, JSON for tools, GitHub annotations, SARIF.

Owns: every byte `blocks validate` writes about findings. Pure functions from reports to
strings; the CLI decides where they go.
Must not: decide validity or exit codes.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from typing import Any

from engine import __version__
from engine.errors import Diagnostic
from engine.validate import FileReport

__all__ = ["FORMATS", "render"]

FORMATS = ("text", "json", "github", "sarif")


def render(fmt: str, reports: Sequence[FileReport], missing: Sequence[str] = ()) -> str:
    return {
        "text": _text,
        "json": _json,
        "github": _github,
        "sarif": _sarif,
    }[fmt](reports, missing)


def _summary(reports: Sequence[FileReport]) -> tuple[int, int, int]:
    invalid = sum(1 for r in reports if not r.ok)
    errors = sum(1 for r in reports for d in r.diagnostics if d.severity == "error")
    return len(reports), invalid, errors


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _source_line(path: str, line: int, cache: dict[str, list[str]]) -> str | None:
    if path not in cache:
        try:
            with open(path, encoding="utf-8", errors="replace") as fh:
                cache[path] = fh.read().splitlines()
        except OSError:
            cache[path] = []
    lines = cache[path]
    return lines[line - 1] if 0 < line <= len(lines) else None


def _text(reports: Sequence[FileReport], missing: Sequence[str]) -> str:
    out: list[str] = []
    cache: dict[str, list[str]] = {}
    for report in reports:
        if report.ok:
            out.append(f"ok    {report.path}  ({report.kind} {report.name})")
            continue
        for diag in report.diagnostics:
            out.extend(_text_diagnostic(diag, cache))
    for path in missing:
        out.append(f"{path}: error[usage]: no such file or folder")
    files, invalid, errors = _summary(reports)
    noun = "file" if files == 1 else "files"
    if invalid:
        out.append(
            f"{files} {noun} checked: {files - invalid} valid, {invalid} invalid "
            f"({errors} error{'s' if errors != 1 else ''})"
        )
    elif files:
        out.append(f"{files} {noun} checked: all valid")
    return "\n".join(out) + "\n"


def _text_diagnostic(diag: Diagnostic, cache: dict[str, list[str]]) -> list[str]:
    loc = diag.location
    head = f"{loc}: {diag.severity}[{diag.code}]: {diag.message}"
    if diag.hint:
        head += f" — {diag.hint}"
    lines = [head]
    source = _source_line(loc.file, loc.line, cache)
    if source is not None and source.strip():
        gutter = str(loc.line)
        lines.append(f"  {gutter} | {source}")
        width = _token_width(source, loc.col - 1)
        lines.append(f"  {' ' * len(gutter)} | {' ' * (loc.col - 1)}{'^' * width}")
    lines.extend(f"  also at {rel}" for rel in diag.related)
    return lines


_TOKEN = re.compile(r"""'(?:[^']|'')*'|"(?:[^"\\]|\\.)*"|[^\s,\]}:]+""")


def _token_width(line: str, start: int) -> int:
    """How many characters to underline: the quoted string or bare word at `start`."""
    match = _TOKEN.match(line, start)
    return max(1, min(len(match.group()) if match else 1, 60))


def _diag_dict(diag: Diagnostic) -> dict[str, Any]:
    return {
        "code": diag.code,
        "severity": diag.severity,
        "message": diag.message,
        "hint": diag.hint,
        "file": diag.location.file,
        "line": diag.location.line,
        "col": diag.location.col,
        "pointer": diag.pointer,
        "related": [{"file": r.file, "line": r.line, "col": r.col} for r in diag.related],
    }


def _json(reports: Sequence[FileReport], missing: Sequence[str]) -> str:
    files, invalid, errors = _summary(reports)
    doc = {
        "files": [
            {
                "path": r.path,
                "kind": r.kind,
                "name": r.name,
                "valid": r.ok,
                "diagnostics": [_diag_dict(d) for d in r.diagnostics],
            }
            for r in reports
        ],
        "missing": list(missing),
        "summary": {"files": files, "invalid": invalid, "errors": errors},
    }
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def _gh_escape(text: str, *, prop: bool = False) -> str:
    text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    if prop:
        text = text.replace(":", "%3A").replace(",", "%2C")
    return text


def _github(reports: Sequence[FileReport], missing: Sequence[str]) -> str:
    out = []
    for report in reports:
        for d in report.diagnostics:
            loc = d.location
            level = "error" if d.severity == "error" else "warning"
            message = d.message + (f" — {d.hint}" if d.hint else "")
            props = (
                f"file={_gh_escape(loc.file, prop=True)},line={loc.line},col={loc.col},"
                f"title={_gh_escape('blocks ' + d.code, prop=True)}"
            )
            out.append(f"::{level} {props}::{_gh_escape(message)}")
    out.extend(
        f"::error title=blocks usage::{_gh_escape(p)}: no such file or folder" for p in missing
    )
    files, invalid, errors = _summary(reports)
    out.append(
        f"{_count(files, 'file')} checked: {files - invalid} valid, {invalid} invalid "
        f"({_count(errors, 'error')})"
    )
    return "\n".join(out) + "\n"


def _sarif(reports: Sequence[FileReport], missing: Sequence[str]) -> str:
    rules: dict[str, dict[str, Any]] = {}
    results = []
    for report in reports:
        for d in report.diagnostics:
            rules.setdefault(d.code, {"id": d.code, "shortDescription": {"text": d.code}})
            uri = os.path.relpath(d.location.file).replace(os.sep, "/")
            text = d.message + (f" — {d.hint}" if d.hint else "")
            results.append(
                {
                    "ruleId": d.code,
                    "level": "error" if d.severity == "error" else "warning",
                    "message": {"text": text},
                    "locations": [
                        {
                            "physicalLocation": {
                                "artifactLocation": {"uri": uri, "uriBaseId": "%SRCROOT%"},
                                "region": {
                                    "startLine": d.location.line,
                                    "startColumn": d.location.col,
                                },
                            }
                        }
                    ],
                }
            )
    sarif = {
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "blocks",
                        "version": __version__,
                        "rules": sorted(rules.values(), key=lambda r: str(r["id"])),
                    }
                },
                "columnKind": "unicodeCodePoints",
                "results": results,
            }
        ],
    }
    return json.dumps(sarif, indent=2, ensure_ascii=False) + "\n"
