"""The step cache: skip work whose inputs, spec and code have not changed (as DVC does).

Owns: the cache key of a step instance, and the on-disk cache index
(`.blocks/cache/ab/abcdef....json`, one small JSON file per key, written atomically).
The key is a sha256 over the canonical JSON of: the kind, the step's work-defining fields,
the resolved parameters, the code digest, the digests of the upstream steps' results, and the
contents of the step's `deps` files. A change anywhere upstream changes the key downstream.
Must not: decide whether caching applies (the plan does), or hold secrets: resolved
parameters carry secret *names*, never values.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.plan import Plan, PlannedStep

__all__ = [
    "CACHE_VERSION",
    "CacheEntry",
    "StepCache",
    "canonical_json",
    "digest_json",
    "key_for_step",
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
        )

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
