"""Lazily grown worker tasks: run queued jobs in as few anyio tasks as keeps them concurrent.

Owns: the queue of ready jobs, and when to start another task for them. Must not: know what
a job is (the executor hands it a callable per job) or journal anything.

Why: an anyio task costs more to start than a no-op step costs to run (anyio 4.16 builds a
cancel scope, an event and a handle per task: about 30-60 µs here). One task per step made
task creation the largest engine cost of a chain of no-op steps.

How: a job submitted while no worker exists starts one. A worker takes jobs from the queue
in order, one after the other. While it runs a job that awaits something (a subprocess, the
network, a worker thread, a capacity limiter), the event loop runs `_grow`, scheduled
whenever a job started with others still queued: if every worker is then inside a job, more
workers take the next jobs (as many as a capacity limiter has tokens left, else as many as
there are workers already, so a fan-out of blocking jobs gets its tasks in a few turns of
the event loop). So jobs that block run concurrently, as with one task each, and jobs that
never await (a no-op `async def` step) run back to back in one task. Between jobs a worker
yields to the event loop at least every `YIELD_EVERY` seconds, so signals, timers (the
run's deadline), the journal's flusher and other tasks keep running, and a cancellation
reaches it there.

Cancellation: a worker that is cancelled (inside a job or between two) hands every job
still queued to `on_cancelled` before the cancellation goes on, so no job is left without
an end; a worker started after its scope was cancelled starts no job.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Generic, TypeVar

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup

__all__ = ["YIELD_EVERY", "Tokens", "Workers"]

J = TypeVar("J")

YIELD_EVERY = 0.001
"""Longest a worker runs jobs back to back (jobs that never await) before yielding to the
event loop, in seconds. A job that awaits yields anyway."""


class Workers(Generic[J]):
    """Runs submitted jobs in tasks of `task_group`, starting a task only when every one so
    far is busy in a job that awaits. Drive it from the event loop thread only."""

    def __init__(
        self,
        task_group: TaskGroup,
        run: Callable[[J], Awaitable[None]],
        on_cancelled: Callable[[J], None],
        *,
        name: str = "worker",
        room: Callable[[], float] | None = None,
    ) -> None:
        self._tg = task_group
        self._run = run
        self._on_cancelled = on_cancelled
        self._room = room
        self._name = name
        self._queue: deque[J] = deque()
        self._workers = 0
        """Worker tasks started and not yet ended."""
        self._free = 0
        """Of those, the ones not inside a job: started and not yet running, or between jobs.
        Each of them takes the next queued job before the event loop runs anything else."""
        self._grow_handle: asyncio.Handle | None = None

    @property
    def queued(self) -> int:
        return len(self._queue)

    def submit(self, job: J) -> None:
        """Queue `job`; it starts as soon as a worker is free (at once if none is busy)."""
        self._queue.append(job)
        if self._free:
            return  # a worker that is not inside a job takes it before anything else runs
        if self._workers == 0:
            self._spawn()
        else:
            self._schedule_grow()

    def kick(self) -> None:
        """Something that kept queued jobs from starting may have gone (`room` may be more
        than 0 now): check once the event loop is free."""
        if self._queue:
            self._schedule_grow()

    def _schedule_grow(self) -> None:
        if self._grow_handle is None:
            self._grow_handle = asyncio.get_running_loop().call_soon(self._grow)

    def _grow(self) -> None:
        """Runs when the event loop is free: every worker is then blocked in a job or between
        two jobs (free). If none is free and jobs wait, more workers take the next ones:
        as many as `room` says could start now (the free tokens of a capacity limiter: none
        if a job would only wait for one, and whoever returns a token calls `kick`), else as
        many as there are workers, so a run of jobs that all block gets its tasks in a few
        turns of the event loop, and jobs that do not block never get more than one."""
        self._grow_handle = None
        queued = len(self._queue)
        if not queued or self._free or self._tg.cancel_scope.cancel_called:
            return
        room = self._room() if self._room is not None else self._workers
        for _ in range(int(min(queued, max(room, 0)))):
            self._spawn()

    def _spawn(self) -> None:
        self._workers += 1
        self._free += 1
        try:
            self._tg.start_soon(self._work, name=self._name)
        except BaseException:
            self._workers -= 1
            self._free -= 1
            raise

    async def _work(self) -> None:
        queue = self._queue
        run = self._run
        busy = False
        try:
            # started after its scope was cancelled: end the queued jobs, start none
            await anyio.lowlevel.checkpoint_if_cancelled()
            yielded = time.monotonic()
            while queue:
                job = queue.popleft()
                if queue:
                    self._schedule_grow()  # if this job blocks, the next one needs a worker
                self._free -= 1
                busy = True
                await run(job)
                busy = False
                self._free += 1
                if queue and time.monotonic() - yielded >= YIELD_EVERY:
                    await anyio.lowlevel.checkpoint()
                    yielded = time.monotonic()
        except anyio.get_cancelled_exc_class():
            while queue:
                self._on_cancelled(queue.popleft())
            raise
        finally:
            self._workers -= 1
            if not busy:
                self._free -= 1


class Tokens:
    """A capacity limit (`async with tokens:`), first come first served.

    Unlike `anyio.CapacityLimiter`, taking a free token is not a checkpoint: anyio's costs a
    trip through the event loop and a cancel scope per step, and a step's own awaits are its
    checkpoints (as they are when the flow has no limit at all). Waiting for a token is one,
    and a waiter cancelled after being handed a token hands it on.
    """

    def __init__(self, total: int) -> None:
        self.available = total
        """Tokens free now."""
        self._waiters: deque[anyio.Event] = deque()

    async def __aenter__(self) -> None:
        if self.available > 0 and not self._waiters:
            self.available -= 1
            return
        handed = anyio.Event()
        self._waiters.append(handed)
        try:
            await handed.wait()
        except BaseException:
            if handed.is_set():
                self._return()  # handed a token, then cancelled: the next one gets it
            else:
                self._waiters.remove(handed)
            raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._return()

    def _return(self) -> None:
        if self._waiters:
            self._waiters.popleft().set()  # the token goes straight to the first waiter
        else:
            self.available += 1
