"""`engine.stores.s3.S3BundleStore` against a moto server on 127.0.0.1: what Object Lock
adds to the store contract (`test_store_contract.py` runs the rest on every store).

moto enforces the refusal to delete a locked version; it does not refuse shortening a
retention or downgrading COMPLIANCE, so those tests show the refusal is the store's own
(and that moto itself would have let it through). The end-to-end test runs `blocks run`
and `blocks bundle` in subprocesses with BLOCKS_STORE=s3://...
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from botocore.exceptions import ClientError
from conftest import Project
from s3_server import (
    LOCKED,
    SECRET,
    UNVERSIONED,
    VERSIONED,
    aws_env,
    moto_endpoint,  # noqa: F401  (a fixture)
    s3_client,  # noqa: F401  (a fixture)
    unique_prefix,
)

from engine.errors import (
    BundleError,
    LedgerConflict,
    TamperError,
    UsageError,
    WriteOnceError,
)
from engine.stores import open_store
from engine.stores.s3 import DEFAULT_RETENTION_DAYS, S3BundleStore

MEMBERS = {
    "run.json": b'{"run":"r1","status":"succeeded"}',
    "steps/a.json": b'{"step":"a"}',
    "notes.txt": b"kept for seven years\n",
}


def open_s3(endpoint: str, bucket: str = LOCKED, **env: str) -> S3BundleStore:
    return S3BundleStore.from_url(f"s3://{bucket}/{unique_prefix()}", aws_env(endpoint, **env))


@pytest.fixture
def store(moto_endpoint: str) -> S3BundleStore:  # noqa: F811
    return open_s3(moto_endpoint)


def versions(client: Any, store: S3BundleStore) -> list[dict[str, Any]]:
    """Every object version under the store's prefix."""
    listing = client.list_object_versions(Bucket=store.bucket, Prefix=store.prefix)
    return list(listing.get("Versions", []))


def sha256_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


# ---- Object Lock -------------------------------------------------------------------------


def test_locked_versions_cannot_be_deleted(store: S3BundleStore, s3_client: Any) -> None:  # noqa: F811
    store.put_bundle(MEMBERS, run_id="r1")
    store.ledger_append(0, b'{"entry":0}')
    stored = versions(s3_client, store)
    kinds = {v["Key"][len(store.prefix) :].split("/")[0] for v in stored}
    assert kinds == {"blobs", "bundles", "runs", "ledger"}
    for v in stored:
        for bypass in (False, True):
            with pytest.raises(ClientError) as refused:
                s3_client.delete_object(
                    Bucket=store.bucket,
                    Key=v["Key"],
                    VersionId=v["VersionId"],
                    BypassGovernanceRetention=bypass,
                )
            assert refused.value.response["Error"]["Code"] == "AccessDenied", v["Key"]
    assert versions(s3_client, store) == stored
    assert store.verify("r1").ok


def test_locked_keys_are_never_overwritten(store: S3BundleStore, s3_client: Any) -> None:  # noqa: F811
    root = store.put_bundle(MEMBERS, run_id="r1")
    before = versions(s3_client, store)
    # S3 (moto too) refuses a conditional put on a key that exists
    key = store.key(store.blob_key(store.get_manifest(root).member("steps/a.json").digest))
    with pytest.raises(ClientError) as refused:
        s3_client.put_object(
            Bucket=store.bucket,
            Key=key,
            Body=b"other bytes",
            IfNoneMatch="*",
            ChecksumAlgorithm="SHA256",
        )
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    # the store's own re-put of equal content is a no-op: no new version anywhere
    assert store.put_bundle(MEMBERS, run_id="r1") == root
    assert open_s3_like(store).put_bundle(MEMBERS, run_id="r1") == root
    # another bundle for the same run is refused, not written over the index
    with pytest.raises(WriteOnceError, match="already bundled"):
        store.put_bundle({**MEMBERS, "x.txt": b"x"}, run_id="r1")
    assert versions(s3_client, store) == before


