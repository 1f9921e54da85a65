"""The run journal: framing, torn tails, corruption, group commit, and kill -9 durability.

Everything here uses real files; the durability tests use real processes killed with
SIGKILL, because that is the failure the journal exists for.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.errors import ExecutionError
from engine.executor.journal import JournalCorrupt, JournalWriter, read_journal

ROOT = Path(__file__).resolve().parent.parent


class CountingFsync:
    """An injectable fsync that counts calls, can be slow, and records the size it covered."""

    def __init__(self, delay: float = 0.0, fail: bool = False) -> None:
        self.delay = delay
        self.fail = fail
        self.calls = 0
        self.dir_calls = 0
        self.sizes: list[int] = []
        self._lock = threading.Lock()

    def __call__(self, fd: int) -> None:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            self.dir_calls += 1  # the journal's directory, synced once when it is created
            return
        size = st.st_size  # everything written before the sync started
        if self.delay:
            time.sleep(self.delay)
        with self._lock:
            self.calls += 1
            self.sizes.append(size)
        if self.fail:
            raise OSError(5, "Input/output error")


def line(record: dict[str, Any]) -> bytes:
    payload = json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode()
    return b"%08x %b\n" % (zlib.crc32(payload), payload)


# ---- format and round trip ------------------------------------------------------------


def test_round_trip_and_exact_framing(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    with JournalWriter.open(path) as w:
        assert w.append({"event": "run.started", "run": "r1"}) == 1
        assert w.append({"event": "step.started", "step": "ünï", "t": 12.5}) == 2
        assert w.last_seq == 2
    contents = read_journal(path)
    assert not contents.torn
    assert contents.valid_bytes == path.stat().st_size
    first, second = contents.records
    assert list(first) == ["seq", "t", "event", "run"]
    assert isinstance(first["t"], float)
    assert second == {"seq": 2, "t": 12.5, "event": "step.started", "step": "ünï"}
    # byte-exact: crc32 of the compact UTF-8 JSON, 8 lowercase hex digits, a space, newline
    assert path.read_bytes() == line(first) + line(second)
    assert "ünï".encode() in path.read_bytes()
    assert path.stat().st_mode & 0o777 == 0o600


def test_missing_and_empty_files_have_no_records(tmp_path: Path) -> None:
    missing = read_journal(tmp_path / "nope")
    assert (missing.records, missing.torn, missing.valid_bytes) == ([], False, 0)
    (tmp_path / "empty").write_bytes(b"")
    contents = read_journal(tmp_path / "empty")
    assert (contents.records, contents.torn, contents.valid_bytes) == ([], False, 0)


def test_seq_continues_after_reopen(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    with JournalWriter.open(path) as w:
        for i in range(3):
            w.append({"i": i})
    with JournalWriter.open(path) as w:
        assert w.last_seq == 3
        assert w.append({"i": 3}) == 4
    assert [r["seq"] for r in read_journal(path).records] == [1, 2, 3, 4]
    assert [r["i"] for r in read_journal(path).records] == [0, 1, 2, 3]


def test_records_are_not_mutated_and_may_not_bring_a_seq(tmp_path: Path) -> None:
    with JournalWriter.open(tmp_path / "j") as w:
        record = {"event": "x"}
        w.append(record)
        assert record == {"event": "x"}
        with pytest.raises(ValueError, match="seq"):
            w.append({"seq": 7})
        with pytest.raises(ValueError, match="Out of range"):
            w.append({"v": float("nan")})  # not standard JSON: refused, nothing written
        with pytest.raises(TypeError):
            w.append({"v": object()})
        assert w.append({"event": "y"}) == 2  # failed appends consume no seq
    assert [r["event"] for r in read_journal(tmp_path / "j").records] == ["x", "y"]


def test_what_orjson_would_write_differently_is_written_as_json_does(tmp_path: Path) -> None:
    """Records are encoded by orjson; whatever it cannot write exactly as `json.dumps` does
    (big ints, non-str keys, subclasses, NaN hidden in nested values) is written, or
    refused, as the stdlib writes or refuses it."""

    class Name(str):
        pass

    path = tmp_path / "j"
    records: list[dict[str, Any]] = [
        {"t": 1.5, "big": 2**70},
        {"t": 1.5, "keys": {1: "a", None: "b", 2.5: "c"}},
        {"t": 1.5, "name": Name("ünï")},
        {"t": 1.5, "tuple": (1, [2.0, None]), "null": None},
    ]
    with JournalWriter.open(path) as w:
        for record in records:
            w.append(record)
        for bad in (
            {"v": {"x": [1.0, float("inf")]}, "n": None},
            {"v": [float("nan")]},
            {"n": None, "v": float("-inf"), "s": "null"},
        ):
            with pytest.raises(ValueError, match="Out of range"):
                w.append(bad)
    lines = path.read_bytes().splitlines(keepends=True)
    assert lines == [line({"seq": i, **r}) for i, r in enumerate(records, start=1)]
    back = read_journal(path).records
    assert back[1]["keys"] == {"1": "a", "null": "b", "2.5": "c"}
    assert back[3]["tuple"] == [1, [2.0, None]]


def test_closed_writer_refuses(tmp_path: Path) -> None:
    w = JournalWriter.open(tmp_path / "j")
    w.close()
    w.close()  # idempotent
    assert w.closed
    with pytest.raises(ValueError, match="closed"):
        w.append({"a": 1})


# ---- torn tails -------------------------------------------------------------------------


def _three_records(path: Path) -> bytes:
    with JournalWriter.open(path) as w:
        for i in range(3):
            w.append({"i": i})
    return path.read_bytes()


@pytest.mark.parametrize(
    "tail",
    [
        pytest.param(lambda good: good[: len(good) // 2], id="partial-line"),
        pytest.param(lambda good: good[:-1], id="missing-newline"),
        pytest.param(lambda good: b"00000000" + good[8:], id="bad-crc"),
        pytest.param(
            lambda good: b"%08x %b\n" % (zlib.crc32(b'{"seq":4'), b'{"seq":4'), id="crc-ok-json-bad"
        ),
        pytest.param(lambda good: b"\0" * 40, id="zero-fill-after-power-loss"),
    ],
)
def test_torn_last_line_is_dropped_then_truncated_on_reopen(tmp_path: Path, tail: Any) -> None:
    path = tmp_path / "journal"
    clean = _three_records(path)
    good4 = line({"seq": 4, "t": 1.0, "i": 3})
    path.write_bytes(clean + tail(good4))

    contents = read_journal(path)
    assert contents.torn
    assert contents.valid_bytes == len(clean)
    assert [r["seq"] for r in contents.records] == [1, 2, 3]

    fsync = CountingFsync()
    with JournalWriter.open(path, fsync=fsync) as w:
        assert path.read_bytes() == clean  # truncated before anything is appended
        assert fsync.calls == 1  # and the truncation was synced
        assert w.append({"i": "after"}) == 4
    contents = read_journal(path)
    assert not contents.torn
    assert [r["seq"] for r in contents.records] == [1, 2, 3, 4]
    assert contents.records[-1]["i"] == "after"


def test_a_valid_last_line_with_a_wrong_seq_is_corruption_not_a_tear(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    clean = _three_records(path)
    path.write_bytes(clean + line({"seq": 9, "t": 1.0}))
    with pytest.raises(JournalCorrupt, match="seq 9 where 4 was expected"):
        read_journal(path)


# ---- corruption -------------------------------------------------------------------------


def test_corruption_in_the_middle_names_file_line_and_offset(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    clean = _three_records(path)
    lines = clean.splitlines(keepends=True)
    flipped = lines[1].replace(b'"i":1', b'"i":7')  # same length, checksum now wrong
    path.write_bytes(lines[0] + flipped + lines[2])
    with pytest.raises(JournalCorrupt) as info:
        read_journal(path)
    err = info.value
    assert isinstance(err, ExecutionError)
    assert (err.path, err.line, err.offset) == (str(path), 2, len(lines[0]))
    assert f"{path}:2:" in str(err)
    assert f"at byte {len(lines[0])}" in str(err)
    assert "checksum" in str(err)
    with pytest.raises(JournalCorrupt):
        JournalWriter.open(path)  # a corrupt run is never resumed


@pytest.mark.parametrize(
    ("seqs", "bad_line"),
    [([1, 2, 2, 3], 3), ([1, 3], 2), ([2], 1), ([1, 2, 4, 5], 3)],
)
def test_seq_gaps_and_repeats_are_corruption(
    tmp_path: Path, seqs: list[int], bad_line: int
) -> None:
    path = tmp_path / "journal"
    path.write_bytes(b"".join(line({"seq": s, "t": 0.0}) for s in seqs))
    with pytest.raises(JournalCorrupt) as info:
        read_journal(path)
    assert info.value.line == bad_line


def test_non_object_record_is_corruption(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    payload = b"[1,2]"
    path.write_bytes(line({"seq": 1, "t": 0.0}) + b"%08x %b\n" % (zlib.crc32(payload), payload))
    with pytest.raises(JournalCorrupt, match="not a JSON object"):
        read_journal(path)


@pytest.mark.parametrize("head", [b"0000000G ", b"ABCDEF01 ", b"1234567 x", b"\n"])
def test_bad_framing_in_the_middle_is_corruption(tmp_path: Path, head: bytes) -> None:
    path = tmp_path / "journal"
    path.write_bytes(line({"seq": 1, "t": 0.0}) + head + b"{}\n" + line({"seq": 2, "t": 0.0}))
    with pytest.raises(JournalCorrupt) as info:
        read_journal(path)
    assert info.value.line == 2


# ---- commit -----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_group_commit_shares_fsyncs(tmp_path: Path) -> None:
    fsync = CountingFsync(delay=0.02)
    w = JournalWriter.open(tmp_path / "journal", fsync=fsync)
    n = 200
    seqs: list[int] = []

    async def writer(i: int) -> None:
        seq = w.append({"i": i})
        await w.commit()
        assert w.committed_seq >= seq  # never returns before its own record is covered
        seqs.append(seq)

    async with anyio.create_task_group() as tg:
        for i in range(n):
            tg.start_soon(writer, i)
    assert len(seqs) == n
    assert fsync.calls <= 3, fsync.calls  # 200 commits shared 3 syncs at most
    assert max(fsync.sizes) == (tmp_path / "journal").stat().st_size
    await w.commit()  # nothing dirty: no sync
    assert fsync.calls <= 3
    await w.aclose()


@pytest.mark.anyio
async def test_commit_waiters_arriving_during_a_sync_get_the_next_one(tmp_path: Path) -> None:
    fsync = CountingFsync(delay=0.05)
    w = JournalWriter.open(tmp_path / "journal", fsync=fsync)
    w.append({"a": 1})
    async with anyio.create_task_group() as tg:
        tg.start_soon(w.commit)
        await anyio.sleep(0.01)  # the first sync is now running
        w.append({"a": 2})  # too late for it
        await w.commit()
        assert w.committed_seq == 2
    assert fsync.calls == 2
    assert fsync.sizes[1] == (tmp_path / "journal").stat().st_size
    await w.aclose()


@pytest.mark.anyio
async def test_a_cancelled_commit_leaves_the_writer_usable(tmp_path: Path) -> None:
    fsync = CountingFsync(delay=0.05)
    w = JournalWriter.open(tmp_path / "journal", fsync=fsync)
    w.append({"a": 1})
    with anyio.move_on_after(0.01):
        await w.commit()  # a running sync is not abandoned: the fd stays in use until done
    assert w.committed_seq == 1
    w.append({"a": 2})
    async with anyio.create_task_group() as tg:
        tg.start_soon(w.commit)  # runs the sync
        await anyio.sleep(0.01)
        w.append({"a": 3})
        with anyio.move_on_after(0.01) as scope:
            await w.commit()  # waits for the running sync, and is cancelled there
        assert scope.cancelled_caught
    assert w.committed_seq == 2
    with anyio.fail_after(2):
        await w.commit()  # nobody is left waiting on a sync that will never end
    assert (w.committed_seq, fsync.calls) == (3, 3)
    await w.aclose()


@pytest.mark.anyio
async def test_strict_durability_commits_in_append_committed(tmp_path: Path) -> None:
    relaxed_sync = CountingFsync()
    relaxed = JournalWriter.open(tmp_path / "relaxed", fsync=relaxed_sync)
    assert await relaxed.append_committed({"a": 1}) == 1
    assert (relaxed_sync.calls, relaxed.committed_seq) == (0, 0)
    await relaxed.aclose()
    assert relaxed_sync.calls == 1  # aclose is a final commit

    strict_sync = CountingFsync()
    strict = JournalWriter.open(tmp_path / "strict", durability="strict", fsync=strict_sync)
    assert await strict.append_committed({"a": 1}) == 1
    assert (strict_sync.calls, strict.committed_seq) == (1, 1)
    await strict.aclose()
    assert strict_sync.calls == 1  # nothing left to commit


@pytest.mark.anyio
async def test_flusher_commits_dirty_records_and_stops_on_aclose(tmp_path: Path) -> None:
    fsync = CountingFsync()
    w = JournalWriter.open(tmp_path / "journal", fsync=fsync)
    async with anyio.create_task_group() as tg:
        w.start_flusher(tg, interval=0.002)
        await anyio.sleep(0.02)
        assert fsync.calls == 0  # idle: no syncs
        w.append({"a": 1})
        w.append({"a": 2})
        with anyio.fail_after(2):
            while w.committed_seq < 2:
                await anyio.sleep(0.002)
        await w.aclose()  # cancels the flusher, so the task group can exit
    assert w.closed
    assert 1 <= fsync.calls <= 2


@pytest.mark.anyio
async def test_a_flusher_ended_with_its_task_group_can_be_started_again(tmp_path: Path) -> None:
    fsync = CountingFsync()
    w = JournalWriter.open(tmp_path / "journal", fsync=fsync)
    async with anyio.create_task_group() as tg:
        w.start_flusher(tg, interval=0.002)
        with pytest.raises(RuntimeError, match="already has a running flusher"):
            w.start_flusher(tg)
        await anyio.sleep(0.005)
        tg.cancel_scope.cancel()  # what the executor does when a run ends
    async with anyio.create_task_group() as tg:
        w.start_flusher(tg, interval=0.002)
        w.append({"a": 1})
        with anyio.fail_after(2):
            while w.committed_seq < 1:
                await anyio.sleep(0.002)
        await w.aclose()


@pytest.mark.anyio
async def test_a_failed_fsync_poisons_the_writer(tmp_path: Path) -> None:
    fsync = CountingFsync(fail=True)
    w = JournalWriter.open(tmp_path / "journal", fsync=fsync)
    w.append({"a": 1})
    with pytest.raises(OSError, match="Input/output error"):
        await w.commit()
    # a retry could "succeed" on pages the kernel already dropped: never trust it
    with pytest.raises(OSError, match="failed earlier"):
        await w.commit()
    with pytest.raises(OSError, match="failed earlier"):
        w.append({"a": 2})
    assert fsync.calls == 1
    await w.aclose()
    assert w.closed


def test_sync_close_commits(tmp_path: Path) -> None:
    fsync = CountingFsync()
    w = JournalWriter.open(tmp_path / "journal", fsync=fsync)
    w.append({"a": 1})
    w.close()
    assert (fsync.calls, w.committed_seq) == (1, 1)
    assert fsync.dir_calls == 1  # the new file's directory entry was synced at open


# ---- kill -9 ------------------------------------------------------------------------------

CHILD_APPEND_THEN_KILL = """
import os, sys
from engine.executor.journal import JournalWriter
w = JournalWriter.open(sys.argv[1])
for i in range(int(sys.argv[2])):
    w.append({"event": "step.succeeded", "i": i, "pad": "x" * (i % 50)})
