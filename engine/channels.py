"""Channels: which bundle `staging` or `prod` serves, and the ledger of every change to it.

Owns: the channel ledger (its entry format and hash chain), the channel state folded from
it, and the rules of `promote`, `rollback`, `freeze` and `unfreeze`.
Must not: run flows or gates (a bundle's recorded verdicts decide), print, or know where
the store keeps the ledger (the `BundleStore` protocol's `ledger_entries` / `ledger_append`).

The ledger is the pointer. Entry N is written once, atomically, under its number (a local
hard link, an S3 `If-None-Match: *` put), so a reader sees entry N whole or not at all, and
of two writers racing for N exactly one wins: the swap of a channel's bundle is the
appearance of one ledger entry, with no moment where a reader sees half of it. The loser
re-reads: if the entries that landed in between touch another channel it simply writes
the next number; if they touch the same channel the decision it made is stale, and it
fails with a `LedgerConflict` naming the entry that won.

Each entry is canonical JSON (`engine.bundle.canonical_bytes`) and names the digest of the
entry before it (``prev``), so removing, editing or reordering entries breaks the chain,
and nothing is written on top of a broken chain. Digests are sha256 over
``b"blocks.ledger/1\\x00" + entry``, a domain of their own (never a bundle member's or a
manifest's).

The rules:

- `promote`: the bundle must be intact (re-hashed), from a run that succeeded, with every
  blocking gate passed. A frozen channel refuses promotions.
- `rollback`: to `last-good` (walking back through what the channel served, newest first,
  the first intact bundle other than the current one whose blockers passed and that the
  channel was not rolled back away from since it was last promoted), to `previous` (exactly
  the bundle it served before its latest move: this is how a rollback is rolled back), to
  `before:T` (the last good bundle it served before time T, UTC ISO 8601), or to a named
  bundle. The target must be intact with its blockers passed. A rollback is an entry like
  any other: after A, B, rollback (→ A), `rollback --to previous` returns to B, while a
  plain `rollback` would not bounce back to B, the bundle just rolled away from. Freezing
  does not block rollbacks: freezing and rolling back are what an incident does together.
- `freeze` / `unfreeze` a channel, or `all` of them: while `all` is frozen every channel is,
  whatever its own flag says.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, Literal

from engine.bundle import canonical_bytes
from engine.errors import BundleError, ChannelError, LedgerConflict, TamperError, UsageError

if TYPE_CHECKING:
    from engine.stores import BundleStore

__all__ = [
    "ALL",
    "BundleFacts",
    "ChannelState",
    "Channels",
    "Entry",
    "check_channel_name",
    "entry_digest",
    "parse_time",
]

ALL: Final = "all"
"""The channel name that means every channel (for freeze and unfreeze only)."""

Action = Literal["promote", "rollback", "freeze", "unfreeze"]
_ACTIONS: Final[frozenset[str]] = frozenset({"promote", "rollback", "freeze", "unfreeze"})
_NAME: Final = re.compile(r"[a-z][a-z0-9_-]{0,62}")
_DOMAIN: Final = b"blocks.ledger/1\x00"
_FORMAT: Final = "blocks.ledger/1"
_RETRIES: Final = 20
_KEYS: Final = frozenset(
    {
        "format",
        "seq",
        "prev",
        "action",
        "channel",
        "bundle",
        "run",
        "previous",
        "by",
        "at",
        "reason",
        "via",
    }
)


def check_channel_name(name: str, *, allow_all: bool = False) -> str:
    if name == ALL and allow_all:
        return name
    if name == ALL:
        raise ChannelError("'all' names every channel; it can be frozen, not promoted to")
    if not _NAME.fullmatch(name):
        raise ChannelError(
            f"channel name {name!r}: expected lower-case letters, digits, '-' or '_', "
            "starting with a letter (for example prod or staging)"
        )
    return name


def entry_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(_DOMAIN + data).hexdigest()


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> str:
    """An ISO 8601 time, as the ledger writes it (UTC, microseconds), for comparisons.
    A time that is not one is a usage error (exit 2), like any bad command-line value."""
    raw = text.strip()
    try:
        when = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"time {text!r}: expected ISO 8601 such as 2026-11-01T00:00:00Z") from None
    if when.tzinfo is None:
        raise UsageError(f"time {text!r}: say which time zone (end it with Z for UTC)")
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True, slots=True)
class Entry:
    """One ledger entry: who moved which channel where, when and why."""

    seq: int
    prev: str | None
    action: Action
    channel: str
    bundle: str | None
    """The bundle the channel serves after this entry (promote, rollback)."""
    run: str | None
    previous: str | None
    """The bundle the channel served before this entry."""
    by: str
    at: str
    reason: str | None
    via: str | None
    """The runbook run that made this change, if one did."""
    digest: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "format": _FORMAT,
            "seq": self.seq,
            "prev": self.prev,
            "action": self.action,
            "channel": self.channel,
            "bundle": self.bundle,
            "run": self.run,
            "previous": self.previous,
            "by": self.by,
            "at": self.at,
            "reason": self.reason,
            "via": self.via,
        }

    def to_bytes(self) -> bytes:
        return canonical_bytes(self.as_dict()) + b"\n"

    @classmethod
    def parse(cls, data: bytes, seq: int) -> Entry:
        where = f"ledger entry {seq}"
        try:
            raw = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise TamperError(f"{where} is not JSON: {exc}") from None
        if not isinstance(raw, dict) or set(raw) != _KEYS or raw.get("format") != _FORMAT:
            raise TamperError(f"{where} is not a {_FORMAT} entry")
        if raw["action"] not in _ACTIONS or raw["seq"] != seq:
            raise TamperError(f"{where} has action {raw['action']!r}, number {raw['seq']!r}")
        entry = cls(
            seq=seq,
            prev=raw["prev"],
            action=raw["action"],
            channel=str(raw["channel"]),
            bundle=raw["bundle"],
            run=raw["run"],
            previous=raw["previous"],
            by=str(raw["by"]),
            at=str(raw["at"]),
            reason=raw["reason"],
            via=raw["via"],
        )
        if entry.to_bytes() != data:
            raise TamperError(f"{where} is not in canonical form (edited by hand?)")
        return _with_digest(entry, data)


def _with_digest(entry: Entry, data: bytes) -> Entry:
    return Entry(**{**_fields(entry), "digest": entry_digest(data)})


def _rolled_back_from(state: ChannelState) -> dict[str, int]:
    """Bundles the channel was rolled back away from and not promoted again since, with the
    rollback entry's number: `last-good` does not return to them."""
    left: dict[str, int] = {}
    for e in state.history:
        if e.action == "rollback" and e.previous is not None:
            left[e.previous] = e.seq
        elif e.action == "promote" and e.bundle is not None:
            left.pop(e.bundle, None)
    return left


