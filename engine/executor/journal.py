"""The run journal: an append-only, checksummed log of every state transition of a run.

Owns: the journal file format, appending records, making them durable (group commit),
reading a journal back, and repairing a torn tail when a run is reopened for resume.
Must not: decide what a record says or when one is written (the executor does: this module
takes and returns plain dicts), interpret records, or take the run lock (`lock.py` does;
a journal has exactly one writer because its run has exactly one driver).

Format. One record per line::

    <crc32 of the JSON bytes, 8 lowercase hex digits> <compact JSON object>\\n

The JSON is compact UTF-8 with keys in insertion order: what
``json.dumps(record, separators=(",", ":"), ensure_ascii=False)`` writes, encoded by orjson
(a float may be spelled differently, ``1e-7`` for ``1e-07``: the same value). The writer
puts ``"seq"`` (1, 2, 3, ... with no gap, continued across reopens) and ``"t"``
(``time.time()`` when appended, unless the record has its own) first. A line is a complete
record or it is not: a reader never has to guess.

Durability model (deliberate: two levels, two prices)::

    append(record)     one os.write(2) of the whole line on an O_APPEND fd; when it returns,
                       the record is in the kernel page cache. It survives the process
                       dying at any moment (exception, OOM kill, kill -9), but not the
                       machine losing power. Costs microseconds; never touches the disk.
    await commit()     fdatasync(2) in a worker thread: every record appended before the
                       sync started survives power loss. Costs a disk flush (ms), so it
                       is group-committed: while one sync is in flight, later callers wait
                       and share the next one. N concurrent commits cost 1-2 syncs, not N.

``durability="process"`` (the default) settles for the first level: a crash of the engine
loses nothing, a power cut may lose the records of the last moments (the resumed run redoes
those steps). ``durability="strict"`` makes `JournalWriter.append_committed` wait for a
commit, for runs whose steps have effects that must never be repeated after a power cut.
The executor can call `append_committed` for the transitions that matter in either mode
and let the configured level decide the price (or `commit` explicitly where power-loss
durability is always needed). `start_flusher` bounds the loss window in the default mode
by committing dirty records every few milliseconds in the background.

A kill can at worst cut the record being written (each record is one write call; the
kernel may stop copying a large one when SIGKILL arrives), and a power cut can leave a
partial or zero-filled tail: either way only the last line. `read_journal` drops such a
torn tail and says so; `JournalWriter.open` truncates it before appending, so the next
record starts on a clean line. A bad record anywhere else is corruption and raises
`JournalCorrupt`: the run's history is no longer trustworthy and resuming from it would be
guessing.
"""

from __future__ import annotations

import json
import math
import os
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal, Self

import anyio
import anyio.to_thread
import orjson
from anyio.abc import TaskGroup

from engine.errors import ExecutionError

__all__ = [
    "Durability",
    "JournalContents",
    "JournalCorrupt",
    "JournalWriter",
    "read_journal",
]

Durability = Literal["process", "strict"]

# fdatasync skips the inode metadata a reader does not need (mtime) but still flushes the
# file size, which is what an append changes. macOS has no fdatasync; fsync is the fallback.
_default_fsync: Callable[[int], None] = getattr(os, "fdatasync", os.fsync)

# The stdlib encoder, built once (json.dumps with non-default arguments builds a new
# JSONEncoder on every call). allow_nan=False keeps the journal standard JSON (jq and other
# tools reject NaN); such a record fails before any byte is written.
_std_encode: Final = json.JSONEncoder(
    separators=(",", ":"), ensure_ascii=False, allow_nan=False
).encode

# orjson writes the same JSON (a float's spelling aside) 15-30x faster: encoding two records
# per step with the stdlib was the executor's largest cost per step. Subclasses of str, int,
# dict and list, datetimes and dataclasses are passed to `_refuse`, so whatever json would
# not write exactly as orjson does (those, ints beyond 64 bits, non-str keys, surrogates,
# deep nesting, other objects) goes to the stdlib encoder: written, or refused, as before.
_ORJSON_OPTIONS: Final = (
    orjson.OPT_PASSTHROUGH_SUBCLASS
    | orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_DATACLASS
)


def _refuse(value: Any) -> Any:
    raise TypeError(f"{type(value).__name__} left to the stdlib encoder")


