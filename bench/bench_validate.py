"""Benchmark `blocks validate` against check-jsonschema on a generated 5,000-step flow.

    .venv/bin/python bench/bench_validate.py [--steps 5000] [--repeat 5] [--reference-repeat 2]
                                             [--write-docs] [--profile]

One run, side by side on the same machine:

* generates the flow (bench/gen_flow.py) into bench/out/validate-<steps>/ (git-ignored);
* times, each as its own process (wall clock min and median, CPU time, and peak RSS through
  GNU time, else `os.wait4`):
  `blocks validate big.yaml`; `check-jsonschema --schemafile schemas/flow.schema.json
  big.yaml`; `blocks validate` on a copy with one semantic error in the last step (its
  reported line:col is checked); the cold start of `blocks validate pipelines runbooks`, with
  and without a bytecode cache; and `python -c pass`, the interpreter floor;
* splits `load_file` + `check_loaded` into import / load / schema / semantic checks (CPU
  time, inside fresh processes so caches start cold, as in the CLI), and repeats that at a
  quarter and half the size to show how each phase scales;
* prints a Markdown report and the ratio check-jsonschema / blocks (judged on CPU time: both
  tools are single-threaded, so it equals the wall-time ratio of an idle machine, and other
  engineers' load on a shared machine disturbs it far less); `--write-docs` puts it in
  docs/benchmarks.md between the `bench:validate` marker comments (and refreshes the machine
  block), leaving every other section alone. `--profile` adds the top of a cProfile of one
  `blocks validate` process.

Children run with their bytecode cached under bench/out/pycache (PYTHONPYCACHEPREFIX), after an
untimed warm-up on a small flow, so the figures do not depend on whether this shell sets
PYTHONDONTWRITEBYTECODE; the row "no bytecode cache" shows the other case. Timing is never
asserted anywhere: this is not a test.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)

from gen_flow import DEFAULT_STEPS, write_project  # noqa: E402

DOCS = os.path.join(ROOT, "docs", "benchmarks.md")
SCHEMA = os.path.join(ROOT, "schemas", "flow.schema.json")
OUT = os.path.join(HERE, "out")
BIN = os.path.dirname(sys.executable)  # the venv's bin/ (not resolved: the venv is the point)
MARK_START, MARK_END = "<!-- bench:validate:start -->", "<!-- bench:validate:end -->"
MACHINE_START, MACHINE_END = "<!-- bench:machine:start -->", "<!-- bench:machine:end -->"
GOAL = 10.0


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def rel(path: str) -> str:
    return os.path.relpath(path, ROOT)


# ---------------------------------------------------------------------------------------
# child processes


@dataclass
class Run:
    wall: float
    cpu: float  # user + system seconds of the child
    code: int
    rss_mib: float
    stdout: str
    stderr: str


@dataclass
class Case:
    key: str
    label: str
    argv: list[str]
    runs: int
    env: dict[str, str] | None = None
    results: list[Run] = field(default_factory=list)

    @property
    def walls(self) -> list[float]:
        return [r.wall for r in self.results]

    @property
    def median(self) -> float:
        return statistics.median(self.walls)

    @property
    def best(self) -> float:
        return min(self.walls)

    @property
    def cpu_median(self) -> float:
        return statistics.median(r.cpu for r in self.results)

    @property
    def rss(self) -> float:
        return max(r.rss_mib for r in self.results)

    @property
    def codes(self) -> set[int]:
        return {r.code for r in self.results}

    def shown(self) -> str:
        return " ".join(_shown_arg(a) for a in self.argv)


def _shown_arg(arg: str) -> str:
    if os.path.isabs(arg):
        return rel(arg)
    return arg


TIME = "/usr/bin/time"  # GNU time: reports the child's own peak RSS


def run_child(argv: Sequence[str], env: dict[str, str]) -> Run:
    """Run one process from the repository root; wall time and its own peak RSS.

    Through GNU time when present: a child forked straight from this (big) process would
    report this process's RSS as its peak if that is larger, since Linux carries the peak
    across exec. Without GNU time, `os.wait4` gives the rusage, with that caveat.
    """
    use_time = os.access(TIME, os.X_OK)
    with (
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        tempfile.NamedTemporaryFile("r", suffix=".rss") as rss,
    ):
        command = [TIME, "-f", "%M", "-o", rss.name, *argv] if use_time else list(argv)
        start = time.perf_counter()
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        peak_kib = float(usage.ru_maxrss)  # KiB on Linux
        if use_time:
            text = rss.read().strip().splitlines()
            peak_kib = float(text[-1]) if text and text[-1].isdigit() else float("nan")
        out.seek(0)
        err.seek(0)
        return Run(
            wall,
            usage.ru_utime + usage.ru_stime,  # GNU time's rusage includes its child's
            proc.returncode,
            peak_kib / 1024,
            out.read().decode(errors="replace"),
            err.read().decode(errors="replace"),
        )


def child_env(*, bytecode: bool) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONPYCACHEPREFIX", None)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    if bytecode:
        env["PYTHONPYCACHEPREFIX"] = os.path.join(OUT, "pycache")
    else:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env["PYTHONPYCACHEPREFIX"] = os.path.join(OUT, "pycache-empty")  # never written
    return env


def tool(name: str) -> str:
    path = os.path.join(BIN, name)
    if not os.path.exists(path):
        sys.exit(f"{path} not found: run with the project's venv python (.venv/bin/python)")
    return path


# ---------------------------------------------------------------------------------------
# inputs


@dataclass(frozen=True)
class Broken:
    """A copy of the flow with one known error, and where it may be reported."""

    path: str
    line: int
    columns: tuple[int, ...]  # the `when` value's start, or the reference inside it
    culprit: str


def broken_copy(flow: str) -> Broken:
    """A copy of the flow whose last step reads a step it does not wait for."""
    with open(flow, encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    publish = [ln.strip().rstrip(":") for ln in lines if re.match(r"^  publish_\w+:$", ln)]
    start = lines.index("  announce:")
    index = next(i for i in range(start, len(lines)) if lines[i].startswith("    when: "))
    # publish steps are not upstream of announce (release notes wait for reports only)
    culprit = publish[-1]
    lines[index] = lines[index][:-1] + f" && steps.{culprit}.status == 'succeeded'\""
    path = os.path.join(os.path.dirname(flow), "big_broken.yaml")
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        fh.write("\n".join(lines))
    text = lines[index]
    return Broken(
        path, index + 1, (text.index('"') + 1, text.index(f"steps.{culprit}") + 1), culprit
    )


def reference_schema(env: dict[str, str]) -> str:
    """The published schema if check-jsonschema resolves it, else a self-contained copy."""
    probe = os.path.join(OUT, "validate-probe")
    small = write_project(probe, 8)
    run = run_child([tool("check-jsonschema"), "--schemafile", SCHEMA, small], env)
    if run.code == 0:
        return SCHEMA
    log(f"check-jsonschema could not use {rel(SCHEMA)} (exit {run.code}): {run.stdout}{run.stderr}")
    with open(SCHEMA, encoding="utf-8") as fh:
        schema = json.load(fh)
    schema.pop("$id", None)  # every $ref is local (#/$defs/...): resolve against the file
    copy = os.path.join(OUT, "flow.schema.selfcontained.json")
    with open(copy, "w", encoding="utf-8") as fh:
        json.dump(schema, fh, indent=2)
    run = run_child([tool("check-jsonschema"), "--schemafile", copy, small], env)
    if run.code != 0:
        sys.exit(f"check-jsonschema rejects the small flow even with {copy}:\n{run.stdout}")
    return copy


# ---------------------------------------------------------------------------------------
# in-process breakdown


def _stats(values: list[float]) -> tuple[float, float]:
    return min(values), statistics.median(values)


# Runs in a fresh process per repetition, so the expression parser's and the template
# splitter's caches start empty, as in `blocks validate`. check_loaded is split at
# check_document (schema = check_loaded - check_document). CPU time of the process: a busy
# machine disturbs it much less than wall time, and the work is single-threaded.
PHASES = r"""
import json, sys, time
t0 = time.process_time()
import engine.validate as validate
from engine.loader import load_file
t1 = time.process_time()
semantic = []
real = validate.check_document
def timed(*args, **kwargs):
    start = time.process_time()
    try:
        return real(*args, **kwargs)
    finally:
        semantic.append(time.process_time() - start)