def _fields(entry: Entry) -> dict[str, Any]:
    return {
        "seq": entry.seq,
        "prev": entry.prev,
        "action": entry.action,
        "channel": entry.channel,
        "bundle": entry.bundle,
        "run": entry.run,
        "previous": entry.previous,
        "by": entry.by,
        "at": entry.at,
        "reason": entry.reason,
        "via": entry.via,
    }


@dataclass(slots=True)
class ChannelState:
    """A channel as the ledger leaves it."""

    name: str
    bundle: str | None = None
    run: str | None = None
    since: str | None = None
    frozen: bool = False
    frozen_by: Entry | None = None
    """The freeze entry that froze it (its own, or a freeze of `all`)."""
    history: list[Entry] = field(default_factory=list)

    def served(self) -> list[Entry]:
        """The entries that pointed this channel at a bundle, newest first."""
        return [e for e in reversed(self.history) if e.bundle is not None]


@dataclass(frozen=True, slots=True)
class BundleFacts:
    """What a promotion needs to know about a bundle, from the bundle itself."""

    digest: str
    run: str | None
    flow: str | None
    status: str
    intact: bool
    problem: str | None
    blockers: dict[str, str]
    """Each blocking gate's recorded verdict."""
    finished_at: str | None

    @property
    def gates_passed(self) -> bool:
        return (
            self.intact
            and self.status == "succeeded"
            and all(v == "pass" for v in self.blockers.values())
        )

    def why_not(self) -> str:
        if not self.intact:
            return f"bundle {self.digest[:19]} is not intact: {self.problem}"
        if self.status != "succeeded":
            return f"run {self.run} {self.status}"
        failed = [f"{g} ({v})" for g, v in sorted(self.blockers.items()) if v != "pass"]
        return "blocking gates did not pass: " + ", ".join(failed)


