"""Benchmark LLM calls: N calls at concurrency C against a local server that answers in L ms.

    .venv/bin/python bench/bench_llm.py [--calls 1000] [--concurrency 100] [--latency-ms 20]
                                        [--rounds 3] [--inner 2] [--profile] [--write-docs]
                                        [--report-only]

The goal (issue 4): 1,000 llm calls against the local server with 20 ms latency and
concurrency 100 finish within 1.3x of the ideal, ceil(1000 / 100) x 20 ms = 0.2 s, and the
engine's overhead per call is measured against bare `litellm.acompletion` in the same run.

The server is `engine.testing.fake_llm` (`python -m engine.testing.fake_llm`) on 127.0.0.1
with the script `[{"latency_ms": L, "content": "ok"}]`, in a process of its own so that it
does not share the client's interpreter lock; a fresh one for every measurement, so its
counters (requests, most requests in flight at once) and its CPU time belong to that
measurement alone. Each path below runs in a child process of its own:

* floor, aiohttp: POST + `json()` with an `aiohttp` session (connection limit C), no LLM
  library: what a Python client on this machine can do at all;
* openai SDK: `AsyncOpenAI(base_url=..., max_retries=0).chat.completions.create` (litellm
  calls the OpenAI-compatible server through this SDK);
* **bare litellm**: `litellm.acompletion(model="openai/gpt-4o-mini", api_base=server, ...)`
  with the arguments the gateway passes (timeout, `num_retries=0`, `max_retries=0`; the key
  from `OPENAI_API_KEY`), under an `asyncio.Semaphore(C)`: the reference;
* litellm Router: `litellm.Router(...).acompletion`, as the gateway called litellm before
  it called `litellm.acompletion` directly (kept as a row to show what the Router costs);
* **gateway**: `engine.providers.Gateway.chat` built as a run builds it (a `CircuitBoard`
  persisted under the state dir, `RateLimits`, a `Budget`, a `Ledger`, a `Redactor` holding
  the API key), under the same semaphore;
* **flow, in-process**: a generated flow, one `llm` step with `for_each` over N items,
  `for_each.concurrency` and `limits.concurrency` C; `Runtime.plan` once, then
  `anyio.run(runtime.run(plan, use_cache=False, bundle=False))` timed (the executor, the
  journal, the llm step kind and the gateway);
* **flow, whole command**: `blocks run FLOW --no-cache --log-format off` as its own process
  (start-up, the litellm import, planning, the run and its bundle), once per round.

In-process children import what they use (timed apart), run one untimed warm-up batch of
`--warmup` calls (for the flow, a flow of that many items), then `--inner` timed batches of
N calls; every batch runs in a fresh event loop (`asyncio.run` / `anyio.run`), as every run
of the engine does. Wall time is `time.perf_counter`, CPU time `time.process_time` (all
threads of the client process, the event loop's default executor and the journal's commit
thread included), peak RSS the child's VmHWM (GNU time's %M for the whole command). Rounds
run the paths round-robin, so a burst of load on the shared machine hits every row alike;
figures are medians over every timed batch.

Per-call overhead of the engine = (engine path - bare litellm) / N, in wall time and in CPU
time. The gateway and flow children also time bare litellm batches, alternating with their
own in the same process, and the overhead is the median of those paired differences: on a
shared machine the load drifts less within a pair than between two rows; the whole command
is compared with the bare row's medians. The `*_stub` paths run the same children with
litellm replaced by `StubLLM` (no server, no HTTP): the engine's own CPU cost per call.

Prints one Markdown report; `--write-docs` puts it in docs/benchmarks.md between
`<!-- bench:llm:start -->` and `<!-- bench:llm:end -->` (appended at the end if missing),
keeping the hand-written part between `<!-- bench:llm:notes:start -->` and
`<!-- bench:llm:notes:end -->`, and touches nothing else. `--profile` adds one untimed batch
under cProfile (CPU time of the event-loop thread) to the bare litellm, gateway and flow
children and writes the profiles to bench/out/llm/ (`profile-NAME.txt`). Measurements are
saved to bench/out/llm/results.json; `--report-only` re-renders them. Timing is never
asserted: this is not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import math
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import asdict, dataclass, field
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OUT = os.path.join(HERE, "out", "llm")
STATE = os.path.join(OUT, "state")
PROJECT = os.path.join(OUT, "project")
DOCS = os.path.join(ROOT, "docs", "benchmarks.md")
RESULTS = os.path.join(OUT, "results.json")
MARK_START, MARK_END = "<!-- bench:llm:start -->", "<!-- bench:llm:end -->"
NOTES_START, NOTES_END = "<!-- bench:llm:notes:start -->", "<!-- bench:llm:notes:end -->"
BIN = os.path.dirname(sys.executable)  # the venv's bin/ (not resolved: the venv is the point)
TIME = "/usr/bin/time"
GOAL = 1.3
MODEL = "openai/gpt-4o-mini"
KEY = "sk-bench-not-a-real-key-0000"
"""A dummy key: the fake server accepts any, and only ever records its last 4 characters."""

CASES: dict[str, str] = {
    "aiohttp": "floor: `aiohttp` POST + `json()`, no LLM library",
    "openai": "`openai` SDK (its default httpx transport), `AsyncOpenAI.chat.completions.create`",
    "litellm": "**bare `litellm.acompletion`** (the reference)",
    "router": "`litellm.Router.acompletion` (the gateway's call before this change)",
    "gateway": "**engine: `Gateway.chat`** (retry loop, circuit, rate limit, budget, ledger)",
    "flow": "**engine: flow in-process**, `llm` step × N via `for_each` (executor + journal)",
    "cli": "**engine: `blocks run`**, the same flow as a whole command",
    "stub": "stub provider alone: `acompletion` returning a canned reply, no HTTP",
    "gateway_stub": "engine: `Gateway.chat` over the stub",
    "flow_stub": "engine: flow in-process over the stub (executor, journal, `llm` step, gateway)",
}
"""Path name -> its label in the report, in report order."""
ENGINE = ("gateway", "flow", "cli")
STUBBED = ("stub", "gateway_stub", "flow_stub")
"""Paths run with litellm replaced by `StubLLM` (no server): the engine's own CPU cost."""
PROFILED = ("litellm", "gateway", "flow", "flow_stub")
PAIRED = {"gateway": "litellm", "flow": "litellm", "gateway_stub": "stub", "flow_stub": "stub"}
"""Paths whose child also times batches of the reference path, alternating with its own."""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def rel(path: str) -> str:
    return os.path.relpath(path, ROOT)


