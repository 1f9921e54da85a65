"""Where context bundles are kept: the `BundleStore` contract and its implementations.

Owns: the `BundleStore` protocol every store meets (`local.LocalBundleStore`, and
`s3.S3BundleStore` on a bucket with Object Lock, imported only for `s3://` URLs) and the
re-export of the local store.
Must not: build bundle members or read journals (`engine.bundle` and the executor do),
print, or read the environment (runtime says where the store is).

Contract, for every implementation:

- `put_bundle` writes each blob once, then the manifest, then the run index: a manifest is
  visible only when all its blobs are. Equal content is stored once. Re-putting the same
  bundle is a no-op. A run already bundled can get a new bundle only if that bundle
  `supersedes` the run's current one (a resumed run); otherwise `WriteOnceError`.
- every read verifies digests; a mismatch raises `TamperError` naming the member.
- `resolve` accepts a run id (its latest bundle; `<run id>~N` for the N-th), a root
  digest, or a unique prefix of one.
- `verify` never raises for tampering: it returns a `VerifyReport` saying what changed.
- `gc` never removes a manifest or a blob a manifest references.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Protocol, runtime_checkable

from engine.bundle import BundleEntry, Manifest, VerifyReport
from engine.errors import LedgerConflict, UsageError
from engine.stores.local import LocalBundleStore

__all__ = ["BundleStore", "LedgerConflict", "LocalBundleStore", "open_store"]


@runtime_checkable
class BundleStore(Protocol):
    """A content-addressed, write-once home for bundles."""

    @property
    def location(self) -> str:
        """Where the store is, for people: a folder, or `s3://bucket/prefix`."""
        ...

    def put_bundle(
        self,
        members: Mapping[str, bytes],
        *,
        run_id: str | None = None,
        supersedes: str | None = None,
    ) -> str:
        """Store a bundle; return its root digest."""
        ...

    def resolve(self, ref: str) -> str:
        """The root digest a run id, digest or unique digest prefix names."""
        ...

    def get_manifest(self, ref: str) -> Manifest:
        """The verified manifest of a bundle."""
        ...

    def read_member(self, ref: str, path: str) -> bytes:
        """The verified bytes of one member."""
        ...

    def list_bundles(self) -> list[BundleEntry]:
        """Every bundle, by run id then digest."""
        ...

    def verify(self, ref: str) -> VerifyReport:
        """Re-hash a whole bundle against its manifest."""
        ...

    def gc(self, keep: set[str] | frozenset[str] = frozenset()) -> list[str]:
        """Remove debris no manifest references; return what was removed."""
        ...

    def ledger_entries(self) -> list[bytes]:
        """Every entry of the channel ledger, in order (entry 0 first)."""
        ...

    def ledger_append(self, seq: int, data: bytes) -> None:
        """Write ledger entry `seq` if and only if no entry `seq` exists yet (atomic: a reader
        sees the whole entry or none). Raises `LedgerConflict` when another writer got there
        first: the caller re-reads and decides again."""
        ...


def open_store(url: str | None, default_dir: Path, environ: Mapping[str, str]) -> BundleStore:
    """The store `BLOCKS_STORE` names: unset or a path for a local directory store;
    `s3://bucket[/prefix]` for the S3 Object Lock store (boto3 imported only then)."""
    if not url:
        return LocalBundleStore(default_dir)
    if url.startswith("s3://"):
        from engine.stores.s3 import S3BundleStore  # noqa: PLC0415  (boto3: only for S3)

        return S3BundleStore.from_url(url, environ)
    if "://" in url:
        raise UsageError(f"BLOCKS_STORE={url!r}: expected a directory or s3://bucket[/prefix]")
    return LocalBundleStore(Path(url))
