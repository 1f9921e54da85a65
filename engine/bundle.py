"""Context bundles as pure data: canonical JSON, digests, the manifest, and a run's members.

Owns: the canonical JSON encoding (`canonical_bytes`), the leaf and node digests, the
`Manifest` of a bundle and its strict parser, the `VerifyReport` and `BundleEntry` every
store returns, and `build_bundle_members`, the pure function from a finished run's journal
records (plus its spec bytes, lock and environment facts) to the bundle's member files,
redacted before anything is hashed.
Must not: do I/O beyond the bytes and values it is given (stores write, the executor reads
journals), import anything from `engine` but `engine.errors`, or know where bundles live.
Over the 700-line budget on purpose for now: the member builders (the second half) are
the candidates to move to a module of their own once a second consumer needs them.

Canonical JSON (`canonical_bytes`), so that equal data always gives equal bytes and digests:

- objects: keys must be strings; keys are sorted by Unicode code point (the same order as
  their UTF-8 bytes); two keys that are equal after normalisation are refused.
- no insignificant whitespace: ``,`` and ``:`` separators, no newline at the end.
- strings (keys included): CRLF and lone CR become LF, then NFC normalisation; the output
  is UTF-8, not ASCII-escaped; only ``"``, ``\\`` and C0 controls are escaped (``\\n``,
  ``\\t``, ... and ``\\u00XX`` in lower-case hex, as Python's json does). Lone surrogates
  are refused.
- integers: plain decimal, any size. ``True``, ``False``, ``None``: ``true``, ``false``,
  ``null``. Booleans are never integers.
- floats: the shortest text that reads back as the same float (Python's ``repr``: ``0.1``,
  ``1.0``, ``1e+16``, ``5e-324``). A float stays a float: ``1.0`` and ``1`` differ. ``-0.0``
  is written ``0.0`` (equal numbers, one encoding). NaN and the infinities are refused.
- lists and tuples: arrays. Anything else (sets, bytes, objects) is refused with the JSON
  pointer of the offending value.

Digests. A member's digest is ``sha256:<hex>`` of ``b"\\x00" + bytes`` (a leaf); the root
digest of a bundle is ``sha256:<hex>`` of ``b"\\x01" + canonical manifest`` (a node). The
prefixes keep the two domains apart, so a member can never pass for a manifest.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Protocol

from engine.errors import BundleError

__all__ = [
    "FORMAT",
    "BundleEntry",
    "LeafHasher",
    "Manifest",
    "Member",
    "Redacts",
    "VerifyReport",
    "build_bundle_members",
    "canonical_bytes",
    "check_digest",
    "check_member_path",
    "leaf_digest",
    "media_type_for",
    "node_digest",
]

FORMAT: Final = "blocks.bundle/1"
"""The manifest format. A reader refuses any other value rather than guess."""

_DIGEST: Final = re.compile(r"sha256:[0-9a-f]{64}")
_MEDIA_TYPE: Final = re.compile(r"[a-z0-9][a-z0-9.+-]*/[a-z0-9][a-z0-9.+-]*")
_MAX_PATH: Final = 1024
_LEAF: Final = b"\x00"
_NODE: Final = b"\x01"

_encode: Final = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
).encode


# ---- canonical JSON ----------------------------------------------------------------------


def _text(value: str) -> str:
    if "\r" in value:
        value = value.replace("\r\n", "\n").replace("\r", "\n")
    if value.isascii() or unicodedata.is_normalized("NFC", value):
        return value
    return unicodedata.normalize("NFC", value)


def _escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


def _normalise(value: Any, pointer: str) -> Any:
    """Plain JSON types, normalised; BundleError (with a JSON pointer) for what is refused."""
    if value is None or value is True or value is False:
        return value
    if isinstance(value, str):
        return _text("" + value)  # "" + subclass gives a plain str with the same contents
    if isinstance(value, int) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise BundleError(f"{pointer or '/'}: {value!r} has no canonical JSON form")
        return 0.0 if value == 0.0 else float(value)
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise BundleError(f"{pointer or '/'}: object key {key!r} is not a string")
            name = _text("" + key)
            if name in out:
                raise BundleError(f"{pointer or '/'}: two keys normalise to {name!r}")
            out[name] = _normalise(item, f"{pointer}/{_escape(name)}")
        return out
    if isinstance(value, list | tuple):
        return [_normalise(item, f"{pointer}/{i}") for i, item in enumerate(value)]
    raise BundleError(f"{pointer or '/'}: a {type(value).__name__} has no canonical JSON form")


def canonical_bytes(value: Any) -> bytes:
    """The canonical JSON of `value` (rules in the module docstring). BundleError if refused."""
    text = _encode(_normalise(value, ""))
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise BundleError(f"a string holds a lone surrogate ({exc.reason})") from None


# ---- digests -----------------------------------------------------------------------------


class LeafHasher:
    """A leaf digest computed piece by piece (stores hash big blobs without loading them)."""

    __slots__ = ("_h",)

    def __init__(self) -> None:
        self._h = hashlib.sha256(_LEAF)

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._h.update(data)

    def digest(self) -> str:
        return "sha256:" + self._h.hexdigest()


def leaf_digest(data: bytes) -> str:
    """The digest of a member's bytes: sha256 of 0x00 + data."""
    h = LeafHasher()
    h.update(data)
    return h.digest()


