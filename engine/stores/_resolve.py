"""The rules every store shares: what a bundle put may claim, and how a reference resolves.

Owns: `new_manifest` (the checks on a put's run id and `supersedes`), and the grammar of a
REF (a run id, `<run id>~N` for the run's N-th bundle, a root digest, or a unique prefix of
one: 4 hex digits at least, with or without `sha256:`) and the order the candidates are
tried in. Must not: read storage itself (each store passes the lookups).

A run's index entry is written after its manifest, so a crash in between leaves a bundle no
index names yet: a bare run id then falls back to the run's manifests, and resolves when
exactly one of them is not superseded by another.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Final

from engine.bundle import Manifest
from engine.errors import BundleError

__all__ = ["HEX64", "RUN_ID", "new_manifest", "resolve_ref"]

HEX64: Final = re.compile(r"[0-9a-f]{64}")
HEXPREFIX: Final = re.compile(r"[0-9a-f]{4,64}")
RUN_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def resolve_ref(
    ref: str,
    *,
    chain: Callable[[str], list[str]],
    check_indexed: Callable[[str, str], None],
    manifest_names: Callable[[], list[str]],
    run_manifests: Callable[[str], list[Manifest]],
    location: str,
) -> str:
    """The root digest `ref` names. `chain(run)`: the root digests of a run's index entries,
    oldest first; `check_indexed(run, digest)` raises if the index lies; `manifest_names()`:
    every stored manifest's hex digest; `run_manifests(run)`: the manifests of that run."""
    ref = ref.strip()
    run_id, _, nth = ref.partition("~")
    if RUN_ID.fullmatch(run_id) and (nth == "" or nth.isdigit()):
        found_chain = chain(run_id)
        if found_chain and (nth == "" or 1 <= int(nth) <= len(found_chain)):
            digest = found_chain[int(nth) - 1] if nth else found_chain[-1]
            check_indexed(run_id, digest)
            return digest
    prefix = ref.removeprefix("sha256:")
    if HEXPREFIX.fullmatch(prefix):
        found = [h for h in manifest_names() if h.startswith(prefix)]
        if len(found) == 1:
            return f"sha256:{found[0]}"
        if len(found) > 1:
            shown = ", ".join(f"sha256:{h[:12]}" for h in found[:5])
            raise BundleError(f"{ref!r} matches {len(found)} bundles ({shown}...): say more")
    if not nth:  # the index is written after the manifest: a crash in between
        manifests = run_manifests(ref)
        superseded = {m.supersedes for m in manifests}
        heads = [m.root_digest() for m in manifests if m.root_digest() not in superseded]
        if len(heads) == 1:
            return heads[0]
    raise BundleError(f"no bundle matches {ref!r} in {location}")


def new_manifest(
    members: Mapping[str, bytes], run_id: str | None, supersedes: str | None
) -> Manifest:
    """The manifest a `put_bundle` writes, after the checks every store makes: a run id
    must be able to name an index entry, and only a run's bundle supersedes another."""
    if run_id is not None and not RUN_ID.fullmatch(run_id):
        raise BundleError(f"run id {run_id!r} cannot name an index entry")
    if supersedes is not None and run_id is None:
        raise BundleError("only a run's bundle can supersede another")
    return Manifest.from_members(members, run=run_id, supersedes=supersedes)
