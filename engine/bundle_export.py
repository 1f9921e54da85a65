"""Exporting a bundle: its files, and an in-toto provenance statement about them.

Owns: `provenance_statement`, a pure function from a bundle's manifest and member bytes to
an in-toto Statement v1 whose predicate is SLSA Provenance v1, the layout of an export
folder (`export_files`), and `write_export`, which writes that folder so that it is never
seen half-written.
Must not: read a store (the CLI hands it verified member bytes), sign anything, or print.

An export folder::

    provenance.intoto.json   the in-toto Statement (unsigned: see below)
    manifest.json            the bundle's canonical manifest; the bundle's root digest is
                             sha256 of 0x01 + these bytes
    members/<path>           every member's bytes, as stored (verified when read)

The statement is **unsigned**: it is the payload a DSSE envelope would carry (payloadType
``application/vnd.in-toto+json``), not an attestation anyone can authenticate yet. Signing
is for later. Its fields (see docs/guides/bundles-and-locks.md, "Export"):

- ``subject``: ``manifest.json`` and every ``members/<path>``, each with the plain sha256 of
  its bytes (what ``sha256sum`` prints; a member's own digest in the manifest is sha256 of
  0x00 + bytes, which no generic tool computes);
- ``predicate.buildDefinition``: ``buildType`` `BUILD_TYPE`; ``externalParameters`` the flow,
  its spec path and the run's inputs; ``internalParameters`` the engine version and whether
  the step cache was on; ``resolvedDependencies`` the spec and lock members, every rendered
  LLM prompt (by its sha256, as the steps recorded it), every review rubric and prompt, and
  every model that answered (``litellm:<model>``, with the model asked, the route, the
  provider's fingerprint and the steps or gates that called it);
- ``predicate.runDetails``: ``builder.id`` (`BUILDER_ID` unless given) and the versions of
  blocks, Python and litellm; ``metadata`` the run id (``invocationId``), ``startedOn`` and
  ``finishedOn``; the extension field ``blocks_bundle`` the root digest, format, the bundle
  it supersedes, the run's status, its gate verdicts, and the steps whose outputs came from
  an earlier run's cache (no model was called for them in this run).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

from engine.bundle import Manifest, check_member_path
from engine.errors import BundleError, UsageError

__all__ = [
    "BUILDER_ID",
    "BUILD_TYPE",
    "PREDICATE_TYPE",
    "STATEMENT",
    "STATEMENT_TYPE",
    "export_files",
    "provenance_statement",
    "write_export",
]

STATEMENT_TYPE: Final = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE: Final = "https://slsa.dev/provenance/v1"
BUILD_TYPE: Final = "https://blocks.example/provenance/flow-run/v1"
"""How to read `externalParameters` and `resolvedDependencies` (documented in the guide)."""
BUILDER_ID: Final = "https://blocks.example/provenance/builder/local/v1"
"""`blocks run` on a machine nobody attests to: no SLSA build level is claimed."""
STATEMENT: Final = "provenance.intoto.json"
MANIFEST: Final = "manifest.json"
MEMBERS: Final = "members"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _hex(digest: Any) -> str | None:
    """The hex of ``sha256:<hex>`` or of a bare 64-hex string; None otherwise."""
    if not isinstance(digest, str):
        return None
    value = digest.removeprefix("sha256:")
    if len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return value
    return None


def _json(members: Mapping[str, bytes], path: str) -> dict[str, Any]:
    if path not in members:
        return {}
    try:
        value = json.loads(members[path])
    except ValueError as exc:
        raise BundleError(f"member {path} is not JSON: {exc}") from None
    return value if isinstance(value, dict) else {}


def _folder(members: Mapping[str, bytes], prefix: str) -> dict[str, dict[str, Any]]:
    return {
        path[len(prefix) : -len(".json")]: _json(members, path)
        for path in sorted(members)
        if path.startswith(prefix) and path.endswith(".json")
    }


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _drop_empty(value: dict[str, Any]) -> dict[str, Any]:
    """In-toto reads unset, null and empty alike: leave them out."""
    return {k: v for k, v in value.items() if v not in (None, "", [], {})}


def _prompts(
    steps: Mapping[str, dict[str, Any]], gates: Mapping[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for sid, step in steps.items():
        detail = _obj(step.get("detail"))
        hexd = _hex(detail.get("prompt_sha256"))
        if hexd:
            out.append(
                {
                    "name": f"prompt of step {sid}",
                    "digest": {"sha256": hexd},
                    "annotations": _drop_empty(
                        {"blocks_step": sid, "blocks_route": detail.get("route")}
                    ),
                }
            )
    for gid, gate in gates.items():
        evidence = _obj(gate.get("evidence"))
        rubric, hexd = evidence.get("rubric"), _hex(evidence.get("rubric_sha256"))
        if isinstance(rubric, str) and hexd:
            out.append(
                {"name": rubric, "digest": {"sha256": hexd}, "annotations": {"blocks_gate": gid}}
            )
        hexd = _hex(evidence.get("prompt_sha256"))
        if hexd:
            out.append(
                {
                    "name": f"prompt of gate {gid}",
                    "digest": {"sha256": hexd},
                    "annotations": _drop_empty(
                        {"blocks_gate": gid, "blocks_route": evidence.get("route")}
                    ),
                }
            )
    return out


def _models(ledger: Mapping[str, Any], gates: Mapping[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One descriptor per model that answered, naming who called it."""
    seen: dict[str, dict[str, Any]] = {}

    def add(answered: Any, asked: Any, route: Any, fingerprint: Any, caller: str) -> None:
        if not isinstance(answered, str) or not answered:
            return
        entry = seen.setdefault(
            answered,
            {"asked": set(), "routes": set(), "fingerprints": set(), "callers": set()},
        )
        for key, value in (
            ("asked", asked),
            ("routes", route),
            ("fingerprints", fingerprint),
            ("callers", caller),
        ):
            if isinstance(value, str) and value:
                entry[key].add(value)

    for call in ledger.get("calls") or []:
        if isinstance(call, dict):
            add(
                call.get("model_answered"),
                call.get("model_asked"),
                call.get("route"),
                call.get("fingerprint"),
                f"gate {call['gate']}" if call.get("gate") else f"step {call.get('step')}",
            )
    for gid, gate in gates.items():
        evidence = _obj(gate.get("evidence"))
        for sample in evidence.get("samples") or []:
            if isinstance(sample, dict):
                add(
                    sample.get("model_answered"),
                    None,
                    evidence.get("route"),
                    sample.get("fingerprint"),
                    f"gate {gid}",
                )
    return [
        {
            "uri": "litellm:" + quote(answered, safe="/:@.-_~+"),
            "name": answered,
            "annotations": _drop_empty(
                {
                    "blocks_modelAsked": sorted(entry["asked"]),
                    "blocks_routes": sorted(entry["routes"]),
                    "blocks_fingerprints": sorted(entry["fingerprints"]),
                    "blocks_calledBy": sorted(entry["callers"]),
                }
            ),
        }
        for answered, entry in sorted(seen.items())
    ]