def node_digest(data: bytes) -> str:
    """The digest of a node (a canonical manifest): sha256 of 0x01 + data."""
    h = hashlib.sha256(_NODE)
    h.update(data)
    return "sha256:" + h.hexdigest()


def check_digest(value: object) -> str:
    """`value` if it is a well-formed ``sha256:<64 lower-case hex>``; BundleError otherwise."""
    if not isinstance(value, str) or not _DIGEST.fullmatch(value):
        raise BundleError(f"bad digest {value!r}: expected sha256:<64 lower-case hex digits>")
    return value


def check_member_path(path: object) -> str:
    """`path` if it is a safe member path: relative POSIX, NFC, no `.`/`..`/empty segments,
    no backslash or control characters. Stores and exports can then use it as a file name."""
    if not isinstance(path, str) or not path or len(path) > _MAX_PATH:
        raise BundleError(f"bad member path {path!r}")
    problem = ""
    if path.startswith("/") or "\\" in path:
        problem = "must be relative, with / separators"
    elif any(part in ("", ".", "..") for part in path.split("/")):
        problem = "has an empty, '.' or '..' segment"
    elif any(ord(c) < 0x20 or ord(c) == 0x7F for c in path):
        problem = "has a control character"
    elif not unicodedata.is_normalized("NFC", path):
        problem = "is not NFC-normalised"
    if problem:
        raise BundleError(f"bad member path {path!r}: {problem}")
    return path


_SUFFIX_TYPES: Final = {
    ".json": "application/json",
    ".jsonl": "application/x-ndjson",
    ".yaml": "application/yaml",
    ".yml": "application/yaml",
    ".md": "text/markdown",
}


def media_type_for(path: str, data: bytes) -> str:
    """By file suffix; otherwise text/plain for UTF-8 and application/octet-stream."""
    dot = path.rfind(".")
    if dot > path.rfind("/") and path[dot:] in _SUFFIX_TYPES:
        return _SUFFIX_TYPES[path[dot:]]
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return "application/octet-stream"
    return "text/plain"


# ---- the manifest ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Member:
    """One file of a bundle: where it goes, its leaf digest, its size, its media type."""

    path: str
    digest: str
    size: int
    media_type: str

    def __post_init__(self) -> None:
        check_member_path(self.path)
        check_digest(self.digest)
        if type(self.size) is not int or self.size < 0:
            raise BundleError(f"member {self.path}: bad size {self.size!r}")
        if not isinstance(self.media_type, str) or not _MEDIA_TYPE.fullmatch(self.media_type):
            raise BundleError(f"member {self.path}: bad media type {self.media_type!r}")


