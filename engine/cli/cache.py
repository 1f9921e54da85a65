"""`blocks cache gc`: bound the step cache, as `dvc gc` does.

Owns: this command's arguments and output. The cache (`.blocks/cache/`) holds one small entry
per step key and a copy of each out a cached step wrote; nothing else removes them.
Exit 0 done (or nothing to do), 2 bad command line.
Must not: decide what an entry is (`engine.executor.cache` does).
"""

from __future__ import annotations

import json
import sys
import time
from typing import Annotated

import typer

from engine.cli.units import human_size

__all__ = ["cache_app"]

cache_app = typer.Typer(
    help="The step cache: entries by step key and the copies of outs they put back.",
    no_args_is_help=True,
)


@cache_app.command("gc")
def gc(
    older_than: Annotated[
        str | None,
        typer.Option(
            "--older-than",
            metavar="DURATION",
            help="Remove entries last used longer ago than this (30d, 12h, ...).",
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Say what would be removed; remove nothing.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout.")] = False,
) -> None:
    """Remove cache entries last used before --older-than (none without it), then the
    copies of outs no remaining entry names and temporary files a crash left. A removed
    entry only means the step runs again next time."""
    from engine.errors import UsageError  # noqa: PLC0415
    from engine.executor.cache import StepCache  # noqa: PLC0415
    from engine.runtime import load_settings  # noqa: PLC0415
    from engine.spec.common import parse_duration  # noqa: PLC0415

    age: float | None = None
    if older_than is not None:
        try:
            age = float(parse_duration(older_than))
        except ValueError as exc:
            raise UsageError(f"--older-than: {exc}") from None
    settings = load_settings(None)
    sweep = StepCache(settings.cache_dir).gc(age, now=time.time(), dry_run=dry_run)
    if as_json:
        doc = {"cache": str(settings.cache_dir), "dry_run": dry_run, "older_than": age}
        doc.update(
            entries=sweep.entries,
            blobs=sweep.blobs,
            temps=sweep.temps,
            freed_bytes=sweep.freed_bytes,
            kept_entries=sweep.kept_entries,
            kept_bytes=sweep.kept_bytes,
        )
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
        return
    verb = "would remove" if dry_run else "removed"
    typer.echo(
        f"{verb} {sweep.entries} entr{'y' if sweep.entries == 1 else 'ies'}, "
        f"{sweep.blobs} kept out(s) no entry names and {sweep.temps} temporary file(s): "
        f"{human_size(sweep.freed_bytes)} in {settings.cache_dir}"
    )
    kept = sweep.kept_entries
    typer.echo(
        f"kept {kept} entr{'y' if kept == 1 else 'ies'} and their outs: "
        f"{human_size(sweep.kept_bytes)}"
    )
