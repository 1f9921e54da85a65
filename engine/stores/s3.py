"""The S3 bundle store: the local store's contract on a bucket with Object Lock.

Owns: the key layout below under `s3://bucket/prefix`, writing objects so that none is
ever overwritten (conditional puts) and each is locked for the retention period, checking
the bucket before it is used, reading objects by the version a reference names, `verify`,
`gc` under Object Lock, extending retention (never shortening it), the channel ledger,
and turning every botocore error into a `BundleError` that names the bucket and key.
Must not: build members (`engine.bundle` does), read `os.environ` itself (runtime hands it
the environment; only boto3's own credential chain looks further, when no keys are given),
put a credential in a message, or let boto3/botocore be imported by anything but this module
(import-linter checks it; `engine.stores.open_store` imports this module only for `s3://`).

Layout under the prefix (the local store's, plus a sidecar)::

    blobs/sha256/ab/<hex>      member bytes; <hex> is the member's leaf digest
    bundles/<hex>.json         canonical manifest; <hex> is the bundle's root digest
    bundles/<hex>.refs.json    which object version holds the manifest and each blob
    runs/<run id>, ~2, ~3 ...  the run's bundles: {"bundle", "manifest", "refs"}
    ledger/00000000.json       the channel ledger, one object an entry

Every PUT carries `IfNoneMatch="*"` (S3 refuses it with 412 if the key exists: nothing is
overwritten), `ChecksumAlgorithm="SHA256"` with the SHA-256 we computed (AWS rejects bytes
that do not match it; moto 5.2.5 stores the value unchecked, one more reason every read
re-checks our own digests), and, on a bucket with Object Lock, `ObjectLockMode`
(COMPLIANCE by default) with `ObjectLockRetainUntilDate` = now + the retention (7 years by
default). A 412 means "already there": the stored object is read and must hold the same
content (a blob or manifest that does not is tampering; an index entry naming another
bundle is a `WriteOnceError`). A reused object whose lock ends sooner than a new one would
is extended.

Versions. A lock protects object *versions*, not keys: anyone allowed to PutObject can hide
a key behind a delete marker and put new bytes under it. So a reference names key, version
id and digest: the run index names the manifest's and the sidecar's versions, the sidecar
each blob's, and reads fetch those versions. Where no version is recorded (a crash before
the sidecar, a listing), the key's *oldest* version is the one that counts: it is the one a
conditional put created, and the one the lock keeps. Digests are checked on every read in
any case, so a version id is a way to reach the locked bytes, never a proof of them. The
bucket must have versioning on (it always has with Object Lock).

gc. Under Object Lock nothing can be deleted before its retention ends, not even debris:
gc removes only versions of blobs that no manifest references, that are older than the
grace period (a put in progress has written its blobs but not yet its manifest), whose
retain-until date has passed and that have no legal hold. Manifests, sidecars, index
entries and ledger entries are never removed.

Retention is never shortened, and COMPLIANCE never downgraded to GOVERNANCE, by this
module: `extend_retention` reads each object's lock and refuses. S3 enforces that for
COMPLIANCE too; moto (the tests' S3) does not, so the guard is ours and tested as ours.

Over the 700-line budget on purpose: one class keeps the store contract of
`engine.stores.local` on S3, and a third of the file is this explanation of what S3 and
Object Lock do and do not guarantee, which the code relies on line by line.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

# boto3 and botocore ship no type information (no py.typed): mypy sees them as Any (see the
# override in pyproject.toml). They stay behind this module's few calls, which the tests run
# against a real S3 API (a moto server); the rest of the module is fully typed.
from botocore.exceptions import BotoCoreError, ClientError, FlexibleChecksumError

from engine.bundle import (
    BundleEntry,
    Manifest,
    Member,
    VerifyReport,
    canonical_bytes,
    check_digest,
    leaf_digest,
    node_digest,
)
from engine.errors import BundleError, LedgerConflict, TamperError, UsageError, WriteOnceError
from engine.stores._resolve import HEX64, RUN_ID, new_manifest, resolve_ref

__all__ = ["DEFAULT_RETENTION_DAYS", "S3BundleStore"]

DEFAULT_RETENTION_DAYS: Final = 2557
"""Seven years (365 * 7 + 2 leap days)."""
LOCK_MODES: Final = ("COMPLIANCE", "GOVERNANCE")
_MAX_RETENTION_DAYS: Final = 36500  # S3's limit: 100 years
_EXTEND_SLACK: Final = timedelta(days=1)  # a reused object's lock is extended past this
_GC_GRACE: Final = timedelta(hours=1)

_LEDGER_NAME: Final = re.compile(r"ledger/[0-9]{8}\.json")
_BLOB_KEY: Final = re.compile(r"blobs/sha256/([0-9a-f]{2})/([0-9a-f]{64})")
_BUNDLE_KEY: Final = re.compile(r"bundles/([0-9a-f]{64})(\.refs)?\.json")
_BUCKET: Final = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
# a key or version that is not there (MethodNotAllowed: the version is a delete marker)
_MISSING: Final = frozenset({"NoSuchKey", "NoSuchVersion", "404", "MethodNotAllowed"})
_HINTS: Final = {
    "AccessDenied": " (check the IAM policy: docs/guides/bundles-and-locks.md lists the actions)",
    "NoSuchBucket": " (check the bucket name and BLOCKS_S3_ENDPOINT_URL / BLOCKS_S3_REGION)",
    "InvalidAccessKeyId": " (check AWS_ACCESS_KEY_ID)",
    "SignatureDoesNotMatch": " (check AWS_SECRET_ACCESS_KEY)",
}
_INDEX_FORMAT: Final = "blocks-s3-index/1"
_REFS_FORMAT: Final = "blocks-s3-refs/1"
_CLIENTS: dict[tuple[str | None, ...], Any] = {}
_CLIENTS_LOCK: Final = threading.Lock()


class _Exists(BundleError):
    """A conditional put found the key taken (HTTP 412)."""


@dataclass(frozen=True, slots=True)
class _Version:
    version_id: str | None
    size: int
    last_modified: datetime | None


@dataclass(slots=True)
class _Listing:
    """Every version under a prefix, by key relative to the store's prefix, newest first
    (the order S3 lists them in), and the keys whose newest entry is a delete marker."""

    versions: dict[str, list[_Version]] = field(default_factory=dict)
    hidden: set[str] = field(default_factory=set)

    def oldest(self, rel: str) -> str | None:
        found = self.versions.get(rel)
        return found[-1].version_id if found else None


@dataclass(frozen=True, slots=True)
class _IndexEntry:
    bundle: str
    manifest: str | None
    refs: str | None


class S3BundleStore:
    """Bundles in an S3 bucket with Object Lock. Safe for concurrent puts from anywhere."""

    def __init__(
        self,
        client: Any,
        bucket: str,
        prefix: str = "",
        *,
        retention_days: int = DEFAULT_RETENTION_DAYS,
        lock_mode: str = "COMPLIANCE",
        compliance: bool = True,
        endpoint: str | None = None,
        gc_grace: timedelta = _GC_GRACE,
    ) -> None:
        if not _BUCKET.fullmatch(bucket):
            raise UsageError(f"{bucket!r} is not an S3 bucket name")
        if lock_mode not in LOCK_MODES:
            raise UsageError(f"lock mode {lock_mode!r}: expected COMPLIANCE or GOVERNANCE")
        if not 1 <= retention_days <= _MAX_RETENTION_DAYS:
            raise UsageError(f"retention of {retention_days} days: expected 1 to 36500")
        self._s3 = client  # a boto3 S3 client (Any: see the import above)
        self.bucket = bucket
        self.prefix = _clean_prefix(prefix)
        self.retention = timedelta(days=retention_days)
        self.lock_mode = lock_mode
        self.compliance = compliance
        self.endpoint = endpoint
        self.gc_grace = gc_grace
        self._locked: bool | None = None  # the bucket's Object Lock, once checked
        self._pinned: dict[str, str] = {}  # key -> the version a reference names
        self._refs_read: set[str] = set()
        self._entries: dict[tuple[str, str], _IndexEntry] = {}  # (key, version) -> entry
        self._manifests: dict[str, Manifest] = {}  # digest -> verified manifest

    @classmethod
    def from_url(cls, url: str, environ: Mapping[str, str]) -> S3BundleStore:
        """The store `s3://bucket[/prefix]` names, configured from `environ`:
        BLOCKS_S3_ENDPOINT_URL (an S3-compatible server; default AWS), BLOCKS_S3_REGION
        (default AWS_REGION, AWS_DEFAULT_REGION, us-east-1), BLOCKS_S3_RETENTION_DAYS
        (default 2557, 7 years), BLOCKS_S3_LOCK_MODE (COMPLIANCE, or GOVERNANCE),
        BLOCKS_S3_COMPLIANCE (default 1: refuse a bucket without Object Lock). Credentials
        are AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (/ AWS_SESSION_TOKEN), or AWS_PROFILE,
        or boto3's usual chain. Nothing is sent to S3 until the store is used."""
        bucket, prefix = _parse_url(url)
        endpoint = environ.get("BLOCKS_S3_ENDPOINT_URL") or None
        region = (
            environ.get("BLOCKS_S3_REGION")
            or environ.get("AWS_REGION")
            or environ.get("AWS_DEFAULT_REGION")
            or "us-east-1"
        )
        days = _int_setting(environ, "BLOCKS_S3_RETENTION_DAYS", DEFAULT_RETENTION_DAYS)
        mode = (environ.get("BLOCKS_S3_LOCK_MODE") or "COMPLIANCE").strip().upper()
        if mode not in LOCK_MODES:
            raise UsageError(
                f"BLOCKS_S3_LOCK_MODE={environ.get('BLOCKS_S3_LOCK_MODE')!r}: "
                "expected COMPLIANCE or GOVERNANCE"
            )
        compliance = _flag_setting(environ, "BLOCKS_S3_COMPLIANCE", default=True)
        client = _client(endpoint, region, environ)
        return cls(
            client,
            bucket,
            prefix,
            retention_days=days,
            lock_mode=mode,
            compliance=compliance,
            endpoint=endpoint,
        )

    @property
    def location(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    # ---- keys ----------------------------------------------------------------------------

    @staticmethod
    def blob_key(digest: str) -> str:
        """The key of a blob, relative to the prefix."""
        hexd = _hex(digest)
        return f"blobs/sha256/{hexd[:2]}/{hexd}"

    @staticmethod
    def manifest_key(digest: str) -> str:
        return f"bundles/{_hex(digest)}.json"

    @staticmethod
    def refs_key(digest: str) -> str:
        return f"bundles/{_hex(digest)}.refs.json"

    def key(self, rel: str) -> str:
        """The full object key of `rel` (a key relative to the prefix)."""
        return self.prefix + rel

    def _where(self, rel: str | None) -> str:
        return f"s3://{self.bucket}/{self.prefix}{rel}" if rel else f"bucket {self.bucket}"

    # ---- the bucket ----------------------------------------------------------------------

    def _ready(self) -> bool:
        """Check the bucket once: versioning on, and Object Lock on unless compliance is off.
        Returns whether puts carry a lock."""
        if self._locked is not None:
            return self._locked
        status = self._call("read the versioning of", None, self._s3.get_bucket_versioning)
        if status.get("Status") != "Enabled":
            raise BundleError(
                f"bucket {self.bucket} does not have versioning enabled "
                f"(it is {status.get('Status') or 'off'}): the bundle store references "
                "object versions; create the bucket with Object Lock, which turns it on"
            )
        config = self._call(
            "read the Object Lock configuration of",
            None,
            self._s3.get_object_lock_configuration,
            missing_ok=True,
        )
        enabled = bool(
            config and config.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled")
        )
        if self.compliance and not enabled:
            raise BundleError(
                f"bucket {self.bucket} does not have Object Lock enabled, and compliance is "
                "on (BLOCKS_S3_COMPLIANCE): bundles there could be deleted or overwritten. "
                "Use a bucket created with Object Lock enabled, or set BLOCKS_S3_COMPLIANCE=0 "
                "to accept an unlocked bucket"
            )
        self._locked = enabled
        return enabled

    # ---- S3 calls ------------------------------------------------------------------------

    def _call(
        self,
        action: str,
        rel: str | None,
        method: Callable[..., Any],
        *,
        missing_ok: bool = False,
        **kwargs: Any,
    ) -> Any:
        """`method(Bucket=..., **kwargs)`, with botocore's errors as BundleError. With
        `missing_ok`, a missing key, version or lock configuration returns None."""
        try:
            return method(Bucket=self.bucket, **kwargs)
        except ClientError as exc:
            code, message = _error_of(exc)
            if code in ("PreconditionFailed", "412"):
                raise _Exists(f"{self._where(rel)} exists") from None
            if missing_ok and (code in _MISSING or code == "ObjectLockConfigurationNotFoundError"):
                return None
            if code == "NoSuchBucket":
                raise BundleError(
                    f"bucket {self.bucket} does not exist{self._at()}{_HINTS[code]}"
                ) from None
            raise BundleError(
                f"S3 refused to {action} {self._where(rel)}: {code}: {message}"
                f"{_HINTS.get(code, '')}"
            ) from None
        except FlexibleChecksumError:
            raise  # the caller knows which member the bytes belong to
        except BotoCoreError as exc:
            raise BundleError(f"cannot {action} {self._where(rel)}{self._at()}: {exc}") from None

    def _at(self) -> str:
        return f" at {self.endpoint}" if self.endpoint else ""

    def _put(self, rel: str, data: bytes, *, content_type: str) -> str | None:
        """Create `rel` with `data`; its version id. `_Exists` if the key is taken."""
        checksum = base64.b64encode(hashlib.sha256(data).digest()).decode("ascii")
        lock: dict[str, Any] = {}
        if self._ready():
            lock = {
                "ObjectLockMode": self.lock_mode,
                "ObjectLockRetainUntilDate": self._retain_until(),
            }
        answer = self._call(
            "write",
            rel,
            self._s3.put_object,
            Key=self.key(rel),
            Body=data,
            ContentType=content_type,
            ChecksumAlgorithm="SHA256",
            ChecksumSHA256=checksum,
            IfNoneMatch="*",
            **lock,
        )
        stored = answer.get("ChecksumSHA256")
        if stored is not None and stored != checksum:
            raise BundleError(
                f"S3 stored {self._where(rel)} with SHA-256 {stored}, expected {checksum}"
            )
        version: str | None = answer.get("VersionId")
        if version is not None:
            self._pinned[rel] = version
        return version

    def _get(self, rel: str, version: str | None, *, what: str) -> bytes | None:
        """The bytes of one version of `rel` (the latest if `version` is None); None if it
        is not there. S3's checksum, where one is stored, is checked on the way."""
        kwargs: dict[str, Any] = {"Key": self.key(rel), "ChecksumMode": "ENABLED"}
        if version is not None:
            kwargs["VersionId"] = version
        try:
            answer = self._call("read", rel, self._s3.get_object, missing_ok=True, **kwargs)
            if answer is None:
                return None
            data: bytes = answer["Body"].read()
        except FlexibleChecksumError:
            raise TamperError(f"{what}: S3 says its bytes do not match their checksum") from None
        except BotoCoreError as exc:  # the body is streamed after the call returned
            raise BundleError(f"cannot read {self._where(rel)}{self._at()}: {exc}") from None
        return data

    def _pin(self, rel: str, version: str | None) -> None:
        """Remember which version of `rel` a reference names (the first one heard of)."""
        if version:
            self._pinned.setdefault(rel, version)

    def _read(self, rel: str, *, what: str) -> tuple[bytes | None, str | None]:
        """The bytes of the version of `rel` that counts (the pinned one, else the oldest),
        and that version. A pinned version that is gone falls back to the oldest left: its
        digest then says whether it is the same content."""
        self._ready()
        pinned = self._pinned.get(rel)
        if pinned is not None:
            data = self._get(rel, pinned, what=what)
            if data is not None:
                return data, pinned
        oldest = self._listing(rel).oldest(rel)
        if oldest is None:
            return None, None
        if pinned is None:
            self._pin(rel, oldest)
        return self._get(rel, oldest, what=what), oldest

    def _listing(self, rel_prefix: str) -> _Listing:
        """Every version (and delete marker) of every key under `rel_prefix`."""
        out = _Listing()
        paginator = self._s3.get_paginator("list_object_versions")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.key(rel_prefix)):
                for v in page.get("Versions") or ():
                    rel = v["Key"][len(self.prefix) :]
                    out.versions.setdefault(rel, []).append(
                        _Version(v.get("VersionId"), int(v.get("Size") or 0), v.get("LastModified"))
                    )
                for m in page.get("DeleteMarkers") or ():
                    rel = m["Key"][len(self.prefix) :]
                    if m.get("IsLatest"):
                        out.hidden.add(rel)
        except ClientError as exc:
            code, message = _error_of(exc)
            raise BundleError(
                f"S3 refused to list {self._where(rel_prefix)}: {code}: {message}"
                f"{_HINTS.get(code, '')}"
            ) from None
        except BotoCoreError as exc:
            raise BundleError(f"cannot list {self._where(rel_prefix)}{self._at()}: {exc}") from None
        return out

    def _write_once(
        self,
        rel: str,
        data: bytes,
        existing: Callable[[bytes], None],
        *,
        content_type: str = "application/json",
        claim: bool = False,
    ) -> str | None:
        """Create `rel` unless it exists; then `existing` checks the stored bytes (and a
        lock ending too soon is extended). With `claim`, the key names a slot that only the
        first writer may have (an index or ledger entry): a put that created a version but
        not the oldest one (the key was hidden behind a delete marker) is treated as
        "taken"."""
        try:
            version = self._put(rel, data, content_type=content_type)
            if not claim:
                return version
            oldest = self._listing(rel).oldest(rel)
            if oldest == version:
                return version
            self._pinned.pop(rel, None)  # the oldest version is the one that counts
        except _Exists:
            pass
        stored, version = self._read(rel, what=self._where(rel))
        if stored is None:  # taken, yet nothing readable: hidden with no version left
            raise BundleError(f"{self._where(rel)} is taken but has no version to read")
        existing(stored)
        if not claim:
            self._keep_locked(rel, version)
        return version

    # ---- writing -------------------------------------------------------------------------

    def put_bundle(
        self,
        members: Mapping[str, bytes],
        *,
        run_id: str | None = None,
        supersedes: str | None = None,
    ) -> str:
        """Store `members` as one bundle and return its root digest. Idempotent for equal
        content. A run's first bundle needs no `supersedes`; a later one (the run was
        resumed) must name the run's current bundle there, or `WriteOnceError` is raised."""
        manifest = new_manifest(members, run_id, supersedes)
        root = manifest.root_digest()
        self._ready()
        if run_id is not None:
            self._next_index(run_id, root, supersedes)  # refuse before writing
        blobs = self._put_blobs(manifest, members)
        manifest_version = self._put_manifest(manifest)
        refs_version = self._put_refs(root, manifest_version, blobs)
        if run_id is not None:
            entry = _IndexEntry(root, manifest_version, refs_version)
            self._put_index(run_id, entry, supersedes)
        return root

    def _put_blobs(self, manifest: Manifest, members: Mapping[str, bytes]) -> dict[str, str]:
        versions: dict[str, str] = {}
        for m in manifest.members:
            if m.digest in versions:
                continue

            def same(stored: bytes, m: Member = m) -> None:
                if len(stored) != m.size or leaf_digest(stored) != m.digest:
                    raise TamperError(
                        f"member {m.path}: stored blob {_hex(m.digest)[:16]}... does not "
                        "match its digest"
                    )

            rel = self.blob_key(m.digest)
            version = self._write_once(
                rel, members[m.path], same, content_type="application/octet-stream"
            )
            versions[m.digest] = version or ""
        return versions

    def _put_manifest(self, manifest: Manifest) -> str | None:
        data = manifest.to_bytes()
        digest = node_digest(data)

        def same(stored: bytes) -> None:
            if stored != data:
                raise TamperError(
                    f"stored manifest {_hex(digest)}.json differs from bundle {digest}"
                )

        return self._write_once(self.manifest_key(digest), data, same)

    def _put_refs(
        self, root: str, manifest_version: str | None, blobs: Mapping[str, str]
    ) -> str | None:
        doc = {
            "format": _REFS_FORMAT,
            "bundle": root,
            "manifest": {"key": self.manifest_key(root), "version": manifest_version},
            "blobs": {
                d: {"key": self.blob_key(d), "version": v or None} for d, v in sorted(blobs.items())
            },
        }

        def same(stored: bytes) -> None:  # an earlier put's sidecar: its versions stand
            if _refs_bundle(stored) != root:
                raise TamperError(f"the version sidecar of bundle {root} names another bundle")

        version = self._write_once(self.refs_key(root), canonical_bytes(doc), same)
        self._refs_read.discard(root)
        return version

    def _index_rel(self, run_id: str, n: int) -> str:
        return f"runs/{run_id}" if n == 1 else f"runs/{run_id}~{n}"

    def _chain(self, run_id: str) -> list[_IndexEntry]:
        """A run's index entries, oldest first: `runs/<id>`, `runs/<id>~2`..."""
        listing = self._listing(f"runs/{run_id}")
        out: list[_IndexEntry] = []
        while (rel := self._index_rel(run_id, len(out) + 1)) in listing.versions:
            self._pin(rel, listing.oldest(rel))
            entry = self._entries.get((rel, self._pinned.get(rel, "")))
            if entry is None:
                data, version = self._read(rel, what=f"index entry {rel}")
                if data is None:
                    break
                entry = _parse_index(data)
                if entry is None:
                    shown = data[:80].decode("utf-8", "replace")
                    name = rel.removeprefix("runs/")
                    raise TamperError(f"index entry {name} is corrupt: {shown!r}")
                self._entries[rel, version or ""] = entry
            self._pin(self.manifest_key(entry.bundle), entry.manifest)
            self._pin(self.refs_key(entry.bundle), entry.refs)
            out.append(entry)
        return out

    def _next_index(self, run_id: str, root: str, supersedes: str | None) -> str | None:
        """The index entry `root` goes to; None if it is indexed already."""
        chain = [e.bundle for e in self._chain(run_id)]
        if root in chain:
            return None
        current = chain[-1] if chain else None
        if supersedes != current:
            raise WriteOnceError(
                f"run {run_id} is already bundled as {current}; a new bundle of it must "
                "supersede that one"
                if current is not None
                else f"run {run_id} has no bundle for this one to supersede ({supersedes})"
            )
        return self._index_rel(run_id, len(chain) + 1)

    def _put_index(self, run_id: str, entry: _IndexEntry, supersedes: str | None) -> None:
        rel = self._next_index(run_id, entry.bundle, supersedes)
        if rel is None:
            return
        doc = {
            "format": _INDEX_FORMAT,
            "bundle": entry.bundle,
            "manifest": entry.manifest,
            "refs": entry.refs,
        }

        def taken(stored: bytes) -> None:  # a concurrent put of another bundle got there first
            found = _parse_index(stored)
            if found is None or found.bundle != entry.bundle:
                raise WriteOnceError(
                    f"index entry {rel.removeprefix('runs/')} was written by another bundle"
                )

        self._write_once(rel, canonical_bytes(doc) + b"\n", taken, claim=True)

    def _retain_until(self) -> datetime:
        return _whole_seconds(_now() + self.retention)

    def _keep_locked(self, rel: str, version: str | None) -> None:
        """An object a new bundle reuses must stay locked as long as a new one would:
        extend (never shorten) its retention when it ends more than a day sooner."""
        if not self._ready() or version is None:
            return
        mode, until, _ = self._lock_of(rel, version)
        wanted = self._retain_until()
        if until is not None and until >= wanted - _EXTEND_SLACK:
            return
        keep = "COMPLIANCE" if mode == "COMPLIANCE" else self.lock_mode
        self._set_retention(rel, version, keep, wanted)

    def _lock_of(self, rel: str, version: str) -> tuple[str | None, datetime | None, bool]:
        """(mode, retain-until, legal hold) of one object version."""
        head = self._call(
            "read the lock of", rel, self._s3.head_object, Key=self.key(rel), VersionId=version
        )
        until = head.get("ObjectLockRetainUntilDate")
        return (
            head.get("ObjectLockMode"),
            until.astimezone(UTC) if isinstance(until, datetime) else None,
            head.get("ObjectLockLegalHoldStatus") == "ON",
        )

    def _set_retention(self, rel: str, version: str, mode: str, until: datetime) -> None:
        self._call(
            "extend the retention of",
            rel,
            self._s3.put_object_retention,
            Key=self.key(rel),
            VersionId=version,
            Retention={"Mode": mode, "RetainUntilDate": until},
        )

    # ---- retention -----------------------------------------------------------------------

    def extend_retention(self, ref: str, until: datetime, *, mode: str | None = None) -> list[str]:
        """Lock every object of bundle `ref` (manifest, sidecar, blobs, its index entries)
        until `until`. Refuses, before changing anything, to shorten any object's retention
        or to turn COMPLIANCE into GOVERNANCE: S3 refuses that for COMPLIANCE objects, but
        an S3-compatible server may not, so this store never asks. `mode` defaults to each
        object's current mode. Returns the keys whose lock changed."""
        if until.tzinfo is None:
            raise BundleError("a retain-until time needs a time zone (UTC, say)")
        until = _whole_seconds(until)
        if mode is not None and mode not in LOCK_MODES:
            raise BundleError(f"lock mode {mode!r}: expected COMPLIANCE or GOVERNANCE")
        digest = self.resolve(ref)
        if not self._ready():
            raise BundleError(f"bucket {self.bucket} has no Object Lock: there is no retention")
        if until <= _now():
            raise BundleError(f"retain-until {until.isoformat()} is not in the future")
        plan: list[tuple[str, str, str]] = []
        for rel, version in self._objects_of(digest):
            current_mode, current, _ = self._lock_of(rel, version)
            new_mode = mode or current_mode or self.lock_mode
            if current_mode == "COMPLIANCE" and new_mode != "COMPLIANCE":
                raise BundleError(
                    f"{self._where(rel)} is locked in COMPLIANCE mode: it cannot be "
                    f"downgraded to {new_mode}"
                )
            if current is not None and until < current:
                raise BundleError(
                    f"{self._where(rel)} is locked until {current.isoformat()}: retention is "
                    f"never shortened (asked for {until.isoformat()})"
                )
            if current != until or current_mode != new_mode:
                plan.append((rel, version, new_mode))
        for rel, version, new_mode in plan:
            self._set_retention(rel, version, new_mode, until)
        return [rel for rel, _, _ in plan]

    def retention_of(self, ref: str) -> dict[str, tuple[str | None, datetime | None]]:
        """The lock (mode, retain-until) of every object of bundle `ref`, by key."""
        digest = self.resolve(ref)
        out: dict[str, tuple[str | None, datetime | None]] = {}
        for rel, version in self._objects_of(digest):
            mode, until, _ = self._lock_of(rel, version)
            out[rel] = (mode, until)
        return out

    def _objects_of(self, digest: str) -> list[tuple[str, str]]:
        """(key, version) of every object bundle `digest` stands on."""
        manifest = self._manifest(digest)
        self._load_refs(digest)
        out: list[tuple[str, str]] = []
        rels = [self.manifest_key(digest), self.refs_key(digest)]
        rels += sorted({self.blob_key(m.digest) for m in manifest.members})
        if manifest.run is not None and RUN_ID.fullmatch(manifest.run):
            chain = self._chain(manifest.run)
            rels += [
                self._index_rel(manifest.run, n)
                for n, e in enumerate(chain, start=1)
                if e.bundle == digest
            ]
        for rel in rels:
            version = self._pinned.get(rel) or self._listing(rel).oldest(rel)
            if version:
                out.append((rel, version))
        return out

    # ---- the channel ledger --------------------------------------------------------------

    def ledger_entries(self) -> list[bytes]:
        """Every ledger entry, in order: the oldest version of each `ledger/NNNNNNNN.json`
        (a later version could only come from writing over a hidden entry)."""
        self._ready()
        listing = self._listing("ledger/")
        out: list[bytes] = []
        for rel in sorted(r for r in listing.versions if _LEDGER_NAME.fullmatch(r)):
            self._pin(rel, listing.oldest(rel))
            data, _ = self._read(rel, what=f"ledger entry {rel}")
            if data is not None:
                out.append(data)
        return out

    def ledger_append(self, seq: int, data: bytes) -> None:
        """Create entry `seq` with a conditional put: of two writers racing for one number
        exactly one wins (the other gets 412, or finds its version is not the oldest), and
        readers see whole entries. The loser gets `LedgerConflict`."""
        if seq < 0:
            raise BundleError(f"ledger entry number {seq} is negative")
        rel = f"ledger/{seq:08d}.json"

        def taken(_: bytes) -> None:
            raise LedgerConflict(f"ledger entry {seq} was written by another writer")

        self._ready()
        self._write_once(rel, data, taken, claim=True)

    # ---- reading -------------------------------------------------------------------------

    def resolve(self, ref: str) -> str:
        """The root digest `ref` names: a run id (its latest bundle; ``<run id>~N`` for its
        N-th), a root digest, or a unique prefix of one (4 hex digits at least, with or
        without ``sha256:``). BundleError if it names none or several."""
        self._ready()
        ref = ref.strip()
        if ref.startswith("sha256:") and HEX64.fullmatch(ref[7:]):  # no run id has a colon
            rel = self.manifest_key(ref)
            if rel in self._pinned or self._listing(rel).oldest(rel):
                return ref
        return resolve_ref(
            ref,
            chain=lambda run: [check_digest(e.bundle) for e in self._chain(run)],
            check_indexed=self._check_indexed,
            manifest_names=self._manifest_names,
            run_manifests=lambda run: [
                self._manifest(e.digest) for e in self.list_bundles() if e.run == run
            ],
            location=self.location,
        )

    def _check_indexed(self, run_id: str, digest: str) -> None:
        try:
            run = self._manifest(digest).run
        except BundleError:
            return
        if run != run_id:
            raise TamperError(f"the index maps run {run_id} to {digest}, a bundle of run {run}")

    def get_manifest(self, ref: str) -> Manifest:
        """The manifest of bundle `ref`, checked against the digest it is stored under."""
        return self._manifest(self.resolve(ref))

    def _manifest(self, digest: str, *, fresh: bool = False) -> Manifest:
        """The manifest of `digest`, verified. Verified manifests are kept for the life of
        this object (content-addressed: they cannot change and stay right); `fresh` reads
        it again, as `verify` and `gc` do."""
        if not fresh and digest in self._manifests:
            return self._manifests[digest]
        data, _ = self._read(self.manifest_key(digest), what=f"bundle {digest}: its manifest")
        if data is None:
            raise TamperError(f"bundle {digest}: its manifest is missing")
        actual = node_digest(data)
        if actual != digest:
            raise TamperError(f"bundle {digest}: its manifest hashes to {actual}")
        try:
            manifest = Manifest.parse(data)
        except BundleError as exc:
            raise TamperError(f"bundle {digest}: unreadable manifest: {exc}") from None
        self._manifests[digest] = manifest
        return manifest

    def _load_refs(self, digest: str) -> None:
        """Pin the blob versions bundle `digest`'s sidecar records (once per bundle). A
        missing or unreadable sidecar pins nothing: blobs are then read at their oldest
        version, and their digests decide as always."""
        if digest in self._refs_read:
            return
        self._refs_read.add(digest)
        data, _ = self._read(self.refs_key(digest), what=f"bundle {digest}: its sidecar")
        doc = _json(data) if data is not None else None
        if not isinstance(doc, dict) or doc.get("bundle") != digest:
            return
        manifest = doc.get("manifest")
        if isinstance(manifest, dict) and isinstance(manifest.get("version"), str):
            self._pin(self.manifest_key(digest), manifest["version"])
        blobs = doc.get("blobs")
        for blob, ref in blobs.items() if isinstance(blobs, dict) else ():
            if isinstance(ref, dict) and isinstance(ref.get("version"), str) and _is_digest(blob):
                self._pin(self.blob_key(blob), ref["version"])

    def read_member(self, ref: str, path: str) -> bytes:
        """The bytes of member `path`, verified. TamperError names the member if they differ."""
        digest = self.resolve(ref)
        member = self._manifest(digest).member(path)
        self._load_refs(digest)
        what = f"member {path} of bundle {digest}"
        data, _ = self._read(self.blob_key(member.digest), what=what)
        if data is None:
            raise TamperError(f"{what}: its blob is missing")
        if len(data) != member.size or leaf_digest(data) != member.digest:
            raise TamperError(f"{what}: stored bytes do not match its digest")
        return data

    def list_bundles(self) -> list[BundleEntry]:
        """Every stored bundle, by run id then digest. A bad manifest is listed with its
        problem rather than hidden."""
        out = []
        for hexd in self._manifest_names():
            digest = f"sha256:{hexd}"
            try:
                manifest = self._manifest(digest, fresh=True)
            except BundleError as exc:
                out.append(BundleEntry(digest, None, 0, 0, str(exc)))
                continue
            out.append(
                BundleEntry(digest, manifest.run, len(manifest.members), manifest.total_size)
            )
        return sorted(out, key=lambda e: (e.run or "", e.digest))

    def _manifest_names(self) -> list[str]:
        """The hex digests of every manifest key with a version (hidden ones included)."""
        self._ready()
        listing = self._listing("bundles/")
        names = []
        for rel in listing.versions:
            match = _BUNDLE_KEY.fullmatch(rel)
            if match and not match.group(2):
                self._pin(rel, listing.oldest(rel))
                names.append(match.group(1))
        return sorted(names)

    # ---- verify and gc -------------------------------------------------------------------

    def verify(self, ref: str) -> VerifyReport:
        """Re-hash every member of bundle `ref` and check the store around it. Unlike the
        local store it does not count blobs no bundle references (that would read every
        manifest; `gc` finds them), and it notes keys of this bundle that were written over."""
        digest = self.resolve(ref)
        rel = self.manifest_key(digest)
        try:
            data, _ = self._read(rel, what=f"bundle {digest}: its manifest")
        except TamperError as exc:
            return VerifyReport(digest, manifest_problem=str(exc))
        if data is None:
            return VerifyReport(digest, manifest_problem="the manifest object is missing")
        problem: str | None = None
        if node_digest(data) != digest:
            problem = f"its root digest is {node_digest(data)}, not the {digest} it is stored as"
        try:
            manifest = Manifest.parse(data)
        except BundleError as exc:
            return VerifyReport(digest, manifest_problem=problem or f"unreadable: {exc}")
        self._load_refs(digest)
        tampered: list[str] = []
        missing: list[str] = []
        for m in manifest.members:
            try:
                blob, _ = self._read(self.blob_key(m.digest), what=f"member {m.path}")
            except TamperError:
                tampered.append(m.path)
                continue
            if blob is None:
                missing.append(m.path)
            elif len(blob) != m.size or leaf_digest(blob) != m.digest:
                tampered.append(m.path)
        renamed, added, notes = self._survey(digest, manifest, missing)
        found = {p for p, _ in renamed}
        return VerifyReport(
            digest,
            run=manifest.run,
            checked=len(manifest.members),
            manifest_problem=problem,
            tampered=tuple(tampered),
            missing=tuple(p for p in missing if p not in found),
            renamed=tuple(renamed),
            added=tuple(added),
            notes=tuple(notes),
        )

    def _survey(
        self, digest: str, manifest: Manifest, missing: list[str]
    ) -> tuple[list[tuple[str, str]], list[str], list[str]]:
        """Objects under blobs/ and bundles/ the layout does not account for (added, or a
        missing member's bytes under another key: renamed), and keys of this bundle that
        someone wrote over or hid (its referenced versions still count: a note)."""
        lost = {manifest.member(p).digest: p for p in missing}
        sizes = {manifest.member(p).size for p in missing}
        renamed: list[tuple[str, str]] = []
        added: list[str] = []
        listings = (self._listing("blobs/"), self._listing("bundles/"))
        for listing in listings:
            for rel, versions in sorted(listing.versions.items()):
                if _blob_digest(rel) is not None:
                    continue
                if _BUNDLE_KEY.fullmatch(rel):
                    continue
                hit = None
                for v in versions:
                    if lost and v.size in sizes:
                        data = self._get(rel, v.version_id, what=rel)
                        actual = leaf_digest(data) if data is not None else None
                        if actual in lost:
                            hit = lost[actual]
                            break
                if hit is not None:
                    renamed.append((hit, rel))
                else:
                    added.append(rel)
        ours = {self.manifest_key(digest)} | {self.blob_key(m.digest) for m in manifest.members}
        shadowed = 0
        for listing in listings:
            for rel in ours & set(listing.versions):
                newest = listing.versions[rel][0].version_id
                if rel in listing.hidden or newest != self._pinned.get(rel, newest):
                    shadowed += 1
        notes = []
        if shadowed:
            notes.append(
                f"{shadowed} object(s) of this bundle have a newer version or a delete marker "
                "over the locked version the bundle references (someone wrote over the key); "
                "the referenced versions were read and verified"
            )
        return renamed, added, notes

    def _referenced(self, keep: frozenset[str]) -> set[str]:
        """Every blob digest a manifest names, plus `keep`. A manifest that cannot be read
        raises: what it references would be unknown."""
        out = set(keep)
        for hexd in self._manifest_names():
            out.update(m.digest for m in self._manifest(f"sha256:{hexd}", fresh=True).members)
        return out

    def gc(self, keep: set[str] | frozenset[str] = frozenset()) -> list[str]:
        """Delete the versions of blobs no manifest references (nor `keep`) that are older
        than the grace period, whose retention has ended and that have no legal hold. Under
        Object Lock that is only what outlived its retention: debris of a crashed put stays
        until then. Never removes a manifest, sidecar, index or ledger entry, or a key that
        is not a blob's (evidence: `verify` reports it). Returns the keys removed."""
        removed: list[str] = []
        for rel, version_id in self._collectable(keep):
            self._call(
                "delete", rel, self._s3.delete_object, Key=self.key(rel), VersionId=version_id
            )
            self._pinned.pop(rel, None)
            if rel not in removed:
                removed.append(rel)
        return removed

    def gc_preview(self, keep: set[str] | frozenset[str] = frozenset()) -> list[str]:
        """The keys `gc(keep)` would remove now, removing nothing (`blocks bundle gc
        --dry-run`): the same listing, grace period, retention and legal-hold checks."""
        return list(dict.fromkeys(rel for rel, _ in self._collectable(keep)))

    def _collectable(self, keep: set[str] | frozenset[str]) -> list[tuple[str, str]]:
        """(key, version id) of every blob version `gc` may delete now."""
        for digest in keep:
            check_digest(digest)
        self._ready()
        referenced = self._referenced(frozenset(keep))
        now = _now()
        out: list[tuple[str, str]] = []
        for rel, versions in sorted(self._listing("blobs/").versions.items()):
            named = _blob_digest(rel)
            if named is None or named in referenced:
                continue
            for v in versions:
                if v.version_id is None:
                    continue
                if v.last_modified is not None and now - v.last_modified < self.gc_grace:
                    continue  # perhaps a put in progress: its manifest is still to come
                _, until, held = self._lock_of(rel, v.version_id)
                if held or (until is not None and until > now):
                    continue
                out.append((rel, v.version_id))
        return out


