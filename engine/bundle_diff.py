"""What changed between two context bundles: a semantic diff of two runs.

Owns: `diff_bundles`, a pure function from two bundles' manifests and member bytes to a
JSON-ready description of what differs, grouped the way people ask about runs: the run
(status, flow), the spec (digest, and a unified diff when small), the lock file, inputs,
model versions (per llm step and per review gate: model asked, answered, fingerprint; or
"cached from run X"), the flow's outputs, each step (status, error, output values), gates
(verdict and metric values), cost (USD and tokens, with the delta) and the environment
(tool versions); plus `render_diff`, the human text of it, and `DIFF_MEMBERS`, which member
files a diff reads.
Must not: read a store (the CLI hands it verified member bytes), print, or judge which run
is right. Timing noise (durations, timestamps, who ran it, attempts) is never a difference.

Values are compared by type and value (``1`` and ``1.0`` differ, as in canonical JSON).
Nested outputs and metrics are compared key by key (``risk_weights[2].weight``); a list
whose length changed is one change.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from engine.bundle import Manifest
from engine.errors import BundleError

__all__ = ["DIFF_MEMBERS", "BundleSide", "diff_bundles", "is_diff_member", "render_diff"]

DIFF_MEMBERS: Final = ("run.json", "llm/ledger.json", "blocks.lock")
"""Members a diff reads by name; it also reads every ``spec/``, ``steps/`` and ``gates/``
member (`is_diff_member`). The journal is never read: the folded members say it all."""

_PREFIXES: Final = ("spec/", "steps/", "gates/")
_TEXT_DIFF_MAX: Final = 256 * 1024
"""A spec or lock larger than this (either side) gets its digests only, no text diff."""
_TEXT_DIFF_LINES: Final = 200
"""A text diff longer than this many lines is left out (the digests still say it changed)."""
_MAX_CHANGES: Final = 200
"""Changed values kept per step, gate or output set; the rest are counted."""
_SHOWN: Final = 20
"""Changed values printed per step or gate in the text form."""
_WIDTH: Final = 72


def is_diff_member(path: str) -> bool:
    """Whether `diff_bundles` reads member `path`."""
    return path in DIFF_MEMBERS or path.startswith(_PREFIXES)


@dataclass(frozen=True, slots=True)
class BundleSide:
    """One bundle of a diff: its root digest, its manifest, and the bytes of (at least) the
    members `is_diff_member` names, already verified by whoever read them."""

    digest: str
    manifest: Manifest
    members: Mapping[str, bytes]

    def json(self, path: str) -> Any:
        """Member `path` as JSON, or None if the bundle has no such member."""
        if path not in self.members:
            return None
        try:
            return json.loads(self.members[path])
        except ValueError as exc:
            raise BundleError(f"bundle {self.digest}: member {path} is not JSON: {exc}") from None

    def folder(self, prefix: str) -> dict[str, Any]:
        """``steps/<id>.json`` members as {id: value} (the same for ``gates/``)."""
        out: dict[str, Any] = {}
        for path in sorted(self.members):
            if path.startswith(prefix) and path.endswith(".json"):
                value = self.json(path)
                if isinstance(value, dict):
                    out[path[len(prefix) : -len(".json")]] = value
        return out


class _Absent:
    """A key present on one side only (JSON has no "missing", and null is a value)."""

    def __repr__(self) -> str:
        return "(absent)"


ABSENT: Final = _Absent()


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def _key(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def value_changes(a: Any, b: Any, path: str = "") -> list[dict[str, Any]]:
    """Every place where `a` and `b` differ, as ``{"path", "a", "b"}`` (a side that lacks
    the key has no "a" or "b"), in key order."""
    out: list[dict[str, Any]] = []

    def walk(x: Any, y: Any, where: str) -> None:
        if isinstance(x, dict) and isinstance(y, dict):
            for k in sorted(set(x) | set(y)):
                here = _key(where, str(k))
                if k not in x:
                    out.append({"path": here, "b": y[k]})
                elif k not in y:
                    out.append({"path": here, "a": x[k]})
                else:
                    walk(x[k], y[k], here)
        elif isinstance(x, list) and isinstance(y, list) and len(x) == len(y):
            for i, (xi, yi) in enumerate(zip(x, y, strict=True)):
                walk(xi, yi, f"{where}[{i}]")
        elif not _same(x, y):
            out.append({"path": where, "a": x, "b": y})

    walk(a, b, path)
    return out


def _capped(changes: list[dict[str, Any]]) -> dict[str, Any]:
    kept = changes[:_MAX_CHANGES]
    return {"changes": kept, "omitted": len(changes) - len(kept)}


def _pair(a: Any, b: Any) -> dict[str, Any] | None:
    return None if _same(a, b) else {"a": a, "b": b}


def _keys_diff(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "added": {k: b[k] for k in sorted(set(b) - set(a))},
        "removed": {k: a[k] for k in sorted(set(a) - set(b))},
        "changed": {
            k: {"a": a[k], "b": b[k]} for k in sorted(set(a) & set(b)) if not _same(a[k], b[k])
        },
    }


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


# ---- sections ----------------------------------------------------------------------------


def _text_member(side: BundleSide, path: str | None) -> dict[str, Any] | None:
    if path is None or path not in side.manifest.paths:
        return None
    data = side.members.get(path)
    return {
        "member": path,
        # what sha256sum prints, and lock files record (not the 0x00-prefixed leaf digest)
        "sha256": "sha256:" + hashlib.sha256(data).hexdigest() if data is not None else None,
        "digest": side.manifest.member(path).digest,
    }


def _text_diff(a: BundleSide, b: BundleSide, pa: str | None, pb: str | None) -> dict[str, Any]:
    """Digests of a text member on each side and, when small, its unified diff."""
    left, right = _text_member(a, pa), _text_member(b, pb)
    out: dict[str, Any] = {"a": left, "b": right, "diff": None, "note": None}
    if left is None or right is None:
        return out
    da, db = a.members.get(str(pa)), b.members.get(str(pb))
    if da is None or db is None:
        out["note"] = "member bytes not read"
    elif max(len(da), len(db)) > _TEXT_DIFF_MAX:
        out["note"] = f"larger than {_TEXT_DIFF_MAX // 1024} KiB: text diff not shown"
    else:
        try:
            ta, tb = da.decode("utf-8"), db.decode("utf-8")
        except UnicodeDecodeError:
            out["note"] = "not UTF-8 text: text diff not shown"
            return out
        lines = list(
            difflib.unified_diff(
                ta.splitlines(keepends=True),
                tb.splitlines(keepends=True),
                f"a/{pa}",
                f"b/{pb}",
            )
        )
        if len(lines) > _TEXT_DIFF_LINES:
            out["note"] = f"{len(lines)} lines of diff: not shown"
        else:
            out["diff"] = "".join(ln if ln.endswith("\n") else ln + "\n" for ln in lines)
    return out


def _spec_path(side: BundleSide, run: Mapping[str, Any]) -> str | None:
    named = _dict(run.get("spec")).get("member")
    if isinstance(named, str) and named in side.manifest.paths:
        return named
    specs = [p for p in side.manifest.paths if p.startswith("spec/")]
    return specs[0] if len(specs) == 1 else None


def _spec_section(a: BundleSide, b: BundleSide, ra: Any, rb: Any) -> dict[str, Any] | None:
    pa, pb = _spec_path(a, ra), _spec_path(b, rb)
    ma, mb = _text_member(a, pa), _text_member(b, pb)
    if ma == mb or (ma and mb and ma["digest"] == mb["digest"] and pa == pb):
        return None
    section = _text_diff(a, b, pa, pb)
    section["path"] = _pair(_dict(ra.get("spec")).get("path"), _dict(rb.get("spec")).get("path"))
    return section


def _lock_section(a: BundleSide, b: BundleSide) -> dict[str, Any] | None:
    ma, mb = _text_member(a, "blocks.lock"), _text_member(b, "blocks.lock")
    if ma == mb:
        return None
    return _text_diff(a, b, "blocks.lock", "blocks.lock")


def _models(side: BundleSide, steps: Mapping[str, Any], gates: Mapping[str, Any]) -> dict[str, Any]:
    """Per llm step (and per review gate): the distinct (asked, answered, fingerprint) of its
    calls, or the run it was cached from."""
    out: dict[str, Any] = {}
    ledger = _dict(side.json("llm/ledger.json"))
    calls: dict[str, set[tuple[Any, Any, Any]]] = {}
    for call in ledger.get("calls") or []:
        if isinstance(call, dict):
            key = str(call.get("step"))
            calls.setdefault(key, set()).add(
                (call.get("model_asked"), call.get("model_answered"), call.get("fingerprint"))
            )
    for sid, found in calls.items():
        out[sid] = {"calls": _model_list(found)}
    for sid, step in steps.items():
        detail = _dict(step.get("detail"))
        if sid not in out and detail.get("replayed_from"):  # `blocks run --replay`
            answered = {(None, detail.get("model_answered"), None)}
            out[sid] = {"replayed_from": detail["replayed_from"], "calls": _model_list(answered)}
    for gid, gate in gates.items():
        evidence = _dict(gate.get("evidence"))
        samples = [s for s in evidence.get("samples") or [] if isinstance(s, dict)]
        answered = {
            (None, s.get("model_answered"), s.get("fingerprint"))
            for s in samples
            if s.get("model_answered")
        }
        if answered:
            out[f"gate {gid}"] = {"route": evidence.get("route"), "calls": _model_list(answered)}
    return out


def _model_list(found: Iterable[tuple[Any, Any, Any]]) -> list[dict[str, Any]]:
    return [
        {"model_asked": asked, "model_answered": answered, "fingerprint": fp}
        for asked, answered, fp in sorted(found, key=lambda t: tuple(str(x) for x in t))
    ]


def _step_section(sa: Mapping[str, Any], sb: Mapping[str, Any]) -> dict[str, Any]:
    changed: dict[str, Any] = {}
    for sid in sorted(set(sa) & set(sb)):
        a, b = sa[sid], sb[sid]
        entry: dict[str, Any] = {}
        if pair := _pair(a.get("status"), b.get("status")):
            entry["status"] = pair
        if pair := _pair(a.get("error"), b.get("error")):
            entry["error"] = pair
        if pair := _pair(a.get("reason"), b.get("reason")):
            entry["reason"] = pair
        outputs = value_changes(_dict(a.get("outputs")), _dict(b.get("outputs")))
        if outputs:
            entry["outputs"] = _capped(outputs)
        if entry:
            changed[sid] = entry
    return {
        "added": {sid: sb[sid].get("status") for sid in sorted(set(sb) - set(sa))},
        "removed": {sid: sa[sid].get("status") for sid in sorted(set(sa) - set(sb))},
        "changed": changed,
    }


def _gate_section(ga: Mapping[str, Any], gb: Mapping[str, Any]) -> dict[str, Any]:
    changed: dict[str, Any] = {}
    for gid in sorted(set(ga) & set(gb)):
        a, b = ga[gid], gb[gid]
        entry: dict[str, Any] = {}
        if pair := _pair(a.get("verdict"), b.get("verdict")):
            entry["verdict"] = pair
        for key in ("severity", "require"):  # a skipped gate records neither: no change
            both = a.get(key) is not None and b.get(key) is not None
            if both and (pair := _pair(a[key], b[key])):
                entry[key] = pair
        metrics = value_changes(_dict(a.get("metrics")), _dict(b.get("metrics")))
        if metrics:
            entry["metrics"] = _capped(metrics)
        if entry:
            changed[gid] = entry
    return {
        "added": {gid: gb[gid].get("verdict") for gid in sorted(set(gb) - set(ga))},
        "removed": {gid: ga[gid].get("verdict") for gid in sorted(set(ga) - set(gb))},
        "changed": changed,
    }


def _number(value: Any) -> float | int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    return value


def _cost_section(ra: Mapping[str, Any], rb: Mapping[str, Any]) -> dict[str, Any] | None:
    ca, cb = _dict(ra.get("cost")), _dict(rb.get("cost"))
    usd_a, usd_b = float(_number(ca.get("usd"))), float(_number(cb.get("usd")))
    tok_a, tok_b = int(_number(ca.get("tokens"))), int(_number(cb.get("tokens")))
    if usd_a == usd_b and tok_a == tok_b:
        return None
    return {
        "usd": {"a": usd_a, "b": usd_b, "delta": round(usd_b - usd_a, 9)},
        "tokens": {"a": tok_a, "b": tok_b, "delta": tok_b - tok_a},
    }


def _side_facts(side: BundleSide, run: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "digest": side.digest,
        "run": side.manifest.run or run.get("run"),
        "flow": run.get("flow"),
        "status": run.get("status"),
        "started_at": run.get("started_at"),
    }


def _nonempty(section: Mapping[str, Any]) -> bool:
    return any(section.values())


def _has_section(path: str) -> bool:
    """Members that a section of the diff covers (the rest go under "members")."""
    return path == "blocks.lock" or path.startswith(_PREFIXES)


def diff_bundles(a: BundleSide, b: BundleSide) -> dict[str, Any]:
    """What differs from bundle `a` to bundle `b`, as JSON-ready data.

    Keys: ``a`` and ``b`` (digest, run, flow, status, started_at), ``identical`` (same root
    digest), ``differences`` (how many sections differ; 0 means "no differences"), and one
    key per section, null or empty when that section did not change: ``run`` (status, flow),
    ``spec`` and ``lock`` ({a, b: {member, sha256 of its bytes, digest in the manifest},
    diff, note}), ``inputs`` ({added,
    removed, changed}), ``models`` ({step: {a, b}}), ``outputs`` (the flow's outputs:
    {changes, omitted}), ``steps`` and ``gates`` ({added, removed, changed}), ``cost``
    ({usd, tokens: {a, b, delta}}), ``environment`` ({key: {a, b}}) and ``members``
    (paths only one bundle has, but for the spec, the lock, steps and gates).
    """
    ra, rb = _dict(a.json("run.json")), _dict(b.json("run.json"))
    sa, sb = a.folder("steps/"), b.folder("steps/")
    ga, gb = a.folder("gates/"), b.folder("gates/")
    run = {k: p for k in ("flow", "status") if (p := _pair(ra.get(k), rb.get(k)))}
    inputs = _keys_diff(_dict(ra.get("inputs")), _dict(rb.get("inputs")))
    ma, mb = _models(a, sa, ga), _models(b, sb, gb)
    # a cached step made no call: it says so where the other run's step did call a model
    for mine, theirs, steps in ((ma, mb, sa), (mb, ma, sb)):
        for key in set(theirs) - set(mine):
            step = steps.get(key) or {}
            if step.get("status") == "cached":
                mine[key] = {"cached_from": step.get("cached_from")}
    models = {
        key: {"a": ma.get(key), "b": mb.get(key)}
        for key in sorted(set(ma) | set(mb))
        if not _same(ma.get(key), mb.get(key))
    }
    outputs = value_changes(_dict(ra.get("outputs")), _dict(rb.get("outputs")))
    env_a, env_b = _dict(ra.get("environment")), _dict(rb.get("environment"))
    environment = {
        k: {"a": env_a.get(k), "b": env_b.get(k)}
        for k in sorted(set(env_a) | set(env_b))
        if not _same(env_a.get(k), env_b.get(k))
    }
    other_a = {p for p in a.manifest.paths if not _has_section(p)}
    other_b = {p for p in b.manifest.paths if not _has_section(p)}
    doc: dict[str, Any] = {
        "a": _side_facts(a, ra),
        "b": _side_facts(b, rb),
        "identical": a.digest == b.digest,
        "run": run,
        "spec": _spec_section(a, b, ra, rb),
        "lock": _lock_section(a, b),
        "inputs": inputs,
        "models": models,
        "outputs": _capped(outputs) if outputs else None,
        "steps": _step_section(sa, sb),
        "gates": _gate_section(ga, gb),
        "cost": _cost_section(ra, rb),
        "environment": environment,
        "members": {"added": sorted(other_b - other_a), "removed": sorted(other_a - other_b)},
    }
    doc["differences"] = sum(1 for key in _SECTIONS if _changed(doc[key]))
    return doc


_SECTIONS: Final = (
    "run",
    "spec",
    "lock",
    "inputs",
    "models",
    "outputs",
    "steps",
    "gates",
    "cost",
    "environment",
    "members",
)


# ---- text --------------------------------------------------------------------------------


def compact(value: Any, width: int = _WIDTH) -> str:
    """A value on one line: JSON, cut to `width` characters with an ellipsis."""
    if value is ABSENT:
        return "(absent)"
    text = json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(", ", ": "))
    return text if len(text) <= width else text[: width - 1] + "…"


def _change_line(change: Mapping[str, Any], indent: str) -> str:
    a = change.get("a", ABSENT)
    b = change.get("b", ABSENT)
    mark = "+" if "a" not in change else "-" if "b" not in change else "~"
    return f"{indent}{mark} {change['path']}: {compact(a, 40)} → {compact(b, 40)}"


def _changes(block: Mapping[str, Any], indent: str) -> list[str]:
    changes = list(block.get("changes") or [])
    lines = [_change_line(c, indent) for c in changes[:_SHOWN]]
    more = len(changes) - len(lines) + int(block.get("omitted") or 0)
    if more:
        lines.append(f"{indent}… {more} more (--json shows {_MAX_CHANGES} at most)")
    return lines


def _models_text(entry: Mapping[str, Any] | None) -> str:
    if not entry:
        return "(none)"
    if "cached_from" in entry:
        return f"cached from run {entry['cached_from']}"
    parts = [f"replayed from {entry['replayed_from']}:"] if entry.get("replayed_from") else []
    for call in entry.get("calls") or []:
        text = str(call.get("model_answered") or "?")
        extra = []
        if call.get("model_asked"):
            extra.append(f"asked {call['model_asked']}")
        if call.get("fingerprint"):
            extra.append(f"fingerprint {call['fingerprint']}")
        parts.append(text + (f" ({', '.join(extra)})" if extra else ""))
    return " ".join(parts) if entry.get("replayed_from") else "; ".join(parts) or "(none)"


def _short(digest: Any) -> str:
    return str(digest)[:19] + "…" if isinstance(digest, str) else "(none)"


def _text_section(section: Mapping[str, Any]) -> list[str]:
    a, b = section.get("a"), section.get("b")
    lines = []
    if a is None or b is None:
        only, where = (a, "a") if b is None else (b, "b")
        if only is not None:
            lines.append(f"  only in {where}: {only['member']} {_short(only['sha256'])}")
    else:
        name = a["member"] if a["member"] == b["member"] else f"{a['member']} → {b['member']}"
        lines.append(f"  {name}: {_short(a['sha256'])} → {_short(b['sha256'])}")
    path = section.get("path")
    if path:
        lines.append(f"  path: {path['a']} → {path['b']}")
    if section.get("diff"):
        lines += ["    " + ln for ln in str(section["diff"]).splitlines()]
    elif section.get("note"):
        lines.append(f"  ({section['note']})")
    return lines


def _keyed(section: Mapping[str, Any]) -> list[str]:
    lines = [f"  + {k}: {compact(v)}" for k, v in section.get("added", {}).items()]
    lines += [f"  - {k}: {compact(v)}" for k, v in section.get("removed", {}).items()]
    return lines


def _arrow(pair: Mapping[str, Any], width: int = 40) -> str:
    return f"{compact(pair['a'], width)} → {compact(pair['b'], width)}"


def _run_text(run: Mapping[str, Any]) -> list[str]:
    return [f"  {k}: {_arrow(v, _WIDTH)}" for k, v in run.items()]


def _inputs_text(inputs: Mapping[str, Any]) -> list[str]:
    return _keyed(inputs) + [f"  ~ {k}: {_arrow(v)}" for k, v in inputs["changed"].items()]


def _models_section_text(models: Mapping[str, Any]) -> list[str]:
    out = []
    for key, pair in models.items():
        out.append(f"  {key}: {_models_text(pair['a'])}")
        out.append(f"  {' ' * len(key)}  → {_models_text(pair['b'])}")
    return out


def _entries_text(section: Mapping[str, Any], head: str, values: str) -> list[str]:
    """Steps (head "status", values "outputs") or gates (head "verdict", values "metrics")."""
    out = _keyed(section)
    for name, entry in section["changed"].items():
        first = entry.get(head)
        out.append(f"  {name}:" + (f" {first['a']} → {first['b']}" if first else ""))
        out += [
            f"    {key}: {_arrow(entry[key])}"
            for key in ("error", "reason", "severity", "require")
            if key in entry
        ]
        if values in entry:
            out += _changes(entry[values], "    ")
    return out


def _cost_text(cost: Mapping[str, Any]) -> list[str]:
    usd, tokens = cost["usd"], cost["tokens"]
    return [
        f"  usd: ${usd['a']:.6f} → ${usd['b']:.6f} ({usd['delta']:+.6f})",
        f"  tokens: {tokens['a']} → {tokens['b']} ({tokens['delta']:+d})",
    ]


def _env_text(environment: Mapping[str, Any]) -> list[str]:
    def show(v: Any) -> str:
        return "(absent)" if v is None else str(v)

    return [f"  {k}: {show(v['a'])} → {show(v['b'])}" for k, v in environment.items()]


def _members_text(members: Mapping[str, Any]) -> list[str]:
    return [f"  + {p}" for p in members["added"]] + [f"  - {p}" for p in members["removed"]]


_RENDER: Final[tuple[tuple[str, str, Callable[[Any], list[str]]], ...]] = (
    ("run", "run", _run_text),
    ("spec", "spec", _text_section),
    ("lock", "lock", _text_section),
    ("inputs", "inputs", _inputs_text),
    ("models", "models", _models_section_text),
    ("outputs", "outputs (of the flow)", lambda block: _changes(block, "  ")),
    ("steps", "steps", lambda section: _entries_text(section, "status", "outputs")),
    ("gates", "gates", lambda section: _entries_text(section, "verdict", "metrics")),
    ("cost", "cost", _cost_text),
    ("environment", "environment", _env_text),
    ("members", "members", _members_text),
)


def _changed(value: Any) -> bool:
    return bool(value) and (not isinstance(value, Mapping) or _nonempty(value))


def render_diff(doc: Mapping[str, Any]) -> str:
    """The text form of `diff_bundles`: a heading per section that changed."""
    out: list[str] = []
    for side in ("a", "b"):
        f = doc[side]
        out.append(
            f"{side}: {f['digest']}  run {f['run'] or '-'}  {f['flow'] or '?'}  "
            f"{f['status'] or '?'}  {f['started_at'] or ''}".rstrip()
        )
    if doc["differences"] == 0:
        same = "the same bundle" if doc["identical"] else "no differences"
        out.append(f"{same} (spec, inputs, models, outputs, steps, gates, cost, environment)")
        return "\n".join(out) + "\n"
    for key, heading, render in _RENDER:
        if _changed(doc[key]):
            out += ["", heading, *render(doc[key])]
    return "\n".join(out) + "\n"