class Channels:
    """The channels of one bundle store."""

    def __init__(
        self,
        store: BundleStore,
        *,
        user: str,
        clock: Callable[[], str] = _now,
        before_append: Callable[[int], None] | None = None,
    ) -> None:
        self.store = store
        self.user = user
        self._clock = clock
        self._before_append = before_append
        """Called with the entry number just before it is written: tests hold two writers
        there to make them race for one number."""
        self._facts: dict[str, BundleFacts] = {}

    # ---- reading -------------------------------------------------------------------------

    def entries(self) -> list[Entry]:
        """Every entry, with the chain checked: `TamperError` names the first bad one."""
        out: list[Entry] = []
        prev: str | None = None
        for seq, data in enumerate(self.store.ledger_entries()):
            entry = Entry.parse(data, seq)
            if entry.prev != prev:
                raise TamperError(
                    f"the channel ledger's chain is broken between entries {seq - 1} and "
                    f"{seq}: entry {seq} names {entry.prev} as the one before it, but entry "
                    f"{seq - 1} hashes to {prev} (it was edited, replaced or removed)"
                    if seq
                    else "the channel ledger's entry 0 names an entry before it: the "
                    "start of the ledger was removed"
                )
            out.append(entry)
            prev = entry.digest
        return out

    def state(self, entries: Iterable[Entry] | None = None) -> dict[str, ChannelState]:
        """Every channel the ledger knows, by name."""
        channels: dict[str, ChannelState] = {}
        all_frozen: Entry | None = None
        for e in self.entries() if entries is None else entries:
            if e.channel == ALL:
                all_frozen = e if e.action == "freeze" else None
                for ch in channels.values():
                    ch.history.append(e)
                continue
            ch = channels.setdefault(e.channel, ChannelState(e.channel))
            ch.history.append(e)
            if e.action in ("promote", "rollback"):
                ch.bundle, ch.run, ch.since = e.bundle, e.run, e.at
            elif e.action == "freeze":
                ch.frozen, ch.frozen_by = True, e
            else:
                ch.frozen, ch.frozen_by = False, None
        if all_frozen is not None:
            for ch in channels.values():
                if not ch.frozen:
                    ch.frozen, ch.frozen_by = True, all_frozen
        return channels

    def all_frozen(self, entries: Iterable[Entry] | None = None) -> Entry | None:
        frozen: Entry | None = None
        for e in self.entries() if entries is None else entries:
            if e.channel == ALL:
                frozen = e if e.action == "freeze" else None
        return frozen

    def channel(self, name: str) -> ChannelState:
        """One channel now (a channel never promoted to is empty, and frozen if `all` is)."""
        return self._state_of(name, self.entries())

    def facts(self, ref: str) -> BundleFacts:
        """The bundle's run status and blocking verdicts, after re-hashing all of it."""
        try:
            digest = self.store.resolve(ref)
        except TamperError:
            raise
        except BundleError as exc:
            raise UsageError(f"no bundle {ref!r}: {exc}") from None
        known = self._facts.get(digest)
        if known is not None:
            return known
        report = self.store.verify(digest)
        if not report.ok:
            facts = BundleFacts(
                digest, None, None, "unknown", False, "; ".join(report.problems()), {}, None
            )
        else:
            facts = self._read_facts(digest)
        self._facts[digest] = facts
        return facts

    def _read_facts(self, digest: str) -> BundleFacts:
        run = json.loads(self.store.read_member(digest, "run.json"))
        blockers: dict[str, str] = {}
        paths = set(self.store.get_manifest(digest).paths)
        for gid in sorted(run.get("gates") or {}):
            member = f"gates/{gid}.json"
            if member not in paths:
                continue
            gate = json.loads(self.store.read_member(digest, member))
            if gate.get("severity", "blocker") == "blocker":
                blockers[gid] = str(gate.get("verdict"))
        return BundleFacts(
            digest=digest,
            run=run.get("run"),
            flow=run.get("flow"),
            status=str(run.get("status")),
            intact=True,
            problem=None,
            blockers=blockers,
            finished_at=run.get("finished_at"),
        )

    # ---- changing ------------------------------------------------------------------------

    def promote(
        self, ref: str, channel: str, *, reason: str | None = None, via: str | None = None
    ) -> Entry:
        """Point `channel` at the bundle `ref` names, if its blockers passed."""
        check_channel_name(channel)
        facts = self.facts(ref)
        if not facts.gates_passed:
            raise ChannelError(f"refusing to promote to {channel}: {facts.why_not()}")

        def decide(state: ChannelState) -> Entry:
            if state.frozen and state.frozen_by is not None:
                f = state.frozen_by
                raise ChannelError(
                    f"channel {channel} is frozen (entry {f.seq}, {f.at} by {f.by}: "
                    f"{f.reason or 'no reason given'}); unfreeze it first: "
                    f"blocks unfreeze --channel {f.channel} --reason ..."
                )
            return self._entry("promote", channel, facts, state, reason, via)

        return self._append(channel, decide)

    def rollback(
        self,
        channel: str,
        *,
        to: str = "last-good",
        reason: str | None = None,
        via: str | None = None,
    ) -> Entry:
        """Point `channel` back at a good bundle it served (or at the bundle `to` names)."""
        check_channel_name(channel)

        def decide(state: ChannelState) -> Entry:
            target = self.rollback_target(state, to)
            return self._entry("rollback", channel, target, state, reason, via)

        return self._append(channel, decide)

    def freeze(self, channel: str, *, reason: str, via: str | None = None) -> Entry:
        check_channel_name(channel, allow_all=True)

        def decide(state: ChannelState) -> Entry:
            return self._entry("freeze", channel, None, state, reason, via)

        return self._append(channel, decide)

    def unfreeze(self, channel: str, *, reason: str, via: str | None = None) -> Entry:
        check_channel_name(channel, allow_all=True)

        def decide(state: ChannelState) -> Entry:
            f = state.frozen_by
            if channel != ALL and f is not None and f.channel == ALL:
                raise ChannelError(
                    f"{channel} is frozen by a freeze of all channels (entry {f.seq}, {f.at} "
                    f"by {f.by}); lift it with: blocks unfreeze --channel all --reason ..."
                )
            return self._entry("unfreeze", channel, None, state, reason, via)

        return self._append(channel, decide)

    def rollback_target(self, state: ChannelState, to: str) -> BundleFacts:
        """The bundle a rollback of `state`'s channel to `to` would point it at."""
        name = state.name
        served = state.served()
        if not served:
            raise ChannelError(f"channel {name} has never served a bundle")
        if to == "previous":
            last = served[0]
            if last.previous is None:
                raise ChannelError(f"channel {name} served nothing before entry {last.seq}")
            return self._good(name, last.previous, f"previous ({last.previous[:19]})", state)
        if to == "last-good" or to.startswith("before:"):
            before = parse_time(to.removeprefix("before:")) if to != "last-good" else None
            left = _rolled_back_from(state)
            seen: set[str] = set()
            rejected: list[str] = []
            for e in served:
                digest = e.bundle
                if digest is None or digest == state.bundle or digest in seen:
                    continue
                if before is not None and e.at >= before:
                    continue
                seen.add(digest)
                if digest in left:
                    rejected.append(f"{digest[:19]}: rolled back from in entry {left[digest]}")
                    continue
                facts = self.facts(digest)
                if facts.gates_passed:
                    return facts
                rejected.append(f"{digest[:19]}: {facts.why_not()}")
            where = f" before {to.removeprefix('before:')}" if before else ""
            detail = ("; skipped " + "; ".join(rejected)) if rejected else ""
            raise ChannelError(
                f"no good bundle to roll {name} back to{where}: it served "
                f"{len({e.bundle for e in served})} bundle(s){detail}"
            )
        return self._good(name, to, to, state)

    def _good(self, name: str, ref: str, label: str, state: ChannelState) -> BundleFacts:
        facts = self.facts(ref)
        if not facts.gates_passed:
            raise ChannelError(f"refusing to roll {name} back to {label}: {facts.why_not()}")
        if facts.digest == state.bundle:
            raise ChannelError(f"channel {name} already serves {facts.digest[:19]}")
        return facts

    def _entry(
        self,
        action: Action,
        channel: str,
        facts: BundleFacts | None,
        state: ChannelState,
        reason: str | None,
        via: str | None,
    ) -> Entry:
        return Entry(
            seq=-1,
            prev=None,
            action=action,
            channel=channel,
            bundle=facts.digest if facts else None,
            run=facts.run if facts else None,
            previous=state.bundle,
            by=self.user,
            at=self._clock(),
            reason=reason,
            via=via,
        )

    def _append(self, channel: str, decide: Callable[[ChannelState], Entry]) -> Entry:
        """Decide on the ledger as read, write the next entry, and on a lost race decide
        again only if nothing that landed meanwhile touched this channel."""
        entries = self.entries()
        for _ in range(_RETRIES):
            state = self._state_of(channel, entries)
            entry = decide(state)
            seq = len(entries)
            prev = entries[-1].digest if entries else None
            entry = Entry(**{**_fields(entry), "seq": seq, "prev": prev})
            data = entry.to_bytes()
            if self._before_append is not None:
                self._before_append(seq)
            try:
                self.store.ledger_append(seq, data)
            except LedgerConflict:
                newer = self.entries()
                for e in newer[seq:]:
                    if e.channel in (channel, ALL) or channel == ALL:
                        raise LedgerConflict(
                            f"channel {channel} changed while this {entry.action} was being "
                            f"decided: ledger entry {e.seq} ({e.action} by {e.by} at {e.at}) "
                            "got there first. Nothing was written; check `blocks channels` "
                            "and run the command again if it still makes sense."
                        ) from None
                entries = newer
                continue
            return _with_digest(entry, data)
        raise LedgerConflict(f"the ledger kept moving; gave up after {_RETRIES} attempts")

    def _state_of(self, channel: str, entries: list[Entry]) -> ChannelState:
        if channel == ALL:
            frozen = self.all_frozen(entries)
            return ChannelState(ALL, frozen=frozen is not None, frozen_by=frozen)
        state = self.state(entries).get(channel)
        if state is None:
            state = ChannelState(channel)
            frozen = self.all_frozen(entries)
            if frozen is not None:
                state.frozen, state.frozen_by = True, frozen
        return state
