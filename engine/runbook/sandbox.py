"""Where runbook runs live, and the sandboxes rehearsals run in.

Owns: the folder of a runbook run (`<state>/runbooks/<run id>/`, or inside a rehearsal's
sandbox), listing runs, and building a sandbox: a copy of the state a runbook acts on.
Must not: run runbooks (the runner does) or change the real state.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from engine.errors import RunbookError

if TYPE_CHECKING:
    from engine.runtime import Runtime

__all__ = ["JOURNAL", "find_run", "list_runs", "make_sandbox", "runbook_dir", "sandbox_runtime"]

JOURNAL = "journal.log"


def runbook_dir(state_dir: Path, run_id: str) -> Path:
    return state_dir / "runbooks" / run_id


def find_run(state_dir: Path, run_id: str) -> tuple[Path, Path | None] | None:
    """A runbook run's folder, and its sandbox when it was a rehearsal."""
    live = runbook_dir(state_dir, run_id)
    if (live / JOURNAL).exists():
        return live, None
    sandbox = state_dir / "rehearsals" / run_id
    rehearsed = runbook_dir(sandbox, run_id)
    if (rehearsed / JOURNAL).exists():
        return rehearsed, sandbox
    return None


def list_runs(state_dir: Path) -> list[tuple[str, Path, bool]]:
    out: list[tuple[str, Path, bool]] = []
    for folder in sorted((state_dir / "runbooks").glob("*/" + JOURNAL)):
        out.append((folder.parent.name, folder.parent, False))
    for folder in sorted((state_dir / "rehearsals").glob("*/runbooks/*/" + JOURNAL)):
        out.append((folder.parent.name, folder.parent, True))
    return sorted(out)


def make_sandbox(runtime: Runtime, run_id: str) -> Path:
    """A copy of the state a runbook acts on: the bundle store by hard links (its files are
    read-only and never change), the circuits and overrides by copy, past runs by copy
    (their journals are appended to, so never linked)."""
    settings = runtime.settings
    if settings.store_url and not settings.store_url.startswith(("/", ".")):
        raise RunbookError(
            "rehearsal copies the bundle store into a sandbox, which needs a local store; "
            f"BLOCKS_STORE is {settings.store_url.split('://')[0]}://. Rehearse against a "
            "local copy of the ledger (see docs/guides/runbooks-and-rollback.md)"
        )
    sandbox = settings.state_dir / "rehearsals" / run_id
    sandbox.mkdir(parents=True)
    store_dir = Path(settings.store_url) if settings.store_url else settings.bundles_dir
    if store_dir.is_dir():
        shutil.copytree(
            store_dir,
            sandbox / "bundles",
            copy_function=_link_or_copy,
            ignore=shutil.ignore_patterns("gc.lock", ".tmp-*"),
        )
    for name in ("circuits.json", "overrides.json"):
        if (settings.state_dir / name).exists():
            shutil.copy2(settings.state_dir / name, sandbox / name)
    if settings.runs_dir.is_dir():
        shutil.copytree(settings.runs_dir, sandbox / "runs", ignore=shutil.ignore_patterns("lock"))
    return sandbox


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def sandbox_runtime(runtime: Runtime, sandbox: Path) -> Runtime:
    from dataclasses import replace  # noqa: PLC0415

    from engine.runtime import Runtime  # noqa: PLC0415

    settings = replace(runtime.settings, state_dir=sandbox, store_url=None)
    environ = {k: v for k, v in runtime.environ.items() if k != "BLOCKS_STORE"}
    environ["BLOCKS_STATE_DIR"] = str(sandbox)
    return Runtime(settings, environ=environ)