def child_env() -> dict[str, str]:
    env = dict(
        os.environ,
        BLOCKS_STATE_DIR=STATE,
        OPENAI_API_KEY=KEY,
        LITELLM_LOCAL_MODEL_COST_MAP="True",
        PYTHONPYCACHEPREFIX=os.path.join(OUT, "pycache"),
    )
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def ideal_s(calls: int, concurrency: int, latency_ms: float) -> float:
    return math.ceil(calls / concurrency) * latency_ms / 1000


# ---------------------------------------------------------------------------------------
# the generated flow


def write_flow(base_url: str, name: str, items: int, concurrency: int) -> str:
    """A flow with one llm step fanned out over `items` items; returns its path."""
    os.makedirs(os.path.join(PROJECT, "prompts"), exist_ok=True)
    with open(os.path.join(PROJECT, "blocks.toml"), "w", encoding="utf-8") as fh:
        fh.write("# the project root of the generated flows (engine.checks.find_project_root)\n")
    prompt = os.path.join(PROJECT, "prompts", "ask.md")
    with open(prompt, "w", encoding="utf-8") as fh:
        fh.write("Item ${{ vars.item }}: answer with one word.\n")
    values = ", ".join(str(i) for i in range(items))
    lines = [
        "version: 1",
        "kind: flow",
        f"name: bench-llm-{name}",
        f"description: one llm step over {items} items, {concurrency} at a time",
        "secrets: [OPENAI_API_KEY]",
        "models:",
        "  fast:",
        f"    model: {MODEL}",
        f"    params: {{api_base: {json.dumps(base_url)}}}",
        "limits:",
        f"  concurrency: {concurrency}",
        "steps:",
        "  ask:",
        "    kind: llm",
        "    model: fast",
        "    prompt: prompts/ask.md",
        '    vars: {item: "${{ item }}"}',
        "    reask: 0",
        "    for_each:",
        f"      items: [{values}]",
        f"      concurrency: {concurrency}",
    ]
    path = os.path.join(PROJECT, f"{name}.yaml")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    return path


# ---------------------------------------------------------------------------------------
# the server


class Server:
    """`python -m engine.testing.fake_llm` on an ephemeral loopback port, its own process."""

    def __init__(self, latency_ms: float) -> None:
        os.makedirs(OUT, exist_ok=True)
        script = os.path.join(OUT, "script.json")
        with open(script, "w", encoding="utf-8") as fh:
            json.dump([{"latency_ms": latency_ms, "content": "ok"}], fh)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "engine.testing.fake_llm", "--port", "0", "--script", script],
            cwd=ROOT,
            env=child_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        found = re.search(r"(http://127\.0\.0\.1:\d+/v1)$", line)
        if not found:
            self.stop()
            raise RuntimeError(f"fake-llm did not start: {line!r}")
        self.base_url = found.group(1)

    def cpu_s(self) -> float:
        """User + system CPU time of the server process so far."""
        with open(f"/proc/{self.proc.pid}/stat", encoding="ascii") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stats(self) -> dict[str, Any]:
        url = self.base_url.removesuffix("/v1") + "/_fake/stats"
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310  (loopback)
            data: dict[str, Any] = json.loads(response.read())
        return data

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()


# ---------------------------------------------------------------------------------------
# child processes: one path each (`--child NAME`)

Batch = Callable[[int], Coroutine[Any, Any, list[str]]]


