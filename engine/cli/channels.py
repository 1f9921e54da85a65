"""`blocks promote`, `rollback`, `freeze`, `unfreeze` and `channels`.

Owns: these commands' arguments, output and exit codes: 0 done; 1 refused (blockers failed,
channel frozen, no good bundle to return to, a broken ledger); 2 a wrong command line or a
bundle that does not exist; 4 another writer changed the channel first (nothing written:
look, then run the command again). Must not: hold the rules (`engine.channels` does).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from engine.channels import Channels, ChannelState, Entry

__all__ = ["register"]

ChannelOpt = Annotated[
    str, typer.Option("--channel", "-c", metavar="NAME", help="The channel (prod, staging...).")
]
ReasonOpt = Annotated[
    str | None, typer.Option("--reason", "-r", help="Why: kept in the ledger for the audit.")
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def open_channels(user: str | None = None) -> Channels:
    """The channels of this project's bundle store, acting as BLOCKS_USER."""
    from engine.channels import Channels  # noqa: PLC0415
    from engine.runtime import load_settings  # noqa: PLC0415  (heavy: only when asked)
    from engine.stores import open_store  # noqa: PLC0415

    settings = load_settings(None)
    store = open_store(settings.store_url, settings.bundles_dir, os.environ)
    return Channels(store, user=user or settings.user, before_append=_test_barrier())


def _test_barrier() -> Callable[[int], None] | None:
    """BLOCKS_FAULTS=wait@ledger.append:PATH (tests only): after deciding, announce it by
    creating PATH.<pid>, then wait (up to a minute) for PATH to exist before writing the
    entry. Two commands held there race for one ledger entry number for real."""
    plan = os.environ.get("BLOCKS_FAULTS", "")
    prefix = "wait@ledger.append:"
    if not plan.startswith(prefix):
        return None
    gate = Path(plan.removeprefix(prefix))

    def wait(_: int) -> None:
        Path(f"{gate}.{os.getpid()}").touch()
        deadline = time.monotonic() + 60
        while not gate.exists() and time.monotonic() < deadline:
            time.sleep(0.01)

    return wait


def _short(digest: str | None) -> str:
    return digest[:19] if digest else "nothing"


def _done(entry: Entry, as_json: bool, text: str) -> None:
    if as_json:
        sys.stdout.write(json.dumps({**entry.as_dict(), "digest": entry.digest}, indent=2) + "\n")
    else:
        typer.echo(f"{text} (ledger entry {entry.seq}, by {entry.by})")


def _conflict(exc: Exception) -> typer.Exit:
    from engine.cli import EXIT_CODES  # noqa: PLC0415  (engine.cli imports this module)

    typer.echo(f"blocks: conflict: {exc}", err=True)
    return typer.Exit(EXIT_CODES["conflict"])


def promote(
    bundle: Annotated[str, typer.Argument(metavar="BUNDLE", help="A run id or bundle digest.")],
    channel: ChannelOpt,
    reason: ReasonOpt = None,
    as_json: AsJson = False,
) -> None:
    """Point CHANNEL at BUNDLE, if the bundle is intact and its blocking gates passed."""
    from engine.errors import LedgerConflict  # noqa: PLC0415

    try:
        entry = open_channels().promote(bundle, channel, reason=reason)
    except LedgerConflict as exc:
        raise _conflict(exc) from None
    _done(
        entry,
        as_json,
        f"promoted {_short(entry.bundle)} (run {entry.run}) to {channel}; "
        f"it served {_short(entry.previous)}",
    )


def rollback(
    channel: ChannelOpt,
    to: Annotated[
        str,
        typer.Option(
            "--to",
            metavar="TARGET",
            help="last-good (default: the newest good bundle it served, never one it was "
            "rolled back away from), previous (undo the latest move, e.g. roll back a "
            "rollback), a bundle (run id or digest), or before:TIME (ISO 8601, for example "
            "before:2026-11-01T00:00:00Z).",
        ),
    ] = "last-good",
    reason: ReasonOpt = None,
    as_json: AsJson = False,
) -> None:
    """Point CHANNEL back at a good bundle it served. Recorded, so it can be rolled back."""
    from engine.errors import LedgerConflict  # noqa: PLC0415

    try:
        entry = open_channels().rollback(channel, to=to, reason=reason)
    except LedgerConflict as exc:
        raise _conflict(exc) from None
    _done(
        entry,
        as_json,
        f"rolled {channel} back to {_short(entry.bundle)} (run {entry.run}); "
        f"it served {_short(entry.previous)}",
    )


