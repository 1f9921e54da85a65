"""The run lock: at most one process drives a run at a time.

Owns: the lock file of a run, its lease content, and the decision whether a run may be
taken (first by the kernel's `flock`, then by the lease as a fallback).
Must not: read or write the journal, or kill or signal a holder: the error tells a human
who holds the run and lets them decide.

Two mechanisms, because either alone has a hole:

* `fcntl.flock(LOCK_EX | LOCK_NB)` on the lock file. The kernel releases it when the
  holder dies in any way (kill -9 included), so a crashed run never blocks its resume.
  It is tied to the open file description: a second `RunLock` in the same process opens
  the file again and is refused too.
* A lease written into the file (JSON: run, holder, pid, hostname, acquired_at, expires_at
  in seconds since the epoch, and a random token naming this acquisition, so a holder can
  tell its own lease from a successor's), renewed by a heartbeat. On file systems where
  flock does not work across machines (some network mounts) it still refuses an unexpired
  lease held by a live pid on this host or by any process on another host. A lease whose
  pid is dead on this host, or that expired, is stale and taken over. Expiry compares wall
  clocks, so across hosts it is only as good as their clock sync; the lease is a guard,
  flock is the lock.

The lease is informative as well: when a run is refused, `RunLocked` says who holds it,
where and since when.

Caveat: `os.fork()` duplicates the file descriptor, and with it the flock, until the child
execs (the fd is close-on-exec). Run steps through `subprocess`/anyio, never bare fork.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

import anyio
import anyio.to_thread
from anyio.abc import TaskGroup

from engine.errors import EngineError

__all__ = ["DEFAULT_LEASE", "Lease", "RunLock", "RunLocked"]

DEFAULT_LEASE: Final = 30.0
_MAX_LEASE_BYTES: Final = 64 * 1024

# Lease tokens of the RunLocks this process holds: tells "another RunLock in this very
# process holds it" from "a dead earlier process that had our pid" (common in containers,
# where the engine is often the same low pid every time) when flock is not enforced.
_held_tokens: set[str] = set()
_held_lock = threading.Lock()


# The parsed lease content of a lock file (a JSON object; see the module docstring).
Lease = dict[str, Any]


class RunLocked(EngineError):
    """Another process drives this run. Carries what its lease says (None if unreadable)."""

    def __init__(self, run: str, path: Path, lease: Lease | None, *, lost: bool = False) -> None:
        self.run = run
        self.path = path
        self.holder: str | None = _str_or_none(lease, "holder")
        self.pid: int | None = _int_or_none(lease, "pid")
        self.hostname: str | None = _str_or_none(lease, "hostname")
        self.acquired_at: float | None = _float_or_none(lease, "acquired_at")
        self.expires_at: float | None = _float_or_none(lease, "expires_at")
        if lease is None or self.holder is None:
            who = f"another process (its lease in {path} is unreadable)"
        else:
            who = f"{self.holder} (pid {self.pid} on host {self.hostname})"
            if self.acquired_at is not None:
                who += f" since {_clock(self.acquired_at)}"
        if lost:
            message = f"run {run} lost its lock: it is now driven by {who}; stop driving it"
        else:
            message = f"run {run} is being driven by {who}; wait for it or stop it"
        super().__init__(message)


class RunLock:
    """The lock of one run, held by `holder` (a user or service name shown to others).

    `path` is the lock file, created if missing (its directory must exist). `run` names the
    run in messages; by default it is the name of the directory holding the lock file, the
    run's directory. `lease` is how long a lease lasts without renewal, in seconds.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        holder: str,
        *,
        run: str | None = None,
        lease: float = DEFAULT_LEASE,
    ) -> None:
        self.path = Path(path)
        self.holder = holder
        self.run = run if run is not None else self.path.resolve().parent.name
        self.lease_seconds = lease
        self._fd: int | None = None
        self._token = ""
        self._acquired_at = 0.0
        # renew() may run in a worker thread (the heartbeat) while release() runs on the
        # event loop: the fd must not be closed under a lease write.
        self._mutex = threading.Lock()
        self._heartbeat: anyio.CancelScope | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> Self:
        """Take the lock and write our lease, or raise `RunLocked` naming the holder."""
        with self._mutex:
            if self._fd is not None:
                raise RuntimeError(f"lock {self.path} is already held by this RunLock")
            # O_CLOEXEC: a step's child process must not inherit (and so keep) the flock.
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise RunLocked(self.run, self.path, _read_lease(fd)) from None
                # flock is ours; the lease is the guard for mounts where flock is a no-op.
                lease = _read_lease(fd)
                if lease is not None and _lease_blocks(lease, time.time()):
                    raise RunLocked(self.run, self.path, lease)
                token = uuid.uuid4().hex
                now = time.time()
                _write_lease(fd, self._lease(token, now, now))
            except BaseException:
                os.close(fd)  # also drops the flock if we took it
                raise
            self._fd, self._token, self._acquired_at = fd, token, now
            with _held_lock:
                _held_tokens.add(token)
        return self

    def renew(self) -> None:
        """Extend the lease by `lease` seconds from now.

        Raises `RunLocked` (and stops holding) if the lease was taken over meanwhile: this
        process was stalled past expiry on a mount without flock, and must stop driving.
        """
        with self._mutex:
            if self._fd is None:
                raise RuntimeError(f"lock {self.path} is not held")
            self._renew_locked(self._fd)

    def _renew_locked(self, fd: int) -> None:
        current = _read_lease(fd)
        if current is None or current.get("token") != self._token:
            self._drop(fd)
            raise RunLocked(self.run, self.path, current, lost=True)
        _write_lease(fd, self._lease(self._token, self._acquired_at, time.time()))

    def _renew_if_held(self) -> None:
        with self._mutex:
            if self._fd is not None:
                self._renew_locked(self._fd)

    def start_heartbeat(self, task_group: TaskGroup, every: float = 10.0) -> None:
        """Renew the lease every `every` seconds in a task of `task_group` until `release`.

        `every` should be well under the lease (default 30 s). Losing the lease is raised
        into `task_group` as `RunLocked`, which should stop the run.
        """
        if self._fd is None:
            raise RuntimeError(f"lock {self.path} is not held")
        if self._heartbeat is not None:
            raise RuntimeError(f"lock {self.path} already has a heartbeat")
        scope = anyio.CancelScope()
        self._heartbeat = scope
        task_group.start_soon(
            self._heartbeat_loop, scope, every, name=f"run lock heartbeat {self.path}"
        )

    async def _heartbeat_loop(self, scope: anyio.CancelScope, every: float) -> None:
        with scope:
            while self._fd is not None:
                await anyio.sleep(every)
                # The lease write ends in an fsync: keep it off the event loop.
                await anyio.to_thread.run_sync(self._renew_if_held)

    def release(self) -> None:
        """Clear our lease and unlock. Idempotent; never clears a lease that is not ours."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            self._heartbeat = None
        with self._mutex:
            fd = self._fd
            if fd is None:
                return
            try:
                current = _read_lease(fd)
                if current is not None and current.get("token") == self._token:
                    # No fsync: if this is lost, the lease left behind names a dead pid or
                    # expires, and either makes it stale.
                    os.ftruncate(fd, 0)
            finally:
                self._drop(fd)

    def _drop(self, fd: int) -> None:
        self._fd = None
        with _held_lock:
            _held_tokens.discard(self._token)
        os.close(fd)  # closing the last fd of the open file description releases the flock

    def _lease(self, token: str, acquired_at: float, now: float) -> Lease:
        return {
            "run": self.run,
            "holder": self.holder,
            "pid": os.getpid(),
            "hostname": socket.gethostname(),
            "acquired_at": acquired_at,
            "expires_at": now + self.lease_seconds,
            "token": token,
        }

    def __enter__(self) -> Self:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    async def __aenter__(self) -> Self:
        return await anyio.to_thread.run_sync(self.acquire)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def _lease_blocks(lease: Lease, now: float) -> bool:
    """Whether an existing lease forbids taking the run even though flock succeeded."""
    with _held_lock:
        if lease.get("token") in _held_tokens:
            return True  # another RunLock of this process holds it
    expires_at = _float_or_none(lease, "expires_at")
    if expires_at is None or expires_at <= now:
        return False
    if lease.get("hostname") != socket.gethostname():
        return True  # cannot check a pid on another host: trust the unexpired lease
    pid = _int_or_none(lease, "pid")
    if pid is None or pid == os.getpid():
        return False  # our pid but not our token: an earlier process that had our pid
    return _pid_alive(pid)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    return True


def _read_lease(fd: int) -> Lease | None:
    # A holder rewrites its lease in place (pwrite, then truncate), so a read can catch it
    # half-written; such a read is retried briefly before the lease counts as unreadable.
    for attempt in range(3):
        raw = os.pread(fd, _MAX_LEASE_BYTES, 0)
        if not raw.strip():
            return None
        with contextlib.suppress(ValueError):
            value = json.loads(raw)
            if isinstance(value, dict):
                return value
        if attempt < 2:
            time.sleep(0.005)
    return None


def _write_lease(fd: int, lease: Lease) -> None:
    data = json.dumps(lease, sort_keys=True).encode() + b"\n"
    # Overwrite, then cut what is left of a longer old lease: the file is never empty in
    # between, so a reader sees the old lease, the new one, or (rarely) a mix it retries.
    os.pwrite(fd, data, 0)
    os.ftruncate(fd, len(data))
    os.fsync(fd)


def _clock(timestamp: float) -> str:
    moment = datetime.fromtimestamp(timestamp).astimezone()
    today = datetime.now().astimezone().date()
    return moment.strftime("%H:%M:%S" if moment.date() == today else "%Y-%m-%d %H:%M:%S")


def _str_or_none(lease: Lease | None, key: str) -> str | None:
    value = lease.get(key) if lease is not None else None
    return value if isinstance(value, str) else None


def _int_or_none(lease: Lease | None, key: str) -> int | None:
    value = lease.get(key) if lease is not None else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _float_or_none(lease: Lease | None, key: str) -> float | None:
    value = lease.get(key) if lease is not None else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)