def open_s3_like(store: S3BundleStore) -> S3BundleStore:
    """Another store object on the same bucket and prefix (another process)."""
    return S3BundleStore(
        store._s3,
        store.bucket,
        store.prefix,
        lock_mode=store.lock_mode,
        compliance=store.compliance,
        retention_days=store.retention.days,
    )


def test_a_key_hidden_and_rewritten_does_not_change_the_bundle(
    store: S3BundleStore,
    s3_client: Any,  # noqa: F811
) -> None:
    """A lock protects versions, not keys: a delete marker and a new version over a blob,
    the manifest and the run index change nothing a reference reads."""
    root = store.put_bundle(MEMBERS, run_id="r1")
    blob = store.blob_key(store.get_manifest(root).member("steps/a.json").digest)
    for rel, body in (
        (blob, b'{"step":"forged"}'),
        (store.manifest_key(root), b"{}"),
        ("runs/r1", b"sha256:" + b"0" * 64),
    ):
        s3_client.delete_object(Bucket=store.bucket, Key=store.key(rel))  # a delete marker
        s3_client.put_object(
            Bucket=store.bucket, Key=store.key(rel), Body=body, ChecksumAlgorithm="SHA256"
        )
    reader = open_s3_like(store)
    assert reader.resolve("r1") == root
    assert reader.read_member("r1", "steps/a.json") == MEMBERS["steps/a.json"]
    assert [e.digest for e in reader.list_bundles()] == [root]
    report = reader.verify("r1")
    assert report.ok, report.problems()
    assert any("newer version or a delete marker" in n for n in report.notes), report.notes
    # and a run index slot taken once stays taken, even hidden
    with pytest.raises(WriteOnceError, match="already bundled"):
        reader.put_bundle({"other.txt": b"other"}, run_id="r1")


def test_a_hidden_ledger_entry_is_still_taken(store: S3BundleStore, s3_client: Any) -> None:  # noqa: F811
    store.ledger_append(0, b'{"entry":"first"}')
    s3_client.delete_object(Bucket=store.bucket, Key=store.key("ledger/00000000.json"))
    with pytest.raises(LedgerConflict, match="entry 0"):
        open_s3_like(store).ledger_append(0, b'{"entry":"forged"}')
    assert open_s3_like(store).ledger_entries() == [b'{"entry":"first"}']


def test_bytes_that_do_not_match_their_s3_checksum_are_tampering(
    moto_endpoint: str,  # noqa: F811
    s3_client: Any,  # noqa: F811
) -> None:
    """moto stores a supplied checksum unchecked (AWS would refuse the upload): reads
    check it, and a mismatch is reported as tampering with the member."""
    store = open_s3(moto_endpoint, VERSIONED, BLOCKS_S3_COMPLIANCE="0")
    root = store.put_bundle(MEMBERS, run_id="r1")
    key = store.key(store.blob_key(store.get_manifest(root).member("steps/a.json").digest))
    for v in s3_client.list_object_versions(Bucket=store.bucket, Prefix=key)["Versions"]:
        s3_client.delete_object(Bucket=store.bucket, Key=key, VersionId=v["VersionId"])
    s3_client.put_object(
        Bucket=store.bucket,
        Key=key,
        Body=MEMBERS["steps/a.json"],
        ChecksumAlgorithm="SHA256",
        ChecksumSHA256=sha256_b64(b"something else"),
    )
    reader = open_s3_like(store)
    with pytest.raises(TamperError, match=r"steps/a\.json.*checksum"):
        reader.read_member("r1", "steps/a.json")
    assert reader.verify("r1").tampered == ("steps/a.json",)


def test_uploads_carry_a_sha256_checksum_and_a_compliance_lock(
    store: S3BundleStore,
    s3_client: Any,  # noqa: F811
) -> None:
    store.put_bundle(MEMBERS, run_id="r1")
    store.ledger_append(0, b'{"entry":0}')
    soonest = datetime.now(UTC) + timedelta(days=DEFAULT_RETENTION_DAYS - 1)
    stored = versions(s3_client, store)
    assert len(stored) == len(MEMBERS) + 4  # blobs, manifest, sidecar, index, ledger
    for v in stored:
        head = s3_client.head_object(
            Bucket=store.bucket, Key=v["Key"], VersionId=v["VersionId"], ChecksumMode="ENABLED"
        )
        body = s3_client.get_object(Bucket=store.bucket, Key=v["Key"], VersionId=v["VersionId"])
        assert head["ChecksumSHA256"] == sha256_b64(body["Body"].read()), v["Key"]
        assert head["ObjectLockMode"] == "COMPLIANCE", v["Key"]
        assert head["ObjectLockRetainUntilDate"] > soonest, v["Key"]


