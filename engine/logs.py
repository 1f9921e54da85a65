"""Structured logs of a run: one structlog event per state transition.

Owns: turning executor records into log events (JSON lines, or a console rendering for
people), with the run id and step id bound. Records arrive already redacted by the executor;
this module adds nothing that could hold a secret. Must not: decide when to log (the CLI
chooses where logs go) or read the environment.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, TextIO

__all__ = ["event_logger"]

_QUIET = frozenset({"step.output"})
_DROP = frozenset({"event", "t", "seq", "run", "result"})  # results can be large: see the journal
_WARN = frozenset({"step.failed", "step.retrying", "step.blocked", "step.cancelled", "lock.stale"})


def event_logger(stream: TextIO, *, json_lines: bool) -> Callable[[Mapping[str, Any]], None]:
    """A callback for executor events that writes one log line per transition."""
    import structlog  # noqa: PLC0415  (~0.2 s: only commands that run things pay it)

    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json_lines
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    logger = structlog.wrap_logger(
        structlog.PrintLogger(stream),
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        cache_logger_on_first_use=True,
    )
    bound: list[Any] = [logger]

    def log(record: Mapping[str, Any]) -> None:
        event = str(record.get("event", ""))
        if event in _QUIET:
            return
        if event in ("run.started", "run.resumed"):
            bound[0] = logger.bind(run_id=record.get("run"))
        fields = {k: v for k, v in record.items() if k not in _DROP}
        if "step" in fields:
            fields["step_id"] = fields.pop("step")
        emit = bound[0].warning if event in _WARN and record.get("final", True) else bound[0].info
        emit(event, **fields)

    return log
