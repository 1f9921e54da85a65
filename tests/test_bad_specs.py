"""The bad-spec corpus: every file in tests/specs/bad/ must be refused at the exact place.

Each corpus file declares what `blocks validate` must say about it in its leading comments::

    # expect: 12:9 ref.unknown-step "did you mean 'build'"
    # xfail: the engine points at the step, not at the reference

One `# expect:` line per diagnostic: `line:col`, the diagnostic code, and optionally one or
more quoted substrings, each of which must occur in the message or the hint. The file must
get exactly the expected diagnostics: a missing one, one at another position, and an extra
one all fail the case. A `# xfail:` line marks a case where the engine is known to be wrong
(strict: the case fails loudly once the engine is fixed, so the marker gets removed).

The real CLI runs in a subprocess, once on the whole folder (parsed once per module); if
that run does not produce a report for every file, the files that crash are run on their
own and the others together (bisected if need be), so one crashing file cannot hide what the
engine says about the others.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

BAD_DIR = Path(__file__).parent / "specs" / "bad"
PROJECT_ROOT = Path(__file__).parent.parent
BLOCKS = os.path.join(os.path.dirname(sys.executable), "blocks")
MAX_BYTES = 16 * 1024 * 1024  # engine.loader.DEFAULT_LIMITS.max_bytes

_EXPECT = re.compile(r"^# expect:\s*(\d+):(\d+)\s+([a-z][\w.-]*)((?:\s+\"[^\"]*\")*)\s*$")
_QUOTED = re.compile(r"\"([^\"]*)\"")
_XFAIL = re.compile(r"^# xfail:\s*(.+?)\s*$")


@dataclass(frozen=True)
class Expected:
    line: int
    col: int
    code: str
    substrings: tuple[str, ...] = ()

    def __str__(self) -> str:
        quoted = "".join(f' "{s}"' for s in self.substrings)
        return f"{self.line}:{self.col} {self.code}{quoted}"


@dataclass(frozen=True)
class Case:
    path: Path
    expected: tuple[Expected, ...]
    xfail: str | None


@dataclass
class Outcome:
    """What the CLI said about one file."""

    exit_code: int
    stdout: str
    stderr: str
    diagnostics: list[dict[str, Any]] | None = None  # None: the file got no report
    valid: bool | None = None


def parse_case(path: Path) -> Case:
    text = path.read_bytes().decode("utf-8", errors="replace").removeprefix("\ufeff")
    expected: list[Expected] = []
    xfail: str | None = None
    for raw_line in text.splitlines():
        line = raw_line.replace("\x00", "")
        if line.startswith("# expect:"):
            match = _EXPECT.match(line)
            assert match is not None, f"{path.name}: malformed expectation: {line!r}"
            expected.append(
                Expected(int(match[1]), int(match[2]), match[3], tuple(_QUOTED.findall(match[4])))
            )
        elif (found := _XFAIL.match(line)) is not None:
            xfail = found[1]
    assert expected, f"{path.name}: declares no `# expect:` line"
    return Case(path, tuple(expected), xfail)


def corpus_files() -> list[Path]:
    return sorted(p for p in BAD_DIR.iterdir() if p.suffix in (".yaml", ".yml"))


def corpus_params() -> Iterator[Any]:
    for path in corpus_files():
        case = parse_case(path)
        marks = [pytest.mark.xfail(strict=True, reason=case.xfail)] if case.xfail else []
        yield pytest.param(case, id=path.stem, marks=marks)


def run_blocks(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    cmd = [BLOCKS, *args]
    try:
        return subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            encoding="utf-8",
            errors="replace",
            timeout=timeout,
            cwd=PROJECT_ROOT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(cmd, -1, "", f"timed out after {timeout} s")


def _reports(stdout: str) -> dict[str, dict[str, Any]] | None:
    try:
        doc = json.loads(stdout)
    except json.JSONDecodeError:
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("files"), list):
        return None
    return {os.path.realpath(f["path"]): f for f in doc["files"] if isinstance(f, dict)}


def _outcome(proc: subprocess.CompletedProcess[str], path: Path) -> Outcome:
    reports = _reports(proc.stdout) or {}
    report = reports.get(os.path.realpath(path))
    out = Outcome(proc.returncode, proc.stdout, proc.stderr)
    if report is not None:
        out.diagnostics = list(report.get("diagnostics", []))
        out.valid = report.get("valid")
    return out


def validate_one(path: Path, *extra: str) -> Outcome:
    return _outcome(run_blocks("validate", str(path), "--format", "json", *extra), path)


@pytest.fixture(scope="module")
def folder_run() -> subprocess.CompletedProcess[str]:
    """One `blocks validate tests/specs/bad --format json` for the whole module."""
    return run_blocks("validate", str(BAD_DIR), "--format", "json")


def _isolate(files: list[Path]) -> dict[Path, Outcome]:
    """Validate `files` in one run; if a file goes unreported, split the batch and retry.

    One crashing file costs a bisection (the two halves run side by side), not a run per file.
    """
    proc = run_blocks("validate", *map(str, files), "--format", "json")
    reports = _reports(proc.stdout)
    if len(files) == 1 or (
        reports is not None and all(os.path.realpath(p) in reports for p in files)
    ):
        return {p: _outcome(proc, p) for p in files}
    half = len(files) // 2
    with ThreadPoolExecutor(max_workers=2) as pool:
        first, second = pool.map(_isolate, [files[:half], files[half:]])
    return {**first, **second}


@pytest.fixture(scope="module")
def outcomes(folder_run: subprocess.CompletedProcess[str]) -> dict[Path, Outcome]:
    files = corpus_files()
    reports = _reports(folder_run.stdout)
    if reports is not None and all(os.path.realpath(p) in reports for p in files):
        return {p: _outcome(folder_run, p) for p in files}
    # The folder run did not report every file. Find the likely culprits cheaply in-process,
    # then let the CLI speak for every file: the rest in one run (bisected if that still
    # fails), each suspect on its own.
    suspects = _crashes_in_process(files)
    found = _isolate([p for p in files if p not in suspects]) if len(suspects) < len(files) else {}
    found.update((p, validate_one(p)) for p in suspects)
    return found


def _crashes_in_process(files: list[Path]) -> set[Path]:
    """Files on which validating or rendering raises: triage only, never an assertion."""
    from engine.cli.formats import render  # noqa: PLC0415
    from engine.validate import validate_file  # noqa: PLC0415

    suspects = set()
    for path in files:
        try:
            render("json", [validate_file(str(path))])
        except Exception:  # any crash makes the file a suspect
            suspects.add(path)
    return suspects


def _shown(diag: dict[str, Any]) -> str:
    hint = f" — {diag['hint']}" if diag.get("hint") else ""
    return f"{diag['line']}:{diag['col']} {diag['code']}: {diag['message']}{hint}"


def check_outcome(case: Case | list[Expected], outcome: Outcome, name: str) -> None:
    """Exit code 1, no traceback, and exactly the expected diagnostics."""
    expected = list(case.expected if isinstance(case, Case) else case)
    for stream in (outcome.stdout, outcome.stderr):
        assert "Traceback" not in stream, f"{name}: traceback in the output:\n{stream[-3000:]}"
    assert outcome.exit_code == 1, (
        f"{name}: exit code {outcome.exit_code}, expected 1\n{outcome.stderr[-2000:]}"
    )
    assert outcome.diagnostics is not None, f"{name}: no report for the file in the JSON output"
    assert outcome.valid is False, f"{name}: reported as valid"
    actual = outcome.diagnostics
    problems: list[str] = []
    unmatched = list(actual)
    for want in expected:
        at = [
            d
            for d in unmatched
            if (d["line"], d["col"], d["code"]) == (want.line, want.col, want.code)
        ]
        if not at:
            problems.append(f"missing: {want}")
            continue
        diag = at[0]
        unmatched.remove(diag)
        said = f"{diag['message']} {diag.get('hint') or ''}"
        problems.extend(
            f"{want.line}:{want.col} {want.code}: {s!r} not in {said!r}"
            for s in want.substrings
            if s not in said
        )
    problems.extend(f"unexpected: {_shown(d)}" for d in unmatched)
    assert not problems, (
        f"{name}:\n  "
        + "\n  ".join(problems)
        + "\nthe engine said:\n  "
        + "\n  ".join(_shown(d) for d in actual)
    )


# ---------------------------------------------------------------------------------------
# the corpus


def test_corpus_is_big_enough() -> None:
    assert len(corpus_files()) >= 45


@pytest.mark.parametrize("case", list(corpus_params()))
def test_bad_spec(case: Case, outcomes: dict[Path, Outcome]) -> None:
    check_outcome(case, outcomes[case.path], case.path.name)


# ---------------------------------------------------------------------------------------
# files that cannot live in the folder: too big to commit, or too empty to carry a comment


def test_file_over_the_size_limit(tmp_path: Path) -> None:
    big = tmp_path / "too_large.yaml"
    header = b"version: 1\nkind: flow\nname: too-large\ndescription: |\n"
    with big.open("wb") as fh:
        fh.write(header)
        fh.writelines(b"  " + b"x" * 1022 + b"\n" for _ in range(MAX_BYTES // 1024 + 1))
    assert big.stat().st_size > MAX_BYTES
    outcome = validate_one(
        big
    )  # refused from its size, before reading it: validate_one's timeout bounds it
    check_outcome([Expected(1, 1, "yaml.too-large", ("limit",))], outcome, big.name)


def test_empty_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_bytes(b"")
    check_outcome([Expected(1, 1, "yaml.empty", ("empty",))], validate_one(empty), empty.name)


# Runs `blocks` with its address space capped, so "bounded memory" is checked, not hoped for.
_CAPPED = (
    "import os, resource, sys\n"
    "cap = int(sys.argv[1])\n"
    "resource.setrlimit(resource.RLIMIT_AS, (cap, cap))\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


def test_alias_bomb_is_refused_fast_in_bounded_memory() -> None:
    bomb = BAD_DIR / "yaml_alias_bomb.yaml"
    body = b"".join(
        ln for ln in bomb.read_bytes().splitlines(keepends=True) if not ln.startswith(b"#")
    )
    assert len(body) < 400
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _CAPPED,
            str(1 << 30),
            BLOCKS,
            "validate",
            str(bomb),
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=30,  # refused fast: a run that expanded the aliases would not finish
        cwd=PROJECT_ROOT,
        check=False,
    )
    check_outcome(parse_case(bomb), _outcome(proc, bomb), bomb.name)


# ---------------------------------------------------------------------------------------
# the folder as a whole, other formats, usage


def test_whole_folder_reports_every_file(folder_run: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in folder_run.stdout + folder_run.stderr, folder_run.stderr[-3000:]
    assert folder_run.returncode == 1, folder_run.stderr[-2000:]
    reports = _reports(folder_run.stdout)
    assert reports is not None, f"not JSON:\n{folder_run.stdout[:2000]}{folder_run.stderr[-2000:]}"
    files = corpus_files()
    not_reported = [p.name for p in files if os.path.realpath(p) not in reports]
    assert not not_reported, f"files missing from the folder report: {not_reported}"
    valid = [p.name for p in files if reports[os.path.realpath(p)]["valid"]]
    assert not valid, f"bad files reported as valid: {valid}"
    summary = json.loads(folder_run.stdout)["summary"]
    assert summary["files"] == summary["invalid"] == len(files)


FORMAT_SAMPLES = ("flow_cycle.yaml", "yaml_duplicate_key.yaml")


def _expected_positions(name: str) -> list[tuple[int, int, str]]:
    return sorted((e.line, e.col, e.code) for e in parse_case(BAD_DIR / name).expected)


def _by_file(found: list[tuple[str, int, int, str]]) -> dict[str, list[tuple[int, int, str]]]:
    out: dict[str, list[tuple[int, int, str]]] = {}
    for file, line, col, code in found:
        out.setdefault(os.path.basename(file), []).append((line, col, code))
    return {name: sorted(positions) for name, positions in out.items()}


def test_github_format_carries_the_same_positions() -> None:
    proc = run_blocks("validate", *(str(BAD_DIR / n) for n in FORMAT_SAMPLES), "--format", "github")
    assert "Traceback" not in proc.stdout + proc.stderr
    assert proc.returncode == 1, proc.stdout + proc.stderr
    found = []
    for line in proc.stdout.splitlines():
        match = re.match(r"^::error file=([^,]*),line=(\d+),col=(\d+),title=blocks ([^:]+)::", line)
        if match:
            file = match[1].replace("%3A", ":").replace("%2C", ",").replace("%25", "%")
            assert os.path.realpath(file).startswith(os.path.realpath(BAD_DIR)), file
            found.append((file, int(match[2]), int(match[3]), match[4]))
    assert _by_file(found) == {n: _expected_positions(n) for n in FORMAT_SAMPLES}, proc.stdout


def test_sarif_format_carries_the_same_positions() -> None:
    proc = run_blocks("validate", *(str(BAD_DIR / n) for n in FORMAT_SAMPLES), "--format", "sarif")
    assert "Traceback" not in proc.stdout + proc.stderr
    assert proc.returncode == 1, proc.stdout + proc.stderr
    sarif = json.loads(proc.stdout)
    assert sarif["version"] == "2.1.0"
    (run,) = sarif["runs"]
    assert run["tool"]["driver"]["name"] == "blocks"
    found = []
    for result in run["results"]:
        assert result["level"] == "error"
        (location,) = result["locations"]
        physical = location["physicalLocation"]
        uri = physical["artifactLocation"]["uri"]
        assert (PROJECT_ROOT / uri).resolve().parent == BAD_DIR.resolve(), uri
        region = physical["region"]
        found.append((uri, region["startLine"], region["startColumn"], result["ruleId"]))
    assert _by_file(found) == {n: _expected_positions(n) for n in FORMAT_SAMPLES}, proc.stdout
    rule_ids = {r["id"] for r in run["tool"]["driver"]["rules"]}
    assert {code for *_, code in found} <= rule_ids


def test_nonexistent_path_is_a_usage_error() -> None:
    proc = run_blocks("validate", "tests/specs/bad/no_such_file.yaml")
    assert "Traceback" not in proc.stdout + proc.stderr
    assert proc.returncode == 2, proc.stdout + proc.stderr


def test_nonexistent_path_next_to_a_bad_file_still_reports_the_bad_file() -> None:
    bad = BAD_DIR / "flow_unknown_needs.yaml"
    proc = run_blocks("validate", str(bad), "tests/specs/bad/no_such_file.yaml", "--format", "json")
    assert "Traceback" not in proc.stdout + proc.stderr
    assert proc.returncode == 2, proc.stdout + proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["missing"] == ["tests/specs/bad/no_such_file.yaml"]
    (report,) = doc["files"]
    assert [(d["line"], d["col"], d["code"]) for d in report["diagnostics"]] == _expected_positions(
        bad.name
    )


# ---------------------------------------------------------------------------------------
# both loader paths must place every diagnostic at the same position

# Appending `owner: ~` changes nothing in the document (`owner` is optional, `~` is null), but
# `~` is spelt differently by rapidyaml's JSON emitter, so the loader takes its exact
# (ruamel) path for the twin. Positions must not depend on which path a file happened to take.
TWIN_PREFIXES = (
    "flow_",
    "runbook_",
    "block_",
    "alerts_",
    "doc_missing",
    "doc_unknown",
    "doc_version",
)
_ROOT = (
    "the fast path places the top-level mapping at the value of its first key, the exact "
    "path at the mapping's start (column 1)"
)
TWIN_XFAIL: dict[str, str] = {}


def twin_params() -> Iterator[Any]:
    for path in corpus_files():
        if not path.name.startswith(TWIN_PREFIXES):
            continue
        marks = []
        if path.stem in TWIN_XFAIL:
            marks.append(pytest.mark.xfail(strict=True, reason=TWIN_XFAIL[path.stem]))
        yield pytest.param(path, id=path.stem, marks=marks)


def _positions(path: Path) -> list[tuple[int, int, str, str]]:
    from engine.validate import validate_file  # noqa: PLC0415

    report = validate_file(str(path), project_root=str(PROJECT_ROOT))
    return sorted((d.location.line, d.location.col, d.code, d.message) for d in report.diagnostics)


@pytest.mark.parametrize("path", list(twin_params()))
def test_exact_loader_path_gives_the_same_positions(path: Path, tmp_path: Path) -> None:
    text = path.read_bytes()
    assert b"owner:" not in text
    twin = tmp_path / path.name
    twin.write_bytes(text + (b"" if text.endswith(b"\n") else b"\n") + b"owner: ~\n")
    fast, exact = _positions(path), _positions(twin)
    assert fast, "the original must have diagnostics"
    assert exact == fast, f"fast path: {fast}\nexact path: {exact}"


# ---------------------------------------------------------------------------------------
# good controls: the YAML 1.2 core schema, on both loader paths

_YAML12_CONTROL = """\
version: 1
kind: flow
name: yaml12-control
description: 1.10
inputs:
  answer: {type: string, default: no, enum: [no, on, yes, off]}