def _dependencies(
    manifest: Manifest, members: Mapping[str, bytes], run: Mapping[str, Any]
) -> list[dict[str, Any]]:
    spec = _obj(run.get("spec"))
    out: list[dict[str, Any]] = []
    for m in manifest.members:
        if m.path.startswith("spec/"):
            name = spec.get("path") if spec.get("member") == m.path else None
            out.append(
                {
                    "name": name if isinstance(name, str) and name else m.path,
                    "digest": {"sha256": _sha256(members[m.path])},
                    "mediaType": m.media_type,
                    "annotations": {"blocks_member": f"{MEMBERS}/{m.path}"},
                }
            )
        elif m.path == "blocks.lock":
            out.append(
                {
                    "name": "blocks.lock",
                    "digest": {"sha256": _sha256(members[m.path])},
                    "annotations": {"blocks_member": f"{MEMBERS}/{m.path}"},
                }
            )
    steps, gates = _folder(members, "steps/"), _folder(members, "gates/")
    return out + _prompts(steps, gates) + _models(_json(members, "llm/ledger.json"), gates)


def _cached(members: Mapping[str, bytes]) -> dict[str, Any]:
    """Steps whose outputs came from an earlier run's cache: {step: that run's id}."""
    return {
        sid: step["cached_from"]
        for sid, step in _folder(members, "steps/").items()
        if step.get("status") == "cached" and step.get("cached_from")
    }


def export_files(manifest: Manifest, members: Mapping[str, bytes]) -> dict[str, bytes]:
    """The files of an export folder but the statement: the manifest and every member."""
    files = {MANIFEST: manifest.to_bytes()}
    for m in manifest.members:
        if m.path not in members:
            raise BundleError(f"member {m.path} was not read: an export holds every member")
        files[f"{MEMBERS}/{check_member_path(m.path)}"] = members[m.path]
    return files


