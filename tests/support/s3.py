"""Pytest fixtures for S3 (registered in conftest.py): moto's threaded S3 server on a free
loopback port for the session, and a bucket of its own for each test; :class:`S3Requests`
slows down, times and fails chosen requests of a client."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import pytest
from botocore.awsrequest import AWSPreparedRequest, AWSResponse

from tests.support.services import free_port, unavailable

#: Credentials moto accepts; set in the environment of the tests that use S3.
TEST_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "joblife-test-key",
    "AWS_SECRET_ACCESS_KEY": "joblife-test-secret-do-not-log",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """URL of a moto S3 server running in this process for the session."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as exc:
        unavailable(f"moto[server] is not installed: {exc}")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request
    port = free_port()
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


class S3Requests:
    """Instruments a boto3 S3 client at its ``before-send`` event, which botocore emits for
    every attempt of every request, in the thread that sends it: records when each attempt
    of ``operations`` is in flight (slowed down by ``delay`` seconds), counts the attempts
    per object key, and answers the first ``fail_first`` attempts of each key with an HTTP
    503 instead of sending them (botocore's retry logic sees a real 503 answer)."""

    def __init__(
        self,
        client: object,
        operations: tuple[str, ...],
        *,
        delay: float = 0.0,
        fail_first: int = 0,
    ) -> None:
        self.delay = delay
        self.fail_first = fail_first
        #: (start, end) of each attempt (``time.monotonic``).
        self.intervals: list[tuple[float, float]] = []
        #: Attempts per object key (the path of the request's URL).
        self.attempts: Counter[str] = Counter()
        self._lock = threading.Lock()
        events = client.meta.events  # type: ignore[attr-defined]
        for operation in operations:
            events.register(f"before-send.s3.{operation}", self._before_send)

    def _before_send(self, request: AWSPreparedRequest, **_: object) -> AWSResponse | None:
        start = time.monotonic()
        key = urlsplit(request.url).path
        with self._lock:
            self.attempts[key] += 1
            attempt = self.attempts[key]
        time.sleep(self.delay)
        with self._lock:
            self.intervals.append((start, time.monotonic()))
        if attempt > self.fail_first:
            return None  # sent as usual
        body = (
            b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>ServiceUnavailable</Code>"
            b"<Message>injected by the test</Message></Error>"
        )
        return AWSResponse(request.url, 503, {"Content-Type": "application/xml"}, _Raw(body))

    def max_overlap(self) -> int:
        """The most attempts that were in flight at the same time."""
        edges = sorted([(s, 1) for s, _ in self.intervals] + [(e, -1) for _, e in self.intervals])
        in_flight = most = 0
        for _, change in edges:  # at a tie, an end (-1) sorts before a start
            in_flight += change
            most = max(most, in_flight)
        return most


@dataclass
class _Raw:
    """The raw body of an injected answer, as botocore reads it."""

    body: bytes

    def stream(self, **_: object) -> Iterator[bytes]:
        yield self.body
