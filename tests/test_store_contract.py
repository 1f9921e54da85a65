"""The `BundleStore` contract, run against every store: the local folder, the S3 store on a
bucket with Object Lock, and the S3 store on a versioned bucket without it (compliance
off), all three on a moto server on 127.0.0.1 where S3 is concerned.

What only one store can show (files made read-only, crash points, Object Lock) is tested
in `test_store_local.py` and `test_store_s3.py`. Tampering goes behind the store's back
the way an intruder would: on the files, or through the S3 API. On a bucket with Object
Lock a stored version cannot be changed at all, so tampering is shown on the other two.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from s3_server import (
    LOCKED,
    VERSIONED,
    aws_env,
    moto_endpoint,  # noqa: F401  (a fixture)
    raw_client,
    unique_prefix,
)

from engine.bundle import Manifest, leaf_digest
from engine.errors import BundleError, LedgerConflict, TamperError, WriteOnceError
from engine.stores import BundleStore, LocalBundleStore
from engine.stores.s3 import S3BundleStore

MEMBERS = {
    "run.json": b'{"run":"r1","status":"succeeded"}',
    "spec/flow.yaml": b"version: 1\nkind: flow\nname: demo\n",
    "steps/a.json": b'{"step":"a"}',
    "steps/b.json": b'{"step":"b"}',
    "shared.txt": b"the same in every bundle\n",
    "copy.txt": b"the same in every bundle\n",  # same bytes as shared.txt: one blob
}
JOIN_TIMEOUT = 60.0


@dataclass
class Harness:
    """A store, and what a test needs to reach behind it."""

    kind: str
    store: BundleStore
    fresh: Callable[[], BundleStore]
    """Another instance on the same storage: another process, as far as the store knows."""
    plant: Callable[[str, bytes], None]
    """Put bytes at the place of blob `digest` without the store."""
    replace: Callable[[str, bytes], None] | None
    """Change the bytes of stored blob `digest`; None where nothing can (Object Lock)."""
    remove: Callable[[str], None] | None
    """Remove stored blob `digest`; None where nothing can (Object Lock)."""
    put_raw: Callable[[str, bytes], None]
    """Put bytes at a path relative to the store's root (or prefix), without the store."""
    snapshot: Callable[[], Any]
    """Everything stored, to show that a refused put wrote nothing."""
    blob_count: Callable[[], int]
    gc_removes_debris: bool
    """False under Object Lock: unreferenced blobs stay until their retention ends."""