_MANIFEST_KEYS: Final = frozenset({"format", "run", "supersedes", "members"})
_MEMBER_KEYS: Final = frozenset({"digest", "size", "media_type"})


@dataclass(frozen=True, slots=True)
class Manifest:
    """What a bundle holds. Immutable; members are kept sorted by path, each path once.

    Its canonical JSON is ``{"format": FORMAT, "members": {path: {"digest", "media_type",
    "size"}}, "run": run id or null, "supersedes": root digest or null}``; the bundle's root
    digest is the node digest of it. `supersedes` names the earlier bundle of the same run
    that this one replaces (a run resumed after it was bundled), so the chain of a run's
    bundles is part of what the digests prove.
    """

    members: tuple[Member, ...]
    run: str | None = None
    supersedes: str | None = None
    format: str = FORMAT

    def __post_init__(self) -> None:
        ordered = tuple(sorted(self.members, key=lambda m: m.path))
        for before, after in itertools.pairwise(ordered):
            if before.path == after.path:
                raise BundleError(f"duplicate member path {after.path!r}")
        folders = {m.path[:i] for m in ordered for i, c in enumerate(m.path) if c == "/"}
        for m in ordered:
            if m.path in folders:  # an export could not hold both a file and a folder there
                raise BundleError(f"member path {m.path!r} is also a folder of another member")
        object.__setattr__(self, "members", ordered)
        if self.format != FORMAT:
            raise BundleError(f"unsupported bundle format {self.format!r} (expected {FORMAT})")
        if self.run is not None and (not isinstance(self.run, str) or not self.run):
            raise BundleError(f"bad run id {self.run!r}")
        if self.supersedes is not None:
            check_digest(self.supersedes)

    @classmethod
    def from_members(
        cls,
        members: Mapping[str, bytes],
        *,
        run: str | None = None,
        supersedes: str | None = None,
        media_types: Mapping[str, str] | None = None,
    ) -> Manifest:
        """The manifest of member bytes (media types by `media_type_for` unless given)."""
        given = media_types or {}
        return cls(
            tuple(
                Member(
                    path,
                    leaf_digest(data),
                    len(data),
                    given.get(path) or media_type_for(path, data),
                )
                for path, data in members.items()
            ),
            run,
            supersedes,
        )

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(m.path for m in self.members)

    @property
    def total_size(self) -> int:
        return sum(m.size for m in self.members)

    def member(self, path: str) -> Member:
        """The member at `path`; BundleError if there is none."""
        for m in self.members:
            if m.path == path:
                return m
        raise BundleError(f"the bundle has no member {path!r}")

    def as_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "run": self.run,
            "supersedes": self.supersedes,
            "members": {
                m.path: {"digest": m.digest, "size": m.size, "media_type": m.media_type}
                for m in self.members
            },
        }

    def to_bytes(self) -> bytes:
        return canonical_bytes(self.as_dict())

    def root_digest(self) -> str:
        return node_digest(self.to_bytes())

    @classmethod
    def parse(cls, data: bytes) -> Manifest:
        """Strictly read manifest bytes: UTF-8 canonical JSON, exactly the known fields, well
        formed digests, sizes and paths, no path twice. BundleError says what is wrong."""
        try:
            raw = json.loads(
                data.decode("utf-8"),
                object_pairs_hook=_no_duplicates,
                parse_constant=_no_constant,
            )
        except (UnicodeDecodeError, ValueError) as exc:
            raise BundleError(f"manifest is not valid JSON: {exc}") from None
        manifest = cls._from_json(raw)
        if manifest.to_bytes() != data:
            raise BundleError("manifest is not in canonical form")
        return manifest

    @classmethod
    def _from_json(cls, raw: Any) -> Manifest:
        if not isinstance(raw, dict):
            raise BundleError("manifest is not a JSON object")
        _exact_keys(raw, _MANIFEST_KEYS, "manifest")
        if not isinstance(raw["members"], dict):
            raise BundleError("manifest: members is not an object")
        members = []
        for path, entry in raw["members"].items():
            check_member_path(path)
            if not isinstance(entry, dict):
                raise BundleError(f"manifest: member {path!r} is not an object")
            _exact_keys(entry, _MEMBER_KEYS, f"member {path!r}")
            members.append(Member(path, entry["digest"], entry["size"], entry["media_type"]))
        return cls(tuple(members), raw["run"], raw["supersedes"], raw["format"])


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise BundleError(f"manifest: duplicate key {key!r}")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise BundleError(f"manifest: {name} is not JSON")


