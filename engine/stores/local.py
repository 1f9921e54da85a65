"""The local bundle store: content-addressed, write-once files in one folder.

Owns: the on-disk layout below, writing blobs and manifests so that a crash never leaves a
partial bundle, verifying every byte it reads, `verify` (re-hash a whole bundle and say
what changed), and `gc` (remove what no manifest references). Must not: build members
(`engine.bundle` does), read journals, or ever rewrite stored content.

Layout under `root`::

    blobs/sha256/ab/<hex>      member bytes; <hex> is the member's leaf digest (read-only)
    bundles/<hex>.json         canonical manifest; <hex> is the bundle's root digest
    runs/<run id>              "sha256:<hex>\\n": the run's bundle (an index)
    runs/<run id>~2, ~3 ...    its later bundles, each superseding the one before (resumes)
    gc.lock                    puts share it, gc takes it alone

Write protocol. Every file is written to a temp file (``.tmp-*``) in its final folder,
fsynced, made read-only, then hard-linked to its final name (a link never replaces an
existing file), and the folder is fsynced. An existing blob is verified, never rewritten.
Blobs are pipelined: a worker thread fsyncs and links one blob while the next is written,
and each blob folder is fsynced once, after its last link (see `_put_blobs`).
The manifest is written only after every blob it names is durable, and the run index last:
a manifest exists only if all its blobs do. A crash or kill leaves at worst temp files and
unreferenced blobs, which `gc` removes; a full disk is reported as `BundleError` with the
temp file removed. Index entries are written once too: a run bundled again (it was resumed)
gets the next entry, and only if the new bundle names the current one as the bundle it
`supersedes`; anything else raises `WriteOnceError`.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import errno
import fcntl
import functools
import os
import re
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Final

from engine.bundle import (
    BundleEntry,
    LeafHasher,
    Manifest,
    Member,
    VerifyReport,
    check_digest,
    node_digest,
)
from engine.errors import BundleError, LedgerConflict, TamperError, WriteOnceError
from engine.stores._resolve import HEX64, new_manifest, resolve_ref

__all__ = ["LocalBundleStore"]

_CHUNK: Final = 1 << 20
_IN_FLIGHT: Final = 32
"""Blobs written but not yet fsynced, at most (each holds an open file descriptor)."""
_TEMP: Final = ".tmp-"
_LEDGER_NAME: Final = re.compile(r"[0-9]{8}\.json")
# A folder whose file system cannot hard-link falls back to rename (see _publish).
_NO_LINK: Final = frozenset({errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV})


def _hex(digest: str) -> str:
    return check_digest(digest).removeprefix("sha256:")


class LocalBundleStore:
    """Bundles in a local folder. Safe for concurrent puts; gc waits for them."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @property
    def location(self) -> str:
        return str(self.root)

    # ---- paths ---------------------------------------------------------------------------

    @property
    def _blobs(self) -> Path:
        return self.root / "blobs" / "sha256"

    @property
    def _bundles(self) -> Path:
        return self.root / "bundles"

    @property
    def _runs(self) -> Path:
        return self.root / "runs"

    @property
    def _ledger(self) -> Path:
        return self.root / "ledger"

    def blob_path(self, digest: str) -> Path:
        hexd = _hex(digest)
        return self._blobs / hexd[:2] / hexd

    def manifest_path(self, digest: str) -> Path:
        return self._bundles / f"{_hex(digest)}.json"

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
        try:
            with self._lock(fcntl.LOCK_SH):
                if run_id is not None:
                    self._next_index(run_id, root, supersedes)  # refuse before writing
                self._put_blobs(manifest, members)
                self._put_manifest(manifest)
                if run_id is not None:
                    self._put_index(run_id, root, supersedes)
        except OSError as exc:
            raise BundleError(f"cannot write bundle to {self.root}: {exc}") from exc
        return root

    def _put_blobs(self, manifest: Manifest, members: Mapping[str, bytes]) -> None:
        """Write every blob the store lacks, durably, before anything names it.

        The same protocol as `_write_once`, pipelined: each blob goes to a temp file in its
        final folder, and a worker thread fsyncs it and only then links it to its name,
        while this thread writes the next one (at most `_IN_FLIGHT` not yet durable). Each
        folder that got a new name is fsynced once, after the last link and before the
        manifest. On any error every temp file is removed; blobs already linked are whole.
        """
        todo: dict[str, tuple[Member, Path]] = {}
        for m in manifest.members:
            if m.digest in todo:
                continue
            final = self.blob_path(m.digest)
            if final.exists():  # stored already: verified, never rewritten
                self._check_blob(final, member=m)
                continue
            todo[m.digest] = (m, final)
        if not todo:
            return
        folders = {final.parent for _, final in todo.values()}
        _ensure_dirs(folders)
        temps: list[str] = []
        pending: collections.deque[tuple[concurrent.futures.Future[None], int]]
        pending = collections.deque()
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="blocks-fsync") as sync:
            try:
                for m, final in todo.values():
                    while len(pending) >= _IN_FLIGHT:
                        pending.popleft()[0].result()
                    fd, tmp = tempfile.mkstemp(prefix=_TEMP, dir=final.parent)
                    temps.append(tmp)
                    try:
                        _write_all(fd, members[m.path])
                        os.fchmod(fd, 0o444)
                    except BaseException:
                        os.close(fd)
                        raise
                    check = functools.partial(self._check_blob, member=m)
                    future = sync.submit(self._durable_link, fd, tmp, final, check)
                    pending.append((future, fd))
                while pending:
                    pending.popleft()[0].result()
            finally:  # after an error: what the worker has not started is closed here
                for future, fd in pending:
                    if future.cancel():
                        os.close(fd)
                concurrent.futures.wait([future for future, _ in pending])
                for tmp in temps:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(tmp)
        for folder in sorted(folders):
            _sync_dir(folder)

    def _durable_link(
        self, fd: int, tmp: str, final: Path, existing: Callable[[Path], None]
    ) -> None:
        """fsync and close `fd` (the temp file `tmp`), then give it its final name; if a
        concurrent put published that name first, `existing` checks what is there."""
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        published = self._publish(tmp, final)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)  # a second name of the blob now (or a copy not needed)
        if not published:
            existing(final)

    def _put_manifest(self, manifest: Manifest) -> None:
        data = manifest.to_bytes()
        digest = node_digest(data)
        for m in manifest.members:  # the rule the layout rests on: blobs before manifest
            if not self.blob_path(m.digest).is_file():
                raise BundleError(f"member {m.path}: blob vanished before the manifest")

        def same(path: Path) -> None:
            if path.read_bytes() != data:
                raise TamperError(f"stored manifest {path.name} differs from bundle {digest}")

        self._write_once(self.manifest_path(digest), data, same)

    def _chain(self, run_id: str) -> list[str]:
        """The root digests of a run's bundles, oldest first: `runs/<id>`, `runs/<id>~2`..."""
        out: list[str] = []
        while (path := self._runs / _index_name(run_id, len(out) + 1)).is_file():
            text = path.read_text(encoding="utf-8").strip()
            try:
                out.append(check_digest(text))
            except BundleError:
                raise TamperError(f"index entry {path.name} is corrupt: {text!r}") from None
        return out

    def _next_index(self, run_id: str, root: str, supersedes: str | None) -> str | None:
        """The index entry `root` goes to; None if it is indexed already."""
        chain = self._chain(run_id)
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
        return _index_name(run_id, len(chain) + 1)

    def _put_index(self, run_id: str, root: str, supersedes: str | None) -> None:
        name = self._next_index(run_id, root, supersedes)
        if name is None:
            return

        def taken(path: Path) -> None:  # a concurrent put of another bundle got there first
            if path.read_text(encoding="utf-8").strip() != root:
                raise WriteOnceError(f"index entry {path.name} was written by another bundle")

        self._write_once(self._runs / name, f"{root}\n".encode(), taken)

    def _write_once(self, final: Path, data: bytes, existing: Callable[[Path], None]) -> None:
        """Write `data` at `final` unless something is there, which `existing` then checks."""
        if final.exists():
            existing(final)
            return
        _ensure_dir(final.parent)
        fd, tmp = tempfile.mkstemp(prefix=_TEMP, dir=final.parent)
        try:
            try:
                _write_all(fd, data)
                os.fchmod(fd, 0o444)
                os.fsync(fd)
            finally:
                os.close(fd)
            if self._publish(tmp, final):
                _sync_dir(final.parent)
            else:
                existing(final)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    @staticmethod
    def _publish(tmp: str, final: Path) -> bool:
        """Give the temp file its final name without replacing anything. False if taken."""
        try:
            os.link(tmp, final)
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno not in _NO_LINK:
                raise
            # No hard links here: rename, which could replace a file a concurrent writer
            # published a moment ago. Same name, same digest, so the same bytes.
            if final.exists():
                return False
            os.rename(tmp, final)
        return True

    @contextlib.contextmanager
    def _lock(self, how: int) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / "gc.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, how)
            yield
        finally:
            os.close(fd)

    # ---- the channel ledger --------------------------------------------------------------

    def ledger_entries(self) -> list[bytes]:
        """Every ledger entry, in order. Entries are numbered from 0 without gaps: a gap means
        a file was removed, which the ledger's hash chain then reports."""
        folder = self._ledger
        if not folder.is_dir():
            return []
        names = sorted(n for n in os.listdir(folder) if _LEDGER_NAME.fullmatch(n))
        return [(folder / n).read_bytes() for n in names]

    def ledger_append(self, seq: int, data: bytes) -> None:
        """Publish entry `seq` with a hard link, which fails if the name exists: of two
        writers racing for one number exactly one wins, and readers see whole entries."""
        if seq < 0:
            raise BundleError(f"ledger entry number {seq} is negative")
        final = self._ledger / f"{seq:08d}.json"

        def taken(_: Path) -> None:
            raise LedgerConflict(f"ledger entry {seq} was written by another writer")

        try:
            self._write_once(final, data, taken)
        except OSError as exc:
            raise BundleError(f"cannot write the channel ledger in {self._ledger}: {exc}") from exc

    # ---- reading -------------------------------------------------------------------------

    def resolve(self, ref: str) -> str:
        """The root digest `ref` names: a run id (its latest bundle; ``<run id>~N`` for its
        N-th), a root digest, or a unique prefix of one (4 hex digits at least, with or
        without ``sha256:``). BundleError if it names none or several."""
        return resolve_ref(
            ref,
            chain=self._chain,
            check_indexed=self._check_indexed,
            manifest_names=self._manifest_names,
            run_manifests=lambda run: [
                self._manifest(e.digest) for e in self.list_bundles() if e.run == run
            ],
            location=self.location,
        )

    def _check_indexed(self, run_id: str, digest: str) -> None:
        """An index entry must point at a bundle of that run. A manifest that is missing or
        unreadable is not judged here: reading it fails, and `verify` reports it."""
        try:
            run = self._manifest(digest).run
        except BundleError:
            return
        if run != run_id:
            raise TamperError(f"the index maps run {run_id} to {digest}, a bundle of run {run}")

    def get_manifest(self, ref: str) -> Manifest:
        """The manifest of bundle `ref`, checked against the digest it is stored under."""
        return self._manifest(self.resolve(ref))

    def _manifest(self, digest: str) -> Manifest:
        path = self.manifest_path(digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise TamperError(f"bundle {digest}: its manifest is missing") from None
        actual = node_digest(data)
        if actual != digest:
            raise TamperError(f"bundle {digest}: its manifest hashes to {actual}")
        try:
            return Manifest.parse(data)
        except BundleError as exc:  # it hashed right, so it was written this way: not ours
            raise TamperError(f"bundle {digest}: unreadable manifest: {exc}") from None

    def read_member(self, ref: str, path: str) -> bytes:
        """The bytes of member `path`, verified. TamperError names the member if they differ."""
        digest = self.resolve(ref)
        member = self._manifest(digest).member(path)
        try:
            data = self.blob_path(member.digest).read_bytes()
        except FileNotFoundError:
            raise TamperError(f"member {path} of bundle {digest}: its blob is missing") from None
        h = LeafHasher()
        h.update(data)
        if h.digest() != member.digest or len(data) != member.size:
            raise TamperError(
                f"member {path} of bundle {digest}: stored bytes do not match its digest"
            )
        return data

    def list_bundles(self) -> list[BundleEntry]:
        """Every stored bundle, by run id then digest. A bad manifest is listed with its
        problem rather than hidden."""
        out = []
        for hexd in self._manifest_names():
            digest = f"sha256:{hexd}"
            try:
                manifest = self._manifest(digest)
            except BundleError as exc:
                out.append(BundleEntry(digest, None, 0, 0, str(exc)))
                continue
            size = manifest.total_size
            out.append(BundleEntry(digest, manifest.run, len(manifest.members), size))
        return sorted(out, key=lambda e: (e.run or "", e.digest))

    def _manifest_names(self) -> list[str]:
        if not self._bundles.is_dir():
            return []
        names = (p.name for p in self._bundles.iterdir() if p.name.endswith(".json"))
        return sorted(n[:-5] for n in names if HEX64.fullmatch(n[:-5]))

    # ---- verify and gc -------------------------------------------------------------------

    def verify(self, ref: str) -> VerifyReport:
        """Re-hash every member of bundle `ref` and check the store around it."""
        digest = self.resolve(ref)
        problem: str | None = None
        path = self.manifest_path(digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return VerifyReport(digest, manifest_problem="the manifest file is missing")
        if node_digest(data) != digest:
            problem = f"its root digest is {node_digest(data)}, not the {digest} it is stored as"
        try:
            manifest = Manifest.parse(data)
        except BundleError as exc:
            return VerifyReport(digest, manifest_problem=problem or f"unreadable: {exc}")
        tampered, missing = self._check_members(manifest)
        known = {digest: manifest} if problem is None else {}  # parsed once, not again
        renamed, added, notes = self._survey(manifest, missing, known)
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

    def _check_members(self, manifest: Manifest) -> tuple[list[str], list[str]]:
        tampered: list[str] = []
        missing: list[str] = []
        for m in manifest.members:
            try:
                self._check_blob(self.blob_path(m.digest), member=m)
            except FileNotFoundError:
                missing.append(m.path)
            except TamperError:
                tampered.append(m.path)
        return tampered, missing

    def _survey(
        self, manifest: Manifest, missing: list[str], known: Mapping[str, Manifest]
    ) -> tuple[list[tuple[str, str]], list[str], list[str]]:
        """Files in the store no manifest accounts for: renamed blobs, added files, debris."""
        referenced = self._referenced(strict=False, known=known)
        lost = {manifest.member(p).digest: p for p in missing}
        renamed: list[tuple[str, str]] = []
        added: list[str] = []
        temps = orphans = 0
        for file in self._files():
            rel = file.relative_to(self.root).as_posix()
            if file.name.startswith(_TEMP):
                temps += 1
                continue
            if file.parent.parent == self._blobs and self._named_blob(file) in referenced:
                continue
            if (
                file.parent == self._bundles
                and file.suffix == ".json"
                and HEX64.fullmatch(file.stem)
            ):
                continue  # other bundles: verified on their own
            actual = _hash_file(file)
            if actual in lost:
                renamed.append((lost[actual], rel))
            elif self._named_blob(file) != actual:
                added.append(rel)
            else:
                orphans += 1
        notes = [f"{temps} unfinished write(s) (temp files): gc removes them"] if temps else []
        if orphans:
            notes.append(f"{orphans} blob(s) no bundle references (a crashed put): gc removes them")
        return renamed, added, notes

    def _named_blob(self, file: Path) -> str | None:
        """The digest a file's place in blobs/ claims, or None if it is not a blob's place."""
        if (
            file.parent.parent == self._blobs
            and HEX64.fullmatch(file.name)
            and file.parent.name == file.name[:2]
        ):
            return f"sha256:{file.name}"
        return None

    def _files(self) -> Iterator[Path]:
        """Every file under blobs/ and bundles/, at any depth, in path order."""
        for folder in (self._blobs, self._bundles):
            found = [
                Path(top, name)
                for top, _, names in os.walk(folder)  # scandir: far cheaper than rglob
                for name in names
            ]
            yield from sorted(p for p in found if p.is_file())

    def _referenced(
        self,
        keep: frozenset[str] = frozenset(),
        *,
        strict: bool = True,
        known: Mapping[str, Manifest] | None = None,
    ) -> set[str]:
        """Every blob digest a manifest names, plus `keep`. With `strict`, a manifest that
        cannot be read raises: what it references would be unknown. `known`: manifests the
        caller has just read and checked, by root digest (not read again)."""
        out = set(keep)
        for hexd in self._manifest_names():
            try:
                digest = f"sha256:{hexd}"
                manifest = known[digest] if known and digest in known else self._manifest(digest)
            except BundleError:
                if strict:
                    raise
                continue
            out.update(m.digest for m in manifest.members)
        return out

    def gc(self, keep: set[str] | frozenset[str] = frozenset()) -> list[str]:
        """Remove temp files left by crashed writes and blobs that no manifest references
        (and that are not in `keep`, digests a caller is about to reference). Never removes
        a manifest, an index entry, a referenced blob, or a file that is not a blob (that is
        evidence: `verify` reports it). Waits for puts in progress. Returns what it removed,
        as paths relative to the root."""
        with self._lock(fcntl.LOCK_EX):
            removed = self._debris(keep)
            for rel in removed:
                (self.root / rel).unlink()
        return removed

    def gc_preview(self, keep: set[str] | frozenset[str] = frozenset()) -> list[str]:
        """What `gc(keep)` would remove now, removing nothing (`blocks bundle gc --dry-run`).
        Waits for puts in progress, as gc does: their temp files are not debris."""
        with self._lock(fcntl.LOCK_EX):
            return self._debris(keep)

    def _debris(self, keep: set[str] | frozenset[str]) -> list[str]:
        """Temp files and unreferenced blobs (not in `keep`), relative to the root. Call it
        holding the exclusive lock."""
        for digest in keep:
            check_digest(digest)
        referenced = self._referenced(frozenset(keep))
        out: list[str] = []
        for file in self._files():
            named = self._named_blob(file)
            if file.name.startswith(_TEMP) or (named is not None and named not in referenced):
                out.append(file.relative_to(self.root).as_posix())
        return out

    def _check_blob(self, path: Path, *, member: Member) -> None:
        """Raise TamperError naming `member` unless the blob at `path` has its digest and
        size. FileNotFoundError passes through: the caller decides what missing means."""
        if path.stat().st_size != member.size or _hash_file(path) != member.digest:
            raise TamperError(
                f"member {member.path}: stored blob {path.name[:16]}... does not match its digest"
            )


def _index_name(run_id: str, n: int) -> str:
    return run_id if n == 1 else f"{run_id}~{n}"


_BUFFERS = threading.local()


def _hash_file(path: Path) -> str:
    """The leaf digest of a file, read in pieces into one buffer per thread, reused from
    file to file (no new bytes object per piece, no fresh megabyte per file)."""
    buf: bytearray | None = getattr(_BUFFERS, "buf", None)
    if buf is None:
        buf = _BUFFERS.buf = bytearray(_CHUNK)
    view = memoryview(buf)
    h = LeafHasher()
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            h.update(view[:n])
    return h.digest()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view[:_CHUNK])
        view = view[written:]


def _ensure_dirs(folders: Iterable[Path]) -> None:
    """mkdir -p for each folder, making every new entry durable: each parent that got a new
    folder is fsynced once, after all of them are made."""
    parents: set[Path] = set()
    for folder in folders:
        probe = folder
        while not probe.is_dir():
            parents.add(probe.parent)
            probe = probe.parent
        folder.mkdir(parents=True, exist_ok=True)
    for parent in sorted(parents, key=lambda p: len(p.parts), reverse=True):
        _sync_dir(parent)


def _ensure_dir(folder: Path) -> None:
    """mkdir -p, making each new folder's entry durable in its parent."""
    if folder.is_dir():
        return
    missing = []
    probe = folder
    while not probe.exists():
        missing.append(probe)
        probe = probe.parent
    folder.mkdir(parents=True, exist_ok=True)
    for created in reversed(missing):
        _sync_dir(created.parent)


def _sync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