# ---- helpers -----------------------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(UTC)


def _whole_seconds(when: datetime) -> datetime:
    """`when` in UTC, rounded up to a whole second (what S3 keeps of a retain-until date)."""
    when = when.astimezone(UTC)
    return when.replace(microsecond=0) + timedelta(seconds=1 if when.microsecond else 0)


def _hex(digest: str) -> str:
    return check_digest(digest).removeprefix("sha256:")


def _blob_digest(rel: str) -> str | None:
    """The digest a key under blobs/ claims, or None if it is not a blob's place."""
    match = _BLOB_KEY.fullmatch(rel)
    if match is None or match.group(1) != match.group(2)[:2]:
        return None
    return f"sha256:{match.group(2)}"


def _is_digest(value: object) -> bool:
    try:
        check_digest(value)
    except BundleError:
        return False
    return True


def _json(data: bytes) -> Any:
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None


def _parse_index(data: bytes) -> _IndexEntry | None:
    doc = _json(data)
    if not isinstance(doc, dict) or doc.get("format") != _INDEX_FORMAT:
        return None
    bundle, manifest, refs = doc.get("bundle"), doc.get("manifest"), doc.get("refs")
    if not _is_digest(bundle) or not all(v is None or isinstance(v, str) for v in (manifest, refs)):
        return None
    return _IndexEntry(str(bundle), manifest or None, refs or None)


