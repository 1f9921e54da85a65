"""Per-provider request and token rate limits, shared by every step of a run.

Owns: when a call to a provider may start (`RateLimiter.acquire`), the pause after a
provider's 429 (`RateLimiter.penalize`), and the registry of one limiter per provider
(`RateLimits`).
Must not: make the call, decide what a 429 means or whether to retry (the caller does, and
calls `penalize` with the provider's Retry-After), count money (`budget.py` does), or
import litellm.

The rules, for a limiter with `rpm` requests and `tpm` tokens per minute (None: no limit):

* Requests are paced: two admissions are at least 60/rpm seconds apart (a token bucket
  with continuous refill at rpm/60 per second holding one request). On top of that, no 60 s
  window ever holds more than rpm admissions, exactly, whatever the float rounding.
* Tokens fit the budget of the last 60 s: a call asking for `tokens` is admitted when the
  tokens admitted in the last 60 s plus its own are at most tpm (a sliding window). A call
  for 0 tokens (the caller could not estimate) is limited by requests only.
* A call asking for more than tpm tokens cannot ever fit; it is admitted alone, once nothing
  else was admitted in the last 60 s, instead of waiting forever. `oversized` counts them
  and a warning is logged: such a request is likely to be refused by the provider.
* `penalize(retry_after)` holds every caller of the limiter until that many seconds from
  now, including callers already waiting; a later, shorter penalty never shortens it.
* Callers are admitted strictly in arrival order, so a storm of small requests cannot
  starve a large one (and a large one waits at the head of the queue, holding the rest).

Why pacing, not a bucket that holds a whole minute: a bucket of capacity rpm refilled at
rpm/60 per second admits rpm requests at once after an idle minute and another rpm over the
next 60 s, so 2 x rpm in one 60 s window; providers also enforce their per-minute limits
over shorter periods (60 rpm as 1 per second), so bursts draw 429s. Pacing requests costs
next to nothing (an LLM call takes seconds; the pace at 60 rpm is one per second). Tokens
are not paced: one call may be a large share of tpm, and pacing would hold the next call
back by that share even when the minute's budget is mostly unused.

Only the caller at the head of the queue ever sleeps (through the injected `sleep`, until
its admission time); the others wait for their turn on an event. So a limiter costs one
timer however many callers wait, and a fake `sleep` that advances a fake clock by what it
is asked to sleep drives it exactly. Use from one event loop; there are no thread locks.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Final

import anyio

__all__ = ["RateLimiter", "RateLimits"]

_log = logging.getLogger(__name__)

WINDOW: Final = 60.0  # seconds: providers state their limits per minute


@dataclass(eq=False, slots=True)
class _Waiter:
    tokens: int
    turn: anyio.Event = field(default_factory=anyio.Event)


class RateLimiter:
    """Requests-per-minute and tokens-per-minute limits of one provider (None: unlimited)."""

    def __init__(
        self,
        rpm: int | None,
        tpm: int | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        for name, value in (("rpm", rpm), ("tpm", tpm)):
            if value is not None and (isinstance(value, bool) or value < 1):
                raise ValueError(f"{name} must be a positive integer or None, not {value!r}")
        self.rpm = rpm
        self.tpm = tpm
        self._clock = clock
        self._sleep = sleep
        self._interval = WINDOW / rpm if rpm is not None else 0.0
        # Admission times of the last rpm requests, and (time, tokens) of the last minute.
        self._requests: deque[float] = deque(maxlen=rpm)
        self._tokens: deque[tuple[float, int]] = deque()
        self._tokens_in_window = 0
        self._last: float | None = None  # the latest admission
        self._paused_until = float("-inf")
        self._queue: deque[_Waiter] = deque()
        self.oversized = 0  # admitted calls that asked for more than tpm tokens

    @property
    def waiting(self) -> int:
        """How many callers are queued in `acquire` now."""
        return len(self._queue)

    def penalize(self, retry_after: float) -> None:
        """Hold every caller, queued or not, until `retry_after` seconds from now."""
        self._paused_until = max(self._paused_until, self._clock() + max(0.0, retry_after))

    async def acquire(self, tokens: int = 0) -> float:
        """Wait until one request and `tokens` tokens fit; return the seconds waited."""
        if tokens < 0:
            raise ValueError(f"tokens must not be negative, not {tokens}")
        start = self._clock()
        if not self._queue and self._ready_at(tokens, start) <= start:
            self._admit(tokens, start)  # nobody ahead and room now: no await at all
            return 0.0
        waiter = _Waiter(tokens)
        self._queue.append(waiter)
        try:
            if self._queue[0] is not waiter:
                await waiter.turn.wait()
            while True:
                # Re-evaluated after every sleep: a penalty may have come in meanwhile, and
                # a real timer may fire a little early.
                now = self._clock()
                ready = self._ready_at(tokens, now)
                if ready <= now:
                    break
                await self._sleep(ready - now)
            self._admit(tokens, now)
        finally:
            head = self._queue[0] is waiter
            self._queue.remove(waiter)  # admitted or cancelled: either way, out of the line
            if head and self._queue:
                self._queue[0].turn.set()
        return now - start

    def _ready_at(self, tokens: int, now: float) -> float:
        """The earliest time a call for `tokens` could be admitted, given the past only."""
        ready = self._paused_until
        if self.rpm is not None:
            if self._last is not None:
                ready = max(ready, self._last + self._interval)
            if len(self._requests) == self.rpm:
                # The oldest of the last rpm admissions must have left the window. This is
                # what pacing gives anyway; checked so rounding can never admit rpm + 1.
                ready = max(ready, self._requests[0] + WINDOW)
        if self.tpm is not None and tokens and self._tokens:
            ready = max(ready, self._tokens_fit_at(tokens, now))
        return ready

    def _tokens_fit_at(self, tokens: int, now: float) -> float:
        assert self.tpm is not None
        self._expire_tokens(now)
        used = self._tokens_in_window
        # Tokens that must leave the window first; an oversized call needs it empty.
        need = used if tokens > self.tpm else used + tokens - self.tpm
        if need <= 0:
            return now
        freed = 0
        for admitted_at, amount in self._tokens:
            freed += amount
            if freed >= need:
                return admitted_at + WINDOW
        raise AssertionError("the window's own entries always free what it holds")

    def _expire_tokens(self, now: float) -> None:
        while self._tokens and now >= self._tokens[0][0] + WINDOW:
            self._tokens_in_window -= self._tokens.popleft()[1]

    def _admit(self, tokens: int, now: float) -> None:
        self._last = now
        if self.rpm is not None:
            self._requests.append(now)
        if self.tpm is not None and tokens:
            if tokens > self.tpm:
                self.oversized += 1
                _log.warning(
                    "a call asked for %d tokens, more than the limit of %d per minute: "
                    "admitted alone",
                    tokens,
                    self.tpm,
                )
            self._expire_tokens(now)  # keeps the deque to one minute's entries
            self._tokens.append((now, tokens))
            self._tokens_in_window += tokens


class RateLimits:
    """One `RateLimiter` per provider, configured from provider -> (rpm, tpm).

    A provider without configuration gets an unlimited limiter (which still honours
    `penalize`). Limiters are created on first use and then shared by every caller.
    """

    def __init__(
        self,
        limits: Mapping[str, tuple[int | None, int | None]],
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        self._clock = clock
        self._sleep = sleep
        self._limits = dict(limits)
        for rpm, tpm in self._limits.values():
            RateLimiter(rpm, tpm)  # validate now, not at the first call mid-run
        self._limiters: dict[str, RateLimiter] = {}

    def limiter(self, provider: str) -> RateLimiter:
        """The limiter of `provider`, the same object on every call."""
        limiter = self._limiters.get(provider)
        if limiter is None:
            rpm, tpm = self._limits.get(provider, (None, None))
            limiter = RateLimiter(rpm, tpm, clock=self._clock, sleep=self._sleep)
            self._limiters[provider] = limiter
        return limiter
