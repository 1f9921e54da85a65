"""The step cache: skip work whose inputs, spec and code have not changed (as DVC does).

Owns: the cache key of a step instance, the on-disk cache index
(`.blocks/cache/ab/abcdef....json`, one small JSON file per key, written atomically), and the
copies of the files a step writes (its `outs`, in `.blocks/cache/blobs/`, by content), put
back on a cache hit as DVC does.
The key is a sha256 over the canonical JSON of: the kind, the step's work-defining fields,
the resolved parameters, the code digest, the digests of the upstream steps' results, and the
contents of the step's `deps` files. A change anywhere upstream changes the key downstream.
Must not: decide whether caching applies (the plan does), or hold secrets: resolved
parameters carry secret *names*, never values.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.plan import Plan, PlannedStep

__all__ = [
    "CACHE_VERSION",
    "CacheEntry",
    "CacheSweep",
    "OutsMissing",
    "StepCache",
    "canonical_json",
    "digest_json",
    "key_for_step",
    "snapshot_outs",
    "step_key",
]

CACHE_VERSION = 1
_NOT_WORK = {
    "description",
    "needs",
    "when",
    "retry",
    "timeout",
    "continue_on_failure",
    "cache",
    "idempotent",
    "outputs",
}


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no spaces, UTF-8: equal data gives equal bytes."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
    ).encode("utf-8")


def digest_json(value: Any) -> str:
    return "sha256:" + hashlib.sha256(canonical_json(value)).hexdigest()


def _deps_digest(project_root: Path, deps: Iterable[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for rel in deps:
        base = project_root / rel
        if base.is_file():
            out[rel] = _file_digest(base)
        elif base.is_dir():
            h = hashlib.sha256()
            for path in sorted(p for p in base.rglob("*") if p.is_file() and not _ignored(p)):
                h.update(str(path.relative_to(base)).encode() + b"\0")
                h.update(_file_digest(path).encode() + b"\0")
            out[rel] = "sha256:" + h.hexdigest()
        else:
            out[rel] = "missing"
    return out


def _ignored(path: Path) -> bool:
    """Interpreter by-products change whenever code is imported, not when it changes."""
    return path.suffix in (".pyc", ".pyo") or "__pycache__" in path.parts


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()


def step_key(
    *,
    kind: str,
    spec: Mapping[str, Any],
    resolved: Mapping[str, Any],
    code_digest: str | None,
    upstream: Mapping[str, str],
    project_root: Path,
    deps: Iterable[str] = (),
) -> str:
    """The cache key of one step instance."""
    work = {k: v for k, v in spec.items() if k not in _NOT_WORK}
    return digest_json(
        {
            "v": CACHE_VERSION,
            "kind": kind,
            "spec": work,
            "resolved": resolved,
            "code": code_digest,
            "upstream": dict(sorted(upstream.items())),
            "deps": _deps_digest(project_root, deps),
        }
    )


def key_for_step(
    plan: Plan,
    ps: PlannedStep,
    resolved: Mapping[str, Any],
    upstream: Mapping[str, str],
    code_digests: dict[str, str | None],
) -> str:
    """The cache key of a planned step with these resolved parameters and upstream results.

    `code_digests` memoises each step's code digest for the run (hashing a module per
    instance would cost more than a no-op step)."""
    if ps.id not in code_digests:
        code_digests[ps.id] = ps.kind.code_digest(ps.spec, plan.project_root)
    return step_key(
        kind=ps.spec.kind,
        spec=ps.spec_dump,
        resolved=resolved,
        code_digest=code_digests[ps.id],
        upstream=upstream,
        project_root=plan.project_root,
        deps=ps.spec.deps,
    )


@dataclass(frozen=True, slots=True)
class CacheEntry:
    key: str
    run_id: str
    step: str
    outputs: dict[str, Any]
    result: Any
    result_digest: str
    files: Mapping[str, str] = field(default_factory=dict)
    """The step's `outs` when it ran: project-relative file path -> sha256 of its bytes."""


class OutsMissing(Exception):
    """A declared out was not written by the step (the message names it)."""


def snapshot_outs(project_root: Path, outs: Iterable[str]) -> dict[str, str]:
    """Every file under the step's `outs` (a file, or a folder's files, recursively) with
    the sha256 of its bytes, by project-relative `/`-separated path. Raises `OutsMissing`
    for an out that does not exist."""
    files: dict[str, str] = {}
    for rel in outs:
        base = project_root / rel
        if base.is_file():
            files[_rel(project_root, base)] = _file_digest(base)
        elif base.is_dir():
            for path in sorted(p for p in base.rglob("*") if p.is_file() and not _ignored(p)):
                files[_rel(project_root, path)] = _file_digest(path)
        else:
            raise OutsMissing(f"outs: the step did not write {rel}")
    return files


def _rel(project_root: Path, path: Path) -> str:
    return path.relative_to(project_root).as_posix()


