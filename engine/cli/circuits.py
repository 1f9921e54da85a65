"""`blocks circuits` and `blocks circuit open|close PROVIDER`: provider circuits by hand.

Owns: these commands' arguments and output. A manual open holds until a manual close,
whatever the automatic rules see; every run of every flow in this project stops routing to
the provider (its fallbacks on other providers take over). Exit 0 done, 2 bad command line.
Must not: hold circuit rules (`engine.providers.circuits` does).
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

import typer

__all__ = ["circuit_app", "circuits"]

circuit_app = typer.Typer(
    help="Open or close a provider's circuit by hand (what the runbooks' circuit step does).",
    no_args_is_help=True,
)


class ManualState(StrEnum):
    open = "open"
    close = "close"


def _board() -> Any:
    from engine.providers.circuits import CircuitBoard  # noqa: PLC0415
    from engine.runtime import load_settings  # noqa: PLC0415  (heavy: only when asked)

    settings = load_settings(None)
    return CircuitBoard(settings.state_dir / "circuits.json"), settings.user


def _when(t: Any) -> str:
    if not isinstance(t, int | float):
        return "-"
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def circuits(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Each provider's circuit: closed, open or half-open, failures in the window, and who
    opened it by hand and why."""
    board, _ = _board()
    snap = board.snapshot()
    if as_json:
        sys.stdout.write(json.dumps(snap, indent=2, sort_keys=True) + "\n")
        return
    if not snap:
        typer.echo("no circuit has been used yet: every provider is closed")
        return
    for name, c in snap.items():
        manual = f"  MANUAL by {c.get('by')}: {c.get('reason') or '-'}" if c.get("manual") else ""
        typer.echo(
            f"{name:<14} {c['state']:<10} failures {c['failures']:<3} "
            f"since {_when(c.get('updated_at'))}{manual}"
        )


@circuit_app.callback(invoke_without_command=False)
def _group() -> None:
    """Open or close a provider's circuit by hand."""


def _set(state: str, provider: str, reason: str) -> None:
    board, user = _board()
    before = board.snapshot().get(provider, {}).get("state", "closed")
    board.set_manual(provider, state, reason=reason, by=user)
    after = board.state(provider)
    typer.echo(f"circuit {provider}: {before} -> {after} (by hand, {user}: {reason})")


Provider = Annotated[str, typer.Argument(metavar="PROVIDER", help="As in model names: openai.")]
Reason = Annotated[str, typer.Option("--reason", "-r", help="Why (required, recorded).")]


@circuit_app.command("open")
def open_circuit(provider: Provider, reason: Reason) -> None:
    """Stop routing to PROVIDER until it is closed by hand."""
    _set("open", provider, reason)


@circuit_app.command("close")
def close_circuit(provider: Provider, reason: Reason) -> None:
    """Route to PROVIDER again; forgets its failures."""
    _set("closed", provider, reason)
