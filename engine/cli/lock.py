"""`blocks lock FLOW...`: pin flows into their lock files, or check them (`--check`).

Owns: this command's arguments and output. Must not: compute or compare locks
(`engine.lockfile` does), or decide where state lives (the runtime does).
"""

from __future__ import annotations

from typing import Annotated

import typer

__all__ = ["lock", "register"]


def lock(
    flows: Annotated[list[str], typer.Argument(metavar="FLOW...", help="The flow files to lock.")],
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            help="Write nothing: exit 1 if a lock file is missing or stale, naming what "
            "drifted (for CI).",
        ),
    ] = False,
) -> None:
    """Pin each flow into FLOW.lock: the spec, every prompt, schema and code file it reads,
    its model routes and tool versions. Exit 1 with --check if a lock is missing or stale."""
    from engine.cli import EXIT_CODES  # noqa: PLC0415
    from engine.cli.run import _runtime  # noqa: PLC0415
    from engine.lockfile import LockError, check_lock, write_lock  # noqa: PLC0415

    stale = 0
    for flow in flows:
        runtime = _runtime(flow)
        plan = runtime.plan(flow)
        if not check:
            path, pinned, changed = write_lock(plan, runtime.store)
            counts = ", ".join(
                _count(len(part), noun)
                for part, noun in (
                    (pinned.files, "file"),
                    (pinned.routes, "route"),
                    (pinned.tools, "tool"),
                )
            )
            typer.echo(f"{'wrote' if changed else 'unchanged'} {path} ({counts})")
            continue
        try:
            path, _, items = check_lock(plan, runtime.store)
        except LockError as exc:
            stale += 1
            typer.echo(str(exc))
            continue
        if not items:
            typer.echo(f"{path}: up to date")
            continue
        stale += 1
        typer.echo(f"{path}: stale, {_count(len(items), 'item')} drifted:")
        for item in items:
            typer.echo(f"  {item.at(str(path))}")
        typer.echo(f"  pin them with: blocks lock {flow}")
    raise typer.Exit(EXIT_CODES["invalid"] if stale else EXIT_CODES["ok"])


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def register(app: typer.Typer) -> None:
    app.command()(lock)