def freeze(
    channel: ChannelOpt,
    reason: Annotated[str, typer.Option("--reason", "-r", help="Why (required).")],
    as_json: AsJson = False,
) -> None:
    """Refuse promotions to CHANNEL (`all`: every channel) until it is unfrozen."""
    from engine.errors import LedgerConflict  # noqa: PLC0415

    try:
        entry = open_channels().freeze(channel, reason=reason)
    except LedgerConflict as exc:
        raise _conflict(exc) from None
    _done(entry, as_json, f"froze {channel}: {reason}")


def unfreeze(
    channel: ChannelOpt,
    reason: Annotated[str, typer.Option("--reason", "-r", help="Why (required).")],
    as_json: AsJson = False,
) -> None:
    """Allow promotions to CHANNEL (`all`: lift a freeze of every channel) again."""
    from engine.errors import LedgerConflict  # noqa: PLC0415

    try:
        entry = open_channels().unfreeze(channel, reason=reason)
    except LedgerConflict as exc:
        raise _conflict(exc) from None
    _done(entry, as_json, f"unfroze {channel}: {reason}")


def channels(
    name: Annotated[
        str | None, typer.Argument(metavar="[CHANNEL]", help="Show one channel's history.")
    ] = None,
    at: Annotated[
        str | None,
        typer.Option("--at", metavar="TIME", help="What each channel served at TIME (ISO 8601)."),
    ] = None,
    as_json: AsJson = False,
) -> None:
    """Each channel's bundle and whether it is frozen; with CHANNEL, its whole history."""
    from engine.channels import parse_time  # noqa: PLC0415

    chans = open_channels()
    entries = chans.entries()
    if at is not None:
        cutoff = parse_time(at)
        entries = [e for e in entries if e.at <= cutoff]
    state = chans.state(entries)
    if name is not None:
        one = state.get(name) or chans.channel(name)
        state = {name: one}
    if as_json:
        sys.stdout.write(json.dumps(_as_json(state, name is not None), indent=2) + "\n")
        return
    if not state:
        typer.echo("no channels yet: `blocks promote RUN_ID --channel NAME` makes one")
        return
    for ch in state.values():
        frozen = ""
        if ch.frozen and ch.frozen_by is not None:
            f = ch.frozen_by
            scope = " (all channels)" if f.channel == "all" else ""
            frozen = f"  FROZEN{scope} since {f.at} by {f.by}: {f.reason or '-'}"
        typer.echo(
            f"{ch.name:<12} {_short(ch.bundle)}  run {ch.run or '-'}  since {ch.since or '-'}"
            f"{frozen}"
        )
        if name is not None:
            for e in ch.history:
                typer.echo(_history_line(e))


def _history_line(e: Entry) -> str:
    what = {
        "promote": f"promote   {_short(e.bundle)} (was {_short(e.previous)})",
        "rollback": f"rollback  {_short(e.bundle)} (was {_short(e.previous)})",
        "freeze": f"freeze    {e.channel}",
        "unfreeze": f"unfreeze  {e.channel}",
    }[e.action]
    via = f" via runbook run {e.via}" if e.via else ""
    return f"  #{e.seq:<4} {e.at}  {e.by:<10} {what}  {e.reason or ''}{via}".rstrip()


def _as_json(state: dict[str, ChannelState], history: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for ch in state.values():
        row: dict[str, Any] = {
            "bundle": ch.bundle,
            "run": ch.run,
            "since": ch.since,
            "frozen": ch.frozen,
            "frozen_by": ch.frozen_by.seq if ch.frozen_by else None,
        }
        if history:
            row["history"] = [{**e.as_dict(), "digest": e.digest} for e in ch.history]
        out[ch.name] = row
    return out


def register(app: typer.Typer) -> None:
    app.command()(promote)
    app.command()(rollback)
    app.command()(freeze)
    app.command()(unfreeze)
    app.command()(channels)