def _exact_keys(raw: Mapping[str, Any], expected: frozenset[str], what: str) -> None:
    unknown = sorted(set(raw) - expected)
    missing = sorted(expected - set(raw))
    if unknown:
        raise BundleError(f"{what}: unknown field(s) {', '.join(unknown)}")
    if missing:
        raise BundleError(f"{what}: missing field(s) {', '.join(missing)}")


# ---- what stores report ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BundleEntry:
    """One stored bundle as a listing shows it. `problem` is set when its manifest is bad."""

    digest: str
    run: str | None
    members: int
    size: int
    problem: str | None = None


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """The outcome of re-hashing one bundle against its manifest.

    `tampered` lists members whose stored bytes differ from their digest or size (in path
    order; `first_mismatch` is the first), `missing` members whose bytes are gone,
    `renamed` (member, where its bytes were found) pairs, `added` store files that no digest
    accounts for, and `manifest_problem` a manifest that is absent, unreadable, or whose root
    digest is not the one it is stored under.
    """

    digest: str
    run: str | None = None
    checked: int = 0
    manifest_problem: str | None = None
    tampered: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    renamed: tuple[tuple[str, str], ...] = ()
    added: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not (
            self.manifest_problem or self.tampered or self.missing or self.renamed or self.added
        )

    @property
    def first_mismatch(self) -> str | None:
        return self.tampered[0] if self.tampered else None

    def problems(self) -> list[str]:
        """One sentence per problem, each naming the member (or file) concerned."""
        out = [f"manifest: {self.manifest_problem}"] if self.manifest_problem else []
        out += [f"member {p}: stored bytes do not match its digest" for p in self.tampered]
        out += [f"member {p}: removed (its blob is missing)" for p in self.missing]
        out += [f"member {p}: renamed (its blob was found at {w})" for p, w in self.renamed]
        out += [f"added: {p} is not accounted for by any digest" for p in self.added]
        return out


# ---- a run's members ---------------------------------------------------------------------


class Redacts(Protocol):
    """What `build_bundle_members` needs of `engine.redact.Redactor`."""

    def text(self, value: str) -> str: ...


_STEP_END: Final = {
    "step.succeeded": "succeeded",
    "step.failed": "failed",
    "step.cached": "cached",
    "step.cancelled": "cancelled",
    "step.retrying": "retried",
}
_STEP_FINAL: Final = {
    "step.succeeded": "succeeded",
    "step.failed": "failed",
    "step.cached": "cached",
    "step.cancelled": "cancelled",
    "step.skipped": "skipped",
    "step.blocked": "blocked",
}


