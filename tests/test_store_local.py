"""`engine.stores.local.LocalBundleStore`: round trips, deduplication, tamper evidence, crash
safety (a crash before the manifest, a SIGKILL mid-blob, a full disk), gc, and secrets.

Tampering is done the way an intruder would: on the files, with the store's read-only bits
lifted first.
"""

from __future__ import annotations

import base64
import errno
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from conftest import wait_for

from engine.bundle import Manifest, build_bundle_members, leaf_digest
from engine.errors import BundleError, TamperError, WriteOnceError
from engine.redact import Redactor
from engine.stores import BundleStore, LocalBundleStore

REPO = Path(__file__).resolve().parent.parent

MEMBERS = {
    "run.json": b'{"run":"r1","status":"succeeded"}',
    "spec/flow.yaml": b"version: 1\nkind: flow\nname: demo\n",
    "steps/a.json": b'{"step":"a"}',
    "steps/b.json": b'{"step":"b"}',
    "shared.txt": b"the same in every bundle\n",
    "copy.txt": b"the same in every bundle\n",  # same bytes as shared.txt: one blob
}


@pytest.fixture
def store(tmp_path: Path) -> LocalBundleStore:
    return LocalBundleStore(tmp_path / "bundles")


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != "gc.lock")


def temp_files(root: Path) -> list[Path]:
    return [p for p in files_under(root) if p.name.startswith(".tmp-")]


def blob_files(store: LocalBundleStore) -> list[Path]:
    return [p for p in files_under(store.root / "blobs") if not p.name.startswith(".tmp-")]


def assert_every_blob_is_whole(store: LocalBundleStore) -> None:
    """No file at a digest path holds anything but the bytes of that digest."""
    for path in blob_files(store):
        assert leaf_digest(path.read_bytes()) == f"sha256:{path.name}", path


def writable(path: Path) -> Path:
    path.chmod(0o644)
    return path


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    writable(path).write_bytes(bytes(data))


# ---- round trip and deduplication ------------------------------------------------------


def test_a_bundle_round_trips(store: LocalBundleStore) -> None:
    assert isinstance(store, BundleStore)
    root = store.put_bundle(MEMBERS, run_id="r1")
    manifest = store.get_manifest(root)
    assert manifest == Manifest.from_members(MEMBERS, run="r1")
    assert root == manifest.root_digest()
    for path, data in MEMBERS.items():
        assert store.read_member(root, path) == data
        assert store.read_member("r1", path) == data
    hexd = root.removeprefix("sha256:")
    for ref in ("r1", root, hexd, hexd[:6], "sha256:" + hexd[:8]):
        assert store.resolve(ref) == root
    [entry] = store.list_bundles()
    assert (entry.digest, entry.run, entry.members) == (root, "r1", len(MEMBERS))
    assert entry.size == sum(len(v) for v in MEMBERS.values())
    report = store.verify("r1")
    assert report.ok, report.problems()
    assert report.checked == len(MEMBERS)
    # everything stored is read-only: written once
    for stored in files_under(store.root / "blobs") + files_under(store.root / "bundles"):
        assert stored.stat().st_mode & 0o222 == 0, stored


def test_putting_the_same_bundle_again_changes_nothing(store: LocalBundleStore) -> None:
    root = store.put_bundle(MEMBERS, run_id="r1")
    before = {p: p.stat().st_mtime_ns for p in files_under(store.root)}
    assert store.put_bundle(MEMBERS, run_id="r1") == root
    assert {p: p.stat().st_mtime_ns for p in files_under(store.root)} == before


def test_identical_content_is_stored_once_across_bundles(store: LocalBundleStore) -> None:
    first = store.put_bundle(MEMBERS, run_id="r1")
    second = store.put_bundle(
        {**MEMBERS, "run.json": b'{"run":"r2"}', "steps/c.json": b"{}"}, run_id="r2"
    )
    assert first != second
    digests = {leaf_digest(v) for v in MEMBERS.values()} | {
        leaf_digest(b'{"run":"r2"}'),
        leaf_digest(b"{}"),
    }
    assert len(blob_files(store)) == len(digests) == len(MEMBERS) + 1  # copy.txt shares
    assert [e.run for e in store.list_bundles()] == ["r1", "r2"]
    assert store.verify(first).ok
    assert store.verify(second).ok