def provenance_statement(
    digest: str,
    manifest: Manifest,
    members: Mapping[str, bytes],
    *,
    builder_id: str = BUILDER_ID,
) -> dict[str, Any]:
    """The in-toto Statement v1 (SLSA Provenance v1 predicate) for bundle `digest`, whose
    `members` (every member's verified bytes) are exported as `export_files` lays them out.
    Fields are described in the module docstring; unset values are left out."""
    if manifest.root_digest() != digest:
        raise BundleError(f"the manifest given is not that of bundle {digest}")
    run = _json(members, "run.json")
    env = _obj(run.get("environment"))
    spec = _obj(run.get("spec"))
    files = export_files(manifest, members)
    subject = [
        _drop_empty(
            {
                "name": name,
                "digest": {"sha256": _sha256(data)},
                "mediaType": (
                    manifest.member(name.removeprefix(f"{MEMBERS}/")).media_type
                    if name.startswith(f"{MEMBERS}/")
                    else "application/json"
                ),
                "annotations": {"blocks_rootDigest": digest} if name == MANIFEST else None,
            }
        )
        for name, data in files.items()
    ]
    version = {
        "blocks": env.get("engine") or run.get("engine"),
        "python": env.get("python"),
        "litellm": env.get("litellm"),
    }
    return {
        "_type": STATEMENT_TYPE,
        "subject": subject,
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {  # buildType and externalParameters: required, even if {}
                "buildType": BUILD_TYPE,
                "externalParameters": _drop_empty(
                    {
                        "flow": run.get("flow"),
                        "spec": spec.get("path"),
                        "inputs": run.get("inputs"),
                    }
                ),
                **_drop_empty(
                    {
                        "internalParameters": _drop_empty(
                            {"engine": run.get("engine"), "useCache": run.get("use_cache")}
                        ),
                        "resolvedDependencies": _dependencies(manifest, members, run),
                    }
                ),
            },
            "runDetails": _drop_empty(
                {
                    "builder": {
                        "id": builder_id,
                        "version": {k: str(v) for k, v in version.items() if v},
                    },
                    "metadata": _drop_empty(
                        {
                            "invocationId": manifest.run or run.get("run"),
                            "startedOn": run.get("started_at"),
                            "finishedOn": run.get("finished_at"),
                        }
                    ),
                    "blocks_bundle": _drop_empty(
                        {
                            "rootDigest": digest,
                            "format": manifest.format,
                            "supersedes": manifest.supersedes,
                            "status": run.get("status"),
                            "gates": run.get("gates"),
                            "cachedSteps": _cached(members),
                        }
                    ),
                }
            ),
        },
    }


# ---- writing the folder ------------------------------------------------------------------


def _looks_like_export(folder: Path) -> bool:
    return (folder / STATEMENT).is_file() and (folder / MANIFEST).is_file()


def _fsync(path: Path, *, folder: bool = False) -> None:
    flags = os.O_RDONLY | (os.O_DIRECTORY if folder else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_tree(root: Path, files: Mapping[str, bytes]) -> None:
    folders = {root}
    for rel, data in files.items():
        path = root / rel
        for parent in path.relative_to(root).parents:
            folders.add(root / parent)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("xb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    for folder in _deepest_first(folders):
        _fsync(folder, folder=True)


def _deepest_first(folders: Iterable[Path]) -> list[Path]:
    return sorted(folders, key=lambda p: len(p.parts), reverse=True)


def write_export(dest: Path, files: Mapping[str, bytes], *, force: bool = False) -> None:
    """Write `files` (relative path -> bytes) as the folder `dest`, all or nothing.

    Everything is written and fsynced in a temp folder beside `dest`, which is then renamed
    to `dest`: a crash leaves a ``.<name>.tmp-*`` folder, never a half-written `dest`.
    `dest` may be missing or empty. A folder with anything in it is refused (UsageError),
    unless `force` is set and it is an earlier export (it holds provenance.intoto.json and
    manifest.json): that one is moved aside, replaced, then removed.
    """
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise UsageError(f"{dest} exists and is not a folder")
    occupied = dest.is_dir() and any(dest.iterdir())
    if occupied and not force:
        raise UsageError(f"{dest} is not empty: export into a new folder, or --force to replace")
    if occupied and not _looks_like_export(dest):
        raise UsageError(
            f"{dest} is not empty and is not an earlier export: --force only replaces an "
            f"export (a folder holding {STATEMENT} and {MANIFEST})"
        )
    for rel in files:
        check_member_path(rel)
    parent = dest.absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".{dest.name}.tmp-{secrets.token_hex(6)}"
    tmp.mkdir()  # not mkdtemp: the export gets the umask's mode, not 0700
    old: Path | None = None
    try:
        _write_tree(tmp, files)
        if occupied:
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=parent))
            os.rename(dest, old / "export")
        os.rename(tmp, dest)  # replaces an empty folder; nothing else is there now
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            if (old / "export").is_dir() and not dest.exists():
                with contextlib.suppress(OSError):
                    os.rename(old / "export", dest)  # put the earlier export back
            if not (old / "export").exists():
                shutil.rmtree(old, ignore_errors=True)
        raise
    _fsync(parent, folder=True)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