def messages(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Item {i}: answer with one word."}]


async def gather(one: Callable[[int], Awaitable[str]], n: int, concurrency: int) -> list[str]:
    """Run `one(0..n-1)`, at most `concurrency` at a time; failures become their type name."""
    gate = asyncio.Semaphore(concurrency)

    async def guarded(i: int) -> str:
        async with gate:
            try:
                return await one(i)
            except Exception as exc:
                return f"error: {type(exc).__name__}: {str(exc)[:120]}"

    return list(await asyncio.gather(*(guarded(i) for i in range(n))))


class StubLLM:
    """Stands in for the litellm module in `engine.providers` (`_LITELLM`): `acompletion`
    yields to the event loop once and returns a canned reply shaped like litellm's, so the
    engine's own CPU cost per call can be measured without litellm's or HTTP's."""

    @staticmethod
    def cost_per_token(
        *, model: str, prompt_tokens: int, completion_tokens: int
    ) -> tuple[float, float]:
        return prompt_tokens * 1.5e-7, completion_tokens * 6e-7

    @staticmethod
    async def acompletion(**kwargs: Any) -> Any:
        from types import SimpleNamespace  # noqa: PLC0415

        await asyncio.sleep(0)
        message = SimpleNamespace(content="ok")
        return SimpleNamespace(
            choices=[SimpleNamespace(message=message, finish_reason="stop")],
            usage=SimpleNamespace(prompt_tokens=12, completion_tokens=1),
            model="gpt-4o-mini-2024-07-18",
            system_fingerprint="fp_fake0001",
            _hidden_params={"response_cost": 1.35e-06},
        )


def install_stub() -> None:
    import engine.providers  # noqa: PLC0415

    engine.providers._LITELLM = StubLLM()  # a stand-in for the litellm module


def build_calls(name: str, url: str, concurrency: int) -> Batch:
    """The batch function of an in-process call path (imports happen here)."""
    if name == "stub":

        async def stub_batch(n: int) -> list[str]:
            async def one(i: int) -> str:
                reply = await StubLLM.acompletion(
                    model=MODEL,
                    messages=messages(i),
                    api_base=url,
                    timeout=60.0,
                    num_retries=0,
                    max_retries=0,
                )
                return str(reply.choices[0].message.content)

            return await gather(one, n, concurrency)

        return stub_batch
    if name == "aiohttp":
        import aiohttp  # noqa: PLC0415

        async def aiohttp_batch(n: int) -> list[str]:
            connector = aiohttp.TCPConnector(limit=concurrency)
            headers = {"Authorization": f"Bearer {KEY}"}
            async with aiohttp.ClientSession(connector=connector) as session:

                async def one(i: int) -> str:
                    body = {"model": "gpt-4o-mini", "messages": messages(i)}
                    async with session.post(
                        url + "/chat/completions", json=body, headers=headers
                    ) as response:
                        data = await response.json()
                    return str(data["choices"][0]["message"]["content"])

                return await gather(one, n, concurrency)

        return aiohttp_batch
    if name == "openai":
        from openai import AsyncOpenAI  # noqa: PLC0415

        async def openai_batch(n: int) -> list[str]:
            client = AsyncOpenAI(base_url=url, api_key=KEY, max_retries=0)

            async def one(i: int) -> str:
                reply = await client.chat.completions.create(
                    model="gpt-4o-mini",
                    messages=[{"role": "user", "content": messages(i)[0]["content"]}],
                    timeout=60.0,
                )
                return str(reply.choices[0].message.content)

            try:
                return await gather(one, n, concurrency)
            finally:
                await client.close()

        return openai_batch
    # litellm, set up as engine.providers does (its price table from the package)
    from engine.providers import _litellm  # noqa: PLC0415

    litellm = _litellm()
    if name == "litellm":

        async def litellm_batch(n: int) -> list[str]:
            async def one(i: int) -> str:
                reply = await litellm.acompletion(
                    model=MODEL,
                    messages=messages(i),
                    api_base=url,
                    timeout=60.0,
                    num_retries=0,
                    max_retries=0,
                )
                return str(reply.choices[0].message.content)

            return await gather(one, n, concurrency)

        return litellm_batch
    if name == "router":

        async def router_batch(n: int) -> list[str]:
            router = litellm.Router(
                model_list=[
                    {"model_name": MODEL, "litellm_params": {"model": MODEL, "api_base": url}}
                ],
                num_retries=0,
                set_verbose=False,
            )

            async def one(i: int) -> str:
                reply = await router.acompletion(model=MODEL, messages=messages(i), timeout=60.0)
                return str(reply.choices[0].message.content)

            return await gather(one, n, concurrency)

        return router_batch
    if name in ("gateway", "gateway_stub"):
        from pathlib import Path  # noqa: PLC0415

        from engine.providers import Gateway  # noqa: PLC0415
        from engine.providers.budget import Budget, Ledger  # noqa: PLC0415
        from engine.providers.circuits import CircuitBoard  # noqa: PLC0415
        from engine.providers.ratelimit import RateLimits  # noqa: PLC0415
        from engine.redact import Redactor  # noqa: PLC0415
        from engine.spec import ModelRoute  # noqa: PLC0415

        route = ModelRoute(model=MODEL, params={"api_base": url})

        async def gateway_batch(n: int) -> list[str]:
            # built per batch, as a run builds its own (Runtime._resources)
            gateway = Gateway(
                {"fast": route},
                circuits=CircuitBoard(Path(STATE) / "circuits.json"),
                limits=RateLimits({}),
                budget=Budget(None, None, name="run"),
                ledger=Ledger(),
                redactor=Redactor([KEY]),
            )

            async def one(i: int) -> str:
                reply = await gateway.chat("fast", messages(i), step="ask", instance=f"ask[{i}]")
                return reply.content

            return await gather(one, n, concurrency)

        return gateway_batch
    raise SystemExit(f"unknown path {name!r}")


def vm_hwm_mib() -> float:
    """This process's peak resident set size (VmHWM), MiB."""
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


Run = Callable[[], list[str]]


def flow_batches(args: argparse.Namespace) -> tuple[Run, Run, float]:
    """The timed and the warm-up runs of the generated flows, and the planning time."""
    import anyio  # noqa: PLC0415

    from engine.runtime import Runtime, load_settings  # noqa: PLC0415

    runtime = Runtime(load_settings(args.flow))
    t0 = time.perf_counter()
    plan = runtime.plan(args.flow)
    planned = time.perf_counter() - t0
    warm_plan = runtime.plan(args.warm_flow)

    def run_flow(flow_plan: Any) -> list[str]:
        outcome = anyio.run(lambda: runtime.run(flow_plan, given={}, use_cache=False, bundle=False))
        shutil.rmtree(runtime.run_dir(outcome.run_id), ignore_errors=True)
        state = outcome.steps["ask"]
        if outcome.status != "succeeded":
            return [f"error: run {outcome.status}: {state.status} {state.error}"]
        return [str(v) for v in state.result]

    return (lambda: run_flow(plan)), (lambda: run_flow(warm_plan)), planned


def call_batches(name: str, args: argparse.Namespace) -> tuple[Run, Run]:
    """The timed and the warm-up batches of an in-process call path."""
    calls = build_calls(name, args.url, args.concurrency)
    return (lambda: asyncio.run(calls(args.calls))), (lambda: asyncio.run(calls(args.warmup)))


def timed(run: Run, walls: list[float], cpus: list[float], results: dict[str, int]) -> None:
    w0, c0 = time.perf_counter(), time.process_time()
    out = run()
    walls.append(time.perf_counter() - w0)
    cpus.append(time.process_time() - c0)
    for value in out:
        results[value] = results.get(value, 0) + 1


def child_main(args: argparse.Namespace) -> None:
    """Prints one JSON line with the walls, CPU times and results of the timed batches.

    For the paths in PAIRED, the same process also runs bare `litellm.acompletion` batches,
    alternating with the engine's (bare first in even iterations, second in odd ones), so
    the overhead can be read from pairs that shared the process and the machine's load."""
    name = args.child
    started = time.perf_counter()
    planned = 0.0
    if name in STUBBED:
        install_stub()
    if name in ("flow", "flow_stub"):
        run, warm_run, planned = flow_batches(args)
    else:
        run, warm_run = call_batches(name, args)
    pair: tuple[Run, Run] | None = None
    if name in PAIRED:
        pair = call_batches(PAIRED[name], args)
    imports = time.perf_counter() - started - planned
    rss_ready = vm_hwm_mib()
    t0 = time.perf_counter()
    warm = warm_run()
    first = time.perf_counter() - t0
    if pair is not None:
        warm += pair[1]()
    walls: list[float] = []
    cpus: list[float] = []
    pair_walls: list[float] = []
    pair_cpus: list[float] = []
    results: dict[str, int] = {}
    pair_results: dict[str, int] = {}
    for i in range(args.inner):
        if pair is not None and i % 2 == 0:
            timed(pair[0], pair_walls, pair_cpus, pair_results)
        timed(run, walls, cpus, results)
        if pair is not None and i % 2 == 1:
            timed(pair[0], pair_walls, pair_cpus, pair_results)
    if args.profile_to:  # one more batch, untimed: the profiler would distort the figures
        import cProfile  # noqa: PLC0415

        prof = cProfile.Profile(time.thread_time)  # CPU of the event loop thread, not waits
        prof.enable()
        run()
        prof.disable()
        prof.dump_stats(args.profile_to)
    for value, count in pair_results.items():
        if value != "ok":
            results[f"{PAIRED[name]} (paired): {value}"] = count
    print(
        json.dumps(
            {
                "imports_s": imports,
                "plan_s": planned,
                "first_s": first,
                "walls": walls,
                "cpus": cpus,
                "pair_walls": pair_walls,
                "pair_cpus": pair_cpus,
                "results": results,
                "warm_errors": sum(1 for v in warm if v.startswith("error")),
                "rss_ready_mib": rss_ready,
                "rss_peak_mib": vm_hwm_mib(),
            }
        ),
        flush=True,
    )


# ---------------------------------------------------------------------------------------
# the parent


@dataclass
class Row:
    name: str
    walls: list[float] = field(default_factory=list)
    cpus: list[float] = field(default_factory=list)
    pair_walls: list[float] = field(default_factory=list)  # bare litellm, same child
    pair_cpus: list[float] = field(default_factory=list)
    rss: list[float] = field(default_factory=list)
    rss_ready: list[float] = field(default_factory=list)
    imports_s: list[float] = field(default_factory=list)
    first_s: list[float] = field(default_factory=list)
    run_s: list[float] = field(default_factory=list)  # `blocks run`: the run as printed
    server_cpu_per_request_ms: list[float] = field(default_factory=list)
    server_max_in_flight: list[int] = field(default_factory=list)
    server_requests: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


@dataclass
class Proc:
    wall: float
    cpu: float
    code: int
    rss_mib: float
    stdout: str
    stderr: str


def run_proc(argv: list[str]) -> Proc:
    """One process from the repository root, through GNU time for its peak RSS if there."""
    with (
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        tempfile.NamedTemporaryFile("r", suffix=".rss") as rss,
    ):
        use_time = os.access(TIME, os.X_OK)
        command = [TIME, "-f", "%M", "-o", rss.name, *argv] if use_time else argv
        start = time.perf_counter()
        proc = subprocess.Popen(command, cwd=ROOT, env=child_env(), stdout=out, stderr=err)
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
            usage.ru_utime + usage.ru_stime,
            os.waitstatus_to_exitcode(status),
            peak_kib / 1024,
            out.read().decode(errors="replace"),
            err.read().decode(errors="replace"),
        )


