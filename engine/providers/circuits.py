"""Per-provider circuit breakers, shared by a whole run and by the runbooks that steer it.

Owns: the circuit state of each provider name ("openai", "anthropic", "local", ...), the
rules that move it between closed, open and half-open, manual overrides, and the state
file that lets a run and a runbook (two processes) see each other's changes.
Must not: call a provider, sleep or retry (the caller asks `allow` and reports the outcome
with `record_success` / `record_failure`), classify errors (the caller decides what counts
as a failure: a 400 is the request's fault, not the provider's), or import litellm.

The rules::

    closed      allow → True. A failure is remembered for `window` seconds; `failures`
                of them inside the window open the circuit.
    open        allow → False until `cooldown` seconds after it opened; the first allow
                after that makes it half-open and is the trial call (→ True).
    half_open   exactly one trial call is out; every other allow → False until it reports.
                Its success closes the circuit (failures forgotten); its failure reopens it
                with a new cooldown. A trial that has not reported after `trial_timeout`
                seconds is presumed lost (its caller was cancelled, or its process died
                with the state file saying "trial out") and the next allow starts another:
                without that, a persisted half-open state could block a provider forever.
    manual open allow → False whatever the clock says, until a manual close. Automatic
                events do not touch a manually opened circuit.
    manual close  closed, failures forgotten, manual flag cleared.

`state` reports the stored state: an open circuit whose cooldown has passed still reads
"open" until an `allow` turns it half-open.

Persistence. With a `path`, the board loads the file on construction and every change is a
read-modify-write under `fcntl.flock` on a sidecar lock file (``<path>.lock``): the change is
applied to the state just read from disk, so a manual open written by a runbook is never
lost to a run's concurrent automatic write (which becomes a no-op on a manual circuit), and
failures counted by two runs add up instead of the last writer winning. The file itself is
replaced atomically (temp file in the same folder, fsync, `os.replace`, fsync of the
folder), so readers need no lock: a reader sees the old file or the new one, never half.
Between writes, `allow`, `state` and `snapshot` stat the file (one syscall) and re-read it
only when its identity (inode, mtime, size) changed. Timestamps in the file are from
`clock`, which defaults to wall time because two processes compare them.

A state file that cannot be read or parsed does not stop a run: the board starts closed,
says why in `problems` (and in a log warning), and moves the bad file aside to
``<path>.corrupt`` before its next write. Automatic writes that fail (disk full) are reported
the same way and the board carries on in memory; a manual change that cannot be written
raises, because the operator must know it did not take.

Use from one event loop (or one thread): there are no in-process locks. Writes fsync on the
calling thread; they happen only on state changes and failures, never on the success path
of a closed circuit.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

__all__ = ["CircuitBoard", "CircuitState", "ManualState"]

CircuitState = Literal["closed", "open", "half_open"]
ManualState = Literal["open", "closed"]

_log = logging.getLogger(__name__)

_FORMAT_VERSION: Final = 1
_STATES: Final[frozenset[str]] = frozenset({"closed", "open", "half_open"})
_T = TypeVar("_T")

# (inode, mtime_ns, size): os.replace gives every write a new inode, so the triple changes
# on every write even when two land inside one mtime tick of a coarse file system.
_Signature = tuple[int, int, int]


@dataclass(slots=True)
class _Circuit:
    state: CircuitState = "closed"
    failures: list[float] = field(default_factory=list)  # times of recent failures, oldest first
    opened_at: float | None = None
    trial_at: float | None = None  # when the half-open trial call was let through
    manual: bool = False
    reason: str | None = None
    by: str | None = None
    updated_at: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "failures": list(self.failures),
            "opened_at": self.opened_at,
            "trial_at": self.trial_at,
            "manual": self.manual,
            "reason": self.reason,
            "by": self.by,
            "updated_at": self.updated_at,
        }


class _BadState(ValueError):
    """The state file (or one entry of it) does not have the documented shape."""


def _time(value: object, what: str) -> float:
    # bool is an int to Python, but `true` is no timestamp.
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _BadState(f"{what} is not a number: {value!r}")
    return float(value)


def _number(value: object, what: str) -> float | None:
    return None if value is None else _time(value, what)


def _text(value: object, what: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise _BadState(f"{what} is not a string: {value!r}")


def _circuit_from_json(raw: object) -> _Circuit:
    if not isinstance(raw, dict):
        raise _BadState(f"entry is not an object: {raw!r}")
    state = raw.get("state", "closed")
    if state not in _STATES:
        raise _BadState(f"unknown state {state!r}")
    failures = raw.get("failures", [])
    if not isinstance(failures, list):
        raise _BadState(f"failures is not a list: {failures!r}")
    manual = raw.get("manual", False)
    if not isinstance(manual, bool):
        raise _BadState(f"manual is not a boolean: {manual!r}")
    circuit = _Circuit(
        state=state,
        failures=sorted(_time(t, "a failure time") for t in failures),
        opened_at=_number(raw.get("opened_at"), "opened_at"),
        trial_at=_number(raw.get("trial_at"), "trial_at"),
        manual=manual,
        reason=_text(raw.get("reason"), "reason"),
        by=_text(raw.get("by"), "by"),
        updated_at=_number(raw.get("updated_at"), "updated_at"),
    )
    if circuit.manual and circuit.state != "open":
        raise _BadState(f"manual is set on a {circuit.state} circuit (only open is manual)")
    if circuit.state != "closed" and circuit.opened_at is None:
        raise _BadState(f"a {circuit.state} circuit has no opened_at")
    return circuit


def _read_file(path: Path) -> bytes:
    # One place that reads the state file, so a test can count the reads.
    return path.read_bytes()


def _signature(path: Path) -> _Signature | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class CircuitBoard:
    """The circuit breakers of every provider, optionally persisted to `path`.

    `failures` failures within `window` seconds open a circuit; it stays open `cooldown`
    seconds before a trial call. See the module docstring for the rules and the file.
    """

    def __init__(
        self,
        path: Path | None,
        *,
        failures: int = 5,
        window: float = 60.0,
        cooldown: float = 30.0,
        trial_timeout: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if failures < 1:
            raise ValueError(f"failures must be at least 1, not {failures}")
        if window <= 0 or cooldown < 0 or trial_timeout <= 0:
            raise ValueError("window and trial_timeout must be positive, cooldown not negative")
        self.path = path
        self.failures = failures
        self.window = window
        self.cooldown = cooldown
        self.trial_timeout = trial_timeout
        self._clock = clock
        self._circuits: dict[str, _Circuit] = {}
        # Identity of the file content now in memory (None: no file, or not yet read).
        self._seen: _Signature | None = None
        self._corrupt = False  # the file on disk failed to parse: keep a copy before writing
        self._unsaved: set[str] = set()  # providers changed in memory whose write failed
        # Human-readable reports of state that could not be read or written, oldest first.
        self.problems: list[str] = []
        self._last_problem: str | None = None
        if path is not None:
            self._reload(_signature(path), force=True)

    # ---- queries ----------------------------------------------------------------------

    def allow(self, provider: str) -> bool:
        """May a call to `provider` go out now? True at most once per half-open period."""
        self._refresh()
        circuit = self._circuits.get(provider)
        if circuit is None or circuit.state == "closed":
            return True
        if not self._may_take_trial(circuit, self._clock()):
            return False
        # Re-check under the lock on the file's latest state: another process may have
        # taken the trial (or a runbook opened the circuit by hand) since we last looked.
        return self._update(provider, self._take_trial, manual=False)

    def state(self, provider: str) -> CircuitState:
        """The stored state of `provider`'s circuit: closed, open or half_open."""
        self._refresh()
        circuit = self._circuits.get(provider)
        return circuit.state if circuit is not None else "closed"

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Every known provider's circuit, JSON-able, for runbook `verify` and CLI output.

        Keys: state, failures (count inside the window now), opened_at, manual, reason, by,
        updated_at (times from `clock`, seconds since the epoch by default).
        """
        self._refresh()
        now = self._clock()
        return {
            name: {
                "state": c.state,
                "failures": sum(1 for t in c.failures if now - t < self.window),
                "opened_at": c.opened_at,
                "manual": c.manual,
                "reason": c.reason,
                "by": c.by,
                "updated_at": c.updated_at,
            }
            for name, c in sorted(self._circuits.items())
        }

    # ---- automatic events -------------------------------------------------------------

    def record_success(self, provider: str) -> None:
        """A call to `provider` succeeded: a half-open circuit closes, others are unchanged."""
        self._refresh()
        circuit = self._circuits.get(provider)
        if circuit is None or circuit.state != "half_open":
            return  # the common path: no lock, no write
        self._update(provider, self._succeed, manual=False)

    def record_failure(self, provider: str) -> None:
        """A call to `provider` failed in a way that is the provider's fault."""
        self._refresh()
        circuit = self._circuits.get(provider)
        if circuit is not None and circuit.manual:
            return
        self._update(provider, self._fail, manual=False)

    # ---- manual override --------------------------------------------------------------

    def set_manual(self, provider: str, state: ManualState, *, reason: str, by: str) -> None:
        """Open or close `provider`'s circuit by hand; raises if the change cannot be saved.

        Open holds until a manual close. Close also forgets failures and the manual flag.
        """
        if state not in ("open", "closed"):
            raise ValueError(f"manual state must be 'open' or 'closed', not {state!r}")

        def apply(circuit: _Circuit, now: float) -> tuple[bool, None]:
            if state == "open":
                circuit.state, circuit.manual = "open", True
                circuit.opened_at = now
            else:
                circuit.state, circuit.manual = "closed", False
                circuit.failures, circuit.opened_at = [], None
            circuit.trial_at = None
            circuit.reason, circuit.by = reason, by
            return True, None

        self._update(provider, apply, manual=True)

    # ---- transitions (applied to the latest state, under the file lock) ---------------

    def _may_take_trial(self, circuit: _Circuit, now: float) -> bool:
        if circuit.manual:
            return False
        if circuit.state == "open":
            return circuit.opened_at is None or now - circuit.opened_at >= self.cooldown
        if circuit.state == "half_open":
            return circuit.trial_at is None or now - circuit.trial_at >= self.trial_timeout
        return False

    def _take_trial(self, circuit: _Circuit, now: float) -> tuple[bool, bool]:
        if circuit.state == "closed":
            return False, True  # closed meanwhile (a runbook, or another run's trial)
        if not self._may_take_trial(circuit, now):
            return False, False
        circuit.state, circuit.trial_at = "half_open", now
        return True, True

    def _succeed(self, circuit: _Circuit, now: float) -> tuple[bool, None]:
        if circuit.state != "half_open" or circuit.manual:
            # A late success of a call let through before the circuit opened proves nothing.
            return False, None
        circuit.state = "closed"
        circuit.failures, circuit.opened_at, circuit.trial_at = [], None, None
        return True, None

    def _fail(self, circuit: _Circuit, now: float) -> tuple[bool, None]:
        if circuit.manual:
            return False, None  # a human's decision outranks the automatic count
        recent = [t for t in circuit.failures if now - t < self.window]
        recent.append(now)
        # Only the newest `failures` matter for the threshold; the file stays small.
        circuit.failures = recent[-self.failures :]
        if circuit.state == "half_open":
            circuit.state, circuit.opened_at, circuit.trial_at = "open", now, None
        elif circuit.state == "closed" and len(circuit.failures) >= self.failures:
            circuit.state, circuit.opened_at = "open", now
        # Open: the failure is counted, but the cooldown keeps running from when it opened,
        # so late reports of calls let through before it opened do not extend it.
        return True, None

    def _update(
        self, provider: str, change: Callable[[_Circuit, float], tuple[bool, _T]], *, manual: bool
    ) -> _T:
        """Apply `change` to the latest state of `provider`; save it if anything changed.

        `change` returns (changed, result). An automatic change that cannot be saved is
        reported and kept in memory (the breaker still protects this process, and the next
        successful write carries it); a manual one raises.
        """
        if self.path is None:
            return self._apply(provider, change)[1]
        applied: tuple[bool, _T] | None = None
        try:
            with self._file_lock(self.path):
                self._reload(_signature(self.path), force=True)
                applied = self._apply(provider, change)
                if applied[0] or self._unsaved:
                    self._write(self.path)
                return applied[1]
        except OSError as exc:
            if applied is None:
                applied = self._apply(provider, change)
            if applied[0]:
                self._unsaved.add(provider)
            if manual:
                raise
            self._report(f"circuit state {self.path} could not be saved: {exc}")
            return applied[1]

    def _apply(
        self, provider: str, change: Callable[[_Circuit, float], tuple[bool, _T]]
    ) -> tuple[bool, _T]:
        circuit = self._circuits.get(provider, _Circuit())
        now = self._clock()
        changed, result = change(circuit, now)
        if changed:
            circuit.updated_at = now
            self._circuits[provider] = circuit
        return changed, result

    # ---- the state file ---------------------------------------------------------------

    def _refresh(self) -> None:
        # One stat per call; the file is read only when another process replaced it.
        if self.path is None:
            return
        try:
            signature = _signature(self.path)
        except OSError as exc:
            self._report(f"circuit state {self.path} cannot be checked: {exc}")
            return
        if signature != self._seen:
            self._reload(signature)

    def _reload(self, signature: _Signature | None, *, force: bool = False) -> None:
        """Make the file's state ours; on a bad file keep what we have and report it.

        `force` re-reads even an unchanged signature: writers do, under the lock, so that no
        coincidence of inode reuse and a coarse mtime can make them write over a change.
        """
        assert self.path is not None
        fresh = signature != self._seen
        if not (fresh or force):
            return
        self._seen = signature
        loaded: dict[str, _Circuit] = {}
        if signature is not None:
            try:
                document = json.loads(_read_file(self.path))
                if not isinstance(document, dict) or document.get("version") != _FORMAT_VERSION:
                    raise _BadState(f"not a version {_FORMAT_VERSION} circuit state document")
                providers = document.get("providers")
                if not isinstance(providers, dict):
                    raise _BadState("'providers' is not an object")
            except FileNotFoundError:
                providers = {}  # deleted between the stat and the read: same as no file
            except (OSError, UnicodeDecodeError, json.JSONDecodeError, _BadState) as exc:
                self._corrupt = True
                if fresh:
                    self._report(f"circuit state {self.path} is unreadable, ignoring it: {exc}")
                return
            for name, raw in providers.items():
                try:
                    loaded[name] = _circuit_from_json(raw)
                except _BadState as exc:
                    # One bad entry does not cost the others (a manual open elsewhere stays).
                    if fresh:
                        self._report(f"circuit state {self.path}: provider {name!r} ignored: {exc}")
        # No file means all closed: never written yet, or an operator deleted it to reset.
        # Changes we could not save yet stay ours, except over a manual open on disk.
        for name in self._unsaved:
            mine, theirs = self._circuits.get(name), loaded.get(name)
            if mine is not None and not (theirs is not None and theirs.manual):
                loaded[name] = mine
        self._circuits, self._corrupt = loaded, False

    def _write(self, path: Path) -> None:
        # Called under the file lock, so the signature we record is of our own write.
        path.parent.mkdir(parents=True, exist_ok=True)
        if self._corrupt and path.exists():
            os.replace(path, path.with_name(path.name + ".corrupt"))
            self._corrupt = False
        document = {
            "version": _FORMAT_VERSION,
            "providers": {name: c.to_json() for name, c in sorted(self._circuits.items())},
        }
        data = json.dumps(document, indent=2, sort_keys=True).encode() + b"\n"
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        # The rename is durable only once the folder is synced.
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        self._seen = _signature(path)
        self._unsaved.clear()
        self._last_problem = None  # saving works again: report the next failure afresh

    @staticmethod
    @contextlib.contextmanager
    def _file_lock(path: Path) -> Iterator[None]:
        # A sidecar, not the state file: the state file is replaced on every write, and a
        # lock on a replaced inode locks nothing. O_CLOEXEC: a child must not inherit it.
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(
            path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644
        )
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the flock

    def _report(self, message: str) -> None:
        # A lasting problem (a full disk) would otherwise repeat on every call.
        if message == self._last_problem:
            return
        self._last_problem = message
        self.problems.append(message)
        _log.warning("%s", message)
