"""Test doubles shipped with blocks, for users' tests and ours.

Owns: `FakeClock` (time that moves only when slept on, recording every sleep) and
`RecordingSink` (collects executor events). Must not: be imported by the engine itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import anyio
import anyio.lowlevel

__all__ = ["FakeClock", "RecordingSink"]


class FakeClock:
    """A clock for the executor whose `sleep` returns at once and advances `now`.

    `sleeps` records every requested delay, so a test can assert the backoff exactly.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self._now += seconds
        await anyio.lowlevel.checkpoint()


class RecordingSink:
    """An `on_event` callback that keeps every event."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def __call__(self, record: Mapping[str, Any]) -> None:
        self.events.append(dict(record))

    def of(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == event]