def _nonfinite(value: Any) -> bool:
    """Whether a NaN or an infinity hides in `value` (dicts, lists, tuples, floats: what
    orjson encodes natively)."""
    kind = type(value)
    if kind is float:
        return not math.isfinite(value)
    if kind is dict:
        values: Any = value.values()
    elif kind is list or kind is tuple:
        values = value
    else:
        return False
    for item in values:
        kind = type(item)
        if kind is float:
            if not math.isfinite(item):
                return True
        elif (kind is dict or kind is list or kind is tuple) and _nonfinite(item):
            return True
    return False


def _encode(record: Mapping[str, Any]) -> bytes:
    """The record's compact JSON in UTF-8; TypeError / ValueError as `json.dumps` raises."""
    try:
        payload = orjson.dumps(record, default=_refuse, option=_ORJSON_OPTIONS)
    except TypeError:  # orjson.JSONEncodeError too
        return _std_encode(record).encode()
    # orjson writes NaN and infinities as null, where the journal refuses them (then the
    # stdlib encoder refuses the record, with its message). A null that is not one of the
    # record's own top-level Nones may be one: only then is the record searched.
    nulls = payload.count(b"null")
    if nulls and nulls != list(record.values()).count(None) and _nonfinite(record):
        return _std_encode(record).encode()
    return payload


# Records are always UTF-8: decoding to str first skips json.loads' encoding detection.
_decode: Final = json.JSONDecoder().decode

_HEX: Final = frozenset(b"0123456789abcdef")

# O_CLOEXEC: steps run as child processes and must not inherit the journal's fd.
_WRITE_FLAGS: Final = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC


class JournalCorrupt(ExecutionError):
    """A journal record other than the last one is unreadable, or the seq chain is broken.

    Not a torn write (those are only ever at the end and are repaired): the run's history
    cannot be trusted, so the run cannot be resumed from it.
    """

    def __init__(self, path: str | os.PathLike[str], line: int, offset: int, reason: str) -> None:
        super().__init__(
            f"{os.fspath(path)}:{line}: corrupt journal record at byte {offset}: {reason}"
        )
        self.path = os.fspath(path)
        self.line = line
        self.offset = offset
        self.reason = reason


@dataclass(frozen=True, slots=True)
class JournalContents:
    """What `read_journal` found.

    `records` are the valid records in order; `torn` says a partial last line was dropped;
    `valid_bytes` is where the valid records end (the file size unless `torn`).
    """

    records: list[dict[str, Any]]
    torn: bool
    valid_bytes: int


def _decode_line(line: bytes) -> Any:
    """The JSON value of one framed line (without its newline), or ValueError if unreadable."""
    if len(line) < 10 or line[8] != 0x20 or not _HEX.issuperset(line[:8]):
        raise ValueError("bad framing (expected '<8 hex digits> <json>')")
    payload = line[9:]
    if zlib.crc32(payload) != int(line[:8], 16):
        raise ValueError("checksum mismatch")
    try:
        return _decode(payload.decode())
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are both ValueErrors
        raise ValueError(f"invalid JSON ({exc})") from None


def read_journal(path: str | os.PathLike[str]) -> JournalContents:
    """Read and check a whole journal. A missing or empty file has no records.

    Safe on the journal of a live run (`blocks runs`): a record being appended at that
    moment shows up as a torn tail and is left out.

    A last line without its newline, or whose checksum or JSON is bad, is a torn write: it is
    dropped and reported through `torn` and `valid_bytes`. Anything else that is wrong raises
    `JournalCorrupt` naming the file, the 1-based line and the byte offset: a bad line before
    the last one, a record that is not a JSON object, or a `seq` that is not the previous one
    plus one (the first record has seq 1).
    """
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return JournalContents([], torn=False, valid_bytes=0)
    records: list[dict[str, Any]] = []
    size = len(data)
    pos = 0
    line_no = 0
    while pos < size:
        line_no += 1
        end = data.find(b"\n", pos)
        if end < 0:
            # The newline is the last byte of every record's single write: without it, the
            # write never completed.
            return JournalContents(records, torn=True, valid_bytes=pos)
        try:
            value = _decode_line(data[pos:end])
        except ValueError as exc:
            if end + 1 == size:
                return JournalContents(records, torn=True, valid_bytes=pos)
            raise JournalCorrupt(path, line_no, pos, str(exc)) from None
        # From here on the checksum matched: the writer wrote exactly this, so a problem is
        # a broken writer or a spliced file, never a torn write, even on the last line.
        if not isinstance(value, dict):
            raise JournalCorrupt(path, line_no, pos, "record is not a JSON object")
        seq = value.get("seq")
        expected = len(records) + 1
        if type(seq) is not int or seq != expected:
            raise JournalCorrupt(path, line_no, pos, f"seq {seq!r} where {expected} was expected")
        records.append(value)
        pos = end + 1
    return JournalContents(records, torn=False, valid_bytes=size)