def build_bundle_members(
    *,
    spec_name: str,
    spec: bytes,
    records: Sequence[Mapping[str, Any]],
    lock: bytes | None,
    environment: Mapping[str, Any],
    redactor: Redacts,
    routes: Mapping[str, str] | None = None,
) -> dict[str, bytes]:
    """The member files of a run's bundle, every one redacted before it is hashed.

    `spec` is the original spec file (bytes kept as they are, secrets masked); `records`
    the run's journal records in order; `lock` the model lock file, if any; `environment`
    facts about where it ran (engine, python, litellm versions...); `routes` the spec's
    model routes (name -> model asked), for the LLM ledger. Members: ``spec/<spec_name>``,
    ``blocks.lock``, ``run.json``, ``steps/<id>.json``, ``llm/ledger.json``,
    ``gates/<id>.json``, ``journal.jsonl``.
    """
    if not records or records[0].get("event") != "run.started":
        raise BundleError("the journal does not start with run.started: nothing to bundle")
    name = spec_name.rsplit("/", 1)[-1]
    check_member_path(f"spec/{name}")
    clean = [_scrub(dict(r), redactor) for r in records]
    steps = _fold_steps(clean)
    gates = _fold_gates(clean)
    ledger = _ledger(clean, routes or {})
    members: dict[str, bytes] = {f"spec/{name}": _redact_bytes(spec, redactor)}
    if lock is not None:
        members["blocks.lock"] = _redact_bytes(lock, redactor)
    run = _run_facts(clean, steps, gates, _scrub(dict(environment), redactor), name)
    gate_calls = [c for c in ledger["calls"] if "gate" in c]
    if gate_calls:  # a review gate's model calls are spent like a step's
        run["cost"] = {
            "usd": _total([run["cost"]["usd"], *(c["cost_usd"] or 0.0 for c in gate_calls)]),
            "tokens": run["cost"]["tokens"] + sum(int(c["tokens"] or 0) for c in gate_calls),
        }
    members["run.json"] = _json_member(run, redactor)
    for sid, step in steps.items():
        members[check_member_path(f"steps/{sid}.json")] = _json_member(step, redactor)
    members["llm/ledger.json"] = _json_member(ledger, redactor)
    for gid, gate in gates.items():
        members[check_member_path(f"gates/{gid}.json")] = _json_member(gate, redactor)
    lines = b"".join(canonical_bytes(r) + b"\n" for r in clean)
    members["journal.jsonl"] = _redact_bytes(lines, redactor)
    return members


def _scrub(value: Any, redactor: Redacts) -> Any:
    """Mask secrets in every string (keys too), before and after normalisation: a secret
    may only appear once newlines and Unicode forms are normalised, or only before."""
    if isinstance(value, str):
        return redactor.text(_text(redactor.text(value)))
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            name = base = _scrub(str(key), redactor)
            n = 1
            while name in out:  # two keys masked (or normalised) alike: keep both values
                n += 1
                name = f"{base}#{n}"
            out[name] = _scrub(item, redactor)
        return out
    if isinstance(value, list | tuple):
        return [_scrub(v, redactor) for v in value]
    return value


