"""A broker that stops answering (issue 14, item 2), against the real broker and PostgreSQL:
``joblife run`` publishes in a thread of its own, so while the broker hangs (TCP open,
nothing answered) the other services keep cycling; when it answers again every message is
confirmed and recorded once; a stop during the hang ends publication promptly and leaves
nothing half-recorded.

The hang is a black-hole proxy written here: a threaded TCP forwarder on 127.0.0.1 in
front of RabbitMQ that, when told, keeps accepting connections and reading them but
forwards nothing either way.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from joblife.config import Settings
from joblife.lifecycle.common import ServiceContext
from joblife.lifecycle.orchestrator import Orchestrator
from joblife.model import JobStatus
from joblife.ops.metrics import PROCESS_REGISTRY
from joblife.publication.relay import STOP_GRACE_SECONDS, PublicationService
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from tests.support.amqp import AmqpTestBroker, BrokerProxy
from tests.support.lifecycle import RecordingExecutor, wait_for
from tests.test_publication import processed_jobs, rows, statuses

S = JobStatus
#: The deliberate length of the hang (the issue's was 45 s).
HOLE_SECONDS = 8.0
LOOP_INTERVAL = 0.1


class BlackHoleProxy:
    """A TCP forwarder in front of the broker. :meth:`black_hole`: connections are still
    accepted and read, but nothing is forwarded in either direction (the broker seems to
    hang); :meth:`restore`: forwarding again. A connection that lost bytes in the hole has
    a broken stream: it is closed on restore (as a middlebox that lost its state would)."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(0.1)  # the accept loop sees close() within this time
        self.port = self.server.getsockname()[1]
        self.holing = threading.Event()
        #: Set once the hole swallowed bytes (something waits for the broker now).
        self.swallowed = threading.Event()
        self._tainted: list[socket.socket] = []
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    url = BrokerProxy.url

    def black_hole(self) -> None:
        """Accept and read, forward nothing."""
        self.swallowed.clear()
        self.holing.set()

    def restore(self) -> None:
        """Forward again; close the connections whose streams lost bytes."""
        with self._lock:
            self.holing.clear()
            tainted, self._tainted = self._tainted, []
        for sock in tainted:
            _close(sock)

    def close(self) -> None:
        self._closed = True
        self._thread.join(timeout=5)
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            _close(sock)
        self.server.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            with self._lock:
                self._sockets.append(client)
                if self.holing.is_set():  # nothing reaches the broker: only read
                    self._tainted.append(client)
                    threading.Thread(target=self._pipe, args=(client, None), daemon=True).start()
                    continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                _close(client)
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets.append(upstream)
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket | None) -> None:
        try:
            while data := source.recv(65536):
                with self._lock:
                    holing = self.holing.is_set()
                    if holing:
                        self._tainted += [s for s in (source, sink) if s is not None]
                if holing or sink is None:
                    self.swallowed.set()
                    continue
                sink.sendall(data)
        except OSError:
            pass
        finally:
            _close(source)
            if sink is not None:
                _close(sink)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


@pytest.fixture
def proxy(amqp_url: str) -> Iterator[BlackHoleProxy]:
    parts = urlsplit(amqp_url)
    made = BlackHoleProxy(parts.hostname or "127.0.0.1", parts.port or 5672)
    yield made
    made.close()


@pytest.fixture
def queue(amqp: AmqpTestBroker) -> str:
    """A durable queue bound to every routing key of the test's exchange."""
    return amqp.queue("all", amqp.exchange("products"), "#")


def cycles(service: str) -> float:
    """The orchestrator's own count of ``service`` cycles in this process (its metric)."""
    value = PROCESS_REGISTRY.get_sample_value("joblife_loop_cycles_total", {"service": service})
    return value or 0.0


def settings_for(amqp: AmqpTestBroker, proxy: BlackHoleProxy, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "amqp_url": proxy.url(amqp.url),
        "amqp_exchange": amqp.name("products"),
        "amqp_reconnect_max_seconds": 0.5,
        "loop_interval": LOOP_INTERVAL,
        **overrides,
    }
    return Settings(**values)


def start(orchestrator: Orchestrator) -> threading.Thread:
    thread = threading.Thread(target=orchestrator.run_forever, daemon=True)
    thread.start()
    return thread


