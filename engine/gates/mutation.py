"""The `mutation` gate kind: runs mutmut 3 on `paths` and reports how many mutants the tests kill.

Owns: an isolated working copy under the gate's workdir (mutmut writes `mutants/`, its stats
and config there; the project is never touched), mutmut's configuration in that copy, the
mutant budget, running mutmut under the gate's timeout, reading its results, and the record.

How mutmut 3.8 is driven (facts of that version, which `pyproject.toml` pins):

- Configuration is `[tool.mutmut]` in the working directory's `pyproject.toml` (else
  `[mutmut]` in `setup.cfg`): `source_paths` (formerly `paths_to_mutate`, deprecated),
  `pytest_add_cli_args_test_selection` (the test paths; `tests_dir` is deprecated into it),
  `pytest_add_cli_args` (options for every pytest call), `also_copy` (what else goes into
  `mutants/`: by default only `tests/`, `test/`, `test*.py` and the config files),
  `use_git_change_detection`. The gate writes all of them, replacing a `[tool.mutmut]` the
  project may have.
- mutmut copies the sources into `mutants/`, runs pytest *inside* `mutants/` with it first on
  `sys.path`, and names each module by its path relative to where it runs (`src.` stripped).
  So it must run from the folder the tests import from: generated tests that say
  `import basel_capital` only find the mutated module when mutmut runs in the module's own
  folder. The gate runs it from the import root of `paths` (the folder above the outermost
  package, or the module's folder) widened to hold the test paths, and copies only that
  folder. Without a pytest configuration of its own, the copy gets an empty one, so pytest
  does not pick up some enclosing project's settings.
- `mutmut run [NAMES...]` has no budget option, but tests only the mutants it is given by name.
  The gate lists the mutants first with mutmut's own generator (what `mutmut run` would
  create, in source order), and over `max_mutants` it passes an evenly spaced selection.
- Results are in `mutants/<source path>.meta` (JSON): `exit_code_by_key` maps each mutant
  (`module.x_function__mutmut_N`, `module.xǁClassǁmethod__mutmut_N`) to the exit code of its
  test run; `mutmut results` prints the same, by status. Codes as mutmut's `stats.py` reads
  them: 1 and 3 killed; 0 survived; 36, 24, -24, 152 and 255 timeout; 5 and 33 no tests;
  34 skipped; 37 caught by type check; 2 interrupted; -9 and -11 segfault; None not checked;
  anything else suspicious.

Counting: `kill_rate = killed / (killed + survived + timeout)`: a timeout is a mutant the tests
did not kill in time, so it counts against (mutmut's own badge counts it as detected). A
mutant no test even runs ("no tests") is untested code: it counts as survived, or a suite that
tests one function of ten would score a perfect rate on that one. Every other status
(skipped, suspicious, segfault, type check, not checked) is excluded from the rate, counted
in `skipped` and listed by status in the evidence; `total` is all
mutants tested in this run. No metrics come from a run that failed or timed out (the
evidence keeps the partial counts), and there is no `kill_rate` without a killable mutant.
Must not: write into the project, or leave a mutmut worker running (the whole process group
is stopped on timeout and cancellation).
"""

from __future__ import annotations