class JournalWriter:
    """The single writer of one run's journal. Create it with `JournalWriter.open`.

    Not thread-safe: the executor drives it from its event loop thread (only the fsync of
    `commit` runs in a worker thread, on the writer's own behalf).
    """

    def __init__(
        self,
        fd: int,
        path: Path,
        *,
        next_seq: int,
        durability: Durability,
        fsync: Callable[[int], None],
    ) -> None:
        self._fd = fd
        self._path = path
        self._next_seq = next_seq
        self._durability: Durability = durability
        self._fsync = fsync
        # Highest seq known to be on disk. 0 after open: records left by a killed process
        # are in the page cache but maybe not on disk yet, so the first commit syncs them.
        self._durable_seq = 0
        # Set while a sync runs; waiters wake on it and re-check whether it covered them.
        self._inflight: anyio.Event | None = None
        # A failed write or sync leaves the file in an unknown state (after a failed fsync
        # Linux may have dropped the dirty pages, and a later fsync would report success):
        # the writer refuses all further work and the run must be reopened.
        self._broken: OSError | None = None
        self._flusher: anyio.CancelScope | None = None
        # Our own thread slot: a commit must not queue behind steps that fill the default
        # worker-thread pool.
        self._limiter = anyio.CapacityLimiter(1)

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        durability: Durability = "process",
        fsync: Callable[[int], None] | None = None,
    ) -> Self:
        """Open (creating if needed) the journal at `path` for appending.

        Reads and checks what is there (`JournalCorrupt` if it is corrupt), truncates a torn
        tail and syncs the truncation (and the directory, if the file is new), and continues
        the seq numbering. `fsync` replaces `os.fdatasync` (and `os.fsync` for the directory)
        in every sync the writer does: tests inject a counting one.
        """
        target = Path(path)
        sync = fsync if fsync is not None else _default_fsync
        try:
            fd = os.open(target, _WRITE_FLAGS | os.O_EXCL, 0o600)
            created = True
        except FileExistsError:
            fd = os.open(target, _WRITE_FLAGS, 0o600)
            created = False
        try:
            contents = read_journal(target)
            if contents.torn:
                os.ftruncate(fd, contents.valid_bytes)
                sync(fd)
            if created:
                # A new file is only durable once its directory entry is. fsync, not
                # fdatasync: a directory's entries are its metadata.
                _sync_directory(target.parent, fsync if fsync is not None else os.fsync)
        except BaseException:
            os.close(fd)
            raise
        return cls(
            fd, target, next_seq=len(contents.records) + 1, durability=durability, fsync=sync
        )

    @property
    def path(self) -> Path:
        return self._path

    @property
    def durability(self) -> Durability:
        return self._durability

    @property
    def last_seq(self) -> int:
        """The seq of the last record appended (0 if the journal is empty)."""
        return self._next_seq - 1

    @property
    def committed_seq(self) -> int:
        """Every record up to this seq is on disk (as far as this writer has synced)."""
        return self._durable_seq

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def append(self, record: Mapping[str, Any]) -> int:
        """Write one record and return its seq. Durable against a process kill on return.

        The record gets `seq` (it must not have one: the writer owns numbering) and `t` if it
        has none. It must be JSON-serialisable without NaN/Infinity and encodable as UTF-8;
        otherwise TypeError/ValueError is raised and nothing is written.
        """
        if self._fd < 0:
            raise ValueError(f"journal {self._path} is closed")
        if self._broken is not None:
            raise self._unusable()
        if "seq" in record:
            raise ValueError("a journal record must not carry its own 'seq'")
        seq = self._next_seq
        full: dict[str, Any] = {"seq": seq, "t": time.time()}
        full.update(record)
        payload = _encode(full)
        line = b"%08x %b\n" % (zlib.crc32(payload), payload)
        try:
            # One write call per record: O_APPEND makes it land whole at the end of the file.
            written = os.write(self._fd, line)
        except OSError as exc:
            self._broken = exc
            raise
        if written != len(line):
            # Only a full disk does this to a regular file. The partial line is the file's
            # last and reopening truncates it; appending after it would corrupt the middle.
            self._broken = OSError(
                f"short write to journal {self._path}: {written} of {len(line)} bytes"
            )
            raise self._broken
        self._next_seq = seq + 1
        return seq

    async def commit(self) -> None:
        """Make every record appended so far durable against power loss.

        Group commit: one fdatasync covers every record written before it started; a caller
        that finds a sync in flight waits for it and, if its records came too late for it,
        shares the next one with everyone else who waited.
        """
        target = self._next_seq - 1
        while self._durable_seq < target:
            if self._fd < 0:
                raise ValueError(f"journal {self._path} is closed")
            if self._broken is not None:
                raise self._unusable()
            inflight = self._inflight
            if inflight is not None:
                await inflight.wait()
            else:
                await self._sync()

    async def _sync(self) -> None:
        done = anyio.Event()
        self._inflight = done
        # Taken before the sync starts: records appended while it runs may or may not be
        # covered, so they are not counted.
        covered = self._next_seq - 1
        try:
            # Not abandoned on cancel (anyio's default): a cancelled caller still waits for
            # the sync, so the fd is never closed under a running fdatasync.
            await anyio.to_thread.run_sync(self._fsync, self._fd, limiter=self._limiter)
        except OSError as exc:
            self._broken = exc
            raise
        else:
            self._durable_seq = max(self._durable_seq, covered)
        finally:
            self._inflight = None
            done.set()

    async def append_committed(self, record: Mapping[str, Any]) -> int:
        """`append`, then, with durability="strict", wait for a `commit` that covers it."""
        seq = self.append(record)
        if self._durability == "strict":
            await self.commit()
        return seq

    def start_flusher(self, task_group: TaskGroup, interval: float = 0.005) -> None:
        """Commit dirty records every `interval` seconds in a task of `task_group`.

        Bounds how much a power cut can lose in the default mode, at the cost of at most one
        sync per interval while records keep coming (none while the run is idle). Stops on
        `aclose`/`close`. A sync failure in the flusher is raised into `task_group`.
        """
        if self._flusher is not None:
            raise RuntimeError(f"journal {self._path} already has a running flusher")
        scope = anyio.CancelScope()
        self._flusher = scope
        task_group.start_soon(
            self._flush_loop, scope, interval, name=f"journal flusher {self._path}"
        )

    async def _flush_loop(self, scope: anyio.CancelScope, interval: float) -> None:
        try:
            with scope:
                while True:
                    await anyio.sleep(interval)
                    if self._fd < 0 or self._broken is not None:
                        # Whoever hit the failure has it; raising it again here would only
                        # turn one error into an exception group.
                        return
                    if self._durable_seq < self._next_seq - 1:
                        await self.commit()
        finally:
            # Also when the task group itself was cancelled: a later run may start another.
            if self._flusher is scope:
                self._flusher = None

    async def aclose(self) -> None:
        """Stop the flusher, commit what is left, close. Idempotent."""
        if self._flusher is not None:
            self._flusher.cancel()
        if self._fd < 0:
            return
        try:
            if self._broken is None:
                await self.commit()
            while self._inflight is not None:
                await self._inflight.wait()
        finally:
            self._close_fd()

    def close(self) -> None:
        """Sync close for code outside the event loop: a final blocking sync, then close.

        Idempotent. Must not be called while a `commit` is in flight (use `aclose`).
        """
        if self._flusher is not None:
            self._flusher.cancel()
        if self._fd < 0:
            return
        if self._inflight is not None:
            raise RuntimeError(f"journal {self._path}: commit in flight; use aclose()")
        try:
            if self._broken is None and self._durable_seq < self._next_seq - 1:
                covered = self._next_seq - 1
                self._fsync(self._fd)
                self._durable_seq = covered
        finally:
            self._close_fd()

    def _close_fd(self) -> None:
        fd, self._fd = self._fd, -1
        os.close(fd)

    def _unusable(self) -> OSError:
        err = OSError(
            f"journal {self._path} failed earlier ({self._broken}); records after "
            f"seq {self._durable_seq} may not be on disk: reopen it to resume"
        )
        err.__cause__ = self._broken
        return err

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def _sync_directory(directory: Path, sync: Callable[[int], None]) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        sync(fd)
    finally:
        os.close(fd)
