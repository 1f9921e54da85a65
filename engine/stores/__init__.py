"""Where context bundles are kept: the `BundleStore` contract and its implementations.

Owns: the `BundleStore` protocol every store meets (`local.LocalBundleStore` today; an S3
Object Lock store behind the same methods later) and the re-export of the local store.
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
from typing import Protocol, runtime_checkable

from engine.bundle import BundleEntry, Manifest, VerifyReport
from engine.stores.local import LocalBundleStore

__all__ = ["BundleStore", "LocalBundleStore"]


@runtime_checkable
class BundleStore(Protocol):
    """A content-addressed, write-once home for bundles."""

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