os.kill(os.getpid(), 9)  # no commit, no close, no flush: straight from write(2) to death
"""

CHILD_APPEND_FOREVER = """
import sys
from engine.executor.journal import JournalWriter
w = JournalWriter.open(sys.argv[1])
i = 0
while True:
    w.append({"event": "tick", "i": i, "pad": "y" * (i % 300)})
    i += 1
"""


def test_records_survive_kill_9_without_commit(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    result = subprocess.run(
        [sys.executable, "-c", CHILD_APPEND_THEN_KILL, str(path), "2000"],
        cwd=ROOT,
        capture_output=True,
        check=False,
        timeout=30,
    )
    assert result.returncode == -signal.SIGKILL, result.stderr
    contents = read_journal(path)
    assert not contents.torn
    assert [r["i"] for r in contents.records] == list(range(2000))


def test_kill_9_at_an_arbitrary_moment_never_corrupts(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    survived = 0
    for round_ in range(3):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD_APPEND_FOREVER, str(path)],
            cwd=ROOT,
        )
        try:
            deadline = time.monotonic() + 10
            target = (round_ + 1) * 200_000
            while (
                not path.exists() or path.stat().st_size < target
            ) and time.monotonic() < deadline:
                time.sleep(0.001)
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
        contents = read_journal(path)  # raises on any corruption
        assert [r["seq"] for r in contents.records] == list(range(1, len(contents.records) + 1))
        # each run continued the numbering of the one killed before it, losing nothing
        assert len(contents.records) > survived
        assert [r["i"] for r in contents.records[survived:]] == list(
            range(len(contents.records) - survived)
        )
        survived = len(contents.records)
    with JournalWriter.open(path) as w:
        assert w.append({"event": "resumed"}) == len(read_journal(path).records)


# ---- property: any cut reads back as a prefix ---------------------------------------------

_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=8)  # UTF-8 encodable
_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | _text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=5,
)
_records = st.lists(
    st.dictionaries(_text.filter(lambda k: k != "seq"), _json, max_size=4), max_size=8
)


@settings(max_examples=75, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=_records, data=st.data())
def test_any_cut_reads_back_as_a_prefix(records: list[dict[str, Any]], data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "journal"
        with JournalWriter.open(path, fsync=lambda fd: None) as w:
            for record in records:
                w.append(record)
        whole = path.read_bytes()
        written = read_journal(path).records
        assert len(written) == len(records)
        for record, back in zip(records, written, strict=True):
            assert {
                k: v for k, v in back.items() if k != "seq" and (k != "t" or "t" in record)
            } == record

        boundaries = [0] + [i + 1 for i, b in enumerate(whole) if b == 0x0A]
        # The file's length depends on the clock (the "t" floats), so the cut is drawn
        # independently of it; every line boundary is checked as well.
        cut = data.draw(st.integers(0, 1 << 20), label="cut") % (len(whole) + 1)
        for at in {cut, *boundaries}:
            # A fresh file per cut: rewriting one file in place makes ext4 flush it each time.
            piece = Path(tmp) / f"cut-{at}"
            piece.write_bytes(whole[:at])
            contents = read_journal(piece)
            complete = sum(1 for b in boundaries[1:] if b <= at)
            assert contents.records == written[:complete]
            assert contents.torn == (at not in boundaries)
            assert contents.valid_bytes == boundaries[complete]

        path = Path(tmp) / f"cut-{cut}"
        complete = sum(1 for b in boundaries[1:] if b <= cut)
        with JournalWriter.open(path, fsync=lambda fd: None) as w:
            assert w.append({"after": True}) == complete + 1
        reopened = read_journal(path)
        assert not reopened.torn
        assert reopened.records[:-1] == written[:complete]
        assert reopened.records[-1]["after"] is True