def test_retention_and_mode_come_from_the_environment(
    moto_endpoint: str,  # noqa: F811
    s3_client: Any,  # noqa: F811
) -> None:
    store = open_s3(moto_endpoint, BLOCKS_S3_RETENTION_DAYS="3", BLOCKS_S3_LOCK_MODE="governance")
    store.put_bundle(MEMBERS)
    now = datetime.now(UTC)
    for v in versions(s3_client, store):
        head = s3_client.head_object(Bucket=store.bucket, Key=v["Key"], VersionId=v["VersionId"])
        assert head["ObjectLockMode"] == "GOVERNANCE"
        assert now + timedelta(days=2) < head["ObjectLockRetainUntilDate"] < now + timedelta(days=4)


def test_an_object_reused_by_a_new_bundle_is_locked_as_long_as_it(
    moto_endpoint: str,  # noqa: F811
    s3_client: Any,  # noqa: F811
) -> None:
    prefix = unique_prefix()
    short = S3BundleStore.from_url(
        f"s3://{LOCKED}/{prefix}", aws_env(moto_endpoint, BLOCKS_S3_RETENTION_DAYS="3")
    )
    first = short.put_bundle(MEMBERS)
    long = S3BundleStore.from_url(
        f"s3://{LOCKED}/{prefix}", aws_env(moto_endpoint, BLOCKS_S3_RETENTION_DAYS="30")
    )
    long.put_bundle({"steps/a.json": MEMBERS["steps/a.json"], "new.txt": b"new"})
    shared = long.blob_key(long.get_manifest(first).member("steps/a.json").digest)
    alone = long.blob_key(long.get_manifest(first).member("notes.txt").digest)
    locks = long.retention_of(first)
    now = datetime.now(UTC)
    assert locks[shared][1] is not None
    assert locks[shared][1] > now + timedelta(days=29)
    assert locks[alone][1] is not None
    assert locks[alone][1] < now + timedelta(days=4)


# ---- the never-shorten guard (ours: moto does not enforce it) -----------------------------


def test_retention_is_extended_but_never_shortened_or_downgraded(
    store: S3BundleStore,
    s3_client: Any,  # noqa: F811
) -> None:
    root = store.put_bundle(MEMBERS, run_id="r1")
    later = datetime.now(UTC).replace(microsecond=500_000)
    later += timedelta(days=DEFAULT_RETENTION_DAYS + 365)
    changed = store.extend_retention("r1", later)
    locks = store.retention_of(root)
    assert sorted(changed) == sorted(locks)
    assert set(locks) >= {store.manifest_key(root), store.refs_key(root), "runs/r1"}
    whole = later.replace(microsecond=0) + timedelta(seconds=1)  # S3 keeps whole seconds
    assert set(locks.values()) == {("COMPLIANCE", whole)}, locks
    assert store.extend_retention("r1", later) == []  # already so: nothing to change

    sooner = later - timedelta(days=30)
    with pytest.raises(BundleError, match="never shortened"):
        store.extend_retention("r1", sooner)
    with pytest.raises(BundleError, match="cannot be downgraded to GOVERNANCE"):
        store.extend_retention("r1", later + timedelta(days=1), mode="GOVERNANCE")
    with pytest.raises(BundleError, match="time zone"):
        store.extend_retention("r1", datetime(2040, 1, 1))  # naive: the point
    assert store.retention_of(root) == locks  # refused before anything changed

    # the guard is ours: moto itself lets a COMPLIANCE lock be shortened and downgraded
    version = versions(s3_client, store)[0]
    s3_client.put_object_retention(
        Bucket=store.bucket,
        Key=version["Key"],
        VersionId=version["VersionId"],
        Retention={"Mode": "GOVERNANCE", "RetainUntilDate": sooner},
    )