steps:
  build:
    kind: shell
    run: [echo, on, yes, no, 1.10]
    retry: {attempts: 2, on: [timeout]}
"""
# `012` and `0o12` are spelt differently by the fast path's JSON emitter, so this variant
# takes the loader's exact path.
_YAML12_OCTAL = (
    "inputs:\n  count: {type: integer, default: 012}\n  mask: {type: integer, default: 0o12}\n"
)


@pytest.mark.parametrize("octal", [False, True], ids=["fast-path", "exact-path"])
def test_yaml12_core_schema_controls(tmp_path: Path, octal: bool) -> None:
    from engine.validate import load_spec  # noqa: PLC0415

    text = _YAML12_CONTROL
    if octal:
        text = text.replace("inputs:\n", _YAML12_OCTAL)
    path = tmp_path / "control.yaml"
    path.write_text(text, encoding="utf-8")
    proc = run_blocks("validate", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _, spec = load_spec(str(path))
    assert spec.description == "1.10"
    assert spec.inputs["answer"].default == "no"
    assert spec.inputs["answer"].enum == ["no", "on", "yes", "off"]
    build = spec.steps["build"]
    assert build.run == ["echo", "on", "yes", "no", "1.10"]
    assert build.retry is not None
    assert build.retry.on == ["timeout"]
    if octal:
        assert spec.inputs["count"].default == 12  # not octal (YAML 1.1 would say 10)
        assert spec.inputs["mask"].default == 10  # 0o12 is the 1.2 spelling of octal


def test_yaml12_leading_zero_in_string_field_keeps_its_text(tmp_path: Path) -> None:
    from engine.validate import load_spec  # noqa: PLC0415

    path = tmp_path / "control.yaml"
    path.write_text(
        "version: 1\nkind: flow\nname: leading-zero\nsteps:\n"
        "  build: {kind: shell, run: [chmod, 0755, out/run.sh]}\n",
        encoding="utf-8",
    )
    _, spec = load_spec(str(path))
    assert spec.steps["build"].run == ["chmod", "0755", "out/run.sh"]


def _nested(levels: int, *, exact: bool) -> bytes:
    """A flow whose deepest container is at nesting level `levels` (the document is level 1)."""
    lists = levels - 2  # the document and `outputs` are levels 1 and 2
    text = (
        "version: 1\nkind: flow\nname: nested\nsteps: {build: {kind: shell, run: [make]}}\n"
        f"outputs: {{x: {'[' * lists}{']' * lists}}}\n"
    )
    return (text + "owner: ~\n" if exact else text).encode()


@pytest.mark.parametrize(
    "exact",
    [
        pytest.param(False, id="fast-path"),
        pytest.param(True, id="exact-path"),
    ],
)
def test_nesting_at_exactly_the_depth_limit_is_accepted(exact: bool) -> None:
    from engine.loader import DEFAULT_LIMITS, load_document  # noqa: PLC0415

    doc = load_document("nested.yaml", _nested(DEFAULT_LIMITS.max_depth, exact=exact))
    assert doc.data["outputs"]["x"]