def _refs_bundle(data: bytes) -> object:
    doc = _json(data)
    return doc.get("bundle") if isinstance(doc, dict) else None


def _error_of(exc: Any) -> tuple[str, str]:
    """(code, message) of a botocore ClientError: S3's words, never the request."""
    response = getattr(exc, "response", None) or {}
    error = response.get("Error") or {}
    status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
    code = str(error.get("Code") or status or "error")
    message = str(error.get("Message") or "")[:300]
    return code, message


def _clean_prefix(prefix: str) -> str:
    parts = [p for p in prefix.strip("/").split("/") if p]
    if any(p in (".", "..") for p in parts) or any(ord(c) < 0x20 for c in prefix):
        raise UsageError(f"S3 prefix {prefix!r}: no '.', '..' or control characters")
    return "/".join(parts) + "/" if parts else ""


def _parse_url(url: str) -> tuple[str, str]:
    if not url.startswith("s3://"):
        raise UsageError(f"BLOCKS_STORE={url!r}: expected s3://bucket[/prefix]")
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    if not _BUCKET.fullmatch(bucket):
        raise UsageError(
            f"BLOCKS_STORE={url!r}: {bucket!r} is not an S3 bucket name "
            "(3-63 lower-case letters, digits, dots and hyphens)"
        )
    return bucket, _clean_prefix(prefix)