def test_gc_removes_only_unreferenced_blobs_whose_retention_ended(
    store: S3BundleStore,
    s3_client: Any,  # noqa: F811
) -> None:
    root = store.put_bundle(MEMBERS, run_id="r1")
    referenced = store.blob_key(store.get_manifest(root).member("notes.txt").digest)
    orphan = store.blob_key("sha256:" + hashlib.sha256(b"\x00orphan").hexdigest())
    young = store.blob_key("sha256:" + hashlib.sha256(b"\x00young").hexdigest())
    until = datetime.now(UTC) + timedelta(days=1)
    for rel, body in ((orphan, b"orphan"), (young, b"young")):
        s3_client.put_object(
            Bucket=store.bucket,
            Key=store.key(rel),
            Body=body,
            ChecksumAlgorithm="SHA256",
            ObjectLockMode="COMPLIANCE",
            ObjectLockRetainUntilDate=until,
        )
    store.gc_grace = timedelta(0)
    assert store.gc() == []  # every blob is still locked
    # let the orphan's and a referenced blob's retention run out (moto allows setting it)
    past = datetime.now(UTC) - timedelta(days=1)
    for rel in (orphan, referenced):
        [v] = [v for v in versions(s3_client, store) if v["Key"] == store.key(rel)]
        s3_client.put_object_retention(
            Bucket=store.bucket,
            Key=v["Key"],
            VersionId=v["VersionId"],
            Retention={"Mode": "GOVERNANCE", "RetainUntilDate": past},
            BypassGovernanceRetention=True,
        )
    assert store.gc_preview() == [orphan]  # `blocks bundle gc --dry-run`: removes nothing
    assert store.key(orphan) in {v["Key"] for v in versions(s3_client, store)}
    assert store.gc() == [orphan]
    assert store.gc_preview() == []
    assert store.verify(root).ok  # the referenced one stays, expired or not
    assert store.read_member(root, "notes.txt") == MEMBERS["notes.txt"]
    keys = {v["Key"] for v in versions(s3_client, store)}
    assert store.key(orphan) not in keys
    assert store.key(young) in keys


# ---- refused buckets and settings ---------------------------------------------------------


def test_a_bucket_without_object_lock_is_refused(moto_endpoint: str) -> None:  # noqa: F811
    store = open_s3(moto_endpoint, VERSIONED)
    for attempt in (
        lambda: store.put_bundle(MEMBERS, run_id="r1"),
        store.list_bundles,
        store.ledger_entries,
    ):
        with pytest.raises(BundleError) as refused:
            attempt()
        message = str(refused.value)
        assert f"bucket {VERSIONED} does not have Object Lock enabled" in message
        assert "BLOCKS_S3_COMPLIANCE=0" in message
        assert SECRET not in message
    # with compliance off it is accepted, and the store says nothing is locked
    relaxed = open_s3(moto_endpoint, VERSIONED, BLOCKS_S3_COMPLIANCE="0")
    relaxed.put_bundle(MEMBERS, run_id="r1")
    assert relaxed.verify("r1").ok
    with pytest.raises(BundleError, match="no Object Lock"):
        relaxed.extend_retention("r1", datetime.now(UTC) + timedelta(days=1))


def test_an_unversioned_or_missing_bucket_is_refused(moto_endpoint: str) -> None:  # noqa: F811
    for env in ({}, {"BLOCKS_S3_COMPLIANCE": "0"}):
        with pytest.raises(BundleError, match=f"bucket {UNVERSIONED} does not have versioning"):
            open_s3(moto_endpoint, UNVERSIONED, **env).list_bundles()
    with pytest.raises(BundleError, match="bucket no-such-bucket does not exist at http"):
        open_s3(moto_endpoint, "no-such-bucket").list_bundles()


def test_an_unreachable_endpoint_is_a_bundle_error() -> None:
    with socket.socket() as sock:  # a loopback port where nothing listens
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = open_s3(f"http://127.0.0.1:{port}")
    with pytest.raises(BundleError, match=f"cannot .* bucket {LOCKED} at http://127.0.0.1:{port}"):
        store.list_bundles()


