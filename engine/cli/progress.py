"""What `blocks run` shows while a flow runs: a live status line on a terminal, plain lines
otherwise, and the final table.

Owns: rendering executor events for people. Must not: change what runs, or write anything
but the stream it is given.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

__all__ = ["Progress", "format_duration", "step_table"]

MARK = {
    "succeeded": "✓",
    "cached": "≡",
    "skipped": "↷",
    "failed": "✗",
    "blocked": "·",
    "cancelled": "⊘",
    "running": "…",
    "pending": " ",
}


def format_duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 120:
        return f"{seconds:.2f}s"
    return f"{seconds // 60:.0f}m{seconds % 60:02.0f}s"


class Progress:
    """Consumes executor events. On a TTY it keeps one status line at the bottom."""

    def __init__(
        self, stream: TextIO | None = None, *, live: bool | None = None, quiet: bool = False
    ) -> None:
        self.stream = stream or sys.stdout
        self.live = self.stream.isatty() if live is None else live
        self.quiet = quiet
        self.total = 0
        self.done = 0
        self.running: set[str] = set()
        self.failed = 0
        self.cost = 0.0
        self.started = time.monotonic()
        self._status_shown = False

    def __call__(self, record: Mapping[str, Any]) -> None:
        event = record.get("event")
        if event in ("run.started", "run.resumed"):
            self.total = int(record.get("steps") or 0)
            verb = "resuming" if event == "run.resumed" else "run"
            self._line(
                f"{verb} {record.get('run')}  flow {record.get('flow')}  ({self.total} steps)"
            )
            return
        step = str(record.get("step", ""))
        instance = str(record.get("instance", step))
        if event == "step.succeeded":
            self.cost += float(record.get("cost_usd") or 0.0)
        if event == "step.started" and instance == step:
            self.running.add(step)
        elif (
            event
            in (
                "step.succeeded",
                "step.failed",
                "step.cached",
                "step.skipped",
                "step.blocked",
                "step.cancelled",
            )
            and instance == step
        ):
            self.running.discard(step)
            self._finished(event.split(".", 1)[1], record)
        elif event == "gate.evaluated":
            mark = {"pass": "✓", "fail": "✗", "inconclusive": "?"}.get(str(record.get("status")))
            severity = "" if record.get("severity") == "blocker" else " (warn)"
            self._line(
                f"  {mark} gate {record.get('gate')!s:<15} {record.get('status')}{severity}: "
                f"{record.get('explanation')}"
            )
        elif event == "gate.skipped":
            self._line(f"  · gate {record.get('gate')!s:<15} skipped: {record.get('reason')}")
        elif event == "lock.stale":
            self._line(f"  ! {record.get('lock')} is stale, left out of the bundle:")
            for item in record.get("drift") or ():
                self._line(f"      {item}")
        elif event == "step.retrying":
            self._line(
                f"  ↻ {step:<20} retrying in {format_duration(float(record['delay']))}: "
                f"{record.get('error')}"
            )
        self._status()

    def _finished(self, status: str, record: Mapping[str, Any]) -> None:
        step = str(record.get("step"))
        if status == "failed" and not record.get("final", True):
            return
        self.done += 1
        if status == "failed" and not record.get("tolerated"):
            self.failed += 1
        detail = ""
        if status in ("succeeded", "failed"):
            detail = format_duration(float(record.get("duration") or 0.0))
        if status == "failed":
            detail += f"  {record.get('error')}"
        elif status in ("skipped", "blocked"):
            detail = str(record.get("reason", ""))
        elif status == "cached":
            detail = f"from run {record.get('from_run')}"
        self._line(f"  {MARK.get(status, '?')} {step:<20} {status:<10} {detail}".rstrip())

    def _line(self, text: str) -> None:
        if self.quiet:
            return
        if self.live and self._status_shown:
            self.stream.write("\r\x1b[2K")
            self._status_shown = False
        self.stream.write(text + "\n")
        self.stream.flush()

    def _status(self) -> None:
        if self.quiet or not self.live:
            return
        elapsed = format_duration(time.monotonic() - self.started)
        text = (
            f"[{self.done}/{self.total} done, {len(self.running)} running, "
            f"{self.failed} failed] {elapsed}  cost ${self.cost:.4f}"
        )
        self.stream.write("\r\x1b[2K" + text)
        self.stream.flush()
        self._status_shown = True

    def close(self) -> None:
        if self.live and self._status_shown:
            self.stream.write("\r\x1b[2K")
            self.stream.flush()
            self._status_shown = False


def step_table(steps: Mapping[str, Any]) -> list[str]:
    """One line per step: mark, id, status, duration or reason."""
    lines = []
    for sid, state in steps.items():
        status = state.status
        detail = format_duration(state.duration) if status in ("succeeded", "failed") else ""
        if state.error and status == "failed":
            detail += f"  {state.error}"
        elif state.reason:
            detail = state.reason
        elif state.cached_from:
            detail = f"from run {state.cached_from}"
        lines.append(f"  {MARK.get(status, '?')} {sid:<20} {status:<10} {detail}".rstrip())
    return lines
