"""A moto S3 server on 127.0.0.1 for the S3 store's tests, and the buckets they use.

The server runs in a thread of the test process (one per xdist worker: the fixture is
session scoped), on a port the OS picks. `blocks` subprocesses reach it through
BLOCKS_S3_ENDPOINT_URL. Every test works under a prefix of its own, so tests share the
buckets without seeing each other's objects. Import the fixtures where they are used:
``from s3_server import moto_endpoint, s3_client``.

Credentials are moto's dummies, and the AWS config files are pointed at nothing, so no
test reads a developer's real AWS configuration or asks the instance metadata service.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

LOCKED = "blocks-locked"
"""Object Lock enabled at creation (so versioning is on too)."""
VERSIONED = "blocks-versioned"
"""Versioning on, no Object Lock: what the store refuses while compliance is on."""
UNVERSIONED = "blocks-unversioned"
"""Neither: refused whatever the compliance setting."""

SECRET = "testing-secret-9f3Kq-never-in-a-message"  # noqa: S105  (moto's dummy, on loopback)


def aws_env(endpoint: str, **extra: str) -> dict[str, str]:
    """The environment a store (or a `blocks` subprocess) needs to reach the moto server."""
    return {
        "BLOCKS_S3_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_CONFIG_FILE": "/nonexistent/aws-config",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
        "AWS_EC2_METADATA_DISABLED": "true",
        **extra,
    }


def raw_client(endpoint: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key=SECRET,
    )


def unique_prefix() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    client = raw_client(endpoint)
    client.create_bucket(Bucket=LOCKED, ObjectLockEnabledForBucket=True)
    client.create_bucket(Bucket=VERSIONED)
    client.put_bucket_versioning(Bucket=VERSIONED, VersioningConfiguration={"Status": "Enabled"})
    client.create_bucket(Bucket=UNVERSIONED)
    try:
        yield endpoint
    finally:
        server.stop()


@pytest.fixture
def s3_client(moto_endpoint: str) -> Any:
    """A plain boto3 client on the moto server: what an intruder (or an auditor) would use."""
    return raw_client(moto_endpoint)