_PRINTED = re.compile(r"succeeded in (?:(\d+)ms|([\d.]+)s|(\d+)m(\d+)s)")


def measure(row: Row, args: argparse.Namespace, round_no: int) -> None:
    """One child (or one `blocks run`) against a fresh server."""
    server = Server(args.latency_ms)
    try:
        cpu0 = server.cpu_s()
        stats0 = server.stats()
        if row.name == "cli":
            measure_cli(row, args, server.base_url)
        else:
            measure_child(row, args, server.base_url, round_no)
        stats = server.stats()
        requests = stats["requests"] - stats0["requests"]
        row.server_requests.append(requests)
        row.server_max_in_flight.append(int(stats["max_concurrency"]))
        if requests:
            row.server_cpu_per_request_ms.append((server.cpu_s() - cpu0) / requests * 1000)
        bad_status = {k: v for k, v in stats["status_counts"].items() if k != "200"}
        if bad_status:
            row.problems.append(f"server answered {bad_status}")
    finally:
        server.stop()


def measure_cli(row: Row, args: argparse.Namespace, base_url: str) -> None:
    flow = write_flow(base_url, "flow", args.calls, args.concurrency)
    res = run_proc(
        [os.path.join(BIN, "blocks"), "run", rel(flow), "--no-cache", "--log-format", "off"]
    )
    shutil.rmtree(os.path.join(STATE, "runs"), ignore_errors=True)
    if res.code != 0:
        row.problems.append(f"`blocks run` exited {res.code}: {res.stdout[-300:]}")
        return
    row.walls.append(res.wall)
    row.cpus.append(res.cpu)
    row.rss.append(res.rss_mib)
    found = _PRINTED.search(res.stdout)
    if found:
        ms, s, m, s2 = found.groups()
        row.run_s.append(int(ms) / 1000 if ms else float(s) if s else int(m) * 60 + float(s2))