def test_a_run_is_bundled_once_unless_the_new_bundle_supersedes(
    store: LocalBundleStore,
) -> None:
    first = store.put_bundle(MEMBERS, run_id="r1")
    before = files_under(store.root)
    later = {**MEMBERS, "extra.txt": b"after a resume"}
    with pytest.raises(WriteOnceError, match="already bundled"):
        store.put_bundle(later, run_id="r1")
    assert files_under(store.root) == before  # refused before anything was written
    second = store.put_bundle(later, run_id="r1", supersedes=first)
    assert store.get_manifest(second).supersedes == first
    assert (store.resolve("r1"), store.resolve("r1~1"), store.resolve("r1~2")) == (
        second,
        first,
        second,
    )
    assert (store.root / "runs" / "r1").read_text().strip() == first  # never rewritten
    assert store.put_bundle(later, run_id="r1", supersedes=first) == second  # idempotent
    with pytest.raises(WriteOnceError, match="already bundled"):  # stale: not the latest
        store.put_bundle({**later, "x": b"x"}, run_id="r1", supersedes=first)
    with pytest.raises(WriteOnceError, match="no bundle"):
        store.put_bundle(MEMBERS, run_id="r2", supersedes=first)
    with pytest.raises(BundleError, match="no bundle matches"):
        store.resolve("r1~3")
    assert store.verify("r1").ok
    assert store.verify("r1~1").ok


def test_an_index_entry_pointing_at_another_run_is_tampering(store: LocalBundleStore) -> None:
    store.put_bundle(MEMBERS, run_id="r1")
    other = store.put_bundle({"a.txt": b"a"}, run_id="r2")
    writable(store.root / "runs" / "r1").write_text(other + "\n")
    with pytest.raises(TamperError, match="a bundle of run r2"):
        store.resolve("r1")
    writable(store.root / "runs" / "r1").write_text("garbage\n")
    with pytest.raises(TamperError, match="corrupt"):
        store.resolve("r1")


def test_refs_that_name_nothing_or_too_much(store: LocalBundleStore) -> None:
    store.put_bundle(MEMBERS, run_id="r1")
    with pytest.raises(BundleError, match="no bundle matches"):
        store.resolve("nope")
    with pytest.raises(BundleError, match="no bundle matches"):
        store.resolve("abc")  # too short to be a prefix
    # resolving looks at names only: two names sharing a prefix make it ambiguous
    for tail in ("1" * 60, "2" * 60):
        (store.root / "bundles" / f"abcd{tail}.json").write_bytes(b"{}")
    with pytest.raises(BundleError, match="matches 2 bundles"):
        store.resolve("sha256:abcd")
    assert store.resolve("abcd1") == "sha256:abcd" + "1" * 60
    with pytest.raises(BundleError, match="cannot name"):
        store.put_bundle(MEMBERS, run_id="../escape")