validate.check_document = timed
t2 = time.process_time()
doc = load_file(sys.argv[1])
t3 = time.process_time()
spec, problems = validate.check_loaded(doc)
t4 = time.process_time()
last = list(doc.data["steps"])[-1]
t5 = time.process_time()
doc.locate(("steps", last, "when"))  # the first position asked for, as on an error
t6 = time.process_time()
print(json.dumps({
    "imports": t1 - t0, "load": t3 - t2, "schema": t4 - t3 - semantic[0],
    "semantic": semantic[0], "total": t4 - t2, "locate": t6 - t5,
    "ok": spec is not None and not problems,
}))
"""


def breakdown(flow: str, repeat: int) -> dict[str, tuple[float, float]]:
    """Import, load_file, schema and semantic checks, one fresh process per repetition."""
    found: dict[str, list[float]] = {}
    for _ in range(repeat):
        run = run_child([tool("python"), "-c", PHASES, flow], child_env(bytecode=True))
        if run.code != 0:
            sys.exit(f"the in-process breakdown failed:\n{run.stderr}")
        phases = json.loads(run.stdout.strip().splitlines()[-1])
        if not phases.pop("ok"):
            sys.exit(f"check_loaded found problems in {rel(flow)}")
        for key, value in phases.items():
            found.setdefault(key, []).append(value)
    return {k: _stats(v) for k, v in found.items()}


def profile(flow: str, top: int = 30) -> str:
    """The top of a cProfile of the whole `blocks validate` process, by own time."""
    run = run_child(
        [tool("python"), "-m", "cProfile", "-s", "tottime", tool("blocks"), "validate", flow],
        child_env(bytecode=True),
    )
    lines = run.stdout.splitlines()
    head = next((i for i, ln in enumerate(lines) if "ncalls" in ln), 0)
    return "\n".join(lines[max(head - 4, 0) : head + 1 + top]) + "\n"


# ---------------------------------------------------------------------------------------
# report


def machine() -> dict[str, str]:
    model = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    versions = []
    for dist in (
        "rapidyaml",
        "pydantic",
        "pydantic_core",
        "check-jsonschema",
        "jsonschema",
        "ruamel.yaml",
    ):
        try:
            versions.append(f"{dist} {importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{dist} (not installed)")
    return {
        "cpu": f"{os.cpu_count()} × {model}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "os": f"{platform.system()} {platform.release()}",
        "versions": ", ".join(versions),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def fmt_s(seconds: float) -> str:
    return f"{seconds:.2f} s" if seconds >= 0.1 else f"{seconds * 1000:.0f} ms"


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f} ms" if seconds < 0.01 else f"{seconds * 1000:,.0f} ms"


def report(
    ctx: dict[str, Any], cases: dict[str, Case], parts: dict[str, tuple[float, float]]
) -> tuple[str, float]:
    blocks, ref = cases["blocks"], cases["reference"]
    ratio_cpu = ref.cpu_median / blocks.cpu_median
    ratio_wall = ref.median / blocks.median
    ratio_best = ref.best / blocks.best
    notes = ctx["notes"]
    out = [
        f"Flow: `{rel(ctx['flow'])}`, {ctx['steps']:,} steps, {ctx['bytes']:,} bytes "
        f"(`bench/gen_flow.py`: {ctx['kinds']}; {ctx['gates']} gates; "
        f"{ctx['templates']:,} `${{{{ }}}}` templates and {ctx['whens']:,} `when` conditions).",
        f"Recorded {ctx['machine']['date']} on {ctx['machine']['cpu']}, "
        f"{ctx['machine']['python']}; load average {ctx['load'][0]:.2f} before the run, "
        f"{ctx['load'][1]:.2f} after.",
        "",
        "| Run | Command | Runs | Wall min | Wall median | CPU median | Peak RSS | Exit |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for case in cases.values():
        codes = ", ".join(str(c) for c in sorted(case.codes))
        extra = ctx["exit_notes"].get(case.key, "")
        out.append(
            f"| {case.label} | `{case.shown()}` | {len(case.results)} | "
            f"{fmt_s(case.best)} | {fmt_s(case.median)} | {fmt_s(case.cpu_median)} | "
            f"{case.rss:.0f} MiB | {codes}{extra} |"
        )
    verdict = "met" if ratio_cpu >= GOAL else "not met"
    busy = max(ratio_wall, ratio_cpu) / min(ratio_wall, ratio_cpu) > 1.25
    out += [
        "",
        f"**check-jsonschema / blocks: {ratio_cpu:.1f}× on the median CPU time "
        f"(user + system). Goal ≥ {GOAL:.0f}×: {verdict}.** Wall time: {ratio_wall:.1f}× on "
        f"the medians, {ratio_best:.1f}× on the best runs. Both tools are single-threaded, so "
        "on an idle machine wall time equals CPU time; on a shared one, wall time also counts "
        "waiting for other processes, which is why the verdict uses CPU time"
        + (
            " (in this run the machine was busy: the wall ratios are not reliable)."
            if busy
            else "."
        ),
        "blocks also runs the semantic checks and reports positions; check-jsonschema checks "
        "the schema only.",
        "",
        f"Where the time of `blocks validate` goes: CPU time of each phase, timed inside "
        f"{ctx['repeat']} fresh processes (so caches start cold, as in the CLI); `check_loaded` "
        "is split at `check_document`:",
        "",
        "| Phase | What | Min | Median |",
        "|---|---|---:|---:|",
        *[
            f"| {name} | {what} | {fmt_ms(parts[key][0])} | {fmt_ms(parts[key][1])} |"
            for key, name, what in PHASE_ROWS
        ],
        "",
        "The rest of the `blocks validate` row is the interpreter, the CLI's own imports "
        "(typer) and output.",
        "",
        "How the phases grow with the number of steps (same generator, min of 2 fresh "
        "processes each; the last row is the table above):",
        "",
        "| Steps | load | schema | semantic | semantic per step |",
        "|---:|---:|---:|---:|---:|",
        *[
            f"| {n:,} | {fmt_ms(p['load'][0])} | {fmt_ms(p['schema'][0])} | "
            f"{fmt_ms(p['semantic'][0])} | {p['semantic'][0] / n * 1e6:,.0f} µs |"
            for n, p in ctx["scaling"]
        ],
    ]
    if notes:
        out += ["", *[f"Note: {n}" for n in notes]]
    return "\n".join(out) + "\n", ratio_cpu


PHASE_ROWS = (
    ("imports", "import", "`import engine.validate` (the spec models are built here)"),
    ("load", "load", "`engine.loader.load_file`: fast-path guards, rapidyaml, `json.loads`"),
    ("schema", "schema", "`Flow.model_validate` (pydantic-core)"),
    ("semantic", "semantic", "`engine.checks.check_document`: references, cycles, CEL, files"),
    ("total", "load + checks", "`load_file` + `check_loaded`"),
    ("locate", "one position", "`LoadedDocument.locate` of the last step's `when`, first call"),
)


def machine_block(info: dict[str, str]) -> str:
    return (
        f"- CPU: {info['cpu']}\n- Python: {info['python']} ({info['os']})\n"
        f"- Libraries: {info['versions']}\n- Last recorded: {info['date']}\n"
    )


DOCS_SKELETON = f"""# Benchmarks