def measure_child(row: Row, args: argparse.Namespace, base_url: str, round_no: int) -> None:
    argv = [sys.executable, __file__, "--child", row.name, "--url", base_url]
    for option in ("calls", "concurrency", "warmup", "inner"):
        argv += [f"--{option}", str(getattr(args, option))]
    if row.name in ("flow", "flow_stub"):
        flow = write_flow(base_url, "flow", args.calls, args.concurrency)
        warm = write_flow(base_url, "warm", args.warmup, args.concurrency)
        argv += ["--flow", flow, "--warm-flow", warm]
    if args.profile and row.name in PROFILED:
        argv += ["--profile-to", os.path.join(OUT, f"profile-{row.name}-{round_no}.prof")]
    res = run_proc(argv)
    if res.code != 0:
        row.problems.append(f"child exited {res.code}: {res.stderr.strip()[-400:]}")
        return
    data = json.loads(res.stdout.strip().splitlines()[-1])
    row.walls += data["walls"]
    row.cpus += data["cpus"]
    row.pair_walls += data["pair_walls"]
    row.pair_cpus += data["pair_cpus"]
    row.rss.append(data["rss_peak_mib"])
    row.rss_ready.append(data["rss_ready_mib"])
    row.imports_s.append(data["imports_s"])
    row.first_s.append(data["first_s"])
    bad = {k: v for k, v in data["results"].items() if k != "ok"}
    if bad:
        row.problems.append(f"answers other than 'ok': {json.dumps(bad)[:300]}")
    if data["warm_errors"]:
        row.problems.append(f"{data['warm_errors']} failed calls in the warm-up")


def loadavg() -> tuple[float, float, float]:
    return os.getloadavg()


def machine() -> dict[str, Any]:
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    versions = {}
    for package in ("litellm", "openai", "httpx", "aiohttp", "anyio"):
        try:
            from importlib.metadata import version  # noqa: PLC0415

            versions[package] = version(package)
        except Exception:
            versions[package] = "?"
    return {
        "cpu": model,
        "nproc": os.cpu_count() or 0,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "kernel": f"{platform.system()} {platform.release()}",
        "versions": versions,
        "commit": work_tree_commit(),
    }


def work_tree_commit() -> str | None:
    """HEAD's commit, read from .git without running git (None if not a plain checkout)."""
    git = os.path.join(ROOT, ".git")
    try:
        with open(os.path.join(git, "HEAD"), encoding="ascii") as fh:
            head = fh.read().strip()
        if not head.startswith("ref: "):
            return head[:7]
        ref = head[5:]
        path = os.path.join(git, ref)
        if os.path.exists(path):
            with open(path, encoding="ascii") as fh:
                return fh.read().strip()[:7]
        with open(os.path.join(git, "packed-refs"), encoding="ascii") as fh:
            for line in fh:
                if line.rstrip().endswith(" " + ref):
                    return line.split()[0][:7]
    except OSError:
        return None
    return None