import ast
import configparser
import difflib
import json
import os
import re
import shutil
import sys
import time
import tomllib
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from engine.errors import GateError
from engine.gates._common import (
    MAX_LISTED,
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
from engine.spec.flow import MutationGate

__all__ = ["MutationKind", "status_of"]

MAX_DIFFS = 50
"""Survivors shown with their diff; the rest are listed by name and place."""
WORKTREE = "worktree"
"""The working copy's folder inside the gate's workdir."""
_SKIP_DIRS = frozenset(
    {
        ".git",
        ".hg",
        ".svn",
        ".venv",
        "venv",
        ".tox",
        ".nox",
        "node_modules",
        "__pycache__",
        "mutants",
        ".mypy_cache",
        ".pytest_cache",
        ".ruff_cache",
        ".blocks",
    }
)
_TEST_FILE = re.compile(r"^(test_.*|.*_test|conftest)\.py$")
_STATUS_BY_CODE: dict[int | None, str] = {
    1: "killed",
    3: "killed",
    0: "survived",
    5: "no tests",
    2: "check was interrupted by user",
    None: "not checked",
    33: "no tests",
    34: "skipped",
    35: "suspicious",
    36: "timeout",
    37: "caught by type check",
    -24: "timeout",
    24: "timeout",
    152: "timeout",
    255: "timeout",
    -11: "segfault",
    -9: "segfault",
}
_KNOWN_FAILURES = (
    ("Failed to run clean test", "the tests fail on the unmutated code"),
    ("Unable to force test failures", "mutmut could not make the tests fail on purpose"),
    (
        "could not find any test case for any mutant",
        "the selected tests never call the mutated code",
    ),
    (
        "none match any mutant key",
        "the tests import the module under another name than mutmut gives it",
    ),
    (
        "failed to collect stats",
        "the tests fail on the unmutated code (pytest failed while mutmut recorded which "
        "tests run what)",
    ),
    ("invalid python syntax", "mutmut generated code that does not parse"),
)
_ENUMERATE = """\
import json, sys, warnings
warnings.simplefilter("ignore")
from mutmut.mutation.file_mutation import mutate_file_contents
from mutmut.utils.file_utils import walk_mutatable_files
from mutmut.utils.format_utils import get_mutant_name
files = []
for path in walk_mutatable_files():
    try:
        source = path.read_text(encoding="utf-8")
        names = mutate_file_contents(str(path), source).mutant_names
        files.append({"path": str(path), "mutants": [get_mutant_name(path, n) for n in names]})
    except Exception as exc:
        files.append({"path": str(path), "mutants": [], "error": f"{type(exc).__name__}: {exc}"})
with open(sys.argv[1], "w", encoding="utf-8") as fh:
    json.dump(files, fh)
"""


def status_of(code: Any) -> str:
    """mutmut 3.8's status for a mutant's recorded exit code."""
    if code is None or isinstance(code, int):
        return _STATUS_BY_CODE.get(code, "suspicious")
    return "suspicious"


class MutationKind:
    """mutmut's kill rate over a bounded set of mutants."""

    name: str = "mutation"

    async def measure(self, ctx: GateContext, gate: Any) -> Measurement:
        if not isinstance(gate, MutationGate):
            raise GateError(f"the mutation kind was given a {type(gate).__name__}")
        started = time.monotonic()
        command = tool_command("mutmut", "mutmut")
        version = tool_version("mutmut") or ""
        if not version.startswith("3."):
            raise GateError(
                f"the mutation gate drives mutmut 3 (its configuration keys and result files); "
                f"this environment has mutmut {version}"
            )
        evidence: dict[str, Any] = {
            "tool": "mutmut",
            "mutmut_version": version,
            "paths": list(gate.paths),
            "tests": list(gate.tests),
            "budget": gate.max_mutants,
            "timeout_s": gate.timeout,
            "counting": (
                "kill_rate = killed / (killed + survived + timeout); a mutant no test runs "
                "('no tests') counts as survived; any other status (skipped, suspicious, "
                "segfault, caught by type check, not checked) is excluded from the rate, "
                "counted in `skipped` and listed in `excluded`"
            ),
        }
        prepared = _prepare(ctx, gate, evidence)
        if isinstance(prepared, Measurement):
            return prepared
        evidence["inputs"] = inputs_digest(
            ctx, [project_path(ctx, p, "paths") for p in (*gate.paths, *gate.tests)]
        )
        tree, run_dir = prepared

        listed = await _enumerate(ctx, tree, _remaining(started, gate.timeout))
        generated = [name for entry in listed.get("files", []) for name in entry["mutants"]]
        errors = {e["path"]: e["error"] for e in listed.get("files", []) if e.get("error")}
        if errors:
            evidence["listing_errors"] = errors
        budget_hit = len(generated) > gate.max_mutants
        chosen = _evenly(generated, gate.max_mutants) if budget_hit else list(generated)
        evidence.update(
            generated=None if listed.get("problem") else len(generated),
            budget_hit=budget_hit,
            selection=(
                f"{len(chosen)} of {len(generated)} mutants, evenly spaced in source order"
                if budget_hit
                else "every generated mutant"
            ),
        )
        if listed.get("problem"):
            evidence["listing_problem"] = listed["problem"]
        elif not generated:
            evidence["reason"] = "mutmut generates no mutant for these paths"
            nothing = {"killed": 0, "survived": 0, "timeout": 0, "skipped": 0, "total": 0}
            return measurement(
                ctx, nothing, evidence, "no mutants: nothing in these paths that mutmut mutates"
            )

        run = await run_tool(
            ctx,
            [*command, "run", *(chosen if budget_hit else [])],
            cwd=tree,
            log=ctx.workdir / "mutmut.log",
            timeout=_remaining(started, gate.timeout),
        )
        evidence["run"] = run.record()
        codes = _read_results(tree)
        # what this run tested: the chosen mutants, or, unlisted, whatever mutmut recorded
        tested = list(codes) if listed.get("problem") else chosen
        statuses = {name: status_of(codes.get(name)) for name in tested}
        tally = _tally(ctx, statuses, tree, run_dir, evidence)
        if run.timed_out or run.returncode != 0:
            why = (
                f"mutmut did not finish within the {gate.timeout:g}s timeout"
                if run.timed_out
                else f"mutmut exited with code {run.returncode}: {_failure_reason(run.tail)}"
            )
            evidence.update(reason=why, partial_counts=tally, output_tail=run.tail)
            done = sum(1 for s in statuses.values() if s != "not checked")
            return measurement(
                ctx, {}, evidence, f"no kill rate: {why} ({done} of {len(statuses)} mutants run)"
            )
        killed, survived, timed = tally["killed"], tally["survived"], tally["timeout"]
        metrics: dict[str, Any] = dict(tally)
        rated = killed + survived + timed
        if rated:
            metrics["kill_rate"] = killed / rated
        else:
            evidence["reason"] = "no mutant was killed, survived or timed out: nothing to rate"
        rate = f"kill rate {killed / rated:.2f}" if rated else "no kill rate"
        ran = (
            f"{len(chosen)} of {len(generated)} generated mutants run "
            f"(budget {gate.max_mutants} hit)"
            if budget_hit
            else f"all {len(statuses)} generated mutants run (budget {gate.max_mutants})"
        )
        summary = (
            f"{rate}: {killed} of {rated} mutants killed ({survived} survived, {timed} timed "
            f"out); {tally['skipped']} excluded; {ran}"
        )
        return measurement(ctx, metrics, evidence, summary)


def _prepare(
    ctx: GateContext, gate: MutationGate, evidence: dict[str, Any]
) -> Measurement | tuple[Path, Path]:
    """The working copy and the folder it copies, or a measurement saying why there is none."""
    sources = [project_path(ctx, p, "paths") for p in gate.paths]
    missing = [rel for rel, p in zip(gate.paths, sources, strict=True) if not p.exists()]
    if missing:
        evidence["reason"] = f"not found: {', '.join(missing)}"
        return measurement(
            ctx, {}, evidence, f"nothing to mutate: {', '.join(missing)} does not exist"
        )
    for rel, path in zip(gate.paths, sources, strict=True):
        if path.is_file() and path.suffix != ".py":
            raise GateError(f"`paths: {rel}` is not a Python file (mutmut mutates .py files)")
    selection, options, missing_tests = _split_tests(ctx, gate.tests)
    if missing_tests:
        evidence["reason"] = f"test paths not found: {', '.join(missing_tests)}"
        return measurement(
            ctx, {}, evidence, f"no tests to run: {', '.join(missing_tests)} does not exist"
        )
    test_paths = [p for p, _ in selection]
    run_dir = _run_folder(ctx, sources, test_paths)
    source_rels = _source_paths(run_dir, sources, test_paths)
    if not source_rels:
        raise GateError(f"no Python module to mutate in {', '.join(gate.paths)}")
    tree = ctx.workdir / WORKTREE
    _fresh_copy(ctx, run_dir, tree)
    tests_rel = [_relative_arg(run_dir, path, suffix) for path, suffix in selection]
    evidence.update(
        run_folder=relative(ctx, run_dir) or ".",
        source_paths=source_rels,
        test_selection=tests_rel,
        pytest_options=options,
        config=_write_config(tree, source_rels, tests_rel, options),
    )
    return tree, run_dir


def _tally(
    ctx: GateContext,
    statuses: dict[str, str],
    tree: Path,
    run_dir: Path,
    evidence: dict[str, Any],
) -> dict[str, int]:
    """The counts by metric, with the survivors, timeouts and exclusions in the evidence."""
    counts = Counter(statuses.values())
    excluded = {
        status: sorted(n for n, s in statuses.items() if s == status)
        for status in sorted(counts)
        if status not in ("killed", "survived", "timeout", "no tests")
    }
    survivors = sorted(
        (n for n, s in statuses.items() if s in ("survived", "no tests")), key=_mutant_order
    )
    evidence.update(
        by_status=dict(sorted(counts.items())),
        excluded={k: capped(sorted(v, key=_mutant_order))[0] for k, v in excluded.items()},
        survivors=_survivors(ctx, tree, run_dir, survivors),
        survivors_omitted=max(0, len(survivors) - MAX_LISTED),
        timeouts=capped(
            sorted((n for n, s in statuses.items() if s == "timeout"), key=_mutant_order)
        )[0],
    )
    return {
        "killed": counts["killed"],
        "survived": counts["survived"] + counts["no tests"],
        "timeout": counts["timeout"],
        "skipped": sum(len(v) for v in excluded.values()),
        "total": len(statuses),
    }


def _mutant_order(name: str) -> tuple[str, int, str]:
    """`m.x_f__mutmut_2` before `m.x_f__mutmut_10`."""
    function, _, number = name.partition("__mutmut_")
    return function, int(number) if number.isdigit() else 0, name


def _remaining(started: float, timeout: float) -> float:
    return max(0.001, timeout - (time.monotonic() - started))


def _split_tests(
    ctx: GateContext, tests: Sequence[str]
) -> tuple[list[tuple[Path, str]], list[str], list[str]]:
    """The test arguments that name paths in the project (with any `::node` suffix), the
    pytest options (everything else, in order: an option's value follows it), and the test
    paths that do not exist."""
    selection: list[tuple[Path, str]] = []
    options: list[str] = []
    missing: list[str] = []
    for arg in tests:
        if arg.startswith("-"):
            options.append(arg)
            continue
        head, sep, tail = arg.partition("::")
        path = project_path(ctx, head, "tests")
        if path.exists():
            selection.append((path, sep + tail))
        elif options and options[-1].startswith("-") and "=" not in options[-1]:
            options.append(arg)  # the value of the option before it (`-k expr`)
        else:
            missing.append(arg)
    return selection, options, missing


def _import_root(path: Path, root: Path) -> Path:
    """The folder a module is imported from: above its outermost package."""
    folder = path if path.is_dir() else path.parent
    while folder != root and (folder / "__init__.py").is_file():
        folder = folder.parent
    return folder


def _run_folder(ctx: GateContext, sources: Sequence[Path], tests: Sequence[Path]) -> Path:
    root = ctx.project_root.resolve()
    folders = [_import_root(s, root) for s in sources]
    folders += [t if t.is_dir() else t.parent for t in tests]
    return Path(os.path.commonpath([str(f) for f in folders]))


def _source_paths(run_dir: Path, sources: Sequence[Path], tests: Sequence[Path]) -> list[str]:
    """mutmut's `source_paths`, relative to the run folder. A source that *is* the run folder
    (a folder of modules) stands for its modules and packages, tests and conftest excluded."""
    out: list[str] = []
    for source in sources:
        if source != run_dir:
            out.append(source.relative_to(run_dir).as_posix())
            continue
        for child in sorted(source.iterdir()):
            if child.name in _SKIP_DIRS or any(child == t or child in t.parents for t in tests):
                continue
            module = child.is_file() and child.suffix == ".py"
            package = child.is_dir() and (child / "__init__.py").is_file()
            if (module and not _TEST_FILE.match(child.name)) or (
                package and child.name not in ("tests", "test")
            ):
                out.append(child.name)
    return sorted(set(out))


def _relative_arg(run_dir: Path, path: Path, suffix: str) -> str:
    rel = path.relative_to(run_dir).as_posix() if path != run_dir else "."
    return rel + suffix


def _fresh_copy(ctx: GateContext, run_dir: Path, tree: Path) -> None:
    """Copy the run folder into `tree`, without VCS, caches, environments, earlier mutants, or
    the folder holding the gate's own workdir (it may live inside the project)."""
    workdir = ctx.workdir.resolve()
    if tree.exists():
        shutil.rmtree(tree)

    def ignore(folder: str, names: list[str]) -> set[str]:
        skipped = set()
        for name in names:
            path = Path(folder, name).resolve()
            if (
                name in _SKIP_DIRS
                or name.endswith(".egg-info")
                or path == workdir
                or (path in workdir.parents)
            ):
                skipped.add(name)
        return skipped

    shutil.copytree(run_dir, tree, symlinks=True, ignore=ignore)


def _toml_list(values: Iterable[str]) -> str:
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"


def _write_config(
    tree: Path, sources: Sequence[str], tests: Sequence[str], options: Sequence[str]
) -> dict[str, Any]:
    """Write `[tool.mutmut]` into the copy's pyproject.toml; return what the record shows."""
    pyproject = tree / "pyproject.toml"
    text = pyproject.read_text(encoding="utf-8") if pyproject.is_file() else ""
    try:
        existing = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise GateError(f"pyproject.toml in the run folder is not TOML: {exc}") from None
    replaced = "mutmut" in existing.get("tool", {})
    if replaced:
        text = _drop_tables(text, re.compile(r"^\s*\[\s*tool\s*\.\s*mutmut\s*[.\]]"))
    also_copy = sorted(
        entry.name
        for entry in tree.iterdir()
        if entry.name not in ("mutants", "pyproject.toml", "setup.cfg", *sources)
    )
    table = {
        "source_paths": list(sources),
        "pytest_add_cli_args_test_selection": list(tests),
        "pytest_add_cli_args": list(options),
        "also_copy": also_copy,
        "use_git_change_detection": False,
    }
    block = ["", "[tool.mutmut]"]
    block += [
        f"{key} = {_toml_list(value) if isinstance(value, list) else str(value).lower()}"
        for key, value in table.items()
    ]
    pytest_config = _pytest_config(tree, existing)
    if pytest_config is None:
        # stop pytest's upward search for a configuration at the copy
        block += ["", "[tool.pytest.ini_options]"]
    text = text.rstrip("\n") + "\n" + "\n".join(block) + "\n"
    pyproject.write_text(text, encoding="utf-8")
    written = tomllib.loads(text).get("tool", {}).get("mutmut")
    if written != table:
        raise GateError(
            "could not replace the [tool.mutmut] table of the run folder's pyproject.toml "
            "(dotted keys?): move mutmut's settings into one [tool.mutmut] table"
        )
    return {
        "file": "pyproject.toml",
        "tool.mutmut": table,
        "replaced_project_table": replaced,
        "pytest_config": pytest_config or "none in the run folder: an empty one was added",
    }


def _drop_tables(text: str, header: re.Pattern[str]) -> str:
    kept: list[str] = []
    dropping = False
    for line in text.splitlines():
        if re.match(r"^\s*\[", line):
            dropping = bool(header.match(line))
        if not dropping:
            kept.append(line)
    return "\n".join(kept) + "\n"


def _pytest_config(tree: Path, pyproject: dict[str, Any]) -> str | None:
    """Which pytest configuration file of the run folder pytest would use, if any."""
    for name in ("pytest.ini", ".pytest.ini"):
        if (tree / name).is_file():
            return name
    tool = pyproject.get("tool", {})
    if isinstance(tool.get("pytest"), dict):
        return "pyproject.toml"
    for name, section in (("tox.ini", "pytest"), ("setup.cfg", "tool:pytest")):
        if (tree / name).is_file():
            parser = configparser.ConfigParser(interpolation=None)
            try:
                parser.read(tree / name, encoding="utf-8")
            except configparser.Error:
                continue
            if parser.has_section(section):
                return name
    return None


async def _enumerate(ctx: GateContext, tree: Path, timeout: float) -> dict[str, Any]:
    """The mutants `mutmut run` would create, per file, in source order (mutmut's generator)."""
    out = ctx.workdir / "mutants-listed.json"
    out.unlink(missing_ok=True)
    run = await run_tool(
        ctx,
        [sys.executable, "-c", _ENUMERATE, str(out)],
        cwd=tree,
        log=ctx.workdir / "mutmut-list.log",
        timeout=timeout,
    )
    if run.returncode != 0 or not out.is_file():
        return {
            "problem": (
                "could not list the mutants first (every generated mutant is run, the budget "
                f"is not applied): exit {run.returncode}: {run.tail[-500:]}"
            )
        }
    try:
        files = json.loads(out.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return {"problem": f"could not read the mutant list: {exc}"}
    return {"files": files}


def _evenly(names: Sequence[str], budget: int) -> list[str]:
    return [names[(i * len(names)) // budget] for i in range(budget)]


def _read_results(tree: Path) -> dict[str, Any]:
    codes: dict[str, Any] = {}
    for meta in sorted((tree / "mutants").rglob("*.meta")):
        try:
            data = json.loads(meta.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        table = data.get("exit_code_by_key") if isinstance(data, dict) else None
        if isinstance(table, dict):
            codes.update(table)
    return codes


def _failure_reason(tail: str) -> str:
    for marker, meaning in _KNOWN_FAILURES:
        if marker.lower() in tail.lower():
            return meaning
    lines = [line for line in tail.splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no output"


def _survivors(
    ctx: GateContext, tree: Path, run_dir: Path, names: Sequence[str]
) -> list[dict[str, Any]]:
    """Each survivor with its file:line and, for the first `MAX_DIFFS`, its diff."""
    by_module = _module_files(tree)
    parsed: dict[str, tuple[dict[str, tuple[int, list[str]]], dict[str, int]]] = {}
    out = []
    for index, name in enumerate(names[:MAX_LISTED]):
        mangled, _, _number = name.partition("__mutmut_")
        module, _, function_key = mangled.rpartition(".")
        entry: dict[str, Any] = {"mutant": name, "function": _display_function(function_key)}
        rel = by_module.get(module)
        if rel is None:
            out.append(entry)
            continue
        entry["file"] = relative(ctx, run_dir / rel)
        if rel not in parsed:
            parsed[rel] = _parse_pair(tree, rel)
        generated, originals = parsed[rel]
        orig = generated.get(f"{function_key}__mutmut_orig")
        mutant = generated.get(name.rpartition(".")[2])
        line = originals.get(function_key)
        if orig is None or mutant is None:
            entry["line"] = line
            out.append(entry)
            continue
        a = _renamed(orig[1], f"{function_key}__mutmut_orig", _plain_name(function_key))
        b = _renamed(mutant[1], name.rpartition(".")[2], _plain_name(function_key))
        offset = next(
            (op[1] for op in difflib.SequenceMatcher(a=a, b=b).get_opcodes() if op[0] != "equal"),
            0,
        )
        entry["line"] = (line + offset) if line is not None else None
        if index < MAX_DIFFS:
            entry["diff"] = "\n".join(
                difflib.unified_diff(
                    a, b, f"a/{entry['file']}", f"b/{entry['file']}", n=1, lineterm=""
                )
            )
        out.append(entry)
    return out


def _module_files(tree: Path) -> dict[str, str]:
    """mutmut's module name of each mutated file (its `.meta`), to that file's path."""
    mutants = tree / "mutants"
    out = {}
    for meta in mutants.rglob("*.meta"):
        rel = meta.relative_to(mutants).as_posix().removesuffix(".meta")
        module = rel.removesuffix(".py").replace("/", ".").removeprefix("src.")
        out[module.replace(".__init__", "")] = rel
    return out


def _parse_pair(tree: Path, rel: str) -> tuple[dict[str, tuple[int, list[str]]], dict[str, int]]:
    """The generated functions of the mutated file (name -> first line, source lines) and the
    def line of each function of the original, keyed the way mutmut keys them."""
    generated: dict[str, tuple[int, list[str]]] = {}
    originals: dict[str, int] = {}
    for path, sink in ((tree / "mutants" / rel, "generated"), (tree / rel, "original")):
        try:
            source = path.read_text(encoding="utf-8")
            module = ast.parse(source)
        except (OSError, SyntaxError, ValueError):
            continue
        lines = source.splitlines()
        for node, owner in _functions(module):
            if sink == "generated":
                generated[node.name] = (node.lineno, lines[node.lineno - 1 : node.end_lineno])
            else:
                key = f"xǁ{owner}ǁ{node.name}" if owner else f"x_{node.name}"
                originals[key] = node.lineno
    return generated, originals


def _functions(module: ast.Module) -> Iterable[tuple[ast.FunctionDef | ast.AsyncFunctionDef, str]]:
    for node in module.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node, ""
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                    yield item, node.name


def _plain_name(function_key: str) -> str:
    return function_key.rsplit("ǁ", 1)[-1] if "ǁ" in function_key else function_key[2:]


def _display_function(function_key: str) -> str:
    if "ǁ" in function_key:
        _, owner, method = function_key.split("ǁ", 2)
        return f"{owner}.{method}"
    return function_key.removeprefix("x_")


def _renamed(lines: list[str], generated: str, plain: str) -> list[str]:
    if not lines:
        return lines
    return [lines[0].replace(generated, plain, 1), *lines[1:]]
