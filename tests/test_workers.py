"""The executor's lazily grown worker tasks (`engine.executor.workers`): jobs that never await
share one task, jobs that block each get one, a capacity limit bounds the tasks started,
queued jobs run in order, the event loop keeps turning, and a cancellation ends every job
that was still queued. No wall-clock assertions: concurrency is shown by jobs that could not
finish unless they ran at the same time."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from engine.executor import workers as workers_module
from engine.executor.local import RunOutcome
from engine.executor.workers import Tokens, Workers
from engine.runtime import Runtime, load_settings

SAFETY = 10.0
"""A bound that only a broken implementation reaches (it would otherwise hang the test)."""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_jobs_that_never_await_share_one_task_in_order() -> None:
    ran: list[int] = []
    tasks: set[int] = set()

    async def job(n: int) -> None:
        ran.append(n)
        tasks.add(anyio.get_current_task().id)

    async with anyio.create_task_group() as tg:
        pool: Workers[int] = Workers(tg, job, lambda n: None)
        for n in range(200):
            pool.submit(n)
    assert ran == list(range(200))
    assert len(tasks) == 1


@pytest.mark.anyio
async def test_jobs_that_block_run_at_the_same_time() -> None:
    n = 50
    started = 0
    everyone = anyio.Event()
    tasks: set[int] = set()

    async def job(_: int) -> None:
        nonlocal started
        tasks.add(anyio.get_current_task().id)
        started += 1
        if started == n:
            everyone.set()
        await everyone.wait()  # only returns once all n are in: they must overlap

    with anyio.fail_after(SAFETY):
        async with anyio.create_task_group() as tg:
            pool: Workers[int] = Workers(tg, job, lambda i: None)
            for i in range(n):
                pool.submit(i)
    assert started == n
    assert len(tasks) == n


@pytest.mark.anyio
async def test_room_bounds_the_tasks_and_a_kick_starts_the_next() -> None:
    tokens = 3
    limiter = anyio.CapacityLimiter(tokens)
    inside = 0
    most = 0
    tasks: set[int] = set()
    pool: Workers[int]

    async def job(_: int) -> None:
        nonlocal inside, most
        tasks.add(anyio.get_current_task().id)
        async with limiter:
            inside += 1
            most = max(most, inside)
            await anyio.sleep(0.001)
            inside -= 1
        pool.kick()

    with anyio.fail_after(SAFETY):
        async with anyio.create_task_group() as tg:
            pool = Workers(tg, job, lambda i: None, room=lambda: limiter.available_tokens)
            for i in range(30):
                pool.submit(i)
    assert most == tokens
    assert len(tasks) <= tokens + 1  # never a task that would only wait for a token


@pytest.mark.anyio
async def test_a_job_queued_behind_a_blocked_one_starts_without_waiting_for_it() -> None:
    release = anyio.Event()
    order: list[str] = []

    async def job(name: str) -> None:
        order.append(f"{name} started")
        if name == "slow":
            await release.wait()
        else:
            release.set()  # only reachable if "fast" got a task of its own
        order.append(f"{name} done")

    with anyio.fail_after(SAFETY):
        async with anyio.create_task_group() as tg:
            pool: Workers[str] = Workers(tg, job, lambda name: None)
            pool.submit("slow")
            pool.submit("fast")
    assert order == ["slow started", "fast started", "fast done", "slow done"]


@pytest.mark.anyio
async def test_a_long_run_of_jobs_lets_the_event_loop_turn(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(workers_module, "YIELD_EVERY", 0.0)  # yield after every job
    ticks = 0
    seen: list[int] = []

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await anyio.lowlevel.checkpoint()

    async def job(_: int) -> None:
        seen.append(ticks)  # never awaits: only the worker's own yields let the ticker run

    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        await anyio.lowlevel.checkpoint()
        async with anyio.create_task_group() as inner:
            pool: Workers[int] = Workers(inner, job, lambda i: None)
            for i in range(20):
                pool.submit(i)
        tg.cancel_scope.cancel()
    assert seen[-1] > seen[0]


@pytest.mark.anyio
async def test_cancelling_ends_every_queued_job_and_starts_none() -> None:
    started: list[int] = []
    never: list[int] = []
    blocked = anyio.Event()

    async def job(n: int) -> None:
        started.append(n)
        blocked.set()
        await anyio.sleep_forever()

    with anyio.fail_after(SAFETY):
        async with anyio.create_task_group() as tg:
            pool: Workers[int] = Workers(tg, job, never.append, room=lambda: 0)
            for n in range(5):
                pool.submit(n)
            await blocked.wait()
            tg.cancel_scope.cancel()
    assert started == [0]  # room 0: no task for a job that would only wait
    assert never == [1, 2, 3, 4]


@pytest.mark.anyio
async def test_a_worker_started_after_the_cancel_starts_no_job() -> None:
    started: list[int] = []
    never: list[int] = []

    async def job(n: int) -> None:
        started.append(n)

    async with anyio.create_task_group() as tg:
        tg.cancel_scope.cancel()
        pool: Workers[int] = Workers(tg, job, never.append)
        pool.submit(1)
        pool.submit(2)
    assert started == []
    assert never == [1, 2]


@pytest.mark.anyio
async def test_a_failing_job_fails_the_task_group() -> None:
    async def job(n: int) -> None:
        if n == 2:
            raise RuntimeError("boom")

    async def run_all() -> None:
        async with anyio.create_task_group() as tg:
            pool: Workers[int] = Workers(tg, job, lambda n: None)
            for n in range(5):
                pool.submit(n)

    with pytest.raises(ExceptionGroup) as caught:
        await run_all()
    assert caught.group_contains(RuntimeError, match="boom")


@pytest.mark.anyio
async def test_tokens_bound_the_holders_first_come_first_served() -> None:
    tokens = Tokens(2)
    inside: list[int] = []
    entered: list[int] = []
    most = 0

    async def holder(n: int) -> None:
        nonlocal most
        async with tokens:
            entered.append(n)
            inside.append(n)
            most = max(most, len(inside))
            await anyio.sleep(0.001)
            inside.remove(n)

    with anyio.fail_after(SAFETY):
        async with anyio.create_task_group() as tg:
            for n in range(8):
                tg.start_soon(holder, n)
                await anyio.lowlevel.checkpoint()  # queue them in this order
    assert most == 2
    assert entered == list(range(8))
    assert tokens.available == 2


@pytest.mark.anyio
async def test_cancelled_waiters_never_lose_or_duplicate_a_token() -> None:
    """Holders and waiters cancelled at every stage: the limit always holds, and every token
    is back at the end."""
    total = 3
    tokens = Tokens(total)
    inside = 0
    most = 0
    finished = 0

    async def holder(hold: float) -> None:
        nonlocal inside, most, finished
        async with tokens:
            inside += 1
            most = max(most, inside)
            try:
                await anyio.sleep(hold)
            finally:
                inside -= 1
        finished += 1

    async def cancelled_soon(hold: float, after: float) -> None:
        with anyio.move_on_after(after):
            await holder(hold)

    with anyio.fail_after(SAFETY):
        async with anyio.create_task_group() as tg:
            for n in range(60):
                if n % 3:
                    tg.start_soon(holder, 0.002)
                else:  # cancelled while waiting, or while holding
                    tg.start_soon(cancelled_soon, 0.004, 0.001 * (n % 7))
                await anyio.lowlevel.checkpoint()
    assert most == total
    assert finished >= 40  # every uncancelled holder
    assert tokens.available == total


@pytest.mark.anyio
async def test_a_waiter_cancelled_after_being_handed_the_token_hands_it_on() -> None:
    tokens = Tokens(1)
    got: list[str] = []

    async def take(name: str) -> None:
        async with tokens:
            got.append(name)

    await tokens.__aenter__()  # held here
    handed = asyncio.ensure_future(take("handed, then cancelled"))
    after = asyncio.ensure_future(take("next"))
    await anyio.lowlevel.checkpoint()  # both wait, in this order
    await tokens.__aexit__(None, None, None)  # the token goes to the first waiter...
    handed.cancel()  # ...which is cancelled before it runs again
    with anyio.fail_after(SAFETY):
        await asyncio.gather(handed, after, return_exceptions=True)
    assert handed.cancelled()
    assert got == ["next"]
    assert tokens.available == 1


# ---- in the executor -----------------------------------------------------------------------

PEAK_MODULE = '''
import anyio

active = 0
peak = 0


async def hold(n: int = 0) -> dict:
    """In flight for a moment; reports the most instances in flight at once so far."""
    global active, peak
    active += 1
    peak = max(peak, active)
    await anyio.sleep(0.02)
    active -= 1
    return {"peak": peak}
'''


def run_flow(tmp_path: Path, name: str, flow: dict[str, Any]) -> RunOutcome:
    root = tmp_path / name
    root.mkdir()
    (root / "pyproject.toml").write_text('[project]\nname = "workers-fixture"\nversion = "0"\n')
    (root / f"{name}_mods.py").write_text(PEAK_MODULE)
    path = root / "flow.yaml"
    path.write_text(json.dumps({"version": 1, "kind": "flow", "name": name, **flow}))
    runtime = Runtime(load_settings(str(path), environ={}), environ={})
    plan = runtime.plan(str(path))
    return anyio.run(
        lambda: runtime.run(plan, given={}, use_cache=False, bundle=False, signals=False)
    )


def test_a_for_each_in_a_small_flow_keeps_to_the_flow_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two steps under `limits.concurrency: 3`: the fan-out's 12 items count against it."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    step = {"kind": "python", "call": "limited_mods:hold", "cache": False}
    outcome = run_flow(
        tmp_path,
        "limited",
        {
            "limits": {"concurrency": 3},
            "steps": {
                "first": step,
                "fan": {
                    **step,
                    "needs": ["first"],
                    "for_each": {"items": list(range(12))},
                    "with": {"n": "${{ item }}"},
                    "outputs": {"peak": {"type": "integer"}},
                },
            },
        },
    )
    assert outcome.status == "succeeded"
    assert max(outcome.steps["fan"].outputs["peak"]) == 3  # never more, and the limit is used


def test_independent_steps_that_block_all_run_at_once_without_a_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))
    step = {
        "kind": "python",
        "call": "wide_mods:hold",
        "cache": False,
        "outputs": {"peak": {"type": "integer"}},
    }
    outcome = run_flow(
        tmp_path,
        "wide",
        {"limits": {"concurrency": 100}, "steps": {f"s{i}": step for i in range(20)}},
    )
    assert outcome.status == "succeeded"
    assert max(s.outputs["peak"] for s in outcome.steps.values()) == 20