def measure_all(args: argparse.Namespace) -> dict[str, Any]:
    rows = {name: Row(name) for name in args.paths}
    shutil.rmtree(STATE, ignore_errors=True)
    os.makedirs(STATE, exist_ok=True)
    before = loadavg()
    started = dt.datetime.now(dt.UTC)
    for round_no in range(1, args.rounds + 1):
        for name in args.paths:
            log(f"round {round_no}/{args.rounds}: {name} (load {loadavg()[0]:.2f})")
            measure(rows[name], args, round_no)
    after = loadavg()
    return {
        "args": {
            k: getattr(args, k)
            for k in ("calls", "concurrency", "latency_ms", "rounds", "inner", "warmup", "paths")
        },
        "machine": machine(),
        "started": started.strftime("%Y-%m-%d %H:%M UTC"),
        "load_before": before,
        "load_after": after,
        "rows": {name: asdict(row) for name, row in rows.items()},
    }


# ---------------------------------------------------------------------------------------
# the report


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def fmt_s(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:.3f}"


def fmt_ms(value: float, digits: int = 2) -> str:
    return "—" if math.isnan(value) else f"{value:.{digits}f}"


def command_line(a: dict[str, Any]) -> str:
    parts = [
        ".venv/bin/python bench/bench_llm.py",
        f"--calls {a['calls']} --concurrency {a['concurrency']} --latency-ms {a['latency_ms']:g}",
        f"--rounds {a['rounds']} --inner {a['inner']}",
    ]
    if a["warmup"] != 200:
        parts.append(f"--warmup {a['warmup']}")
    if list(a["paths"]) != list(CASES):
        parts.append(f"--paths {','.join(a['paths'])}")
    return " ".join([*parts, "--write-docs"])


@dataclass
class Figures:
    """Medians of one row, per call where it says so."""

    wall: float
    best: float
    cpu: float
    runs: int

    pairs: int = 0
    pair_wall: float = math.nan  # median of (engine - bare litellm) over paired batches, s
    pair_cpu: float = math.nan
    pair_bare_cpu: float = math.nan  # bare litellm's own CPU in those pairs, median, s

    @classmethod
    def of(cls, row: dict[str, Any]) -> Figures:
        walls, cpus = row["walls"], row["cpus"]
        figures = cls(med(walls), min(walls) if walls else math.nan, med(cpus), len(walls))
        n = min(len(walls), len(row.get("pair_walls", ())))
        if n:
            figures.pairs = n
            figures.pair_wall = med([walls[i] - row["pair_walls"][i] for i in range(n)])
            figures.pair_cpu = med([cpus[i] - row["pair_cpus"][i] for i in range(n)])
            figures.pair_bare_cpu = med(row["pair_cpus"][:n])
        return figures


def report(data: dict[str, Any]) -> str:
    a, rows = data["args"], data["rows"]
    calls, conc, latency = a["calls"], a["concurrency"], a["latency_ms"]
    ideal = ideal_s(calls, conc, latency)
    figures = {name: Figures.of(row) for name, row in rows.items()}
    out = [
        f"## LLM calls: {calls:,} calls at concurrency {conc}",
        "",
        f"Goal (issue 4): {calls:,} `llm` calls against the local server with {latency:g} ms "
        f"latency and concurrency {conc} finish within {GOAL}× of ideal "
        f"(ceil({calls:,} / {conc}) × {latency:g} ms = {ideal:.3f} s, so ≤ {ideal * GOAL:.3f} "
        "s), and the engine's overhead per call is measured against bare "
        "`litellm.acompletion` in the same run.",
        "",
        *report_setup(data),
        *report_table(data, figures),
        *report_stub_table(data, figures),
        *report_problems(rows),
        *report_verdict(data, figures),
    ]
    return "\n".join(out)


def report_setup(data: dict[str, Any]) -> list[str]:
    a, m, rows = data["args"], data["machine"], data["rows"]
    vers = m["versions"]
    lb, la = data["load_before"], data["load_after"]
    commit = f"; work tree at commit {m['commit']} plus uncommitted changes" if m["commit"] else ""
    server_cpu = [v for r in rows.values() for v in r["server_cpu_per_request_ms"]]
    return [
        f"Command: `{command_line(a)}` (method in the docstring of `bench/bench_llm.py`).",
        "",
        f"Recorded {data['started']} on {m['nproc']} × {m['cpu']} (`nproc` {m['nproc']}), "
        f"{m['python']} ({m['kernel']}); litellm {vers['litellm']}, openai {vers['openai']}, "
        f"httpx {vers['httpx']}, aiohttp {vers['aiohttp']}, anyio {vers['anyio']}{commit}. "
        f"Load average (1, 5, 15 min) {lb[0]:.2f} / {lb[1]:.2f} / {lb[2]:.2f} before, "
        f"{la[0]:.2f} / {la[1]:.2f} / {la[2]:.2f} after. **A shared 2-core machine**: other "
        "test runs may have been going on; compare rows of this run, not runs.",
        "",
        "Server: `python -m engine.testing.fake_llm` on 127.0.0.1 with the script "
        f'`[{{"latency_ms": {a["latency_ms"]:g}, "content": "ok"}}]`, a fresh process for '
        f"every measurement; it used {fmt_ms(med(server_cpu))} ms of CPU per request "
        "(median), on the other core. Each path ran in a child process of its own: imports, "
        f"one untimed warm-up batch of {a['warmup']:,} calls, then {a['inner']} timed "
        f"batches of {a['calls']:,} calls, in each of {a['rounds']} rounds (round-robin; "
        "`blocks run` once per round), every batch in a fresh event loop. Wall: median "
        "(min) over the timed batches. CPU: the client process's user + system time over a "
        "batch (all its threads), per call. Engine over bare litellm: (path − bare "
        "`litellm.acompletion`) / calls; *paired*: the gateway and flow children also "
        "time bare litellm batches in the same process, alternating with their own, and the "
        "figure is the median of the per-pair differences (the shared machine's load drifts "
        "less within a pair than between rows). Server, most in flight: the "
        "most requests the server held at once (the concurrency it saw).",
        "",
    ]


