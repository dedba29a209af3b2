"""Pytest fixtures for S3 (registered in conftest.py): moto's threaded S3 server on a free
loopback port for the session, and a bucket of its own for each test."""

from __future__ import annotations

import logging
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.support.services import unavailable

#: Credentials moto accepts; set in the environment of the tests that use S3.
TEST_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "joblife-test-key",
    "AWS_SECRET_ACCESS_KEY": "joblife-test-secret-do-not-log",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """URL of a moto S3 server running in this process for the session."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as exc:
        unavailable(f"moto[server] is not installed: {exc}")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@dataclass
class S3Bucket:
    """A bucket of this test's own on the moto server, and a boto3 client for checks."""

    endpoint: str
    name: str
    client: object  # botocore S3 client

    def url(self, key: str = "") -> str:
        return f"s3://{self.name}/{key}"

    def put(self, key: str, body: bytes) -> None:
        self.client.put_object(Bucket=self.name, Key=key, Body=body)  # type: ignore[attr-defined]

    def get(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.name, Key=key)["Body"].read()  # type: ignore[attr-defined]

    def list_keys(self, prefix: str = "") -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(  # type: ignore[attr-defined]
            Bucket=self.name, Prefix=prefix
        )
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


@pytest.fixture
def s3_bucket(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Bucket]:
    """A fresh bucket (emptied and deleted after the test); the AWS_* test credentials are
    set in the environment, as a worker would get them."""
    import boto3

    for name, value in TEST_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    bucket = S3Bucket(s3_endpoint, f"jl-test-{uuid.uuid4().hex[:12]}", client)
    client.create_bucket(Bucket=bucket.name)
    yield bucket
    for key in bucket.list_keys():
        client.delete_object(Bucket=bucket.name, Key=key)
    client.delete_bucket(Bucket=bucket.name)
