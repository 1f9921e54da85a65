"""The lock as data: its entries, its text, and what differs between two locks.

Owns: the dataclasses of a lock, its TOML text (`render_lock`: sorted, one table per entry
followed by a blank line, no timestamps, so that two branches that pinned different files
merge cleanly in git), reading it back strictly (`parse_lock`, errors at `file:line:col`),
and comparing a lock with the flow now (`drift`). Pure: no file, plan or store is touched
here (`engine.lockfile` computes locks and reads and writes the files).
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from engine.errors import EngineError

__all__ = [
    "FORMAT",
    "MISSING",
    "UNRESOLVED",
    "Drift",
    "Lock",
    "LockDrifted",
    "LockError",
    "LockedFile",
    "LockedRoute",
    "LockedVersion",
    "drift",
    "parse_lock",
    "render_lock",
]

FORMAT: Final = "blocks.lock/1"
"""The lock format. A reader refuses any other value rather than guess."""
UNRESOLVED: Final = "unresolved"
"""The version of a provider model no bundle of this flow has used yet."""
MISSING: Final = "missing"
"""The digest of a file the flow names that does not exist."""

_BARE_KEY: Final = re.compile(r"[A-Za-z0-9_-]+")
_TOML_POSITION: Final = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$")


class LockError(EngineError):
    """A lock file is missing, unreadable, or not a lock this engine reads (exit 1)."""


@dataclass(frozen=True, slots=True)
class LockedFile:
    """A file the flow reads: its digest (`sha256:<hex>`, or `missing`) and who reads it."""

    sha256: str
    used_by: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class LockedVersion:
    """The dated version a model resolves to (or `unresolved`), and where that was learnt."""

    version: str
    resolved_from: str


@dataclass(frozen=True, slots=True)
class LockedRoute:
    """A model route: its primary, its fallbacks in order, and each model's version."""

    model: str
    fallbacks: tuple[str, ...]
    versions: Mapping[str, LockedVersion]


@dataclass(frozen=True, slots=True)
class Lock:
    """Everything a flow is pinned to. `lines` (parsed locks only) maps a table, or a
    table and key, to its 1-based line in the lock file, for messages."""

    flow: str
    spec: str
    sha256: str
    files: Mapping[str, LockedFile]
    routes: Mapping[str, LockedRoute]
    tools: Mapping[str, str]
    lines: Mapping[tuple[str, ...], int] = field(default_factory=dict, compare=False)


@dataclass(frozen=True, slots=True)
class Drift:
    """One thing that differs between a lock and the flow now."""

    message: str
    line: int | None = None

    def at(self, lock_file: str) -> str:
        where = f"{lock_file}:{self.line}:1" if self.line else lock_file
        return f"{where}: {self.message}"


class LockDrifted(LockError):
    """`blocks run --locked` refused: the flow drifted from its lock. Names every item."""

    def __init__(self, lock_file: str, flow_path: str, items: list[Drift]) -> None:
        self.lock_file = lock_file
        self.items = items
        listed = "\n".join("  " + d.at(lock_file) for d in items)
        noun = "item" if len(items) == 1 else "items"
        super().__init__(
            f"refusing to run with --locked: {flow_path} drifted from {lock_file} "
            f"({len(items)} {noun}):\n{listed}\n"
            f"Review the changes, then pin them with: blocks lock {flow_path}"
        )


# ---- the text -------------------------------------------------------------------------