def report_table(data: dict[str, Any], figures: dict[str, Figures]) -> list[str]:
    a, rows = data["args"], data["rows"]
    calls = a["calls"]
    ideal = ideal_s(calls, a["concurrency"], a["latency_ms"])
    bare = figures.get("litellm")
    out = [
        "| path | runs | wall s, median (min) | × ideal | calls/s | CPU ms per call "
        "| engine over bare litellm, ms per call: wall / CPU | peak RSS "
        "| server, most in flight |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| ideal: ceil({calls:,} / {a['concurrency']}) × {a['latency_ms']:g} ms | | "
        f"{ideal:.3f} | 1.00× | {calls / ideal:,.0f} | | | | |",
    ]
    for name, title in CASES.items():
        if name not in rows or name in STUBBED:
            continue
        r, f, label = rows[name], figures[name], title
        over = "—"
        if f.pairs:
            over = f"{f.pair_wall / calls * 1000:+.2f} / {f.pair_cpu / calls * 1000:+.2f} (paired)"
        elif name in ENGINE and bare is not None and f.runs and bare.runs:
            over = (
                f"{(f.wall - bare.wall) / calls * 1000:+.2f} / "
                f"{(f.cpu - bare.cpu) / calls * 1000:+.2f} (vs the bare row)"
            )
        if name == "cli" and r["run_s"]:
            label = label + (
                " (start-up with the litellm import, plan, run, bundle; the run itself "
                f"{med(r['run_s']):.2f} s as printed)"
            )
        flight = f"{max(r['server_max_in_flight'])}" if r["server_max_in_flight"] else "—"
        rss = f"{max(r['rss']):.0f} MiB" if r["rss"] else "—"
        rate = f"{calls / f.wall:,.0f}" if f.runs else "—"
        ratio = f"{f.wall / ideal:.2f}×" if f.runs else "—"
        out.append(
            f"| {label} | {f.runs} | {fmt_s(f.wall)} ({fmt_s(f.best)}) | {ratio} | {rate} | "
            f"{fmt_ms(f.cpu / calls * 1000)} | {over} | {rss} | {flight} |"
        )
    out.append("")
    return out


