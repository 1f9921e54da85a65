"""Fault injection: kill the engine at a named point of a run, for crash-and-resume tests.

Owns: parsing a fault plan and acting on it when the executor reaches the point. A plan is
a comma-separated list of `ACTION@EVENT:STEP` (STEP may be `*`):

    kill@step.started:train     SIGKILL right after `train`'s start is journaled (mid-step)
    kill@step.succeeded:audit   SIGKILL right after `audit` finished (between steps)
    torn@step.succeeded:audit   write half a journal line instead of the record, then
                                SIGKILL (a crash while writing the journal)

Runtime builds it from the BLOCKS_FAULTS environment variable; it is empty otherwise, and
then costs one attribute check per record. Must not: be used for anything but testing.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Faults"]


@dataclass(frozen=True, slots=True)
class _Point:
    action: str
    event: str
    step: str

    def matches(self, record: Mapping[str, Any]) -> bool:
        if record.get("event") != self.event:
            return False
        return self.step == "*" or record.get("step") == self.step


class Faults:
    def __init__(self, plan: str = "") -> None:
        points = []
        for item in filter(None, (p.strip() for p in plan.split(","))):
            action, _, where = item.partition("@")
            event, _, step = where.partition(":")
            if action not in ("kill", "torn") or not event:
                raise ValueError(
                    f"bad fault point {item!r}: expected kill@EVENT:STEP or torn@EVENT:STEP"
                )
            points.append(_Point(action, event, step or "*"))
        self.points = tuple(points)

    def __bool__(self) -> bool:
        return bool(self.points)

    def before(self, record: Mapping[str, Any], journal: Path) -> None:
        """Called before a record is appended: a `torn` point tears it and dies."""
        for point in self.points:
            if point.action == "torn" and point.matches(record):
                with open(journal, "ab") as fh:
                    fh.write(b'00000000 {"seq":99999,"event":"' + point.event.encode()[:4])
                    fh.flush()
                os.kill(os.getpid(), signal.SIGKILL)

    def after(self, record: Mapping[str, Any]) -> None:
        """Called after a record is appended: a `kill` point dies here."""
        for point in self.points:
            if point.action == "kill" and point.matches(record):
                os.kill(os.getpid(), signal.SIGKILL)
