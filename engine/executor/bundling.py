"""Pinning a finished run into a context bundle.

Owns: reading what a bundle needs from a run's folder (its journal and the spec file it
ran, checked against the digest the journal recorded), the environment facts recorded with
it, and handing the members `engine.bundle` builds to a `BundleStore`.
Must not: decide what a member holds (`engine.bundle` does), how it is stored (the store
does), or when a run is bundled (the runtime does, when the run ends).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from engine import __version__
from engine.bundle import Redacts, build_bundle_members, leaf_digest
from engine.errors import BundleError, EngineError, WriteOnceError
from engine.executor.journal import read_journal
from engine.executor.state import replay
from engine.stores import BundleStore

__all__ = ["JOURNAL", "bundle_run", "environment_facts"]

JOURNAL = "journal.log"
"""A run's journal inside its folder (the runtime's `JOURNAL`; the runtime sits above us)."""

_FINISHED = frozenset({"succeeded", "failed", "cancelled", "timed_out"})


def environment_facts() -> dict[str, Any]:
    """Versions and platform of this engine, without importing litellm (slow to import)."""
    try:
        litellm: str | None = importlib.metadata.version("litellm")
    except importlib.metadata.PackageNotFoundError:
        litellm = None
    return {
        "engine": __version__,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "litellm": litellm,
    }


def bundle_run(
    run_dir: Path,
    store: BundleStore,
    redactor: Redacts,
    environment: Mapping[str, Any],
    *,
    project_root: Path | None = None,
    lock: bytes | None = None,
) -> str:
    """Bundle the finished run in `run_dir` into `store`; return the root digest.

    The spec is looked up where the run found it: its journaled path, relative to
    `project_root` if given, else to the project holding the state folder or to the
    current directory. It must hash to the journaled spec digest: a spec edited since the
    run is refused, never bundled as if it had run. A run still going, or interrupted, is
    refused too: its bundle would be incomplete. A run resumed after it was bundled gets a
    new bundle that supersedes the old one; bundling the same run state again returns the
    bundle it already has.
    """
    records = read_journal(Path(run_dir) / JOURNAL).records
    if not records:
        raise BundleError(f"{run_dir}: no journal records: nothing to bundle")
    summary = replay(records)
    if summary.status not in _FINISHED:
        raise BundleError(
            f"run {summary.run_id or Path(run_dir).name} has not finished ({summary.status}); "
            "bundle it once it ends"
        )
    spec_path = _find_spec(Path(run_dir), summary.path, summary.spec_digest, project_root)
    raw = spec_path.read_bytes()
    members = build_bundle_members(
        spec_name=spec_path.name,
        spec=raw,
        records=records,
        lock=lock,
        environment=environment,
        redactor=redactor,
        routes=_routes(str(spec_path), raw),
    )
    return _put(store, summary.run_id, members)


def _put(store: BundleStore, run_id: str, members: dict[str, bytes]) -> str:
    """Put the run's first bundle, or one that supersedes the bundle it had before it was
    resumed. The same run bundled twice gives the same bundle; a journal that does not
    extend the bundled one (history rewritten, or nothing new) is refused."""
    try:
        # `~1` asks the run's index only. A bare run id with no index entry falls back to
        # reading every manifest in the store (for a crash between a manifest and its index
        # entry), which every new run would pay for, growing with the store. Here that case
        # needs no lookup: putting the bundle again writes the missing index entry (or, if
        # the journal grew meanwhile, indexes the new bundle and leaves the other unindexed).
        store.resolve(f"{run_id}~1")
    except BundleError:
        return store.put_bundle(members, run_id=run_id)
    previous = store.resolve(run_id)
    before = store.get_manifest(previous)
    if {p: leaf_digest(b) for p, b in members.items()} == {
        m.path: m.digest for m in before.members
    }:
        return store.put_bundle(members, run_id=run_id, supersedes=before.supersedes)
    old = store.read_member(previous, "journal.jsonl")
    new = members["journal.jsonl"]
    if len(new) <= len(old) or not new.startswith(old):
        raise WriteOnceError(
            f"run {run_id} is already bundled as {previous}, and its journal has "
            + ("not grown since" if new == old else "changed, not grown,")
            + ": a bundle is written once"
        )
    return store.put_bundle(members, run_id=run_id, supersedes=previous)


def _find_spec(run_dir: Path, path: str, digest: str, project_root: Path | None) -> Path:
    if not path:
        raise BundleError(f"{run_dir}: the journal does not say which spec ran")
    given = Path(path)
    # <project>/.blocks/runs/<id> is where a run folder lives unless the state dir moved
    bases = (
        [project_root]
        if project_root is not None
        else [run_dir.resolve().parent.parent.parent, Path.cwd()]
    )
    candidates = [given] if given.is_absolute() else [b / given for b in bases]
    seen = [c for c in candidates if c.is_file()]
    for candidate in seen:
        if not digest or "sha256:" + hashlib.sha256(candidate.read_bytes()).hexdigest() == digest:
            return candidate
    if seen:
        raise BundleError(
            f"spec {seen[0]} changed since the run (it ran as {digest}): "
            "a bundle must hold the spec that ran"
        )
    raise BundleError(
        f"spec {path} of the run is not found (looked in {', '.join(map(str, bases))})"
    )


def _routes(path: str, raw: bytes) -> dict[str, str]:
    """Model route name -> model asked, from the spec's `models:` (empty if unreadable)."""
    from engine.loader import load_document  # noqa: PLC0415  (ruamel/ryml: only when bundling)

    try:
        data = load_document(path, raw).data
    except EngineError:
        return {}
    models = data.get("models") if isinstance(data, Mapping) else None
    if not isinstance(models, Mapping):
        return {}
    return {
        str(name): str(route["model"])
        for name, route in models.items()
        if isinstance(route, Mapping) and isinstance(route.get("model"), str)
    }