def report_stub_table(data: dict[str, Any], figures: dict[str, Figures]) -> list[str]:
    a, rows = data["args"], data["rows"]
    calls = a["calls"]
    if not any(name in rows for name in STUBBED):
        return []
    out = [
        "The engine's own cost, measured without litellm: the same children with litellm "
        "replaced in `engine.providers` by a stub whose `acompletion` yields once and "
        f"returns a canned reply (`StubLLM`; no server, no HTTP); {calls:,} calls at "
        f"concurrency {a['concurrency']}, paired with batches of the stub alone in the same "
        "process:",
        "",
        "| path | runs | CPU µs per call | over the stub alone, µs per call: wall / CPU "
        "| peak RSS |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in STUBBED:
        if name not in rows:
            continue
        f = figures[name]
        over = "—"
        if f.pairs:
            over = f"{f.pair_wall / calls * 1e6:+,.0f} / {f.pair_cpu / calls * 1e6:+,.0f}"
        rss = f"{max(rows[name]['rss']):.0f} MiB" if rows[name]["rss"] else "—"
        out.append(
            f"| {CASES[name]} | {f.runs} | {fmt_ms(f.cpu / calls * 1e6, 0)} | {over} | {rss} |"
        )
    out.append("")
    return out


def report_problems(rows: dict[str, Any]) -> list[str]:
    problems = [f"- {n}: {p}" for n, r in rows.items() for p in r["problems"]]
    if not problems:
        return []
    return ["Problems seen (the rows hold the batches that completed):", "", *problems, ""]


def report_verdict(data: dict[str, Any], figures: dict[str, Figures]) -> list[str]:
    a = data["args"]
    calls = a["calls"]
    ideal = ideal_s(calls, a["concurrency"], a["latency_ms"])
    goal = ideal * GOAL
    bare = figures.get("litellm")
    out = ["Verdict:", ""]
    if bare is not None and bare.runs:
        needed = goal / calls * 1000
        out.append(
            f"- **Goal ≤ {GOAL}× ideal ({goal:.3f} s): not met, and out of reach through "
            f"litellm on this machine.** Bare `litellm.acompletion`, with no engine at all, "
            f"took {bare.wall:.2f} s = {bare.wall / ideal:.1f}× ideal: it spends "
            f"{bare.cpu / calls * 1000:.2f} ms of CPU per call ({bare.cpu:.2f} s for "
            f"{calls:,} calls), nearly all of it on the one event-loop thread, so the calls "
            f"cannot finish sooner than that CPU time. {GOAL}× ideal leaves {needed:.2f} ms of "
            f"client CPU per call; litellm alone uses {bare.cpu / calls * 1000 / needed:.0f}× "
            "that."
        )
    for name in ("flow", "gateway"):
        f = figures.get(name)
        if f is not None and f.runs:
            out.append(
                f"- The engine end to end ({name}{', in-process' if name == 'flow' else ''}): "
                f"{f.wall:.2f} s = {f.wall / ideal:.1f}× ideal, {calls / f.wall:,.0f} calls/s."
            )
            break
    floor = figures.get("aiohttp")
    if floor is not None and floor.runs:
        within = "within" if floor.wall <= goal else "outside"
        budget = "under" if floor.cpu <= goal else "over"
        out.append(
            f"- Without an LLM library (the aiohttp floor) the same calls took "
            f"{floor.wall:.3f} s = {floor.wall / ideal:.2f}× ideal, {within} the {GOAL}× goal; "
            f"its {floor.cpu / calls * 1000:.2f} ms of CPU per call is {budget} the "
            f"{goal / calls * 1000:.2f} ms budget."
        )
    for name in ENGINE:
        f = figures.get(name)
        if f is None or not f.runs:
            continue
        if f.pairs:
            base = f.pair_bare_cpu
            out.append(
                f"- Engine over bare litellm, {name} (the part we control), paired in the same "
                f"processes ({f.pairs} pairs): {f.pair_cpu / calls * 1000:+.2f} ms of CPU per "
                f"call over bare litellm's {base / calls * 1000:.2f} ms "
                f"({(base + f.pair_cpu) / base:.2f}× on CPU time), "
                f"{f.pair_wall / calls * 1000:+.2f} ms of wall per call."
            )
        elif bare is not None and bare.runs:
            out.append(
                f"- Engine over bare litellm, {name}, against the bare row: "
                f"{f.wall / bare.wall:.2f}× on wall time, {f.cpu / bare.cpu:.2f}× on CPU "
                f"time; per call {(f.wall - bare.wall) / calls * 1000:+.2f} ms of wall and "
                f"{(f.cpu - bare.cpu) / calls * 1000:+.2f} ms of CPU."
            )
    out.append("")
    return out


DEFAULT_NOTES = f"""{NOTES_START}
### Reading the figures (hand-written; `--write-docs` keeps this part)

(to be written)
{NOTES_END}"""


def write_docs(text: str) -> None:
    # re-read right before writing: other sections of this file change under other hands
    with open(DOCS, encoding="utf-8") as fh:
        doc = fh.read()
    notes = DEFAULT_NOTES
    start, end = doc.find(MARK_START), doc.find(MARK_END)
    if start >= 0 and end > start:
        old = doc[start:end]
        n0, n1 = old.find(NOTES_START), old.find(NOTES_END)
        if n0 >= 0 and n1 > n0:
            notes = old[n0 : n1 + len(NOTES_END)]
        section = f"{MARK_START}\n{text}\n{notes}\n{MARK_END}"
        doc = doc[:start] + section + doc[end + len(MARK_END) :]
    else:
        section = f"{MARK_START}\n{text}\n{notes}\n{MARK_END}"
        doc = doc.rstrip("\n") + "\n\n" + section + "\n"
    tmp = DOCS + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(doc)
    os.replace(tmp, DOCS)
    log(f"wrote {rel(DOCS)}")


def print_profiles(rounds: int) -> None:
    import pstats  # noqa: PLC0415

    for name in PROFILED:
        files = [
            p
            for r in range(1, rounds + 1)
            if os.path.exists(p := os.path.join(OUT, f"profile-{name}-{r}.prof"))
        ]
        if not files:
            continue
        stats = pstats.Stats(files[0])
        for extra in files[1:]:
            stats.add(extra)
        text = os.path.join(OUT, f"profile-{name}.txt")
        with open(text, "w", encoding="utf-8") as fh:
            stats.stream = fh  # type: ignore[attr-defined]
            stats.sort_stats("cumulative").print_stats(80)
            stats.sort_stats("tottime").print_stats(40)
            stats.sort_stats("cumulative").print_stats(r"/engine/", 40)
        log(f"profile of {name}: {rel(text)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--inner", type=int, default=2, help="timed batches per child")
    parser.add_argument(
        "--warmup", type=int, default=200, help="calls in the untimed warm-up batch"
    )
    parser.add_argument(
        "--paths", default=",".join(CASES), help=f"comma-separated subset of {','.join(CASES)}"
    )
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--write-docs", action="store_true")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--flow", help=argparse.SUPPRESS)
    parser.add_argument("--warm-flow", help=argparse.SUPPRESS)
    parser.add_argument("--profile-to", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        sys.path.insert(0, ROOT)
        child_main(args)
        return 0
    args.paths = [p for p in args.paths.split(",") if p]
    unknown = set(args.paths) - set(CASES)
    if unknown:
        parser.error(f"unknown paths {sorted(unknown)}")
    if args.report_only:
        with open(RESULTS, encoding="utf-8") as fh:
            data = json.load(fh)
    else:
        data = measure_all(args)
        with open(RESULTS, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=1)
    text = report(data)
    print(text)
    if args.profile and not args.report_only:
        print_profiles(args.rounds)
    if args.write_docs:
        write_docs(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