def _int_setting(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = (environ.get(name) or "").strip()
    if not raw:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= _MAX_RETENTION_DAYS:
        raise UsageError(f"{name}={raw!r}: expected a whole number of days from 1 to 36500")
    return int(raw)


def _flag_setting(environ: Mapping[str, str], name: str, *, default: bool) -> bool:
    raw = (environ.get(name) or "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise UsageError(f"{name}={raw!r}: expected 1 or 0 (true/false, yes/no, on/off)")


def _client(endpoint: str | None, region: str, environ: Mapping[str, str]) -> Any:
    """A boto3 S3 client. Explicit keys come from `environ`; otherwise boto3's own chain
    (AWS_PROFILE, shared files, instance roles) applies. No secret ever reaches a message:
    errors name variables, never values."""
    import boto3  # noqa: PLC0415  (heavy, and only ever needed here)
    from botocore.config import Config  # noqa: PLC0415

    key_id = environ.get("AWS_ACCESS_KEY_ID") or None
    secret = environ.get("AWS_SECRET_ACCESS_KEY") or None
    if (key_id is None) != (secret is None):
        missing = "AWS_SECRET_ACCESS_KEY" if secret is None else "AWS_ACCESS_KEY_ID"
        raise UsageError(f"{missing} is not set, but its pair is: set both, or neither")
    if endpoint is not None and not re.fullmatch(r"https?://[^\s/]+/?", endpoint):
        raise UsageError(f"BLOCKS_S3_ENDPOINT_URL={endpoint!r}: expected http(s)://host[:port]")
    token = (environ.get("AWS_SESSION_TOKEN") or None) if key_id else None
    profile = None if key_id else environ.get("AWS_PROFILE") or None
    # Making a client costs ~0.2 s (botocore loads the S3 model); clients are thread-safe
    # and hold no state of a store, so stores with the same settings share one.
    cache_key = (endpoint, region, key_id, secret, token, profile)
    with _CLIENTS_LOCK:
        if cache_key in _CLIENTS:
            return _CLIENTS[cache_key]
        config = Config(
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=10,
            read_timeout=60,
            s3={"addressing_style": "path"} if endpoint else {},
        )
        try:
            session = boto3.session.Session(
                aws_access_key_id=key_id,
                aws_secret_access_key=secret,
                aws_session_token=token,
                profile_name=profile,
                region_name=region,
            )
            client = session.client("s3", endpoint_url=endpoint, config=config)
        except (BotoCoreError, ValueError) as exc:
            raise UsageError(f"cannot set up the S3 client: {type(exc).__name__}: {exc}") from None
        _CLIENTS[cache_key] = client
        return client