def test_concurrent_puts_of_the_same_content_agree(store: LocalBundleStore) -> None:
    big = {f"m{i}.bin": os.urandom(64 * 1024) for i in range(8)}
    results: list[str] = []
    errors: list[BaseException] = []

    def put() -> None:
        try:
            results.append(store.put_bundle(big, run_id="same"))
        except BaseException as exc:  # reported below, whatever it is
            errors.append(exc)

    threads = [threading.Thread(target=put) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(set(results)) == 1
    assert len(blob_files(store)) == len(big)
    assert not temp_files(store.root)
    assert store.verify("same").ok


# ---- tamper evidence -------------------------------------------------------------------


def test_flipping_any_byte_of_any_blob_is_caught_and_names_the_member(
    store: LocalBundleStore,
) -> None:
    root = store.put_bundle(MEMBERS, run_id="r1")
    manifest = store.get_manifest(root)
    for member in manifest.members:
        path = store.blob_path(member.digest)
        original = path.read_bytes()
        for offset in sorted({0, len(original) // 2, len(original) - 1}):
            flip_byte(path, offset)
            report = store.verify(root)
            assert not report.ok
            assert member.path in report.tampered
            assert report.first_mismatch is not None
            assert any(member.path in line for line in report.problems())
            with pytest.raises(TamperError, match=re.escape(f"member {member.path}")):
                store.read_member(root, member.path)
            path.write_bytes(original)
        assert store.verify(root).ok


def test_a_truncated_or_grown_blob_is_caught(store: LocalBundleStore) -> None:
    root = store.put_bundle(MEMBERS)
    path = store.blob_path(store.get_manifest(root).member("steps/a.json").digest)
    original = path.read_bytes()
    writable(path).write_bytes(original[:-1])
    assert store.verify(root).tampered == ("steps/a.json",)
    path.write_bytes(original + b" ")
    assert store.verify(root).tampered == ("steps/a.json",)


def test_a_removed_member_is_named(store: LocalBundleStore) -> None:
    root = store.put_bundle(MEMBERS, run_id="r1")
    store.blob_path(store.get_manifest(root).member("steps/b.json").digest).unlink()
    report = store.verify("r1")
    assert not report.ok
    assert report.missing == ("steps/b.json",)
    assert "member steps/b.json: removed (its blob is missing)" in report.problems()
    with pytest.raises(TamperError, match=r"steps/b\.json"):
        store.read_member("r1", "steps/b.json")


@pytest.mark.parametrize("where", ["valid-looking name", "any name", "other folder"])
def test_a_renamed_member_is_named_with_where_it_went(store: LocalBundleStore, where: str) -> None:
    root = store.put_bundle(MEMBERS, run_id="r1")
    old = store.blob_path(store.get_manifest(root).member("run.json").digest)
    if where == "valid-looking name":
        new = old.parent / ("0" * 64)
    elif where == "any name":
        new = old.parent / "run.json"
    else:
        new = store.root / "blobs" / "sha256" / "zz" / old.name
        new.parent.mkdir()
    old.rename(new)
    report = store.verify(root)
    assert not report.ok
    rel = new.relative_to(store.root).as_posix()
    assert report.renamed == (("run.json", rel),)
    assert report.missing == ()
    assert f"member run.json: renamed (its blob was found at {rel})" in report.problems()


@pytest.mark.parametrize("name", ["evil.txt", "f" * 64, ".hidden"])
def test_an_added_file_is_named(store: LocalBundleStore, name: str) -> None:
    root = store.put_bundle(MEMBERS, run_id="r1")
    folder = store.blob_path(store.get_manifest(root).member("run.json").digest).parent
    (folder / name).write_bytes(b"slipped in")
    report = store.verify(root)
    assert not report.ok
    rel = (folder / name).relative_to(store.root).as_posix()
    assert report.added == (rel,)
    assert any(rel in line for line in report.problems())


def test_a_member_added_to_the_manifest_is_caught(store: LocalBundleStore) -> None:
    root = store.put_bundle(MEMBERS, run_id="r1")
    path = store.manifest_path(root)
    grown = Manifest.from_members({**MEMBERS, "extra.txt": b"added later"}, run="r1")
    writable(path).write_bytes(grown.to_bytes())
    report = store.verify(root)
    assert not report.ok
    assert report.manifest_problem is not None
    assert "not the" in report.manifest_problem
    assert report.missing == ("extra.txt",)  # and its blob is not there either
    with pytest.raises(TamperError, match="manifest hashes to"):
        store.get_manifest(root)


def test_a_flipped_manifest_byte_is_caught(store: LocalBundleStore) -> None:
    root = store.put_bundle(MEMBERS, run_id="r1")
    path = store.manifest_path(root)
    size = path.stat().st_size
    for offset in (0, size // 2, size - 1):
        original = path.read_bytes()
        flip_byte(path, offset)
        report = store.verify("r1")
        assert not report.ok
        assert report.manifest_problem
        with pytest.raises(TamperError):
            store.read_member("r1", "run.json")
        [entry] = store.list_bundles()
        assert entry.problem is not None
        path.write_bytes(original)
    assert store.verify("r1").ok


def test_an_existing_corrupt_blob_is_never_rewritten(store: LocalBundleStore) -> None:
    root = store.put_bundle(MEMBERS)
    path = store.blob_path(store.get_manifest(root).member("steps/a.json").digest)
    writable(path).write_bytes(b"evidence of tampering")
    with pytest.raises(TamperError, match=r"steps/a\.json"):
        store.put_bundle({**MEMBERS, "new.txt": b"x"})
    assert path.read_bytes() == b"evidence of tampering"


# ---- crash safety ----------------------------------------------------------------------


def test_a_crash_between_blobs_and_manifest_leaves_no_bundle(
    store: LocalBundleStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("power cut")

    monkeypatch.setattr(LocalBundleStore, "_put_manifest", crash)
    with pytest.raises(RuntimeError, match="power cut"):
        store.put_bundle(MEMBERS, run_id="r1")
    monkeypatch.undo()
    assert store.list_bundles() == []
    with pytest.raises(BundleError, match="no bundle matches"):
        store.resolve("r1")
    assert len(blob_files(store)) == len(set(MEMBERS.values()))
    assert_every_blob_is_whole(store)
    removed = store.gc()
    assert len(removed) == len(set(MEMBERS.values()))
    assert blob_files(store) == []
    # and the run can be bundled after all
    root = store.put_bundle(MEMBERS, run_id="r1")
    assert store.verify("r1").ok
    assert store.resolve("r1") == root


def test_a_crash_between_manifest_and_index_still_finds_the_run(
    store: LocalBundleStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("killed")

    monkeypatch.setattr(LocalBundleStore, "_put_index", crash)
    with pytest.raises(RuntimeError):
        store.put_bundle(MEMBERS, run_id="r1")
    monkeypatch.undo()
    root = store.resolve("r1")  # from the manifest, which names its run
    assert store.verify("r1").ok
    assert store.put_bundle(MEMBERS, run_id="r1") == root  # repairs the index
    assert (store.root / "runs" / "r1").read_text().strip() == root


KILLED_WRITER = """
import os, sys, time
from pathlib import Path
from engine.stores.local import LocalBundleStore

real_write = os.write
calls = 0

def slow_write(fd, data):
    global calls
    calls += 1
    n = real_write(fd, data)
    if calls == 3:
        Path(sys.argv[2]).write_text(str(os.getpid()))
        time.sleep(600)
    return n

os.write = slow_write
big = bytes(range(256)) * (32 * 1024)  # 8 MiB: written in 1 MiB pieces
LocalBundleStore(Path(sys.argv[1])).put_bundle({"small.txt": b"small", "big.bin": big}, run_id="k")
"""


def kill_writer_at(script: str, store: LocalBundleStore, marker: Path, what: str) -> None:
    """Run `script` (a bundle writer) in its own process, SIGKILL it once it has made
    `marker`, and check it died of that signal."""
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(store.root), str(marker)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for(marker.exists, timeout=60, what=what)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL


def test_a_kill_mid_blob_leaves_only_temp_files_that_gc_removes(
    store: LocalBundleStore, tmp_path: Path
) -> None:
    marker = tmp_path / "writing"
    kill_writer_at(KILLED_WRITER, store, marker, "the writer to be mid-blob")
    big_digest = leaf_digest(bytes(range(256)) * (32 * 1024))
    assert not store.blob_path(big_digest).exists()
    assert_every_blob_is_whole(store)
    temps = temp_files(store.root)
    assert temps, "the killed write should have left its temp file"
    assert all(0 < p.stat().st_size < 8 << 20 for p in temps)
    assert store.list_bundles() == []
    removed = store.gc()
    assert {store.root / r for r in removed} >= set(temps)
    assert files_under(store.root / "blobs") == []


KILLED_BEFORE_MANIFEST = """
import sys, time
from pathlib import Path
from engine.stores.local import LocalBundleStore

def stall(self, manifest):
    Path(sys.argv[2]).write_text("blobs written")
    time.sleep(600)

LocalBundleStore._put_manifest = stall
big = bytes(range(256)) * (8 * 1024)  # 2 MiB
members = {f"m{i:02d}.bin": bytes([i]) * 1000 + big for i in range(40)}  # more than in flight
LocalBundleStore(Path(sys.argv[1])).put_bundle(members, run_id="k")
"""


def test_a_kill_between_blobs_and_manifest_leaves_no_bundle_and_whole_blobs(
    store: LocalBundleStore, tmp_path: Path
) -> None:
    marker = tmp_path / "written"
    kill_writer_at(KILLED_BEFORE_MANIFEST, store, marker, "the writer to finish its blobs")
    assert len(blob_files(store)) == 40
    assert_every_blob_is_whole(store)
    assert temp_files(store.root) == []
    assert store.list_bundles() == []
    assert not (store.root / "runs" / "k").exists()
    with pytest.raises(BundleError, match="no bundle matches"):
        store.resolve("k")
    assert sorted(store.gc_preview()) == sorted(
        p.relative_to(store.root).as_posix() for p in blob_files(store)
    )
    assert len(blob_files(store)) == 40  # a preview removes nothing
    assert len(store.gc()) == 40
    assert files_under(store.root / "blobs") == []


@pytest.mark.parametrize("fail_at", [1, 20, 45])
def test_a_failed_fsync_in_the_pipeline_leaves_nothing_half_written(
    store: LocalBundleStore, monkeypatch: pytest.MonkeyPatch, fail_at: int
) -> None:
    members = {f"m{i:02d}.bin": bytes([i]) * (4096 + i) for i in range(60)}
    real = os.fsync
    calls = [0]
    lock = threading.Lock()

    def fsync(fd: int) -> None:
        with lock:
            calls[0] += 1
            n = calls[0]
        if n == fail_at:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(BundleError, match="Input/output error"):
        store.put_bundle(members, run_id="io")
    monkeypatch.undo()
    assert temp_files(store.root) == []
    assert_every_blob_is_whole(store)
    assert store.list_bundles() == []
    assert not (store.root / "runs" / "io").exists()
    root = store.put_bundle(members, run_id="io")  # the disk is back: the put completes
    assert store.verify("io").ok
    assert store.resolve("io") == root


def _failing_write(after: int) -> Any:
    """os.write that writes `after` bytes in all, then fails as a full disk does."""
    real = os.write
    budget = [after]

    def write(fd: int, data: Any) -> int:
        if budget[0] <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        n = real(fd, bytes(data[: budget[0]]))
        budget[0] -= n
        return n

    return write


BIG = {**MEMBERS, "big.bin": bytes(range(256)) * 256}


@pytest.mark.parametrize("where", ["first byte", "mid blob", "last blob byte", "manifest", "index"])
def test_a_full_disk_leaves_nothing_half_written(
    store: LocalBundleStore, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    members = BIG
    blobs = sum(len(v) for v in {leaf_digest(v): v for v in members.values()}.values())
    manifest = len(Manifest.from_members(members, run="full").to_bytes())
    after = {
        "first byte": 0,
        "mid blob": 3000,
        "last blob byte": blobs - 1,
        "manifest": blobs + manifest // 2,
        "index": blobs + manifest + 10,
    }[where]
    monkeypatch.setattr(os, "write", _failing_write(after))
    with pytest.raises(BundleError, match="No space left"):
        store.put_bundle(members, run_id="full")
    monkeypatch.undo()
    assert temp_files(store.root) == []
    assert_every_blob_is_whole(store)
    assert not (store.root / "runs" / "full").exists()
    if where == "index":  # the bundle is whole; only its index entry is missing
        assert [e.run for e in store.list_bundles()] == ["full"]
    else:
        assert not (store.root / "bundles").exists() or not any((store.root / "bundles").iterdir())
        assert store.list_bundles() == []
    # room again: the same put completes
    store.put_bundle(members, run_id="full")
    assert store.verify("full").ok


# ---- gc ----------------------------------------------------------------------------------


def test_gc_keeps_every_referenced_blob(store: LocalBundleStore) -> None:
    first = store.put_bundle(MEMBERS, run_id="r1")
    second = store.put_bundle({"only.txt": b"second", "shared.txt": MEMBERS["shared.txt"]})
    orphan = leaf_digest(b"orphan")
    kept = leaf_digest(b"kept for a put to come")
    for data in (b"orphan", b"kept for a put to come"):
        path = store.blob_path(leaf_digest(data))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    debris = store.root / "blobs" / "sha256" / ".tmp-abandoned"
    debris.write_bytes(b"half")
    stranger = store.root / "blobs" / "sha256" / "stranger.txt"
    stranger.write_bytes(b"not a blob")
    removed = store.gc({kept})
    assert sorted(removed) == sorted(
        [
            store.blob_path(orphan).relative_to(store.root).as_posix(),
            debris.relative_to(store.root).as_posix(),
        ]
    )
    assert store.blob_path(kept).exists()
    assert stranger.exists()  # not a blob: evidence, left for verify to report
    stranger.unlink()
    assert store.verify(first).ok
    assert store.verify(second).ok
    assert store.gc() == [store.blob_path(kept).relative_to(store.root).as_posix()]
    assert store.gc() == []


def test_gc_refuses_when_a_manifest_is_unreadable(store: LocalBundleStore) -> None:
    root = store.put_bundle(MEMBERS)
    store.put_bundle({"other.txt": b"other"})
    flip_byte(store.manifest_path(root), 3)
    before = files_under(store.root)
    with pytest.raises(TamperError):
        store.gc()
    assert files_under(store.root) == before


# ---- secrets -----------------------------------------------------------------------------

CANARY = "canary-7Qe9-zX2p-SECRET"


def _forms(secret: str) -> Iterator[bytes]:
    yield secret.encode()
    yield quote(secret, safe="").encode()
    yield base64.b64encode(secret.encode()).rstrip(b"=")[:-2]
    yield base64.urlsafe_b64encode(secret.encode()).rstrip(b"=")[:-2]


def test_a_canary_secret_never_reaches_a_stored_byte(store: LocalBundleStore) -> None:
    b64 = base64.b64encode(CANARY.encode()).decode()
    records = [
        {"seq": 1, "t": 1.0, "event": "run.started", "run": "r-canary", "flow": "f",
         "path": "flow.yaml", "spec_digest": "sha256:" + "0" * 64,
         "inputs": {"token": CANARY, CANARY: "as a key"}, "holder": "me@host:1"},
        {"seq": 2, "t": 2.0, "event": "step.started", "step": "s", "instance": "s", "attempt": 1},
        {"seq": 3, "t": 3.0, "event": "step.succeeded", "step": "s", "instance": "s",
         "attempt": 1, "outputs": {"out": f"b64={b64}", "url": quote(CANARY, safe="")},
         "result": [f"line1\r\n{CANARY}"], "detail": {"stderr": CANARY}, "cost_usd": 0.0,
         "tokens": 0},
        {"seq": 4, "t": 4.0, "event": "gate.evaluated", "gate": "g", "status": "pass",
         "evidence": {"seen": CANARY}, "metrics": {}},
        {"seq": 5, "t": 5.0, "event": "run.finished", "status": "succeeded",
         "outputs": {"leak": CANARY}},
    ]  # fmt: skip
    members = build_bundle_members(
        spec_name="flow.yaml",
        spec=f"version: 1\n# {CANARY}\n".encode(),
        records=records,
        lock=f"pinned {CANARY}".encode(),
        environment={"note": CANARY},
        redactor=Redactor([CANARY]),
    )
    store.put_bundle(members, run_id="r-canary")
    stored = files_under(store.root)
    assert len(stored) > len(members)  # blobs, manifest, index
    for path in stored:
        data = path.read_bytes()
        for form in _forms(CANARY):
            assert form not in data, (path, form)
    assert b"***" in store.read_member("r-canary", "run.json")
    assert store.verify("r-canary").ok


def test_bundling_a_new_run_reads_only_its_index_not_every_manifest(tmp_path: Path) -> None:
    """A new run's bundle must not cost a read of every bundle already stored: that grew with
    the store, on every `blocks run`."""
    from engine.executor.bundling import _put  # noqa: PLC0415

    store = LocalBundleStore(tmp_path / "bundles")
    for n in range(3):
        store.put_bundle({"journal.jsonl": f"{n}\n".encode()}, run_id=f"older-{n}")
    read: list[str] = []
    manifest = store._manifest

    def counting(digest: str) -> Manifest:
        read.append(digest)
        return manifest(digest)

    store._manifest = counting  # type: ignore[method-assign]
    root = _put(store, "new-run", {"journal.jsonl": b"a\n"})
    assert read == []
    assert store.resolve("new-run") == root
    # the same run bundled again after its journal grew: it reads its own bundle only
    read.clear()
    grown = _put(store, "new-run", {"journal.jsonl": b"a\nb\n"})
    assert set(read) == {root}
    assert store.get_manifest(grown).supersedes == root