def _redact_bytes(data: bytes, redactor: Redacts) -> bytes:
    """Text is masked as text; bytes that are not UTF-8 are kept as they are."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return data
    masked = redactor.text(text)
    return data if masked == text else masked.encode("utf-8")


def _json_member(value: Any, redactor: Redacts) -> bytes:
    # The values are scrubbed already; the last pass catches a secret that only appears
    # across the encoding (a secret that is also a number, say). Masking wins over JSON.
    return _redact_bytes(canonical_bytes(value), redactor)


def _utc(t: Any) -> str | None:
    if not isinstance(t, int | float) or isinstance(t, bool):
        return None
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _run_facts(
    records: list[dict[str, Any]],
    steps: Mapping[str, Mapping[str, Any]],
    gates: Mapping[str, Mapping[str, Any]],
    environment: Mapping[str, Any],
    spec_name: str,
) -> dict[str, Any]:
    started = records[0]
    finished: dict[str, Any] | None = None
    resumed: list[dict[str, Any]] = []
    for rec in records:
        if rec.get("event") == "run.resumed":
            resumed.append({"holder": rec.get("holder"), "at": _utc(rec.get("t"))})
            finished = None
        elif rec.get("event") == "run.finished":
            finished = rec
    holder = str(started.get("holder", ""))
    return {
        "run": started.get("run"),
        "flow": started.get("flow"),
        "spec": {
            "member": f"spec/{spec_name}",
            "path": started.get("path"),
            "digest": started.get("spec_digest"),
        },
        "inputs": started.get("inputs", {}),
        "by": {"holder": holder, "user": holder.split("@", 1)[0] if "@" in holder else holder},
        "started_at": _utc(started.get("t")),
        "finished_at": _utc(finished.get("t")) if finished else None,
        "status": str(finished.get("status")) if finished else "unfinished",
        "outputs": finished.get("outputs", {}) if finished else {},
        "resumed": resumed,
        "use_cache": started.get("use_cache"),
        "overrides": started.get("overrides") or {},
        "engine": started.get("engine"),
        "environment": dict(environment),
        "steps": {sid: s["status"] for sid, s in steps.items()},
        "gates": {gid: g["verdict"] for gid, g in gates.items()},
        "cost": {
            "usd": _total(s["cost_usd"] for s in steps.values()),
            "tokens": sum(int(s["tokens"]) for s in steps.values()),
        },
    }


def _total(values: Iterable[Any]) -> float:
    # rounded so that the order of a fan-out's items cannot change the last digit
    return round(sum(float(v) for v in values), 9)


def _fold_steps(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    steps: dict[str, dict[str, Any]] = {}
    for rec in records:
        sid = rec.get("step")
        event = rec.get("event")
        if not isinstance(sid, str) or not isinstance(event, str):
            continue
        step = steps.setdefault(sid, _new_step(sid))
        instance = str(rec.get("instance", sid))
        if event == "step.started":
            step["attempts"].append(
                {
                    "instance": instance,
                    "attempt": rec.get("attempt"),
                    "outcome": "unfinished",
                    "started_at": _utc(rec.get("t")),
                }
            )
        elif event in _STEP_END and "attempt" in rec:
            _end_attempt(step, instance, rec, _STEP_END[event])
        if event in _SPENDS:
            step["cost_usd"] = _total((step["cost_usd"], rec.get("cost_usd") or 0.0))
            step["tokens"] += int(rec.get("tokens") or 0)
        if instance == sid and event in _STEP_FINAL:
            _final(step, event, rec)
        elif instance != sid and event in ("step.succeeded", "step.cached", "step.failed"):
            step["items"][instance] = _item(event, rec)
    return steps


def _new_step(sid: str) -> dict[str, Any]:
    return {
        "step": sid,
        "status": "pending",
        "attempts": [],
        "outputs": {},
        "result": None,
        "detail": {},
        "error": None,
        "reason": None,
        "cached_from": None,
        "duration": 0.0,
        "cost_usd": 0.0,
        "tokens": 0,
        "items": {},
    }


def _end_attempt(step: dict[str, Any], instance: str, rec: Mapping[str, Any], how: str) -> None:
    for attempt in reversed(step["attempts"]):
        if attempt["instance"] == instance and attempt["attempt"] == rec.get("attempt"):
            break
    else:  # failed before any attempt started (a bad template, a missing secret)
        attempt = {"instance": instance, "attempt": rec.get("attempt"), "started_at": None}
        step["attempts"].append(attempt)
    attempt["outcome"] = how
    attempt["ended_at"] = _utc(rec.get("t"))
    for key in ("error", "category", "duration", "cost_usd", "tokens", "delay"):
        if key in rec:
            attempt[key] = rec[key]


def _final(step: dict[str, Any], event: str, rec: Mapping[str, Any]) -> None:
    step["status"] = _STEP_FINAL[event]
    if event in ("step.succeeded", "step.cached"):
        step["outputs"] = rec.get("outputs") or {}
        step["result"] = rec.get("result")
        step["detail"] = rec.get("detail") or {}
        step["error"] = None
        step["cached_from"] = rec.get("from_run")
        step["duration"] = rec.get("duration", 0.0)
        if rec.get("outs"):
            step["outs"] = rec["outs"]  # path -> sha256 of each file the step wrote
    elif event == "step.failed":
        step["error"] = rec.get("error")
        step["duration"] = rec.get("duration", 0.0)
    elif event in ("step.skipped", "step.blocked"):
        step["reason"] = rec.get("reason")


def _item(event: str, rec: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "status": _STEP_FINAL[event],
        "outputs": rec.get("outputs") or {},
        "result": rec.get("result"),
        "detail": rec.get("detail") or {},
        "error": rec.get("error"),
        "cost_usd": rec.get("cost_usd", 0.0),
        "tokens": rec.get("tokens", 0),
    }


def _fold_gates(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    gates: dict[str, dict[str, Any]] = {}
    for rec in records:
        gid = rec.get("gate")
        event = rec.get("event")
        if not isinstance(gid, str):
            continue
        gate = gates.setdefault(gid, {"gate": gid, "verdict": "pending", "started_at": None})
        if event == "gate.started":
            gate["started_at"] = _utc(rec.get("t"))
            gate["kind"] = rec.get("kind")
        elif event == "gate.evaluated":
            keep = ("kind", "severity", "require", "explanation", "summary", "after")
            gate.update({k: rec[k] for k in keep if k in rec})
            gate["verdict"] = rec.get("status")
            gate["metrics"] = rec.get("metrics") or {}
            gate["evidence"] = rec.get("evidence") or {}
            gate["evaluated_at"] = _utc(rec.get("t"))
        elif event == "gate.skipped":
            gate["verdict"] = "skipped"
            gate["reason"] = rec.get("reason")
    return gates


def _call(
    who: Mapping[str, Any],
    sample: Mapping[str, Any],
    route: Any,
    routes: Mapping[str, str],
    prompt_sha256: Any,
) -> dict[str, Any]:
    """One row of the cost ledger: who called (a step's instance and attempt, or a gate),
    the route, the model asked and the model that answered, tokens and cost."""
    return {
        **who,
        "sample": sample.get("sample"),
        "route": route,
        "model_asked": routes.get(str(route)),
        "model_answered": sample.get("model_answered"),
        "fingerprint": sample.get("fingerprint"),
        "finish_reason": sample.get("finish_reason"),
        "reasks": sample.get("reasks", 0),
        "tokens": sample.get("tokens", 0),
        "cost_usd": sample.get("cost_usd", 0.0),
        "prompt_sha256": prompt_sha256,
    }


def _gate_calls(records: list[dict[str, Any]], routes: Mapping[str, str]) -> list[dict[str, Any]]:
    """The model calls a gate made (a `review` gate's samples): spent like a step's."""
    calls: list[dict[str, Any]] = []
    for rec in records:
        evidence = rec.get("evidence")
        if rec.get("event") != "gate.evaluated" or not isinstance(evidence, Mapping):
            continue
        samples = evidence.get("samples")
        if not isinstance(samples, list):
            continue
        for sample in samples:
            if isinstance(sample, Mapping) and "provider_error" not in sample:
                who = {"gate": rec.get("gate")}
                route, prompt = evidence.get("route"), evidence.get("prompt_sha256")
                calls.append(_call(who, sample, route, routes, prompt))
    return calls


_SPENDS: Final = frozenset({"step.succeeded", "step.failed", "step.retrying"})
"""Records that carry what an attempt spent: a failed llm attempt's calls cost money too."""


def _ledger(records: list[dict[str, Any]], routes: Mapping[str, str]) -> dict[str, Any]:
    calls: list[dict[str, Any]] = []
    for rec in records:
        detail = rec.get("detail")
        if rec.get("event") not in _SPENDS or not isinstance(detail, Mapping):
            continue
        samples = detail.get("samples")
        if not isinstance(samples, list):
            continue
        route = detail.get("route")
        for sample in samples:
            if not isinstance(sample, Mapping) or not (
                rec.get("event") == "step.succeeded" or sample.get("model_answered")
            ):
                continue  # a failed attempt's sample no model answered cost nothing
            who = {
                "step": rec.get("step"),
                "instance": rec.get("instance", rec.get("step")),
                "attempt": rec.get("attempt"),
            }
            calls.append(_call(who, sample, route, routes, detail.get("prompt_sha256")))
    calls.extend(_gate_calls(records, routes))
    answered = sorted({str(c["model_answered"]) for c in calls if c["model_answered"]})
    return {
        "calls": calls,
        "models_answered": answered,
        "tokens": sum(int(c["tokens"] or 0) for c in calls),
        "cost_usd": _total(c["cost_usd"] or 0.0 for c in calls),
    }
