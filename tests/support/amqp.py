"""Pytest fixtures for RabbitMQ (registered in conftest.py).

The broker comes from ``JOBLIFE_TEST_AMQP_URL`` (``unavailable()`` without it, or when it
does not answer). When ``rabbitmqctl`` can manage that broker (a local one, run as an
administrator), the session gets a vhost of its own, deleted at the end; otherwise the
URL's vhost is used. Either way each test's exchanges and queues have unique names and are
deleted after the test. The ``broker_proxy`` fixture puts a
:class:`~tests.support.tcp_proxy.TcpProxy` between joblife and the broker so that a test
can cut the connections or make the broker hang (a broker outage).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import pika
import pika.exceptions
import pytest

from tests.support.services import unavailable
from tests.support.tcp_proxy import TcpProxy


@dataclass(frozen=True)
class Received:
    """A message taken from a test queue."""

    routing_key: str
    properties: pika.BasicProperties
    body: bytes


def _rabbitmqctl(*args: str) -> bool:
    tool = shutil.which("rabbitmqctl")
    if tool is None:
        return False
    try:
        done = subprocess.run(
            [tool, "-q", *args], capture_output=True, timeout=30, check=False, text=True
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def _with_vhost(url: str, vhost: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + quote(vhost, safe="")))


def _connect(url: str) -> pika.BlockingConnection:
    parameters = pika.URLParameters(url)
    parameters.connection_attempts = 1
    parameters.socket_timeout = 5
    return pika.BlockingConnection(parameters)


@pytest.fixture(scope="session")
def amqp_url() -> Iterator[str]:
    """A broker URL for this test session: its own vhost when rabbitmqctl manages the
    broker (deleted at the end), else ``JOBLIFE_TEST_AMQP_URL`` as given."""
    base = os.environ.get("JOBLIFE_TEST_AMQP_URL")
    if not base:
        unavailable("no RabbitMQ: set JOBLIFE_TEST_AMQP_URL (amqp://guest:guest@127.0.0.1/%2F)")
    try:
        _connect(base).close()
    except pika.exceptions.AMQPError as exc:
        unavailable(f"RabbitMQ at JOBLIFE_TEST_AMQP_URL does not answer: {exc!r}")
    parts = urlsplit(base)
    vhost = f"joblife-test-{uuid.uuid4().hex[:10]}"
    local = parts.hostname in {"127.0.0.1", "localhost", "::1"}
    user = unquote(parts.username or "guest")
    if local and _rabbitmqctl("add_vhost", vhost):
        try:
            if _rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*"):
                yield _with_vhost(base, vhost)
                return
        finally:
            _rabbitmqctl("delete_vhost", vhost)
    yield base


@dataclass
class AmqpTestBroker:
    """One test's corner of the broker: unique names, deleted at the end of the test."""

    url: str
    prefix: str
    exchanges: list[str] = field(default_factory=list)
    queues: list[str] = field(default_factory=list)

    def name(self, what: str) -> str:
        """A unique name for an exchange or queue of this test."""
        return f"{self.prefix}.{what}"

    def exchange(self, what: str = "products", exchange_type: str = "topic") -> str:
        """Declare a durable exchange of this test (removed at the end)."""
        name = self.name(what)
        with self.channel() as channel:
            channel.exchange_declare(name, exchange_type, durable=True)
        self.exchanges.append(name)
        return name

    def track_exchange(self, name: str) -> str:
        """Remove this exchange at the end of the test (joblife declared it)."""
        self.exchanges.append(name)
        return name

    def queue(self, what: str, exchange: str | None = None, routing_key: str = "#") -> str:
        """Declare a durable queue of this test, bound to ``exchange`` if given."""
        name = self.name(what)
        with self.channel() as channel:
            channel.queue_declare(name, durable=True)
            if exchange is not None:
                channel.queue_bind(name, exchange, routing_key)
        self.queues.append(name)
        return name

    def bind(
        self,
        queue: str,
        exchange: str,
        routing_key: str = "",
        arguments: dict[str, Any] | None = None,
    ) -> None:
        """Bind ``queue`` to ``exchange`` once more (``arguments``: a headers binding)."""
        with self.channel() as channel:
            channel.queue_bind(queue, exchange, routing_key, arguments=arguments)

    def exchange_exists(self, name: str) -> bool:
        """Whether the broker has an exchange called ``name`` (a passive declaration)."""
        try:
            with self.channel() as channel:
                channel.exchange_declare(name, passive=True)
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code == 404:
                return False
            raise
        return True

    def publish(self, queue: str, body: bytes, **properties: Any) -> None:
        """Send a message straight to ``queue`` (default exchange)."""
        with self.channel() as channel:
            channel.basic_publish("", queue, body, pika.BasicProperties(**properties))

    def drain(self, queue: str) -> list[Received]:
        """Every message in ``queue`` now, acknowledged."""
        received = []
        with self.channel() as channel:
            while True:
                method, properties, body = channel.basic_get(queue, auto_ack=True)
                if method is None:
                    return received
                received.append(Received(method.routing_key, properties, body))

    def depth(self, queue: str) -> int:
        """Messages ready in ``queue``."""
        with self.channel() as channel:
            return channel.queue_declare(queue, passive=True).method.message_count

    @contextlib.contextmanager
    def channel(self) -> Iterator[Any]:
        connection = _connect(self.url)
        try:
            yield connection.channel()
        finally:
            with contextlib.suppress(pika.exceptions.AMQPError):
                connection.close()

    def cleanup(self) -> None:
        """Delete this test's queues and exchanges (each on its own channel: a refusal
        closes only that one)."""
        with contextlib.suppress(pika.exceptions.AMQPError, OSError):
            connection = _connect(self.url)
            try:
                for queue in dict.fromkeys(self.queues):
                    with contextlib.suppress(pika.exceptions.AMQPError):
                        connection.channel().queue_delete(queue)
                for exchange in dict.fromkeys(self.exchanges):
                    with contextlib.suppress(pika.exceptions.AMQPError):
                        connection.channel().exchange_delete(exchange)
            finally:
                with contextlib.suppress(pika.exceptions.AMQPError):
                    connection.close()


@pytest.fixture
def amqp(amqp_url: str) -> Iterator[AmqpTestBroker]:
    """This test's names on the session's broker; its exchanges and queues are deleted
    after the test."""
    broker = AmqpTestBroker(amqp_url, f"jltest-{uuid.uuid4().hex[:8]}")
    yield broker
    broker.cleanup()


@pytest.fixture
def broker_proxy(amqp_url: str) -> Iterator[TcpProxy]:
    """A :class:`~tests.support.tcp_proxy.TcpProxy` in front of the session's broker
    (``broker_proxy.url(amqp.url)`` goes through it), closed after the test."""
    parts = urlsplit(amqp_url)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5672)
    yield proxy
    proxy.close()