How fast the engine is on inputs much larger than real specs, measured side by side with a
reference tool in the same run. Timings are never asserted by the test suite; each section
says the command that produced it, so anyone can re-run it. Wall-clock figures come from a
shared machine and move by ±20 % from run to run: compare rows of the same run, not runs.

Machine of the last recorded run:

{MACHINE_START}
{MACHINE_END}

## Validate

{MARK_START}
{MARK_END}
"""


def replace_between(text: str, start: str, end: str, body: str) -> str:
    i, j = text.find(start), text.find(end)
    if i < 0 or j < i:
        raise ValueError(f"{rel(DOCS)} has no {start} ... {end} markers")
    return text[: i + len(start)] + "\n" + body.rstrip("\n") + "\n" + text[j:]


def write_docs(section: str, info: dict[str, str]) -> None:
    if os.path.exists(DOCS):
        with open(DOCS, encoding="utf-8") as fh:
            text = fh.read()
    else:
        text = DOCS_SKELETON
    if MARK_START not in text:
        text = text.rstrip("\n") + f"\n\n## Validate\n\n{MARK_START}\n{MARK_END}\n"
    text = replace_between(text, MARK_START, MARK_END, section)
    if MACHINE_START in text:
        text = replace_between(text, MACHINE_START, MACHINE_END, machine_block(info))
    with open(DOCS, "w", encoding="utf-8", newline="\n") as fh:
        fh.write(text)
    log(f"wrote {rel(DOCS)}")


# ---------------------------------------------------------------------------------------


def flow_facts(flow: str) -> dict[str, Any]:
    from engine.loader import load_file  # noqa: PLC0415

    data = load_file(flow).data
    kinds: dict[str, int] = {}
    for step in data["steps"].values():
        kinds[step["kind"]] = kinds.get(step["kind"], 0) + 1
    with open(flow, encoding="utf-8") as fh:
        text = fh.read()
    return {
        "kinds": ", ".join(f"{n:,} {k}" for k, n in sorted(kinds.items(), key=lambda kv: -kv[1])),
        "gates": len(data.get("gates", {})),
        "templates": text.count("${{"),
        "whens": len(re.findall(r"^\s+when: ", text, re.MULTILINE)),
    }


def run_cases(cases: list[Case], log_each: Callable[[Case, Run], None]) -> None:
    """Round-robin, so a burst of load on a shared machine hits every case alike."""
    for i in range(max(c.runs for c in cases)):
        for case in cases:
            if i < case.runs:
                result = run_child(case.argv, case.env or child_env(bytecode=True))
                case.results.append(result)
                log_each(case, result)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--steps",
        type=int,
        default=DEFAULT_STEPS,
        help=f"steps in the generated flow (default {DEFAULT_STEPS})",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=5,
        help="runs of each blocks / python case and in-process (default 5)",
    )
    parser.add_argument(
        "--reference-repeat",
        type=int,
        default=2,
        help="runs of check-jsonschema, ~25 s each at 5,000 steps (default 2)",
    )
    parser.add_argument(
        "--write-docs",
        action="store_true",
        help="put the report into docs/benchmarks.md between its markers",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also print the top of a cProfile of one blocks validate process",
    )
    args = parser.parse_args()
    if args.repeat < 1 or args.reference_repeat < 1:
        parser.error("repetitions must be at least 1")
    return args


def build_cases(args: argparse.Namespace, flow: str, broken: str, schema: str) -> list[Case]:
    blocks, python = tool("blocks"), tool("python")
    examples = [blocks, "validate", "pipelines", "runbooks"]
    return [
        Case("blocks", "blocks validate, big flow", [blocks, "validate", flow], args.repeat),
        Case(
            "reference",
            "check-jsonschema, same file, published schema",
            [tool("check-jsonschema"), "--schemafile", schema, flow],
            args.reference_repeat,
        ),
        Case(
            "broken",
            "blocks validate, big flow with 1 error in the last step",
            [blocks, "validate", broken],
            min(args.repeat, 3),
        ),
        Case("cold", "cold start: blocks validate on the examples", examples, args.repeat),
        Case(
            "cold_nocache",
            "same, no bytecode cache",
            examples,
            args.repeat,
            env=child_env(bytecode=False),
        ),
        Case("floor", "interpreter floor", [python, "-c", "pass"], args.repeat),
    ]


def judge(cases: dict[str, Case], broken: Broken, schema: str) -> tuple[list[str], dict[str, str]]:
    """Stop if a run that must pass did not; notes for the report."""
    notes: list[str] = []
    exit_notes: dict[str, str] = {}
    for key, what in (("blocks", "blocks validate"), ("reference", "check-jsonschema")):
        if cases[key].codes != {0}:
            first = cases[key].results[0]
            sys.exit(f"{what} rejected the generated flow:\n{first.stdout}{first.stderr}")
    bad = cases["broken"].results[0]
    found = re.search(
        rf"{re.escape(rel(broken.path))}:{broken.line}:(\d+): error\[ref\.not-upstream\]",
        bad.stdout,
    )
    if bad.code == 1 and found and int(found.group(1)) in broken.columns:
        exit_notes["broken"] = f" (reported at line {broken.line}, col {found.group(1)}: right)"
    else:
        exit_notes["broken"] = " (**position not as expected**)"
        notes.append(
            f"expected ref.not-upstream for steps.{broken.culprit} at "
            f"`{rel(broken.path)}:{broken.line}` col {' or '.join(map(str, broken.columns))}"
            f", got: {bad.stdout.strip()[:300]}"
        )
    cold = cases["cold"].results[0]
    summary = cold.stdout.strip().splitlines()[-1] if cold.stdout.strip() else cold.stderr.strip()
    if cold.code == 0:
        exit_notes["cold"] = f" ({summary})"
    else:
        exit_notes["cold"] = " (**examples do not validate yet**)"
        notes.append(
            f"`blocks validate pipelines runbooks` exited {cold.code}: {summary[:300]}; "
            "its time is reported anyway."
        )
    if schema != SCHEMA:
        notes.append(
            f"check-jsonschema could not resolve the published schema; a self-contained "
            f"copy ({rel(schema)}) was used."
        )
    return notes, exit_notes


def main() -> None:
    args = parse_args()
    load_before = os.getloadavg()[0]
    folder = os.path.join(OUT, f"validate-{args.steps}")
    log(f"generating {args.steps} steps into {rel(folder)} ...")
    flow = write_project(folder, args.steps)
    broken = broken_copy(flow)
    env = child_env(bytecode=True)

    log("warming up (bytecode caches, check-jsonschema schema probe) ...")
    schema = reference_schema(env)
    small = write_project(os.path.join(OUT, "validate-probe"), 8)
    for argv in (
        [tool("blocks"), "validate", small],
        [tool("blocks"), "validate", "pipelines", "runbooks"],
        [tool("python"), "-c", "pass"],
    ):
        run_child(argv, env)

    cases = build_cases(args, flow, broken.path, schema)

    def log_each(case: Case, result: Run) -> None:
        log(
            f"  {case.key:13s} {result.wall:7.3f} s  cpu {result.cpu:7.3f} s  "
            f"{result.rss_mib:5.0f} MiB  exit {result.code}"
        )

    log("timing processes ...")
    run_cases(cases, log_each)
    by_key = {c.key: c for c in cases}
    notes, exit_notes = judge(by_key, broken, schema)

    log("in-process breakdown ...")
    parts = breakdown(flow, args.repeat)
    scaling = []
    for n in sorted({max(args.steps // 4, 8), max(args.steps // 2, 8)} - {args.steps}):
        log(f"  scaling: {n} steps ...")
        small_flow = write_project(os.path.join(OUT, f"validate-{n}"), n)
        scaling.append((n, breakdown(small_flow, 2)))
    scaling.append((args.steps, parts))
    load_after = os.getloadavg()[0]

    info = machine()
    ctx = {
        "flow": flow,
        "steps": args.steps,
        "bytes": os.path.getsize(flow),
        "machine": info,
        "load": (load_before, load_after),
        "repeat": args.repeat,
        "notes": notes,
        "exit_notes": exit_notes,
        "scaling": scaling,
        **flow_facts(flow),
    }
    section, ratio = report(ctx, by_key, parts)
    command = "`.venv/bin/python bench/bench_validate.py --write-docs`"
    if args.steps != DEFAULT_STEPS or args.repeat != 5 or args.reference_repeat != 2:
        command = (
            f"`.venv/bin/python bench/bench_validate.py --steps {args.steps} "
            f"--repeat {args.repeat} --reference-repeat {args.reference_repeat} "
            "--write-docs`"
        )
    section = f"Command: {command}\n\n{section}"
    print(section)
    if args.profile:
        print("```\n" + profile(flow) + "```")
    if args.write_docs:
        write_docs(section, info)
    log(f"check-jsonschema / blocks = {ratio:.1f}x (goal {GOAL:.0f}x)")


if __name__ == "__main__":
    main()