def _local(tmp_path: Path) -> Harness:
    root = tmp_path / "bundles"
    store = LocalBundleStore(root)

    def plant(digest: str, data: bytes) -> None:
        path = store.blob_path(digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def replace(digest: str, data: bytes) -> None:
        path = store.blob_path(digest)
        path.chmod(0o644)
        path.write_bytes(data)

    def remove(digest: str) -> None:
        store.blob_path(digest).unlink()

    def put_raw(rel: str, data: bytes) -> None:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def files() -> list[Path]:
        return sorted(p for p in root.rglob("*") if p.is_file() and p.name != "gc.lock")

    return Harness(
        "local",
        store,
        lambda: LocalBundleStore(root),
        plant,
        replace,
        remove,
        put_raw,
        lambda: [(p, p.stat().st_mtime_ns) for p in files()],
        lambda: len([p for p in files() if p.parent.parent.name == "sha256"]),
        gc_removes_debris=True,
    )


def _s3(endpoint: str, bucket: str) -> Harness:
    locked = bucket == LOCKED
    url = f"s3://{bucket}/{unique_prefix()}"
    env = aws_env(endpoint, **({} if locked else {"BLOCKS_S3_COMPLIANCE": "0"}))
    client = raw_client(endpoint)

    def open_store() -> S3BundleStore:
        store = S3BundleStore.from_url(url, env)
        if not locked:
            store.gc_grace = timedelta(0)  # no put runs alongside these tests
        return store

    store = open_store()

    def plant(digest: str, data: bytes) -> None:
        lock: dict[str, Any] = {}
        if locked:
            lock = {
                "ObjectLockMode": "COMPLIANCE",
                "ObjectLockRetainUntilDate": datetime.now(UTC) + timedelta(days=1),
            }
        client.put_object(
            Bucket=bucket,
            Key=store.key(store.blob_key(digest)),
            Body=data,
            ChecksumAlgorithm="SHA256",
            **lock,
        )

    def remove(digest: str) -> None:
        key = store.key(store.blob_key(digest))
        for v in client.list_object_versions(Bucket=bucket, Prefix=key).get("Versions", []):
            if v["Key"] == key:
                client.delete_object(Bucket=bucket, Key=key, VersionId=v["VersionId"])

    def replace(digest: str, data: bytes) -> None:
        remove(digest)
        put_raw(store.blob_key(digest), data)

    def put_raw(rel: str, data: bytes) -> None:
        client.put_object(Bucket=bucket, Key=store.key(rel), Body=data, ChecksumAlgorithm="SHA256")

    def versions() -> list[tuple[str, str]]:
        listing = client.list_object_versions(Bucket=bucket, Prefix=store.prefix)
        entries = listing.get("Versions", []) + listing.get("DeleteMarkers", [])
        return sorted((v["Key"], v["VersionId"]) for v in entries)

    def blob_count() -> int:
        listing = client.list_objects_v2(Bucket=bucket, Prefix=store.key("blobs/"))
        return int(listing.get("KeyCount", 0))

    return Harness(
        "s3" if locked else "s3-unlocked",
        store,
        open_store,
        plant,
        None if locked else replace,
        None if locked else remove,
        put_raw,
        versions,
        blob_count,
        gc_removes_debris=not locked,
    )


@pytest.fixture(params=["local", "s3", "s3-unlocked"])
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    if request.param == "local":
        yield _local(tmp_path)
        return
    endpoint = request.getfixturevalue("moto_endpoint")
    yield _s3(endpoint, LOCKED if request.param == "s3" else VERSIONED)


def run_threads(target: Callable[[int], None], n: int) -> None:
    threads = [threading.Thread(target=target, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(JOIN_TIMEOUT)
        assert not t.is_alive(), "a store call hung"


# ---- round trip and deduplication ------------------------------------------------------


def test_a_bundle_round_trips(harness: Harness) -> None:
    store = harness.store
    assert isinstance(store, BundleStore)
    root = store.put_bundle(MEMBERS, run_id="r1")
    manifest = store.get_manifest(root)
    assert manifest == Manifest.from_members(MEMBERS, run="r1")
    assert root == manifest.root_digest()
    for path, data in MEMBERS.items():
        assert store.read_member(root, path) == data
        assert store.read_member("r1", path) == data
    hexd = root.removeprefix("sha256:")
    for ref in ("r1", "r1~1", root, hexd, hexd[:6], "sha256:" + hexd[:8]):
        assert store.resolve(ref) == root
    [entry] = store.list_bundles()
    assert (entry.digest, entry.run, entry.members) == (root, "r1", len(MEMBERS))
    assert entry.size == sum(len(v) for v in MEMBERS.values())
    report = store.verify("r1")
    assert report.ok, report.problems()
    assert report.checked == len(MEMBERS)
    # another instance (another process) sees the same bundle
    other = harness.fresh()
    assert other.read_member("r1", "steps/a.json") == MEMBERS["steps/a.json"]
    assert other.verify(root).ok


def test_putting_the_same_bundle_again_changes_nothing(harness: Harness) -> None:
    root = harness.store.put_bundle(MEMBERS, run_id="r1")
    before = harness.snapshot()
    assert harness.store.put_bundle(MEMBERS, run_id="r1") == root
    assert harness.fresh().put_bundle(MEMBERS, run_id="r1") == root
    assert harness.snapshot() == before
    with pytest.raises(BundleError, match="no bundle matches"):
        harness.store.resolve("r1~2")


def test_identical_content_is_stored_once_across_bundles(harness: Harness) -> None:
    store = harness.store
    first = store.put_bundle(MEMBERS, run_id="r1")
    second = store.put_bundle(
        {**MEMBERS, "run.json": b'{"run":"r2"}', "steps/c.json": b"{}"}, run_id="r2"
    )
    assert first != second
    assert harness.blob_count() == len(MEMBERS) + 1  # copy.txt shares; two new, one gone
    assert [e.run for e in store.list_bundles()] == ["r1", "r2"]
    assert store.verify(first).ok
    assert store.verify(second).ok


def test_a_run_is_bundled_once_unless_the_new_bundle_supersedes(harness: Harness) -> None:
    store = harness.store
    first = store.put_bundle(MEMBERS, run_id="r1")
    before = harness.snapshot()
    later = {**MEMBERS, "extra.txt": b"after a resume"}
    with pytest.raises(WriteOnceError, match="already bundled"):
        store.put_bundle(later, run_id="r1")
    assert harness.snapshot() == before  # refused before anything was written
    second = store.put_bundle(later, run_id="r1", supersedes=first)
    assert store.get_manifest(second).supersedes == first
    assert (store.resolve("r1"), store.resolve("r1~1"), store.resolve("r1~2")) == (
        second,
        first,
        second,
    )
    assert store.put_bundle(later, run_id="r1", supersedes=first) == second  # idempotent
    with pytest.raises(WriteOnceError, match="already bundled"):  # stale: not the latest
        store.put_bundle({**later, "x": b"x"}, run_id="r1", supersedes=first)
    with pytest.raises(WriteOnceError, match="no bundle"):
        store.put_bundle(MEMBERS, run_id="r2", supersedes=first)
    with pytest.raises(BundleError, match="only a run's bundle"):
        store.put_bundle(MEMBERS, supersedes=first)
    with pytest.raises(BundleError, match="no bundle matches"):
        store.resolve("r1~3")
    assert harness.fresh().resolve("r1") == second
    assert store.verify("r1").ok
    assert store.verify("r1~1").ok


def test_refs_that_name_nothing_are_refused(harness: Harness) -> None:
    store = harness.store
    root = store.put_bundle(MEMBERS, run_id="r1")
    with pytest.raises(BundleError, match="no bundle matches"):
        store.resolve("nope")
    with pytest.raises(BundleError, match="no bundle matches"):
        store.resolve("abc")  # too short to be a prefix
    with pytest.raises(BundleError, match="no bundle matches"):
        store.resolve("sha256:" + "0" * 64)
    with pytest.raises(BundleError, match="no member"):
        store.read_member(root, "not/there.txt")
    with pytest.raises(BundleError, match="cannot name"):
        store.put_bundle(MEMBERS, run_id="../escape")


def test_concurrent_puts_of_the_same_content_agree(harness: Harness) -> None:
    big = {f"m{i}.bin": bytes([i]) * (64 * 1024) for i in range(6)}
    results: list[str] = []
    errors: list[BaseException] = []

    def put(_: int) -> None:
        try:
            results.append(harness.fresh().put_bundle(big, run_id="same"))
        except BaseException as exc:  # reported below, whatever it is
            errors.append(exc)

    run_threads(put, 4)
    assert not errors, errors
    assert len(set(results)) == 1
    assert harness.blob_count() == len(big)
    assert harness.store.verify("same").ok


# ---- tamper evidence ---------------------------------------------------------------------


def test_changed_bytes_are_caught_and_name_the_member(harness: Harness) -> None:
    if harness.replace is None:
        _a_locked_version_cannot_be_changed(harness)
        return
    store = harness.store
    root = store.put_bundle(MEMBERS, run_id="r1")
    digest = store.get_manifest(root).member("steps/a.json").digest
    harness.replace(digest, b'{"step":"A"}')
    for reader in (store, harness.fresh()):
        with pytest.raises(TamperError, match=r"steps/a\.json"):
            reader.read_member("r1", "steps/a.json")
        assert reader.read_member("r1", "steps/b.json") == MEMBERS["steps/b.json"]
        report = reader.verify("r1")
        assert not report.ok
        assert report.tampered == ("steps/a.json",)
        assert report.first_mismatch == "steps/a.json"


def _a_locked_version_cannot_be_changed(harness: Harness) -> None:
    """Under Object Lock, "changing" a blob can only add a new version of its key: what
    the bundle references (key, version, digest) still reads back whole and verifies."""
    store = harness.store
    root = store.put_bundle(MEMBERS, run_id="r1")
    digest = store.get_manifest(root).member("steps/a.json").digest
    harness.put_raw(f"blobs/sha256/{digest[7:9]}/{digest[7:]}", b'{"step":"A"}')
    for reader in (store, harness.fresh()):
        assert reader.read_member("r1", "steps/a.json") == MEMBERS["steps/a.json"]
        assert reader.verify("r1").ok


def test_removed_renamed_and_added_objects_are_named(harness: Harness) -> None:
    store = harness.store
    root = store.put_bundle(MEMBERS, run_id="r1")
    manifest = store.get_manifest(root)
    harness.put_raw("bundles/stray.txt", b"not a manifest")
    report = store.verify(root)
    assert report.added == ("bundles/stray.txt",)
    assert not report.ok
    if harness.remove is None:
        return  # Object Lock: nothing stored can be removed (test_store_s3 shows it)
    a, b = (manifest.member(p).digest for p in ("steps/a.json", "steps/b.json"))
    harness.remove(a)
    harness.remove(b)
    harness.put_raw("blobs/sha256/moved", MEMBERS["steps/b.json"])
    for reader in (store, harness.fresh()):
        with pytest.raises(TamperError, match=r"steps/a\.json.*missing"):
            reader.read_member(root, "steps/a.json")
        report = reader.verify(root)
        assert report.missing == ("steps/a.json",)
        assert report.renamed == (("steps/b.json", "blobs/sha256/moved"),)
        assert report.added == ("bundles/stray.txt",)
        assert report.tampered == ()


def test_an_existing_corrupt_blob_is_never_rewritten(harness: Harness) -> None:
    store = harness.store
    digest = leaf_digest(MEMBERS["steps/a.json"])
    harness.plant(digest, b"evidence of tampering")
    with pytest.raises(TamperError, match=r"steps/a\.json"):
        store.put_bundle(MEMBERS)
    # still there, still wrong: the store never overwrites
    with pytest.raises(TamperError, match=r"steps/a\.json"):
        harness.fresh().put_bundle(MEMBERS)


def test_a_crash_between_manifest_and_index_still_finds_the_run(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = harness.store

    def crash(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("power cut")

    monkeypatch.setattr(store, "_put_index", crash)
    with pytest.raises(RuntimeError, match="power cut"):
        store.put_bundle(MEMBERS, run_id="r1")
    monkeypatch.undo()
    reader = harness.fresh()
    root = reader.resolve("r1")  # no index entry: found by the manifest's run
    assert reader.get_manifest(root).run == "r1"
    assert reader.verify(root).ok
    assert reader.put_bundle(MEMBERS, run_id="r1") == root  # the retry writes the index
    assert reader.resolve("r1~1") == root


# ---- the channel ledger -----------------------------------------------------------------


def test_the_ledger_appends_in_order_and_never_rewrites(harness: Harness) -> None:
    store = harness.store
    assert store.ledger_entries() == []
    store.ledger_append(0, b'{"n":0}')
    store.ledger_append(1, b'{"n":1}')
    assert store.ledger_entries() == [b'{"n":0}', b'{"n":1}']
    with pytest.raises(LedgerConflict, match="entry 1"):
        harness.fresh().ledger_append(1, b'{"n":"again"}')
    with pytest.raises(BundleError, match="negative"):
        store.ledger_append(-1, b"{}")
    assert harness.fresh().ledger_entries() == [b'{"n":0}', b'{"n":1}']


def race_for_entry(stores: list[BundleStore], seq: int) -> tuple[list[int], list[int]]:
    """Every store appends entry `seq` at once; (winners, losers) by store index."""
    barrier = threading.Barrier(len(stores), timeout=JOIN_TIMEOUT)
    won: list[int] = []
    lost: list[int] = []
    errors: list[BaseException] = []

    def append(i: int) -> None:
        barrier.wait()
        try:
            stores[i].ledger_append(seq, f'{{"seq":{seq},"writer":{i}}}'.encode())
            won.append(i)
        except LedgerConflict:
            lost.append(i)
        except BaseException as exc:  # reported below, whatever it is
            errors.append(exc)

    run_threads(append, len(stores))
    assert not errors, errors
    return won, lost


@pytest.mark.parametrize("writers", [2, 6])
def test_writers_racing_for_one_ledger_entry_give_exactly_one_winner(
    harness: Harness, writers: int
) -> None:
    for seq in range(3):
        won, lost = race_for_entry([harness.fresh() for _ in range(writers)], seq)
        assert len(won) == 1, (seq, won, lost)
        assert len(lost) == writers - 1
        entries = harness.fresh().ledger_entries()
        assert len(entries) == seq + 1
        assert entries[seq] == f'{{"seq":{seq},"writer":{won[0]}}}'.encode()


# ---- gc ----------------------------------------------------------------------------------


def test_gc_keeps_every_referenced_blob(harness: Harness) -> None:
    store = harness.store
    first = store.put_bundle(MEMBERS, run_id="r1")
    second = store.put_bundle({"only.txt": b"second", "shared.txt": MEMBERS["shared.txt"]})
    orphan = leaf_digest(b"orphan")
    kept = leaf_digest(b"kept for a put to come")
    harness.plant(orphan, b"orphan")
    harness.plant(kept, b"kept for a put to come")
    removed = store.gc({kept})
    orphan_name = f"blobs/sha256/{orphan[7:9]}/{orphan[7:]}"
    assert removed == ([orphan_name] if harness.gc_removes_debris else [])
    for root in (first, second):
        report = store.verify(root)
        assert report.ok, report.problems()
        for member in store.get_manifest(root).members:
            store.read_member(root, member.path)
    assert store.gc({kept}) == []
    with pytest.raises(BundleError, match="bad digest"):
        store.gc({"sha256:nothex"})
