"""The rate limiter: pacing, the token window, penalties, fairness, cancellation.

Time is virtual except in one short real-time test. `VirtualTime` is a fake clock whose
`sleep` registers a timer; the driver jumps the clock to the next timer once every task is
blocked, so tests with many concurrent callers and arrivals spread over minutes run in
milliseconds and are exact. (Detecting "every task is blocked" looks at asyncio's tasks,
so these tests run on asyncio only.)
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.providers.ratelimit import RateLimiter, RateLimits


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _blocked(task: asyncio.Task[Any]) -> bool:
    waiter = getattr(task, "_fut_waiter", None)
    return waiter is not None and not waiter.done()


async def _all_blocked() -> None:
    # Quiet means: every other task waits on a pending future and no callback is queued
    # (a finished task's done-callbacks resolve its task group's future a step later).
    me = asyncio.current_task()
    loop = asyncio.get_running_loop()
    quiet = 0
    while quiet < 3:
        await asyncio.sleep(0)
        ready = getattr(loop, "_ready", ())
        if not ready and all(task is me or _blocked(task) for task in asyncio.all_tasks()):
            quiet += 1
        else:
            quiet = 0


class VirtualTime:
    """A fake clock and sleep; `run` advances the clock only when every task waits."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self._timers: list[tuple[float, int, anyio.Event]] = []
        self._seq = itertools.count()
        self.sleeps = 0

    def clock(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.sleeps += 1
        event = anyio.Event()
        heapq.heappush(self._timers, (self.now + max(0.0, delay), next(self._seq), event))
        await event.wait()

    async def until(self, when: float) -> None:
        await self.sleep(when - self.now)

    async def run(self, main: Callable[[], Awaitable[None]]) -> None:
        done = anyio.Event()

        async def wrapped() -> None:
            try:
                await main()
            finally:
                done.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(wrapped)
            while True:
                await _all_blocked()
                if done.is_set():
                    break
                if not self._timers:
                    raise AssertionError("deadlock: every task waits and no timer is set")
                when, _, event = heapq.heappop(self._timers)
                self.now = max(self.now, when)
                event.set()


def _max_in_window(times: list[float], width: float) -> int:
    """The most admissions in any half-open window [t, t + width)."""
    ordered = sorted(times)
    best, j = 0, 0
    for i, start in enumerate(ordered):
        j = max(j, i)
        while j < len(ordered) and ordered[j] < start + width:
            j += 1
        best = max(best, j - i)
    return best


# ---- pacing and the token window -------------------------------------------------------


@pytest.mark.anyio
async def test_requests_are_paced_at_rpm_over_60() -> None:
    vt = VirtualTime()
    limiter = RateLimiter(60, None, clock=vt.clock, sleep=vt.sleep)
    admitted: list[float] = []
    waits: list[float] = []

    async def main() -> None:
        async def call() -> None:
            waits.append(await limiter.acquire())
            admitted.append(vt.now)

        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(call)

    await vt.run(main)
    assert admitted == [1000.0, 1001.0, 1002.0, 1003.0, 1004.0]
    assert waits == [0.0, 1.0, 2.0, 3.0, 4.0]


@pytest.mark.anyio
async def test_an_idle_limiter_admits_at_once_and_never_bursts() -> None:
    vt = VirtualTime()
    limiter = RateLimiter(6, None, clock=vt.clock, sleep=vt.sleep)
    times: list[float] = []

    async def main() -> None:
        assert await limiter.acquire() == 0.0
        await vt.until(2000.0)  # idle for a long time: still only one at once, then pacing
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(lambda: _admit_and_record(limiter, vt, times))

    await vt.run(main)
    assert times == [2000.0, 2010.0, 2020.0]


async def _admit_and_record(
    limiter: RateLimiter, vt: VirtualTime, times: list[float], tokens: int = 0
) -> None:
    await limiter.acquire(tokens)
    times.append(vt.now)


@pytest.mark.anyio
async def test_tokens_fit_the_budget_of_the_last_60_seconds() -> None:
    vt = VirtualTime()
    limiter = RateLimiter(None, 100, clock=vt.clock, sleep=vt.sleep)
    log: list[tuple[int, float]] = []

    async def call(tokens: int) -> None:
        await limiter.acquire(tokens)
        log.append((tokens, vt.now))

    async def main() -> None:
        await call(60)  # t=1000
        await vt.until(1010.0)
        await call(30)  # t=1010: 90 in the window
        await call(10)  # t=1010: exactly 100 — fits
        await call(0)  # no estimate: limited by requests only (none here)
        await call(50)  # needs 50 freed: the 60 of t=1000 leave at t=1060
        await call(40)  # 50 + 40 + 10... needs the 30 (t=1010) and 10 (t=1010) gone: 1070

    await vt.run(main)
    assert log == [
        (60, 1000.0),
        (30, 1010.0),
        (10, 1010.0),
        (0, 1010.0),
        (50, 1060.0),
        (40, 1070.0),
    ]


@pytest.mark.anyio
async def test_a_call_larger_than_tpm_is_admitted_alone() -> None:
    vt = VirtualTime()
    limiter = RateLimiter(None, 100, clock=vt.clock, sleep=vt.sleep)
    log: list[tuple[int, float]] = []

    async def call(tokens: int) -> None:
        await limiter.acquire(tokens)
        log.append((tokens, vt.now))

    async def main() -> None:
        await call(30)
        await vt.until(1005.0)
        with anyio.fail_after(5):  # real seconds: it must not deadlock
            await call(250)  # waits for the window to empty, then goes alone
            await call(1)  # nothing else until the oversized call left the window

    await vt.run(main)
    assert log == [(30, 1000.0), (250, 1060.0), (1, 1120.0)]
    assert limiter.oversized == 1


@pytest.mark.anyio
async def test_two_hundred_concurrent_callers_with_a_sleep_that_advances_the_clock() -> None:
    # The simplest fake: sleep(d) moves the clock by d. It is exact only because one caller
    # at a time sleeps (the head of the queue); 200 sleepers would move it 200 times over.
    now = [0.0]
    sleeps: list[float] = []

    async def sleep(delay: float) -> None:
        sleeps.append(delay)
        now[0] += delay
        await anyio.lowlevel.checkpoint()

    limiter = RateLimiter(6000, None, clock=lambda: now[0], sleep=sleep)
    order: list[int] = []
    times: list[float] = []

    async def call(i: int) -> None:
        await limiter.acquire()
        order.append(i)
        times.append(now[0])

    async with anyio.create_task_group() as tg:
        for i in range(200):
            tg.start_soon(call, i)
            await anyio.lowlevel.checkpoint()  # starts in this order
    assert order == list(range(200))
    assert now[0] == pytest.approx(1.99)
    assert sum(sleeps) == pytest.approx(1.99)
    assert _max_in_window(times, 1.0) <= 100
    assert limiter.waiting == 0


@pytest.mark.anyio
async def test_two_hundred_callers_in_real_time() -> None:
    # 100 per second: about 2 s. No tight timing: only a floor and a generous ceiling.
    limiter = RateLimiter(6000, None)
    times: list[float] = []
    started = time.monotonic()

    async def call() -> None:
        await limiter.acquire()
        times.append(time.monotonic())

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            for _ in range(200):
                tg.start_soon(call)
    elapsed = time.monotonic() - started
    assert len(times) == 200
    assert elapsed >= 1.98
    assert _max_in_window(times, 1.0) <= 100


# ---- penalties ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_penalize_holds_new_callers_even_without_limits() -> None:
    vt = VirtualTime()
    limiter = RateLimiter(None, None, clock=vt.clock, sleep=vt.sleep)
    times: list[float] = []

    async def main() -> None:
        limiter.penalize(10.0)
        limiter.penalize(2.0)  # a shorter penalty never shortens the pause
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(lambda: _admit_and_record(limiter, vt, times))

    await vt.run(main)
    assert times == [1010.0, 1010.0, 1010.0]


@pytest.mark.anyio
async def test_penalize_makes_callers_already_waiting_wait_longer() -> None:
    vt = VirtualTime()
    limiter = RateLimiter(60, None, clock=vt.clock, sleep=vt.sleep)
    times: list[float] = []

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            for _ in range(4):
                tg.start_soon(lambda: _admit_and_record(limiter, vt, times))
            await vt.until(1000.5)  # one admitted, the head sleeps until 1001, two queued
            assert limiter.waiting == 3
            limiter.penalize(5.0)  # a 429 with Retry-After: 5

    await vt.run(main)
    # The head wakes at 1001, finds the pause, sleeps until 1005.5; then pacing resumes.
    assert times == [1000.0, 1005.5, 1006.5, 1007.5]


# ---- fairness and cancellation -----------------------------------------------------------


@pytest.mark.anyio
async def test_a_large_request_is_not_starved_by_a_storm_of_small_ones() -> None:
    vt = VirtualTime()
    limiter = RateLimiter(None, 100, clock=vt.clock, sleep=vt.sleep)
    order: list[str] = []

    async def call(name: str, tokens: int) -> None:
        await limiter.acquire(tokens)
        order.append(name)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            for i in range(3):
                tg.start_soon(call, f"small{i}", 30)  # 90 of 100: the fourth cannot fit
                await anyio.lowlevel.checkpoint()
            tg.start_soon(call, "large", 90)
            await anyio.lowlevel.checkpoint()
            for i in range(3, 20):  # would fit one at a time if they could jump the queue
                tg.start_soon(call, f"small{i}", 5)
                await anyio.lowlevel.checkpoint()

    await vt.run(main)
    assert order[:4] == ["small0", "small1", "small2", "large"]
    assert order[4:] == [f"small{i}" for i in range(3, 20)]


@pytest.mark.anyio
async def test_cancelled_waiters_leave_the_queue() -> None:
    vt = VirtualTime()
    limiter = RateLimiter(60, None, clock=vt.clock, sleep=vt.sleep)
    admitted: list[tuple[str, float]] = []
    scopes: dict[str, anyio.CancelScope] = {}

    async def call(name: str) -> None:
        with anyio.CancelScope() as scope:
            scopes[name] = scope
            await limiter.acquire()
            admitted.append((name, vt.now))

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            for name in ("a", "b", "c", "d"):
                tg.start_soon(call, name)
                await anyio.lowlevel.checkpoint()
            await vt.until(1000.5)  # a admitted; b is the head, asleep until 1001
            scopes["b"].cancel()  # the sleeping head
            scopes["c"].cancel()  # one waiting for its turn
            await anyio.lowlevel.checkpoint()

    await vt.run(main)
    assert admitted == [("a", 1000.0), ("d", 1001.0)]
    assert limiter.waiting == 0


# ---- the property -------------------------------------------------------------------------

_arrivals = st.lists(
    st.tuples(
        st.one_of(st.just(0.0), st.floats(0.0, 90.0, allow_nan=False)),  # gap before it
        st.one_of(st.just(0), st.integers(1, 120)),  # tokens (some larger than tpm)
    ),
    min_size=1,
    max_size=30,
)
_penalties = st.lists(
    st.tuples(st.floats(0.0, 300.0, allow_nan=False), st.floats(0.0, 40.0, allow_nan=False)),
    max_size=3,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rpm=st.integers(1, 12),
    tpm=st.one_of(st.none(), st.integers(20, 100)),
    arrivals=_arrivals,
    penalties=_penalties,
)
def test_any_arrival_pattern_stays_within_the_limits_in_arrival_order(
    rpm: int,
    tpm: int | None,
    arrivals: list[tuple[float, int]],
    penalties: list[tuple[float, float]],
) -> None:
    vt = VirtualTime(start=0.0)
    limiter = RateLimiter(rpm, tpm, clock=vt.clock, sleep=vt.sleep)
    events: list[tuple[str, float, int, float]] = []  # (kind, time, index, amount)
    arrived: list[int] = []
    admitted: list[int] = []

    async def arrive(i: int, at: float, tokens: int) -> None:
        await vt.until(at)
        arrived.append(i)
        await limiter.acquire(tokens)
        admitted.append(i)
        events.append(("admit", vt.now, i, tokens))

    async def penalty(at: float, seconds: float) -> None:
        await vt.until(at)
        limiter.penalize(seconds)
        events.append(("penalty", vt.now, -1, seconds))

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            at = 0.0
            for i, (gap, tokens) in enumerate(arrivals):
                at += gap
                tg.start_soon(arrive, i, at, tokens)
            for at, seconds in penalties:
                tg.start_soon(penalty, at, seconds)

    anyio.run(vt.run, main, backend="asyncio")

    assert admitted == arrived  # first come, first served
    assert len(admitted) == len(arrivals)  # and everyone was served
    admits = [(t, tokens) for kind, t, _, tokens in events if kind == "admit"]
    times = [t for t, _ in admits]
    assert _max_in_window(times, 60.0) <= rpm
    if tpm is not None:
        for start in times:
            window = [tok for t, tok in admits if start <= t < start + 60.0 and tok > 0]
            assert sum(window) <= tpm or len(window) == 1, (start, window)
    for k, (kind, t, _, seconds) in enumerate(events):
        if kind == "penalty":
            later = [u for kind2, u, _, _ in events[k + 1 :] if kind2 == "admit"]
            assert all(u >= t + seconds for u in later)


# ---- the registry --------------------------------------------------------------------------


def test_rate_limits_gives_one_shared_limiter_per_provider() -> None:
    limits = RateLimits({"openai": (500, 200_000), "anthropic": (50, None)})
    openai = limits.limiter("openai")
    assert limits.limiter("openai") is openai
    assert (openai.rpm, openai.tpm) == (500, 200_000)
    assert (limits.limiter("anthropic").rpm, limits.limiter("anthropic").tpm) == (50, None)
    local = limits.limiter("local")  # not configured: unlimited
    assert (local.rpm, local.tpm) == (None, None)
    assert limits.limiter("local") is local


@pytest.mark.parametrize("bad", [(0, None), (None, -1), (True, None)])
def test_bad_limits_are_rejected_up_front(bad: tuple[Any, Any]) -> None:
    with pytest.raises(ValueError, match="positive integer"):
        RateLimits({"openai": bad})


@pytest.mark.anyio
async def test_negative_tokens_are_rejected() -> None:
    with pytest.raises(ValueError, match="negative"):
        await RateLimiter(None, None).acquire(-1)