@pytest.mark.parametrize(
    ("url", "env", "match"),
    [
        ("s3://Bad_Bucket/x", {}, "not an S3 bucket name"),
        ("s3://ok-bucket/../x", {}, r"no '\.', '\.\.'"),
        ("s3://ok-bucket", {"BLOCKS_S3_RETENTION_DAYS": "0"}, "from 1 to 36500"),
        ("s3://ok-bucket", {"BLOCKS_S3_RETENTION_DAYS": "7y"}, "whole number of days"),
        ("s3://ok-bucket", {"BLOCKS_S3_LOCK_MODE": "legal"}, "COMPLIANCE or GOVERNANCE"),
        ("s3://ok-bucket", {"BLOCKS_S3_COMPLIANCE": "maybe"}, "expected 1 or 0"),
        ("s3://ok-bucket", {"BLOCKS_S3_ENDPOINT_URL": "ftp://x"}, "expected http"),
        ("s3://ok-bucket", {"AWS_SECRET_ACCESS_KEY": ""}, "AWS_SECRET_ACCESS_KEY is not set"),
    ],
)
def test_bad_settings_are_usage_errors(url: str, env: dict[str, str], match: str) -> None:
    with pytest.raises(UsageError, match=match) as refused:
        open_store(url, None, aws_env("http://127.0.0.1:9", **env))  # type: ignore[arg-type]
    assert SECRET not in str(refused.value)


def test_the_location_names_bucket_and_prefix(moto_endpoint: str) -> None:  # noqa: F811
    env = aws_env(moto_endpoint)
    assert S3BundleStore.from_url("s3://b-1/a/b/", env).location == "s3://b-1/a/b"
    assert S3BundleStore.from_url("s3://b-1", env).location == "s3://b-1"
    store = S3BundleStore.from_url("s3://b-1//a//b", env)
    assert (store.prefix, store.key("runs/r1")) == ("a/b/", "a/b/runs/r1")


# ---- end to end --------------------------------------------------------------------------


def test_blocks_run_bundles_into_s3_and_bundle_verify_reads_it_back(
    blocks_project: Project,
    moto_endpoint: str,  # noqa: F811
) -> None:
    env = aws_env(moto_endpoint, BLOCKS_STORE=f"s3://{LOCKED}/{unique_prefix()}/bundles")
    outcome = blocks_project.run_json("chain.yaml", env=env)
    run_id = outcome["run_id"]
    assert outcome["bundle"], outcome
    assert not (blocks_project.root / ".blocks" / "bundles").exists()  # not the local store

    verified = blocks_project.blocks("bundle", "verify", run_id, env=env)
    assert verified.returncode == 0, blocks_project.explain(verified)
    assert "intact" in verified.stdout

    listed = blocks_project.blocks("bundle", "list", "--json", env=env)
    assert listed.returncode == 0, blocks_project.explain(listed)
    [row] = json.loads(listed.stdout)
    assert (row["run"], row["digest"], row["problem"]) == (run_id, outcome["bundle"], None)

    shown = blocks_project.blocks("bundle", "show", run_id, env=env)
    assert shown.returncode == 0, blocks_project.explain(shown)
    assert f"run {run_id}" in shown.stdout

    # everything is referenced and locked: a preview finds nothing, and removes nothing
    preview = blocks_project.blocks("bundle", "gc", "--dry-run", "--json", env=env)
    assert preview.returncode == 0, blocks_project.explain(preview)
    assert json.loads(preview.stdout)["removed"] == []
    assert json.loads(preview.stdout)["dry_run"] is True

    # the same commands against a bucket without Object Lock: refused, clearly, no traceback
    refused_env = {**env, "BLOCKS_STORE": f"s3://{VERSIONED}/{unique_prefix()}"}
    refused = blocks_project.blocks("bundle", "list", env=refused_env)
    assert refused.returncode == 1, blocks_project.explain(refused)
    assert "does not have Object Lock enabled" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert SECRET not in refused.stderr + refused.stdout