@dataclass(frozen=True, slots=True)
class CacheSweep:
    """What `StepCache.gc` removed (or, on a dry run, would remove)."""

    entries: int
    """Cache entries (one per step key) last used before the cutoff."""
    blobs: int
    """Kept copies of outs that no remaining entry names."""
    temps: int
    """Temporary files a crash left behind."""
    freed_bytes: int
    kept_entries: int
    kept_bytes: int


class StepCache:
    """A folder of cache entries. Concurrent writers are safe (atomic rename)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        digest = key.split(":", 1)[-1]
        return self.root / digest[:2] / f"{digest}.json"

    def get(self, key: str) -> CacheEntry | None:
        try:
            data = json.loads(self._path(key).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if data.get("key") != key:
            return None
        return CacheEntry(
            key,
            data["run_id"],
            data["step"],
            data["outputs"],
            data.get("result"),
            data["result_digest"],
            data.get("files") or {},
        )

    def touch(self, key: str) -> None:
        """Mark an entry used now (a hit): `gc --older-than` goes by last use, not by write."""
        with contextlib.suppress(OSError):
            os.utime(self._path(key))

    def gc(self, older_than: float | None, *, now: float, dry_run: bool = False) -> CacheSweep:
        """Remove the entries last used more than `older_than` seconds before `now` (none
        when it is None), then every kept out no remaining entry names, and temporary files
        older than an hour (a write in progress is younger). `dry_run`: remove nothing."""
        removed = kept = blobs = temps = freed = kept_bytes = 0
        named: set[str] = set()
        for path in sorted(self.root.glob("??/*.json")) if self.root.is_dir() else []:
            try:
                stat = path.stat()
                files = json.loads(path.read_text(encoding="utf-8")).get("files") or {}
            except (OSError, ValueError, AttributeError):
                continue  # a torn or foreign file is not ours to judge
            if older_than is not None and now - stat.st_mtime > older_than:
                removed += 1
                freed += stat.st_size
                if not dry_run:
                    path.unlink(missing_ok=True)
                continue
            kept += 1
            kept_bytes += stat.st_size
            named.update(str(d).split(":", 1)[-1] for d in files.values())
        blob_root = self.root / "blobs"
        for path in sorted(self.root.rglob("*")) if self.root.is_dir() else []:
            if not path.is_file():
                continue
            stat = path.stat()
            is_blob = path.parent.parent == blob_root
            if path.name.startswith(".tmp-"):
                if now - stat.st_mtime < 3600:
                    continue
                temps += 1
            elif is_blob and path.name not in named:
                blobs += 1
            else:
                kept_bytes += stat.st_size if is_blob else 0
                continue
            size = stat.st_size
            freed += size
            if not dry_run:
                path.unlink(missing_ok=True)
        return CacheSweep(removed, blobs, temps, freed, kept, kept_bytes)

    def _blob(self, digest: str) -> Path:
        hexdigest = digest.split(":", 1)[-1]
        return self.root / "blobs" / hexdigest[:2] / hexdigest

    def keep_files(self, project_root: Path, files: Mapping[str, str]) -> None:
        """Copy each out into the blob store (once per content), so a hit can put it back."""
        for rel, digest in files.items():
            blob = self._blob(digest)
            if blob.is_file():
                continue
            blob.parent.mkdir(parents=True, exist_ok=True)
            _atomic_copy(project_root / rel, blob, expect=digest)

    def restore_files(self, project_root: Path, files: Mapping[str, str]) -> list[str] | None:
        """Put back every out that is missing or differs from what the cached run wrote.

        Returns the paths written (empty when all were in place), or None, writing nothing,
        when a copy needed is not in the blob store (then the step must run)."""
        stale = [
            rel
            for rel, digest in files.items()
            if not (project_root / rel).is_file() or _file_digest(project_root / rel) != digest
        ]
        if any(not self._blob(files[rel]).is_file() for rel in stale):
            return None
        for rel in stale:
            target = project_root / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            _atomic_copy(self._blob(files[rel]), target, expect=files[rel])
        return stale

    def put(self, entry: CacheEntry) -> None:
        target = self._path(entry.key)
        target.parent.mkdir(parents=True, exist_ok=True)
        body = canonical_json(
            {
                "key": entry.key,
                "run_id": entry.run_id,
                "step": entry.step,
                "outputs": entry.outputs,
                "result": entry.result,
                "result_digest": entry.result_digest,
                **({"files": dict(entry.files)} if entry.files else {}),
            }
        )
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(body)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _atomic_copy(source: Path, target: Path, *, expect: str) -> None:
    """Copy `source` to `target` through a temporary file and a rename, checking that the
    bytes copied have the digest `expect` (a file changed under us is not kept)."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
    try:
        h = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, source.open("rb") as src:
            for block in iter(lambda: src.read(1 << 20), b""):
                h.update(block)
                out.write(block)
        if "sha256:" + h.hexdigest() != expect:
            raise OSError(f"{source} changed while it was being copied")
        shutil.copymode(source, tmp)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
