"""Benchmark the executor (`blocks run`) on the peers' three workloads, side by side.

    .venv/bin/python bench/bench_executor.py [--rounds 3] [--inner 3] [--profile]
                                             [--peers-dir DIR] [--write-docs] [--report-only]
                                             [--no-git]

Workloads (the same as `../shared/bench/peers`; flows from `bench/executor_flows/gen.py`,
written to `bench/out/executor/flows/`):

* W1 `chain`: 500 no-op `python` steps, each needing the previous one;
* W2 `fanout`: 1 root -> 1,000 independent no-op steps -> 1 join (1,002 steps), and
  `foreach`, the same as one step with `for_each` over 1,000 items (1,002 instances);
* W3 `io`: 200 steps that each await 50 ms, `limits.concurrency: 50` (ideal 0.2 s);
* `chain_sync` / `fanout_sync`: W1 / W2 calling a plain (sync) function, which the python
  step kind runs in a worker thread;
* `big`: 10,002 no-op steps (100 chains of 100), for peak memory, and `wide`, 1 -> 10,000
  -> 1 (10,002 steps), to show how the per-step cost grows with a flow's width (these two
  run in-process once per round, `wide` only in the first round, with its state on tmpfs).

No-op steps call `async def` functions in `bench/executor_flows/bench_noop.py`. The journal
is on (it always is), the step cache off, structured logs off. Two measurements:

(a) in-process: a child process builds the plan once (`Runtime(load_settings(flow))`,
    `runtime.plan(flow)`), runs it once untimed (imports the module, warms caches), then
    times `anyio.run(runtime.run(plan, given={}, use_cache=False, bundle=False))` `--inner`
    times:
    per-task overhead = wall / tasks. Interpreter start, imports and planning are excluded.
(b) whole command: `blocks run FLOW --no-cache --log-format off` as its own process: wall
    time and peak RSS (GNU time's %M).

State (run folders, journals) goes to `bench/out/executor/state` (BLOCKS_STATE_DIR), on the
repository's disk like a project's `.blocks/`. Every step makes a workdir there, so W1 and W2
also run in-process with the state on tmpfs (/dev/shm, a folder of our own, removed after),
rows marked as a diagnostic: the engine without the disk. Each round also times the bare
`os.makedirs` of those workdirs, the filesystem floor.

Rounds run the workloads round-robin, so a burst of load on the shared machine hits every
row alike. Peers' results are read from `$PEERBENCH_DIR/results/summary.json` (run
`run_all.py` there first; see `../shared/bench/peers/README.md`). Prints one Markdown
report; `--write-docs` puts it into docs/benchmarks.md between `<!-- executor:start -->`
and `<!-- executor:end -->` (appending that pair at the end if it is missing) and touches
nothing else; inside that section, the hand-written analysis between
`<!-- executor:notes:start -->` and `<!-- executor:notes:end -->` is kept as it is.
`--profile` adds a cProfile of the in-process runs, per step. Measurements are saved to
`bench/out/executor/results.json`; `--report-only` re-renders them with the peers' current
results (after re-running a peer) without measuring again. Timing is never asserted: this is
not a test. `--no-git` leaves the commit out of the report (it is read with `git rev-parse`).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(HERE, "executor_flows"))

from gen import FLOWS, IO_LIMIT, IO_SLEEP, N_CHAIN, N_FAN, N_IO, write_flows  # noqa: E402

OUT = os.path.join(HERE, "out", "executor")
FLOW_DIR = os.path.join(OUT, "flows")
STATE = os.path.join(OUT, "state")
DOCS = os.path.join(ROOT, "docs", "benchmarks.md")
MARK_START, MARK_END = "<!-- executor:start -->", "<!-- executor:end -->"
NOTES_START, NOTES_END = "<!-- executor:notes:start -->", "<!-- executor:notes:end -->"
"""Inside the executor section: hand-written analysis that `--write-docs` keeps as it is."""
BIN = os.path.dirname(sys.executable)  # the venv's bin/ (not resolved: the venv is the point)
TIME = "/usr/bin/time"
SHM = "/dev/shm"  # noqa: S108  (tmpfs, for the diagnostic rows: a folder of our own in it)
GOAL_MS = 0.1
GOAL_IO = 1.10
GOAL_MIB = 300
IDEAL_IO = N_IO / IO_LIMIT * IO_SLEEP
WORKLOAD = {  # our flow -> (peer workload, label)
    "chain": ("chain", f"W1 chain of {N_CHAIN}"),
    "chain_sync": ("chain", f"W1 chain of {N_CHAIN}"),
    "fanout": ("fanout", f"W2 1 → {N_FAN:,} → 1"),
    "foreach": ("fanout", f"W2 1 → {N_FAN:,} → 1"),
    "fanout_sync": ("fanout", f"W2 1 → {N_FAN:,} → 1"),
    "io": ("io", f"W3 {N_IO} × {IO_SLEEP * 1000:.0f} ms, limit {IO_LIMIT}"),
    "big": ("big", "10,002 steps (100 chains of 100)"),
    "wide": ("big", "10,002 steps (1 → 10,000 → 1)"),
}
VARIANT = {
    "chain": "async no-op, `needs`",
    "chain_sync": "**sync** no-op (worker thread), `needs`",
    "fanout": "async no-op, 1,002 steps with `needs`",
    "foreach": "async no-op, `for_each` over 1,000 items",
    "fanout_sync": "**sync** no-op (worker thread), 1,002 steps",
    "io": "async `asyncio.sleep(0.05)`",
    "big": "async no-op",
    "wide": "async no-op",
}
CLI_FLOWS = ("chain", "fanout", "foreach", "io", "big", "wide")
ONCE = ("wide",)
"""Flows run in the first round only (a run of `wide` takes tens of seconds)."""
NO_INPROC_ON_DISK = ("wide",)
"""Flows whose in-process row runs only with the state on tmpfs (`<name>_tmpfs`)."""
TMPFS_FLOWS = ("chain", "fanout", "foreach", "io", "chain_sync", "fanout_sync", "wide")
"""Also run in-process with the state dir on tmpfs (/dev/shm): the engine without the disk."""
PROFILE_ROWS = ("chain", "fanout", "chain_tmpfs", "fanout_tmpfs", "foreach_tmpfs")
for _n in TMPFS_FLOWS:
    WORKLOAD[f"{_n}_tmpfs"] = WORKLOAD[_n]
    VARIANT[f"{_n}_tmpfs"] = VARIANT[_n] + "; **state dir on tmpfs** (diagnostic)"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def rel(path: str) -> str:
    return os.path.relpath(path, ROOT)


def child_env(state: str = STATE) -> dict[str, str]:
    env = dict(os.environ, BLOCKS_STATE_DIR=state, PYTHONPYCACHEPREFIX=os.path.join(OUT, "pycache"))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


# ---------------------------------------------------------------------------------------
# (a) in-process, in a child process of its own (`--child`)


def child_main(name: str, inner: int, profile_to: str | None) -> None:
    """Prints one JSON line; the state dir comes from BLOCKS_STATE_DIR (set by the parent)."""
    t0 = time.perf_counter()
    import anyio  # noqa: PLC0415

    from engine.runtime import Runtime, load_settings  # noqa: PLC0415

    imports = time.perf_counter() - t0
    flow = os.path.join(FLOW_DIR, f"{name}.yaml")
    runtime = Runtime(load_settings(flow))
    t0 = time.perf_counter()
    plan = runtime.plan(flow)
    planned = time.perf_counter() - t0

    prof: Any = None
    if profile_to:
        import cProfile  # noqa: PLC0415

        prof = cProfile.Profile()

    cpus: list[float] = []  # process CPU time (all threads) of each run

    def once(profiled: bool = False) -> tuple[float, Any, int]:
        if profiled:
            prof.enable()
        started, cpu0 = time.perf_counter(), time.process_time()
        # the executor alone: bundling after the run is measured in the whole-command rows
        outcome = anyio.run(lambda: runtime.run(plan, given={}, use_cache=False, bundle=False))
        wall = time.perf_counter() - started
        cpus.append(time.process_time() - cpu0)
        if profiled:
            prof.disable()
        run_dir = runtime.run_dir(outcome.run_id)
        journal = os.path.getsize(run_dir / "journal.log")
        shutil.rmtree(run_dir, ignore_errors=True)  # untimed: keeps runs/ small
        return wall, outcome, journal

    first, outcome, journal_bytes = once()
    walls, statuses = [], {outcome.status}
    for _ in range(inner):
        wall, outcome, _ = once(profiled=prof is not None)
        walls.append(wall)
        statuses.add(outcome.status)
    if prof is not None:
        prof.dump_stats(profile_to)
    instances = sum(
        len(s.result) if plan.steps[sid].spec.for_each is not None else 1
        for sid, s in outcome.steps.items()
    )
    print(
        json.dumps(
            {
                "imports_s": imports,
                "plan_s": planned,
                "first_s": first,
                "walls": walls,
                "cpus": cpus[1:],
                "statuses": sorted(statuses),
                "steps": len(plan.order),
                "tasks": instances,
                "journal_bytes": journal_bytes,
            }
        )
    )


# ---------------------------------------------------------------------------------------
# child processes


@dataclass
class Proc:
    wall: float
    code: int
    rss_mib: float
    stdout: str
    stderr: str


def run_proc(argv: list[str], state: str = STATE) -> Proc:
    """One process from the repository root, through GNU time for its own peak RSS (a child
    forked from this process would otherwise inherit this process's peak across exec)."""
    with (
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        tempfile.NamedTemporaryFile("r", suffix=".rss") as rss,
    ):
        use_time = os.access(TIME, os.X_OK)
        command = [TIME, "-f", "%M", "-o", rss.name, *argv] if use_time else argv
        start = time.perf_counter()
        proc = subprocess.Popen(command, cwd=ROOT, env=child_env(state), stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        peak_kib = float(usage.ru_maxrss)
        if use_time:
            lines = rss.read().strip().splitlines()
            peak_kib = float(lines[-1]) if lines and lines[-1].isdigit() else float("nan")
        out.seek(0)
        err.seek(0)
        return Proc(
            wall,
            os.waitstatus_to_exitcode(status),
            peak_kib / 1024,
            out.read().decode(errors="replace"),
            err.read().decode(errors="replace"),
        )


@dataclass
class Row:
    name: str
    flow: str
    tasks: int
    state: str = STATE
    inproc: list[float] = field(default_factory=list)
    inproc_cpu: list[float] = field(default_factory=list)
    plan_s: list[float] = field(default_factory=list)
    imports_s: list[float] = field(default_factory=list)
    first_s: list[float] = field(default_factory=list)
    inproc_rss: list[float] = field(default_factory=list)
    journal_bytes: int = 0
    cli: list[float] = field(default_factory=list)
    cli_run: list[float] = field(default_factory=list)  # the run's own duration, as printed
    cli_rss: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def inproc_round(row: Row, inner: int) -> None:
    res = run_proc(
        [sys.executable, __file__, "--child", row.flow, "--inner", str(inner)], row.state
    )
    if res.code != 0:
        row.problems.append(f"in-process child exited {res.code}: {res.stderr.strip()[-400:]}")
        return
    data = json.loads(res.stdout.strip().splitlines()[-1])
    if data["statuses"] != ["succeeded"]:
        row.problems.append(f"in-process runs ended {data['statuses']}")
    row.tasks = data["tasks"]
    row.inproc += data["walls"]
    row.inproc_cpu += data["cpus"]
    row.plan_s.append(data["plan_s"])
    row.imports_s.append(data["imports_s"])
    row.first_s.append(data["first_s"])
    row.inproc_rss.append(res.rss_mib)
    row.journal_bytes = data["journal_bytes"]


_PRINTED = re.compile(r"succeeded in (?:(\d+)ms|([\d.]+)s|(\d+)m(\d+)s)")


def cli_round(row: Row) -> None:
    flow = rel(os.path.join(FLOW_DIR, f"{row.flow}.yaml"))
    res = run_proc([os.path.join(BIN, "blocks"), "run", flow, "--no-cache", "--log-format", "off"])
    shutil.rmtree(os.path.join(STATE, "runs"), ignore_errors=True)
    if res.code != 0:
        row.problems.append(f"`blocks run` exited {res.code}: {(res.stdout + res.stderr)[-400:]}")
        return
    row.cli.append(res.wall)
    row.cli_rss.append(res.rss_mib)
    found = _PRINTED.search(res.stdout)
    if found:
        ms, s, m, ms2 = found.groups()
        row.cli_run.append(
            int(ms) / 1000 if ms else float(s) if s else int(m) * 60 + int(ms2)  # type: ignore[arg-type]
        )


MKDIR_N = 1000


def mkdir_floor(base: str) -> float:
    """Seconds per step to create `steps/s<i>/attempt-1` (2 new folders), as the executor
    does for each step's workdir."""
    shutil.rmtree(base, ignore_errors=True)
    os.makedirs(base)
    started = time.perf_counter()
    for i in range(MKDIR_N):
        os.makedirs(os.path.join(base, "steps", f"s{i}", "attempt-1"))
    elapsed = time.perf_counter() - started
    shutil.rmtree(base, ignore_errors=True)
    return elapsed / MKDIR_N


# ---------------------------------------------------------------------------------------
# profile


# (label, where, matcher on a pstats (file, function), and optionally on its caller's):
# cumulative time of the matched functions (of their calls from a matching caller), per task.
CATEGORIES: list[tuple[str, str, Any, Any]] = [
    (
        "step workdir: mkdir",
        "`pathlib.Path.mkdir` from `engine/executor/local.py`: none (a step's workdir is made "
        "by the kind that writes there: shell steps, python steps on failure)",
        lambda f, fn: f.endswith("pathlib.py") and fn == "mkdir",
        lambda f, fn: f.endswith("executor/local.py"),
    ),
    (
        "step workdir: path building",
        "pathlib from `engine/executor/local.py` or `StepContext.workdir`: none when the kind "
        "never asks (the attempt's workdir is passed as a string; the `Path` is built on use)",
        lambda f, fn: (
            f.endswith("pathlib.py") and fn in ("__truediv__", "joinpath", "__new__", "_from_parts")
        ),
        lambda f, fn: f.endswith("executor/local.py") or f.endswith("engine/plugins.py"),
    ),
    (
        "journal records",
        "`engine/executor/local.py:_Run.record`: redaction, `JournalWriter.append`, event "
        "callback (2 records per step: started, succeeded)",
        lambda f, fn: f.endswith("executor/local.py") and fn == "record",
        None,
    ),
    (
        "  of which append",
        "`engine/executor/journal.py:JournalWriter.append`: JSON encode, crc32, one write(2)",
        lambda f, fn: f.endswith("executor/journal.py") and fn == "append",
        None,
    ),
    (
        "  of which JSON encoding",
        "`engine/executor/journal.py:_encode`: orjson, and the NaN check of records with a null",
        lambda f, fn: f.endswith("executor/journal.py") and fn == "_encode",
        None,
    ),
    (
        "  of which write(2)",
        "`os.write` of the framed line (page cache, no sync)",
        lambda f, fn: fn == "<built-in method posix.write>",
        lambda f, fn: f.endswith("executor/journal.py"),
    ),
    (
        "background group commit",
        "`engine/executor/journal.py:JournalWriter._flush_loop`: fdatasync in a worker thread "
        "every 5 ms while records come, and its thread hand-off",
        lambda f, fn: f.endswith("executor/journal.py") and fn == "_flush_loop",
        None,
    ),
    (
        "`_all_settled` scans",
        "`engine/executor/local.py:_Run._all_settled`, from `_check_settled` after every "
        "step: a counter",
        lambda f, fn: f.endswith("executor/local.py") and fn == "_all_settled",
        None,
    ),
    (
        "task creation",
        "anyio `TaskGroup.start_soon`: worker tasks (`engine/executor/workers.py`), started "
        "only while every worker is blocked in a step, so none per step of these no-op flows",
        lambda f, fn: "anyio" in f and fn == "start_soon",
        None,
    ),
    (
        "worker hand-off",
        "`engine/executor/workers.py`: `Workers.submit` and `_grow` (the queue of ready steps)",
        lambda f, fn: f.endswith("executor/workers.py") and fn in ("submit", "_grow", "kick"),
        None,
    ),
    (
        "capacity limit",
        "`Tokens` / `nullcontext` enter and exit around each attempt (`_Run._attempts`; and "
        "per item in `_fan_out`)",
        lambda f, fn: fn in ("__aenter__", "__aexit__"),
        lambda f, fn: f.endswith("executor/local.py"),
    ),
    (
        "the step itself",
        "`engine/steps/python.py:PythonKind.run`: a dict lookup and the await of the no-op",
        lambda f, fn: f.endswith("steps/python.py") and fn == "run",
        None,
    ),
    (
        "resolve `with`",
        "`engine/steps/python.py:PythonKind.resolve` (copies, `render_value`)",
        lambda f, fn: f.endswith("steps/python.py") and fn == "resolve",
        None,
    ),
    (
        "output extraction + result digest",
        "`engine/executor/outputs.py:extract_outputs`, `engine/executor/cache.py:digest_json` "
        "(sha256 of the canonical JSON of the result, even when it is None)",
        lambda f, fn: (
            (f.endswith("executor/outputs.py") and fn == "extract_outputs")
            or (f.endswith("executor/cache.py") and fn == "digest_json")
        ),
        None,
    ),
    (
        "secret env",
        "`engine/executor/local.py:_Run._secret_env`",
        lambda f, fn: f.endswith("executor/local.py") and fn == "_secret_env",
        None,
    ),
    (
        "cache key hashing",
        "`engine/executor/cache.py:key_for_step`: not called (`use_cache=False`)",
        lambda f, fn: f.endswith("executor/cache.py") and fn == "key_for_step",
        None,
    ),
    (
        "structlog",
        "any `structlog` function: none (logs off, no event sink in-process)",
        lambda f, fn: "structlog" in f,
        None,
    ),
    (
        "event loop",
        "asyncio `BaseEventLoop._run_once` own time + epoll (scheduling every task step)",
        lambda f, fn: (
            (f.endswith("asyncio/base_events.py") and fn == "_run_once")
            or fn == "<method 'poll' of 'select.epoll' objects>"
        ),
        "own",
    ),
]


def profile_report(name: str, path: str, runs: int, tasks: int, plain_ms: float) -> str:
    import pstats  # noqa: PLC0415

    stats = pstats.Stats(path)
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    total = stats.total_tt  # type: ignore[attr-defined]
    per = runs * tasks
    lines = [
        f"**{name}** ({tasks:,} tasks × {runs} runs under cProfile: {total / per * 1e3:.3f} ms "
        f"per task profiled, {plain_ms:.3f} ms without the profiler; cumulative time per task, "
        "profiler overhead included, so read the shares):",
        "",
        "| cost | µs / task | share | where |",
        "|---|---:|---:|---|",
    ]
    for label, where, match, caller in CATEGORIES:
        cum = 0.0
        for (f, _ln, fn), (_cc, _nc, tt, ct, callers) in raw.items():
            if not match(f, fn):
                continue
            if caller is None:  # pstats' ct counts the outermost calls only (recursion)
                cum += ct
            elif caller == "own":
                cum += tt
            else:
                cum += sum(v[3] for (cf, _cl, cfn), v in callers.items() if caller(cf, cfn))
        lines.append(f"| {label} | {cum / per * 1e6:.1f} | {cum / total * 100:.0f} % | {where} |")
    lines += [
        "",
        "Top functions by own time (µs per task):",
        "",
        "| function | calls / task | own µs / task | cumulative µs / task |",
        "|---|---:|---:|---:|",
    ]
    top = sorted(raw.items(), key=lambda kv: -kv[1][2])[:15]
    for (f, ln, fn), (_cc, nc, tt, ct, _callers) in top:
        where = f"{_short(f)}:{ln}({fn})" if f != "~" else fn
        lines.append(
            f"| `{where}` | {nc / per:.2f} | {tt / per * 1e6:.1f} | {ct / per * 1e6:.1f} |"
        )
    return "\n".join(lines)


def _short(path: str) -> str:
    for marker in ("site-packages/", "python3.11/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return rel(path) if path.startswith(ROOT) else path


# ---------------------------------------------------------------------------------------
# peers


def load_peers(peers_dir: str) -> tuple[dict[str, Any], dict[str, Any]]:
    results = os.path.join(peers_dir, "results")
    try:
        with open(os.path.join(results, "summary.json"), encoding="utf-8") as fh:
            summary = json.load(fh)
    except FileNotFoundError:
        return {}, {}
    try:
        with open(os.path.join(results, "raw.json"), encoding="utf-8") as fh:
            raw = json.load(fh)
    except FileNotFoundError:
        raw = {}
    return summary, raw


def peer_times(peers_dir: str) -> dict[str, float]:
    """When each peer last ran: the mtime of its first repetition's stderr file."""
    times = {}
    for peer in PEERS:
        with contextlib.suppress(OSError):
            first = os.path.join(peers_dir, "results", f"{peer}_rep0.stderr")
            times[peer] = os.path.getmtime(first)
    return times


def peer_rows(summary: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """workload -> [{peer, variant, wall (agg), n_tasks, extra}]"""
    out: dict[str, list[dict[str, Any]]] = {}
    for peer in ("reference", "hamilton", "dask", "prefect"):
        rows: dict[tuple[str, str], dict[str, Any]] = {}
        for key, value in summary.get(peer, {}).items():
            parts = key.split(" | ")
            if len(parts) == 3 and parts[0] != "meta":
                rows.setdefault((parts[0], parts[1]), {})[parts[2]] = value
        for (wl, variant), d in rows.items():
            if d.get("wall_s"):
                out.setdefault(wl, []).append(
                    {"peer": peer, "variant": variant, "wall": d["wall_s"], "n": d["n_tasks"], **d}
                )
    return out


def floor_of(peers: dict[str, list[dict[str, Any]]], wl: str) -> float | None:
    walls = [
        r["wall"]["median"]
        for r in peers.get(wl, [])
        if r["peer"] == "reference" and r["variant"].startswith("asyncio-")
    ]
    return min(walls) if walls else None


# ---------------------------------------------------------------------------------------
# report


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def machine(load_before: tuple[float, ...], load_after: tuple[float, ...]) -> dict[str, str]:
    model = "unknown"
    with open("/proc/cpuinfo", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    import anyio  # noqa: PLC0415

    return {
        "cpu": f"{os.cpu_count()} × {model} (`nproc` {os.cpu_count()})",
        "python": f"{platform.python_implementation()} {platform.python_version()}, "
        f"anyio {anyio.__version__ if hasattr(anyio, '__version__') else _dist('anyio')}",
        "os": f"{platform.system()} {platform.release()}",
        "load": "load average (1, 5, 15 min) "
        + " / ".join(f"{x:.2f}" for x in load_before)
        + " before, "
        + " / ".join(f"{x:.2f}" for x in load_after)
        + " after",
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def _dist(name: str) -> str:
    import importlib.metadata  # noqa: PLC0415

    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def fmt_wall(values: list[float]) -> str:
    if not values:
        return "n/a"
    return f"{med(values):.3f} ({min(values):.3f})"


PEERS = ("reference", "hamilton", "dask", "prefect")


def _preamble(
    info: dict[str, str],
    args: argparse.Namespace,
    peer_raw: dict[str, Any],
    times: dict[str, float] | None = None,
) -> list[str]:
    cmd = (
        f"`.venv/bin/python bench/bench_executor.py --rounds {args.rounds} --inner {args.inner}"
        + (" --profile" if args.profile else "")
        + (" --no-git" if getattr(args, "no_git", False) else "")
        + (
            "`, then `.venv/bin/python bench/bench_executor.py --report-only"
            if args.report_only
            else ""
        )
        + " --write-docs`"
    )
    peers = [p for p in PEERS if p in peer_raw]
    times = times or {}
    newest = max((times[p] for p in peers if p in times), default=0.0)
    # a peer whose results are much older than the others' was not re-run with them
    older = [p for p in peers if p in times and newest - times[p] > 1800]
    ran = " ".join(p for p in peers if p not in older) or "(none)"
    where = args.peers_dir
    earlier = (
        " Not re-run for this one, so from an earlier run on the same machine: "
        + ", ".join(
            f"{p} ({dt.datetime.fromtimestamp(times[p], dt.UTC):%Y-%m-%d %H:%M} UTC)" for p in older
        )
        + "."
        if older
        else ""
    )
    return [
        f"Commands: {cmd} with `PEERBENCH_DIR={where}`, after the peers' "
        f"`cd ../shared/bench/peers && PEERBENCH_DIR={where} REPS=3 "
        f"$PEERBENCH_DIR/venv/bin/python run_all.py {ran}` (their venv made from "
        f"`requirements-peers.txt`, outside the repository).{earlier}",
        "",
        f"Recorded {info['date']} on {info['cpu']}, {info['python']} ({info['os']}); "
        f"{info['load']}. **A shared 2-core machine**: other work may run at the same time "
        "(the load average says how much); compare rows of this run, not runs.",
        "",
        "Flows: `bench/executor_flows/gen.py` (into `bench/out/executor/flows/`); every step is "
        "a `python` step calling an `async def` no-op in `bench/executor_flows/bench_noop.py` "
        "(W3: `await asyncio.sleep(0.05)`). Journal on (always; group-committed fdatasync every "
        "5 ms in the background), step cache off, logs off. No-op flows run with "
        "`limits.concurrency: 10000`, as the peers run them unbounded.",
        "",
        "- **in-process**: one child process per workload and round plans once "
        "(`Runtime(load_settings(flow)).plan(flow)`), runs once untimed, then times "
        f"`anyio.run(runtime.run(plan, given={{}}, use_cache=False, bundle=False))` {args.inner}× "
        f"({args.rounds} rounds → {args.rounds * args.inner} runs per row; for the 10,002-step "
        "flows 1 per round, and `wide` in the first round only). Per task = wall / tasks. "
        "Excludes interpreter start, imports and planning, like the peers' `wall_s` (which "
        "includes building their graph). Rows marked **state dir on tmpfs** are the same runs "
        "with `BLOCKS_STATE_DIR` on /dev/shm: a diagnostic that takes the disk out (the run "
        "folder, its lock and its journal), not what a project gets.",
        "- **whole command**: `.venv/bin/blocks run FLOW --no-cache --log-format off` as its own "
        f"process, {args.rounds}× per flow (round-robin), bytecode cached; peak RSS from GNU "
        "time. Its per-task figure includes start-up, imports and planning.",
        "",
        "Wall: median (min) over all runs. Peers: median (min) over REPS=3 processes. "
        "× floor: median wall / the faster of the asyncio floor's two variants "
        "(`asyncio-generations`, `asyncio-event`) on the same workload.",
        "",
    ]


def _per_task(wl: str, walls: list[float], tasks: int, with_min: bool = True) -> str:
    if wl == "io":
        return f"{med(walls) / IDEAL_IO:.2f}× ideal"
    best = f" ({min(walls) / tasks * 1e3:.3f})" if with_min else ""
    return f"{med(walls) / tasks * 1e3:.3f}{best}"


def _table(rows: dict[str, Row], peers: dict[str, list[dict[str, Any]]]) -> list[str]:
    out = [
        "| workload | engine / peer | wall s, median (min) | per task ms, median (min) "
        "| × asyncio floor |",
        "|---|---|---:|---:|---:|",
    ]
    for wl in ("chain", "fanout", "io"):
        floor = floor_of(peers, wl)
        label = WORKLOAD[wl][1]
        ours = [n for n in rows if WORKLOAD[n][0] == wl]

        def ratio(wall: float, floor: float | None = floor) -> str:
            return f"{wall / floor:.1f}×" if floor else "n/a"

        for name in ours:
            r = rows[name]
            if not r.inproc:
                out.append(f"| {label} | **blocks** in-process, {VARIANT[name]} | failed | | |")
                continue
            out.append(
                f"| {label} | **blocks** in-process, {VARIANT[name]} | {fmt_wall(r.inproc)} "
                f"| {_per_task(wl, r.inproc, r.tasks)} | {ratio(med(r.inproc))} |"
            )
        for name in ours:
            r = rows[name]
            if r.cli:
                run_only = (
                    f"; the run itself {med(r.cli_run):.3f} s as printed" if r.cli_run else ""
                )
                out.append(
                    f"| {label} | **blocks** whole command `blocks run`, {VARIANT[name]} "
                    f"(start-up + plan{run_only}) | {fmt_wall(r.cli)} "
                    f"| {_per_task(wl, r.cli, r.tasks, with_min=False)} | {ratio(med(r.cli))} |"
                )
        for p in sorted(peers.get(wl, []), key=lambda p: (PEERS.index(p["peer"]), p["variant"])):
            w = p["wall"]
            per = (
                f"{w['median'] / IDEAL_IO:.2f}× ideal"
                if wl == "io"
                else f"{w['median'] / p['n'] * 1e3:.3f} ({w['min'] / p['n'] * 1e3:.3f})"
            )
            name = "asyncio floor" if p["peer"] == "reference" else p["peer"]
            notes = []
            if "cluster_start_s" in p:
                notes.append(f"cluster start {p['cluster_start_s']['median']:.2f} s excluded")
            if "error" in p:
                notes.append("errors: " + "; ".join(sorted(set(p["error"])))[:120])
            note = f" ({'; '.join(notes)})" if notes else ""
            out.append(
                f"| {label} | {name}: {p['variant']}{note} | {w['median']:.3f} ({w['min']:.3f}) "
                f"| {per} | {ratio(w['median'])} |"
            )
    for name, big in rows.items():
        if WORKLOAD[name][0] != "big":
            continue
        label = WORKLOAD[name][1]
        where = "; **state dir on tmpfs** (diagnostic)" if name.endswith("_tmpfs") else ""
        if big.inproc:
            out.append(
                f"| {label} | **blocks** in-process{where} (plan {med(big.plan_s):.1f} s "
                f"excluded) | {fmt_wall(big.inproc)} | {_per_task('big', big.inproc, big.tasks)} "
                "| |"
            )
        if big.cli:
            out.append(
                f"| {label} | **blocks** whole command (start-up + plan + run) "
                f"| {fmt_wall(big.cli)} | {_per_task('big', big.cli, big.tasks, False)} | |"
            )
    return out


def _peer_status(peer_raw: dict[str, Any]) -> list[str]:
    out = []
    missing = [p for p in PEERS if p not in peer_raw]
    failed = {
        p: sorted({str(r["rc"]) for r in reps if r["rc"] != 0})
        for p, reps in peer_raw.items()
        if any(r["rc"] != 0 for r in reps)
    }
    if missing:
        out += ["", f"Peers not run: {', '.join(missing)} (see the notes below)."]
    if failed:
        out += [
            "",
            "Peer processes that did not exit 0: "
            + "; ".join(f"{p}: rc {', '.join(c)}" for p, c in failed.items())
            + " (their rows hold the records they printed before that).",
        ]
    return out


def _memory(rows: dict[str, Row], floors: dict[str, list[float]]) -> list[str]:
    out = [
        "",
        "CPU, memory, journal, and where the whole command's time goes (medians; CPU is the "
        "in-process child's user + system time over a run, all threads: on a loaded machine it "
        "shows the work done, where wall time also shows waiting for a core or the disk):",
        "",
        "| flow | tasks | in-process CPU ms / task | journal bytes / run | imports s | plan s "
        "| first run s (untimed) | in-process peak RSS | `blocks run` peak RSS (max) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in rows.items():
        cli_rss = f"{max(r.cli_rss):.0f} MiB" if r.cli_rss else "n/a"
        if not r.inproc:
            out.append(f"| `{name}` | {r.tasks:,} | — | — | — | — | — | — | {cli_rss} |")
            continue
        out.append(
            f"| `{name}` | {r.tasks:,} | {med(r.inproc_cpu) / r.tasks * 1e3:.3f} "
            f"| {r.journal_bytes:,} | {med(r.imports_s):.2f} "
            f"| {med(r.plan_s):.2f} | {med(r.first_s):.3f} | {med(r.inproc_rss):.0f} MiB "
            f"| {cli_rss} |"
        )
    shown = [f"{med(v) * 1e3:.3f} ms (min {min(v) * 1e3:.3f}) {k}" for k, v in floors.items() if v]
    if shown:
        out += [
            "",
            f"Filesystem floor, measured each round: `os.makedirs('steps/s<i>/attempt-1')` for "
            f"{MKDIR_N:,} steps (the folders the executor makes per step, without the engine): "
            + "; ".join(shown)
            + ". The state dir is on the repository's ext4 disk, shared with the other runs "
            "on this machine.",
        ]
    return out


def _goals(rows: dict[str, Row], peers: dict[str, list[dict[str, Any]]]) -> list[str]:
    out = ["", "Goals (from the issue; journal on; in-process medians; peers of the same run):", ""]
    peer_best: dict[str, tuple[float, str]] = {}
    for wl in ("chain", "fanout"):
        cands = [
            (p["wall"]["median"] / p["n"] * 1e3, f"{p['peer']} {p['variant']}")
            for p in peers.get(wl, [])
            if p["peer"] != "reference"
        ]
        if cands:
            peer_best[wl] = min(cands)
    for name in ("chain", "fanout", "foreach"):
        r = rows.get(name)
        if not r or not r.inproc:
            continue
        ms = med(r.inproc) / r.tasks * 1e3
        verdict = "**met**" if ms <= GOAL_MS else f"**missed**, {ms / GOAL_MS:.1f}× the goal"
        wl = WORKLOAD[name][0]
        floor = floor_of(peers, wl)
        vs_peer = ""
        if wl in peer_best:
            pms, pname = peer_best[wl]
            ahead = "**ahead**" if ms < pms else f"**behind** ({ms / pms:.1f}×)"
            vs_peer = f"; fastest peer ({pname}) {pms:.3f} ms: {ahead}"
        vs_floor = (
            f"; {med(r.inproc) / floor:.0f}× the asyncio floor ({floor / r.tasks * 1e3:.3f} ms)"
            if floor
            else ""
        )
        best = min(r.inproc) / r.tasks * 1e3
        t = rows.get(f"{name}_tmpfs")
        tmp = (
            f" With the state dir on tmpfs (diagnostic): {med(t.inproc) / t.tasks * 1e3:.3f} ms."
            if t and t.inproc
            else ""
        )
        out.append(
            f"- {WORKLOAD[name][1]} ({VARIANT[name]}): {ms:.3f} ms per task (best {best:.3f}); "
            f"goal ≤ {GOAL_MS} ms: {verdict}{vs_peer}{vs_floor}.{tmp}"
        )
    io = rows.get("io")
    if io and io.inproc:
        x = med(io.inproc) / IDEAL_IO
        verdict = "**met**" if x <= GOAL_IO else f"**missed** ({x:.3f}× against {GOAL_IO}×)"
        whole = f" Whole command: {med(io.cli):.2f} s." if io.cli else ""
        t = rows.get("io_tmpfs")
        if t and t.inproc:
            whole += f" With the state dir on tmpfs (diagnostic): {med(t.inproc) / IDEAL_IO:.2f}×."
        out.append(
            f"- W3: {med(io.inproc):.3f} s median (best {min(io.inproc):.3f} s) = {x:.3f}× the "
            f"ideal {IDEAL_IO:.1f} s; goal ≤ {GOAL_IO}×: {verdict}.{whole}"
        )
    for name in ("big", "wide"):
        big = rows.get(name)
        if not big or not big.cli_rss:
            continue
        peak = max(big.cli_rss)
        verdict = "**met**" if peak < GOAL_MIB else f"**missed** by {peak - GOAL_MIB:.0f} MiB"
        inproc = big if big.inproc else rows.get(f"{name}_tmpfs")
        split = (
            f", of which planning (`runtime.plan`: load + validate + plan) "
            f"{med(inproc.plan_s):.1f} s and the run {med(inproc.inproc):.1f} s in-process"
            if inproc and inproc.inproc
            else ""
        )
        out.append(
            f"- {WORKLOAD[name][1]}: peak RSS {peak:.0f} MiB for the whole `blocks run` (max "
            f"over runs); goal < {GOAL_MIB} MB: {verdict}. The command takes "
            f"{med(big.cli):.1f} s{split}."
        )
    hops = []
    for suffix, where in (("_tmpfs", "state on tmpfs"), ("", "state on disk")):
        for sync, plain in (("chain_sync", "chain"), ("fanout_sync", "fanout")):
            s, a = rows.get(sync + suffix), rows.get(plain + suffix)
            if s and a and s.inproc and a.inproc:
                hop = (med(s.inproc) - med(a.inproc)) / a.tasks * 1e3
                hops.append(f"{hop:.3f} ms on {WORKLOAD[plain][1].split(' ')[0]} ({where})")
    if hops:
        out.append(
            "- Sync functions: a plain `def` step runs in a worker thread "
            "(`anyio.to_thread.run_sync`); the difference from the same flow with an `async def` "
            "no-op, per step (medians): " + "; ".join(hops) + ". The rows marked **sync** carry it."
        )
    return out


def report(
    rows: dict[str, Row],
    peers: dict[str, list[dict[str, Any]]],
    peer_raw: dict[str, Any],
    info: dict[str, str],
    args: argparse.Namespace,
    profiles: list[str],
    floors: dict[str, list[float]],
    engine: dict[str, dict[str, str]] | None = None,
    times: dict[str, float] | None = None,
) -> str:
    out = _preamble(info, args, peer_raw, times)
    if engine:
        before, after = engine["before"], engine["after"]
        changed = [p for p in HOT_PATH if before.get(p) != after.get(p)]
        out += [
            (
                f"Engine: the work tree at commit {before.get('HEAD')}"
                if before.get("HEAD") != "?"
                else "Engine: the work tree (commit not read: `--no-git`)"
            )
            + (
                f" (HEAD {after.get('HEAD')} at the end: other engineers commit meanwhile)"
                if after.get("HEAD") != before.get("HEAD")
                else ""
            )
            + (
                "; **changed during the run**: " + ", ".join(f"`{p}`" for p in changed) + "."
                if changed
                else "; the run's hot-path files (`engine/executor/local.py`, `journal.py`, "
                "`workers.py`, `outputs.py`, `cache.py`, `engine/steps/python.py`, "
                "`engine/runtime.py`, `plugins.py`, `redact.py`) did not change during the "
                "measurements."
            ),
            "",
        ]
    out += _table(rows, peers) + _peer_status(peer_raw)
    out += _memory(rows, floors) + _goals(rows, peers)
    problems = [f"`{n}`: {p}" for n, r in rows.items() for p in r.problems]
    if problems:
        out += ["", "Problems:", ""] + [f"- {p}" for p in problems]
    if profiles:
        out += ["", "### Where the time goes (cProfile of the in-process runs)", ""]
        out += [
            "Command: the same script with `--profile`; the profiles are written to "
            "`bench/out/executor/profile-<flow>.prof` (`python -m pstats` reads them).",
            "",
        ]
        for p in profiles:
            out += [p, ""]
    return "\n".join(out).rstrip() + "\n"


def write_docs(section: str) -> None:
    # re-read right before writing: another section of this file may have just changed
    with open(DOCS, encoding="utf-8") as fh:
        text = fh.read()
    i, j = text.find(MARK_START), text.find(MARK_END)
    old = text[i:j] if 0 <= i < j else ""
    n, m = old.find(NOTES_START), old.find(NOTES_END)
    notes = old[n : m + len(NOTES_END)] if 0 <= n < m else f"{NOTES_START}\n{NOTES_END}"
    section = section.rstrip("\n") + "\n\n" + notes + "\n"
    if i < 0 and j < 0:
        text = text.rstrip("\n") + f"\n\n{MARK_START}\n{section.rstrip()}\n{MARK_END}\n"
    elif i < 0 or j < i:
        sys.exit(f"{rel(DOCS)}: executor markers out of order; not writing")
    else:
        text = text[: i + len(MARK_START)] + "\n" + section.rstrip("\n") + "\n" + text[j:]
    with open(DOCS, "w", encoding="utf-8", newline="\n") as fh:
        fh.write(text)
    log(f"wrote {rel(DOCS)} (between the executor markers)")


# ---------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds over all flows (default 3)")
    parser.add_argument(
        "--inner", type=int, default=3, help="timed in-process runs per child (default 3)"
    )
    parser.add_argument(
        "--flows",
        default=",".join(FLOWS),
        help=f"comma-separated subset of {','.join(FLOWS)}",
    )
    parser.add_argument(
        "--peers-dir",
        default=os.environ.get("PEERBENCH_DIR", os.path.expanduser("~/.cache/blocks-peerbench")),
        help="where run_all.py left results/ (default $PEERBENCH_DIR)",
    )
    parser.add_argument("--profile", action="store_true", help="add a cProfile per task")
    parser.add_argument(
        "--no-tmpfs", action="store_true", help="skip the in-process rows with the state on tmpfs"
    )
    parser.add_argument("--write-docs", action="store_true", help="record in docs/benchmarks.md")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="measure nothing: re-render the last run (bench/out/executor/results.json) with "
        "the peers' current results",
    )
    parser.add_argument(
        "--no-git",
        action="store_true",
        help="do not ask git for the commit (the report names the work tree only)",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--profile-to", help=argparse.SUPPRESS)
    return parser.parse_args()


RESULTS = os.path.join(OUT, "results.json")
HOT_PATH = (
    "engine/executor/local.py",
    "engine/executor/journal.py",
    "engine/executor/workers.py",
    "engine/executor/outputs.py",
    "engine/executor/cache.py",
    "engine/steps/python.py",
    "engine/runtime.py",
    "engine/plugins.py",
    "engine/redact.py",
)
"""The files a run goes through: other engineers edit the engine while this runs."""


def engine_state(git: bool = True) -> dict[str, str]:
    """HEAD (read-only git) and a digest of each hot-path file as it is in the work tree."""
    state = {"HEAD": "?"}
    if git:
        try:
            head = subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"],
                cwd=ROOT,
                capture_output=True,
                text=True,
                check=False,
            )
            state["HEAD"] = head.stdout.strip() or "?"
        except OSError:
            pass
    for path in HOT_PATH:
        try:
            with open(os.path.join(ROOT, path), "rb") as fh:
                state[path] = hashlib.sha256(fh.read()).hexdigest()[:12]
        except OSError:
            state[path] = "missing"
    return state


def measure(args: argparse.Namespace) -> dict[str, Any]:
    names = [n for n in args.flows.split(",") if n]
    load_before = os.getloadavg()
    engine_before = engine_state(not args.no_git)
    write_flows(FLOW_DIR)
    shutil.rmtree(STATE, ignore_errors=True)
    log("warm-up (bytecode cache) ...")
    chain = rel(os.path.join(FLOW_DIR, "chain.yaml"))
    run_proc([os.path.join(BIN, "blocks"), "run", chain, "--no-cache", "--log-format", "off"])
    tmpfs = tempfile.mkdtemp(prefix="blocks-bench-executor-", dir=SHM) if os.path.isdir(SHM) else ""
    rows = {n: Row(n, n, FLOWS[n][1]) for n in names}
    if tmpfs and not args.no_tmpfs:
        for n in [n for n in TMPFS_FLOWS if n in names]:
            rows[f"{n}_tmpfs"] = Row(f"{n}_tmpfs", n, FLOWS[n][1], state=tmpfs)
    floors: dict[str, list[float]] = {"in the state dir": [], "on tmpfs": []}
    profiles = []
    try:
        for rnd in range(args.rounds):
            floors["in the state dir"].append(mkdir_floor(os.path.join(STATE, "mkdir-floor")))
            if tmpfs:
                floors["on tmpfs"].append(mkdir_floor(os.path.join(tmpfs, "mkdir-floor")))
            for name, r in rows.items():
                if rnd and r.flow in ONCE:
                    continue
                if name not in NO_INPROC_ON_DISK:
                    inproc_round(r, 1 if r.flow in ("big", "wide") else args.inner)
                if name in CLI_FLOWS:
                    cli_round(r)
                log(
                    f"round {rnd + 1} {name:14s} in-process {fmt_wall(r.inproc)} s"
                    f"  cli {fmt_wall(r.cli)} s  rss {max(r.cli_rss or [0]):.0f} MiB"
                    f"  load {os.getloadavg()[0]:.2f}"
                )
                shutil.rmtree(os.path.join(r.state, "runs"), ignore_errors=True)
        if args.profile:
            for name in [n for n in PROFILE_ROWS if n in rows and rows[n].inproc]:
                r = rows[name]
                path = os.path.join(OUT, f"profile-{name}.prof")
                log(f"profiling {name} ...")
                argv = [sys.executable, __file__, "--child", r.flow, "--inner", str(args.inner)]
                res = run_proc([*argv, "--profile-to", path], r.state)
                if res.code == 0:
                    plain = med(r.inproc) / r.tasks * 1e3
                    profiles.append(profile_report(name, path, args.inner, r.tasks, plain))
                else:
                    log(f"profile of {name} failed: {res.stderr[-400:]}")
    finally:
        if tmpfs:
            shutil.rmtree(tmpfs, ignore_errors=True)
    engine_after = engine_state(not args.no_git)
    results = {
        "engine": {"before": engine_before, "after": engine_after},
        "rows": {n: dataclasses.asdict(r) for n, r in rows.items()},
        "floors": floors,
        "profiles": profiles,
        "info": machine(load_before, os.getloadavg()),
        "options": {
            "rounds": args.rounds,
            "inner": args.inner,
            "profile": args.profile,
            "no_git": args.no_git,
        },
    }
    with open(RESULTS, "w", encoding="utf-8") as fh:
        json.dump(results, fh, indent=1)
    log(f"measurements saved to {rel(RESULTS)}")
    return results


def main() -> None:
    args = parse_args()
    if args.child:
        child_main(args.child, args.inner, args.profile_to)
        return
    if args.report_only:
        with open(RESULTS, encoding="utf-8") as fh:
            results = json.load(fh)
    else:
        results = measure(args)
    for key, value in results["options"].items():
        setattr(args, key, value)
    rows = {n: Row(**r) for n, r in results["rows"].items()}
    summary, raw = load_peers(args.peers_dir)
    if not summary:
        log(f"no peer results under {args.peers_dir}/results: the table has blocks only")
    section = report(
        rows,
        peer_rows(summary),
        raw,
        results["info"],
        args,
        results["profiles"],
        results["floors"],
        results.get("engine"),
        peer_times(args.peers_dir),
    )
    section = "## Executor\n\n" + section
    print(section)
    if args.write_docs:
        write_docs(section)


if __name__ == "__main__":
    main()