def assert_each_message_once(session: Session, amqp: AmqpTestBroker, queue: str, ids: list[int]):
    """Every outbox row of ``ids`` is recorded published and reached the queue exactly once."""
    published = rows(session, ids)
    assert all(row.published_at is not None for row in published)
    received = Counter(m.properties.message_id for m in amqp.drain(queue))
    assert received == Counter(row.message_id for row in published)  # none lost, none twice


def test_other_services_keep_cycling_while_the_broker_hangs(
    session: Session, engine: Engine, amqp: AmqpTestBroker, queue: str, proxy: BlackHoleProxy
):
    """Before: publication waited for the broker (confirm timeout, close, connect) in the
    loop of every service, and dispatch stopped for as long."""
    settings = settings_for(
        amqp, proxy, amqp_confirm_timeout_seconds=3, amqp_connect_timeout_seconds=2
    )
    orchestrator = Orchestrator(
        ServiceContext(engine, settings), RecordingExecutor(), ["dispatch", "monitor", "publish"]
    )
    before = processed_jobs(session, 3)
    thread = start(orchestrator)
    try:
        wait_for(lambda: set(statuses(session, before).values()) == {S.DONE}, message="before")
        # The normal pace of the loop, just before the hang.
        first, began = cycles("dispatch"), time.monotonic()
        wait_for(lambda: cycles("dispatch") >= first + 20, message="20 dispatch cycles")
        normal = (cycles("dispatch") - first) / (time.monotonic() - began)

        proxy.black_hole()
        during = processed_jobs(session, 3, prefix="H")
        assert proxy.swallowed.wait(30), "publication sent nothing into the hole"
        counts = {name: cycles(name) for name in ("dispatch", "monitor")}
        began = time.monotonic()
        threading.Event().wait(HOLE_SECONDS)  # the deliberate hang
        elapsed = time.monotonic() - began
        rates = {name: (cycles(name) - counts[name]) / elapsed for name in counts}
        assert not {S.DONE} & set(statuses(session, during).values())  # publication hung
        proxy.restore()

        # Close to normal (halved at worst on a busy machine; it was 0 before the fix).
        assert rates["dispatch"] >= 0.5 * normal, (rates, normal)
        assert rates["monitor"] >= 0.5 * normal, (rates, normal)
        wait_for(
            lambda: set(statuses(session, during).values()) == {S.DONE},
            timeout=60,
            message="the messages of the hang published",
        )
    finally:
        orchestrator.stop_event.set()
        thread.join(timeout=30)
    assert not thread.is_alive()
    assert_each_message_once(session, amqp, queue, before + during)


def test_a_stop_while_the_broker_hangs_ends_publication_promptly(
    session: Session, engine: Engine, amqp: AmqpTestBroker, queue: str, proxy: BlackHoleProxy
):
    """A SIGTERM's stop does not wait the confirm timeout (30 s here): the publication
    thread gives up its wait after a grace, records the messages unconfirmed (one
    transaction: nothing half-recorded), and the next run sends each exactly once."""
    settings = settings_for(
        amqp, proxy, amqp_confirm_timeout_seconds=30, amqp_connect_timeout_seconds=30
    )
    orchestrator = Orchestrator(
        ServiceContext(engine, settings), RecordingExecutor(), ["dispatch", "monitor", "publish"]
    )
    before = processed_jobs(session, 2)
    thread = start(orchestrator)
    try:
        wait_for(lambda: set(statuses(session, before).values()) == {S.DONE}, message="before")
        proxy.black_hole()
        during = processed_jobs(session, 3, prefix="H")
        assert proxy.swallowed.wait(30), "publication sent nothing into the hole"
        publication = getattr(orchestrator, "publication_thread", None)
    finally:
        stopped = time.monotonic()
        orchestrator.stop_event.set()
        thread.join(timeout=60)
    assert not thread.is_alive()
    assert time.monotonic() - stopped < STOP_GRACE_SECONDS + 5
    assert publication is not None and not publication.alive
    assert set(statuses(session, during).values()) <= {S.PROCESSED, S.START_PUBLICATION}
    assert all(row.published_at is None for row in rows(session, during))

    proxy.restore()
    service = PublicationService(ServiceContext(engine, settings))
    try:
        report = service.run_cycle(max_batches=0)
    finally:
        service.close()
    assert (report.error, report.result.done) == (None, 3)
    assert_each_message_once(session, amqp, queue, before + during)