def _quote(value: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's; DEL must be escaped too)."""
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")


def _key(name: str) -> str:
    return name if _BARE_KEY.fullmatch(name) else _quote(name)


def _array(values: tuple[str, ...] | list[str]) -> str:
    return "[" + ", ".join(_quote(v) for v in values) + "]"


def render_lock(lock: Lock) -> bytes:
    """The lock file's bytes: the same lock always gives the same bytes."""
    lines = [
        f"# The lock file (TOML) of {lock.spec}, written by `blocks lock`: do not edit it.",
        "# It pins the flow, every file the flow reads, its model routes and its tools.",
        "# After changing any of them, run",
        f"#   blocks lock {lock.spec}",
        "# and review the diff. `blocks run --locked` refuses to run while anything drifted.",
        "",
        "[lock]",
        f"format = {_quote(FORMAT)}",
        f"flow = {_quote(lock.flow)}",
        f"spec = {_quote(lock.spec)}",
        f"sha256 = {_quote(lock.sha256)}",
        "",
    ]
    for path in sorted(lock.files):
        entry = lock.files[path]
        lines += [
            f"[files.{_quote(path)}]",
            f"sha256 = {_quote(entry.sha256)}",
            f"used_by = {_array(sorted(entry.used_by))}",
            "",
        ]
    for rid in sorted(lock.routes):
        route = lock.routes[rid]
        lines += [
            f"[routes.{_key(rid)}]",
            f"model = {_quote(route.model)}",
            f"fallbacks = {_array(route.fallbacks)}",
            "",
        ]
        for model in sorted(route.versions):
            version = route.versions[model]
            lines += [
                f"[routes.{_key(rid)}.versions.{_quote(model)}]",
                f"version = {_quote(version.version)}",
                f"resolved_from = {_quote(version.resolved_from)}",
                "",
            ]
    for name in sorted(lock.tools):
        lines += [f"[tools.{_key(name)}]", f"version = {_quote(lock.tools[name])}", ""]
    return ("\n".join(lines).rstrip("\n") + "\n").encode("utf-8")


def parse_lock(data: bytes, path: str) -> Lock:
    """Read a lock file strictly. LockError at `path:line:col` says what is wrong."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise LockError(f"{path}:{line}:{col}: the lock file is not UTF-8 text") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        found = _TOML_POSITION.search(message)
        where = f"{path}:{found[1]}:{found[2]}" if found else path
        reason = message[: found.start()] if found else message
        raise LockError(
            f"{where}: not a lock file (TOML: {reason}); run `blocks lock` to write it again"
        ) from None
    lines = _line_index(text)
    reader = _Reader(path, lines)
    head = reader.table(doc, ("lock",))
    if head.get("format") != FORMAT:
        raise LockError(
            f"{reader.where(('lock', 'format'))}: unsupported lock format "
            f"{head.get('format')!r} (this engine reads {FORMAT}); run `blocks lock` again"
        )
    files = {
        name: LockedFile(
            reader.string(entry, ("files", name, "sha256")),
            tuple(reader.strings(entry, ("files", name, "used_by"))),
        )
        for name, entry in reader.tables(doc, ("files",)).items()
    }
    routes: dict[str, LockedRoute] = {}
    for rid, entry in reader.tables(doc, ("routes",)).items():
        versions = {
            model: LockedVersion(
                reader.string(v, ("routes", rid, "versions", model, "version")),
                reader.string(v, ("routes", rid, "versions", model, "resolved_from")),
            )
            for model, v in reader.tables(entry, ("routes", rid, "versions")).items()
        }
        routes[rid] = LockedRoute(
            reader.string(entry, ("routes", rid, "model")),
            tuple(reader.strings(entry, ("routes", rid, "fallbacks"))),
            versions,
        )
    tools = {
        name: reader.string(entry, ("tools", name, "version"))
        for name, entry in reader.tables(doc, ("tools",)).items()
    }
    return Lock(
        flow=reader.string(head, ("lock", "flow")),
        spec=reader.string(head, ("lock", "spec")),
        sha256=reader.string(head, ("lock", "sha256")),
        files=files,
        routes=routes,
        tools=tools,
        lines=lines,
    )


def _line_index(text: str) -> dict[tuple[str, ...], int]:
    """Table path (and table path + key) -> 1-based line, for the lines written as
    `[a.b."c"]` and `key = value`. Lines written otherwise are simply not indexed."""
    index: dict[tuple[str, ...], int] = {}
    table: tuple[str, ...] = ()
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("[") and not stripped.startswith("[["):
            try:
                parsed: Any = tomllib.loads(stripped)
            except tomllib.TOMLDecodeError:
                continue
            path: list[str] = []
            while isinstance(parsed, dict) and len(parsed) == 1:
                name, parsed = next(iter(parsed.items()))
                path.append(name)
            table = tuple(path)
            index.setdefault(table, number)
        elif "=" in stripped and not stripped.startswith("#"):
            key = stripped.split("=", 1)[0].strip()
            if _BARE_KEY.fullmatch(key):
                index.setdefault((*table, key), number)
    return index


class _Reader:
    """Typed access to a parsed lock, with errors at the line of what is wrong."""

    def __init__(self, path: str, lines: Mapping[tuple[str, ...], int]) -> None:
        self.path = path
        self.lines = lines

    def where(self, at: tuple[str, ...]) -> str:
        for n in range(len(at), 0, -1):
            if at[:n] in self.lines:
                return f"{self.path}:{self.lines[at[:n]]}:1"
        return self.path

    def _fail(self, at: tuple[str, ...], what: str) -> LockError:
        name = ".".join(at)
        return LockError(f"{self.where(at)}: {name}: {what}; run `blocks lock` to write it again")

    def table(self, doc: Mapping[str, Any], at: tuple[str, ...]) -> Mapping[str, Any]:
        value = doc.get(at[-1])
        if not isinstance(value, dict):
            raise self._fail(at, "missing table" if value is None else "not a table")
        return value

    def tables(self, doc: Mapping[str, Any], at: tuple[str, ...]) -> dict[str, Mapping[str, Any]]:
        value = doc.get(at[-1], {})
        if not isinstance(value, dict):
            raise self._fail(at, "not a table")
        for name, entry in value.items():
            if not isinstance(entry, dict):
                raise self._fail((*at, name), "not a table")
        return value

    def string(self, doc: Mapping[str, Any], at: tuple[str, ...]) -> str:
        value = doc.get(at[-1])
        if not isinstance(value, str):
            raise self._fail(at, "missing" if value is None else "not a string")
        return value

    def strings(self, doc: Mapping[str, Any], at: tuple[str, ...]) -> list[str]:
        value = doc.get(at[-1])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self._fail(at, "missing" if value is None else "not a list of strings")
        return value


# ---- comparing ------------------------------------------------------------------------


def _short(digest: str) -> str:
    if digest == MISSING:
        return MISSING
    return digest.removeprefix("sha256:")[:12] + "…"


def _listed(models: tuple[str, ...]) -> str:
    return "[" + ", ".join(models) + "]" if models else "none"


def drift(locked: Lock, now: Lock) -> list[Drift]:
    """What differs between `locked` (read from the file) and `now` (computed), one item
    per file, route or tool, in the lock's order. A provider model's version is compared
    only when both sides resolved it; its name always is."""
    out: list[Drift] = []
    line = locked.lines.get
    if locked.spec != now.spec:
        out.append(Drift(f"the lock is for {locked.spec}, not {now.spec}", line(("lock", "spec"))))
    elif locked.sha256 != now.sha256:
        out.append(
            Drift(
                f"{now.spec} (the flow): sha256 {_short(locked.sha256)} in the lock, "
                f"{_short(now.sha256)} now",
                line(("lock", "sha256")),
            )
        )
    for path in sorted(set(locked.files) | set(now.files)):
        out += _file_drift(path, locked.files.get(path), now.files.get(path), line)
    for rid in sorted(set(locked.routes) | set(now.routes)):
        out += _route_drift(rid, locked.routes.get(rid), now.routes.get(rid), line)
    for name in sorted(set(locked.tools) | set(now.tools)):
        before, after = locked.tools.get(name), now.tools.get(name)
        if before == after:
            continue
        at = line(("tools", name, "version")) or line(("tools", name))
        if before is None:
            out.append(Drift(f"tool {name}: not in the lock, {after} now (the flow uses it)"))
        elif after is None:
            out.append(Drift(f"tool {name}: {before} in the lock, no longer used by the flow", at))
        else:
            out.append(Drift(f"tool {name}: {before} in the lock, {after} now", at))
    return out


def _file_drift(
    path: str,
    before: LockedFile | None,
    after: LockedFile | None,
    line: Callable[[tuple[str, ...]], int | None],
) -> list[Drift]:
    at = line(("files", path, "sha256")) or line(("files", path))
    if after is None:
        return [Drift(f"{path}: in the lock, no longer used by the flow", at)]
    if before is None:
        users = ", ".join(after.used_by)
        return [Drift(f"{path}: used by the flow now ({users}), not in the lock")]
    if before.sha256 == after.sha256:
        return []
    if after.sha256 == MISSING:
        return [Drift(f"{path}: sha256 {_short(before.sha256)} in the lock, missing now", at)]
    return [
        Drift(f"{path}: sha256 {_short(before.sha256)} in the lock, {_short(after.sha256)} now", at)
    ]


def _route_drift(
    rid: str,
    before: LockedRoute | None,
    after: LockedRoute | None,
    line: Callable[[tuple[str, ...]], int | None],
) -> list[Drift]:
    if after is None:
        return [Drift(f"route {rid}: in the lock, no longer in the flow", line(("routes", rid)))]
    if before is None:
        return [Drift(f"route {rid}: in the flow now (primary {after.model}), not in the lock")]
    out: list[Drift] = []
    if before.model != after.model:
        out.append(
            Drift(
                f"route {rid}: primary {before.model} in the lock, {after.model} now",
                line(("routes", rid, "model")),
            )
        )
    if before.fallbacks != after.fallbacks:
        out.append(
            Drift(
                f"route {rid}: fallbacks {_listed(before.fallbacks)} in the lock, "
                f"{_listed(after.fallbacks)} now",
                line(("routes", rid, "fallbacks")),
            )
        )
    for model in (after.model, *after.fallbacks):
        was, now = before.versions.get(model), after.versions.get(model)
        if was is None or now is None or UNRESOLVED in (was.version, now.version):
            continue
        if was.version != now.version:
            out.append(
                Drift(
                    f"route {rid}: {model} resolves to {was.version} in the lock, "
                    f"{now.version} now ({now.resolved_from})",
                    line(("routes", rid, "versions", model, "version")),
                )
            )
    return out
