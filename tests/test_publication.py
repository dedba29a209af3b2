"""Publication over RabbitMQ (issue 6), against the real broker and PostgreSQL: the outbox
relay with publisher confirms, broker outages, concurrent relays, unroutable messages,
no broker at all, partial publication, republication, consumer feedback, timeliness.

Every test gets a fresh database and unique exchange / queue names (in a vhost of the
session when rabbitmqctl manages the broker), deleted afterwards. Jobs are ExampleJobs
(two products: mask, quicklook) walked to ``processed`` through the status door, with the
outbox rows the worker writes (same bodies, same deterministic message ids).
"""

from __future__ import annotations

import json
import re
import socket
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pika.exceptions
import pytest
from joblife.cli.main import app
from joblife.config import Settings, get_settings
from joblife.db.engine import create_joblife_engine
from joblife.db.status import set_job_status
from joblife.errors import ConfigurationError
from joblife.lifecycle.common import ServiceContext
from joblife.lifecycle.orchestrator import Orchestrator
from joblife.model import Job, JobStatus, JobStatusChange, Publication
from joblife.publication import broker as broker_module
from joblife.publication import relay as relay_module
from joblife.publication.broker import (
    ConfirmingPublisher,
    Delivery,
    Outcome,
    OutgoingMessage,
    SentBatch,
)
from joblife.publication.outbox import claim, republication_message_id, republish
from joblife.publication.relay import PublicationService
from joblife.publication.topology import Topology, encode_body
from joblife.worker.runner import message_id
from sqlalchemy import Engine, select, text, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session
from typer.testing import CliRunner, Result

from tests.support.amqp import AmqpTestBroker, Received
from tests.support.example_type import ExampleJob
from tests.support.factories import make_jobs, move_to
from tests.support.lifecycle import RecordingExecutor, wait_for
from tests.support.tcp_proxy import TcpProxy

S = JobStatus
PRODUCTS = ExampleJob.OUTPUT_PRODUCTS_LIST


# -- helpers ---------------------------------------------------------------------------------
def processed_jobs(
    session: Session, count: int, prefix: str = "P", attempt: int = 1, **fields: Any
) -> list[int]:
    """``count`` ExampleJobs (with ``fields``) in ``processed`` at ``attempt``, each with
    the outbox rows the worker writes for it, in one transaction as the worker's (a relay
    running meanwhile must never see them processed without their rows: it would finish
    them with nothing to publish)."""
    base = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)
    jobs = make_jobs(session, count, prefix=prefix, input_publication_date=base, **fields)
    ids = [job.id for job in jobs]
    move_to(session, ids, S.PROCESSED, commit=False)
    session.execute(
        update(Job)
        .where(Job.id.in_(ids))
        .values(attempt=attempt, exit_code=0, output_path="s3://x")
    )
    session.flush()
    for job in jobs:
        session.refresh(job)
        for body in job.get_products_publication_jsons():
            session.add(
                Publication(
                    job_id=job.id,
                    attempt=attempt,
                    product=body["product"],
                    message_id=message_id(job.unique_id, body["product"], attempt),
                    body=body,
                )
            )
    session.commit()
    return ids


def rows(session: Session, job_ids: Sequence[int] | None = None) -> list[Publication]:
    session.expire_all()
    stmt = select(Publication).order_by(Publication.id)
    if job_ids is not None:
        stmt = stmt.where(Publication.job_id.in_(list(job_ids)))
    return list(session.scalars(stmt))


def statuses(session: Session, job_ids: Sequence[int]) -> dict[int, JobStatus]:
    session.expire_all()
    return {
        job_id: JobStatus(status)
        for job_id, status in session.execute(
            select(Job.id, Job.status_id).where(Job.id.in_(list(job_ids)))
        )
    }


def history(session: Session, job_id: int) -> list[tuple[JobStatus, str | None]]:
    changes = session.scalars(
        select(JobStatusChange).where(JobStatusChange.job_id == job_id).order_by(JobStatusChange.id)
    )
    return [(JobStatus(c.status), c.message) for c in changes]


class RecordingPublisher(ConfirmingPublisher):
    """The real publisher, remembering every message it sent and what became of it, and
    calling ``on_confirmations(count)`` after each confirmation frame (to cut the broker
    mid-batch)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sent: Counter[str] = Counter()
        self.confirmed: Counter[str] = Counter()
        self.unconfirmed: set[str] = set()
        self.resent_after_confirmation: list[str] = []
        self.confirmations = 0
        self.on_confirmations: Callable[[int], None] | None = None
        self._messages: dict[int, list[OutgoingMessage]] = {}

    def send(self, messages: Sequence[OutgoingMessage]) -> SentBatch:
        for message in messages:
            if self.confirmed[message.message_id]:
                self.resent_after_confirmation.append(message.message_id)
            self.sent[message.message_id] += 1
        batch = super().send(messages)
        self._messages[id(batch)] = list(messages)
        return batch

    def wait_confirmed(self, batch: SentBatch, timeout: float) -> list[Delivery]:
        deliveries = super().wait_confirmed(batch, timeout)
        messages = self._messages.pop(id(batch))
        for message, delivery in zip(messages, deliveries, strict=True):
            if delivery.outcome is Outcome.CONFIRMED:
                self.confirmed[message.message_id] += 1
            elif delivery.outcome is Outcome.UNCONFIRMED:
                self.unconfirmed.add(message.message_id)
        return deliveries

    def _on_confirmation(self, frame: Any) -> None:
        super()._on_confirmation(frame)
        self.confirmations += 1
        if self.on_confirmations is not None:
            self.on_confirmations(self.confirmations)


@pytest.fixture
def make_service(
    engine: Engine, amqp: AmqpTestBroker
) -> Iterator[Callable[..., PublicationService]]:
    """Build publication services on this test's database and exchange; closed after."""
    made: list[PublicationService] = []
    exchange = amqp.track_exchange(amqp.name("products"))

    def make(
        url: str | None = amqp.url, recording: bool = False, **overrides: Any
    ) -> PublicationService:
        values: dict[str, Any] = {
            "amqp_url": url,
            "amqp_exchange": exchange,
            "amqp_reconnect_max_seconds": 0.2,
            "amqp_confirm_timeout_seconds": 10,
            "amqp_heartbeat_seconds": 10,
            **overrides,
        }
        settings = Settings(**values)
        context = ServiceContext(engine, settings)
        publisher = None
        if recording and url:
            publisher = RecordingPublisher(
                url,
                Topology.from_settings(settings),
                heartbeat=settings.amqp_heartbeat_seconds,
                feedback_queue=settings.amqp_feedback_queue,
            )
        made.append(PublicationService(context, publisher=publisher))
        return made[-1]

    yield make
    for service in made:
        service.close()


@pytest.fixture
def queue(amqp: AmqpTestBroker) -> str:
    """A durable queue bound to every routing key of the test's exchange."""
    return amqp.queue("all", amqp.exchange("products"), "#")


def run(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def by_id(received: Sequence[Received]) -> dict[str, Received]:
    return {m.properties.message_id: m for m in received}


# -- delivery ------------------------------------------------------------------------------
def test_consumer_receives_exactly_the_processed_products(
    session: Session,
    make_service: Callable[..., PublicationService],
    amqp: AmqpTestBroker,
    queue: str,
):
    ids = processed_jobs(session, 3)
    other = make_jobs(session, 1, prefix="Q")[0].id  # not processed: nothing of it is sent
    move_to(session, [other], S.PROCESSING)
    expected = {r.message_id: r for r in rows(session)}
    assert len(expected) == 6

    report = make_service().run_cycle(max_batches=0)

    assert report.error is None and report.result.confirmed == 6 and report.result.done == 3
    received = amqp.drain(queue)
    assert len(received) == 6
    assert set(by_id(received)) == set(expected)
    for message in received:
        row = expected[message.properties.message_id]
        assert json.loads(message.body) == row.body
        assert message.properties.content_type == "application/json"
        assert message.properties.delivery_mode == 2
        assert message.properties.headers == {
            "job_type": "example",
            "job_id": row.job_id,
            "product": row.product,
            "attempt": 1,
        }
        assert message.routing_key == f"example.{row.product}"
    published = rows(session)
    assert all(r.published_at is not None for r in published)
    assert {r.routing_key for r in published} == {"example.mask", "example.quicklook"}
    assert statuses(session, ids) == dict.fromkeys(ids, S.DONE)
    assert statuses(session, [other]) == {other: S.PROCESSING}
    for job_id in ids:
        assert [s for s, _ in history(session, job_id)][-4:] == [
            S.PROCESSED,
            S.START_PUBLICATION,
            S.PUBLISHED,
            S.DONE,
        ]
        job = session.get(Job, job_id)
        confirmations = [r.published_at for r in published if r.job_id == job_id]
        assert job.output_publication_date == max(confirmations)  # the hook got it


def test_broker_cut_mid_batch_loses_nothing_and_resends_no_confirmed_message(
    session: Session,
    make_service: Callable[..., PublicationService],
    amqp: AmqpTestBroker,
    queue: str,
    broker_proxy: TcpProxy,
):
    ids = processed_jobs(session, 150)  # 300 messages
    service = make_service(broker_proxy.url(amqp.url), recording=True, publication_batch_size=100)
    publisher: RecordingPublisher = service.publisher  # type: ignore[assignment]

    def cut_once(confirmations: int) -> None:
        # After a first confirmation, while messages sent are still unanswered.
        if publisher._inflight and broker_proxy.accepting.is_set():
            broker_proxy.cut()

    publisher.on_confirmations = cut_once
    first = service.run_cycle(max_batches=0)
    assert not publisher.connected
    assert first.result.unconfirmed > 0, first.as_dict()
    pending = [r for r in rows(session) if r.published_at is None]
    assert len(pending) >= first.result.unconfirmed
    assert set(statuses(session, ids).values()) <= {S.PROCESSED, S.START_PUBLICATION, S.DONE}

    # The broker stays unreachable: nothing moves, nothing is lost.
    publisher.on_confirmations = None
    down = service.run_cycle(max_batches=0)
    assert down.error and not down.connected and down.result.jobs == 0
    assert len([r for r in rows(session) if r.published_at is None]) == len(pending)

    broker_proxy.restore()
    wait_for(lambda: service.run_cycle(max_batches=0).connected, timeout=10, message="reconnection")
    service.run_cycle(max_batches=0)

    received = amqp.drain(queue)
    received_ids = Counter(m.properties.message_id for m in received)
    all_ids = {r.message_id for r in rows(session)}
    assert set(received_ids) == all_ids and len(all_ids) == 300  # nothing lost
    assert sum(publisher.sent.values()) >= 300 and sum(publisher.confirmed.values()) == 300
    assert publisher.resent_after_confirmation == []  # no confirmed message sent again
    assert all(count == 1 for count in publisher.confirmed.values())
    duplicates = {mid for mid, n in received_ids.items() if n > 1}
    assert duplicates <= publisher.unconfirmed  # only unconfirmed ones may arrive twice
    assert all(r.published_at is not None for r in rows(session))
    assert set(statuses(session, ids).values()) == {S.DONE}


def test_confirmed_messages_are_not_sent_again_when_their_commit_failed(
    session: Session,
    make_service: Callable[..., PublicationService],
    amqp: AmqpTestBroker,
    queue: str,
    monkeypatch: pytest.MonkeyPatch,
):
    """The broker confirmed a batch, then the database commit that records it failed: the
    next cycle records those messages as published without sending them again."""
    ids = processed_jobs(session, 2)
    service = make_service(recording=True)
    real_record = relay_module.outbox.record
    calls = 0

    def record_then_lose_the_database(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        result = real_record(*args, **kwargs)
        if calls == 1:
            raise OperationalError("COMMIT", {}, Exception("server closed the connection"))
        return result

    monkeypatch.setattr(relay_module.outbox, "record", record_then_lose_the_database)
    with pytest.raises(OperationalError):
        service.run_cycle()
    assert statuses(session, ids) == dict.fromkeys(ids, S.PROCESSED)  # rolled back
    assert all(r.published_at is None for r in rows(session, ids))

    report = service.run_cycle()
    assert report.error is None and report.result.confirmed == 4 and report.result.done == 2
    assert statuses(session, ids) == dict.fromkeys(ids, S.DONE)
    assert all(r.published_at is not None for r in rows(session, ids))
    publisher = service.publisher
    assert isinstance(publisher, RecordingPublisher)
    assert publisher.resent_after_confirmation == []
    assert sorted(publisher.sent.values()) == [1, 1, 1, 1]
    assert len(amqp.drain(queue)) == 4


def test_wrong_port_then_right_port(
    session: Session,
    make_service: Callable[..., PublicationService],
    amqp: AmqpTestBroker,
    queue: str,
):
    ids = processed_jobs(session, 2)
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    right = amqp.url
    wrong = right.replace("127.0.0.1:5672", f"127.0.0.1:{closed_port}")
    assert wrong != right
    service = make_service(wrong)

    report = service.run_cycle()
    assert report.error and "cannot publish" in report.error and not report.connected
    assert statuses(session, ids) == dict.fromkeys(ids, S.PROCESSED)
    assert all(r.published_at is None for r in rows(session))
    assert amqp.depth(queue) == 0

    service.publisher.url = right  # type: ignore[union-attr]
    wait_for(
        lambda: service.run_cycle(max_batches=0).result.done, timeout=10, message="publication"
    )
    assert len(amqp.drain(queue)) == 4
    assert statuses(session, ids) == dict.fromkeys(ids, S.DONE)


def test_two_services_at_once_deliver_each_message_once(
    session: Session,
    make_service: Callable[..., PublicationService],
    amqp: AmqpTestBroker,
    queue: str,
):
    ids = processed_jobs(session, 300)  # 600 messages
    services = [make_service(recording=True, publication_batch_size=40) for _ in range(2)]
    for service in services:
        assert service.run_cycle(max_batches=1).connected  # connect, and a first batch
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def work(service: PublicationService) -> None:
        try:
            barrier.wait()
            service.run_cycle(max_batches=0)
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s,)) for s in services]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors

    received = Counter(m.properties.message_id for m in amqp.drain(queue))
    assert len(received) == 600 and set(received.values()) == {1}
    sent = [service.publisher.sent for service in services]  # type: ignore[union-attr]
    assert all(sum(s.values()) > 0 for s in sent)  # both took part
    assert not set(sent[0]) & set(sent[1])  # never the same message
    assert set(statuses(session, ids).values()) == {S.DONE}


# -- failures ------------------------------------------------------------------------------
def test_unroutable_product_fails_the_job_then_republish_sends_only_it(
    session: Session,
    make_service: Callable[..., PublicationService],
    amqp: AmqpTestBroker,
    joblife_env: str,
):
    [job_id] = processed_jobs(session, 1)
    exchange = amqp.exchange("products")
    masks = amqp.queue("masks", exchange, "example.mask")  # no queue for quicklook
    service = make_service()

    report = service.run_cycle()

    assert report.result.returned == 1 and report.result.failed_jobs == 1
    assert statuses(session, [job_id]) == {job_id: S.EXTERNAL_ERROR}
    _, message = history(session, job_id)[-1]
    assert "quicklook" in message and "NO_ROUTE" in message and "example.quicklook" in message
    assert f"joblife jobs republish {job_id}" in message
    mask, quicklook = sorted(rows(session), key=lambda r: r.product)
    assert mask.published_at is not None and mask.error is None
    assert quicklook.published_at is None and "NO_ROUTE" in quicklook.error
    assert [m.properties.message_id for m in amqp.drain(masks)] == [mask.message_id]
    listed = json.loads(run("publications", "list", "--state", "failed", "--json").stdout)
    assert [r["message_id"] for r in listed] == [quicklook.message_id]

    # The operator binds a queue for it, then republishes: only quicklook is sent.
    everything = amqp.queue("all", exchange, "#")
    result = run("jobs", "republish", str(job_id))
    assert result.exit_code == 0, result.output
    assert statuses(session, [job_id]) == {job_id: S.PROCESSED}
    assert service.run_cycle().result.done == 1
    assert [m.properties.message_id for m in amqp.drain(everything)] == [quicklook.message_id]
    assert amqp.drain(masks) == []
    assert statuses(session, [job_id]) == {job_id: S.DONE}


def test_a_message_over_the_byte_cap_fails_its_job_alone_and_the_others_flow(
    session: Session,
    make_service: Callable[..., PublicationService],
    amqp: AmqpTestBroker,
    queue: str,
    joblife_env: str,
):
    """A product message larger than the broker takes (RabbitMQ closes the channel on a
    message over its max_message_size, losing the messages sent with it, and the relay
    sent it again at every reconnection: the outbox stalled) is never sent: with
    product_message_max_bytes 4096, the first job's 6 kB mask fails that job alone
    (internal_error naming it), and every other message of the same batch is confirmed.
    The operator raises the cap and republishes: only the large message is sent."""
    first, *others = processed_jobs(session, 3)
    big = next(r for r in rows(session, [first]) if r.product == "mask")
    big.body = {**big.body, "padding": "x" * 6000}  # a type's own large field
    session.commit()
    service = make_service(recording=True, product_message_max_bytes=4096)

    report = service.run_cycle(max_batches=0)

    assert report.error is None and report.batches == 1 and report.connected
    result = report.result
    assert (result.messages, result.confirmed, result.too_large) == (6, 5, 1)
    assert (result.failed_jobs, result.done, result.unconfirmed) == (1, 2, 0)
    assert service.publisher.sent[big.message_id] == 0  # never sent: the channel stays open
    received = by_id(amqp.drain(queue))
    assert set(received) == {r.message_id for r in rows(session)} - {big.message_id}
    assert statuses(session, [first, *others]) == {
        first: S.INTERNAL_ERROR,
        **dict.fromkeys(others, S.DONE),
    }
    _, message = history(session, first)[-1]
    assert message is not None
    assert "too large to publish (mask)" in message
    assert f"{len(encode_body(big.body))} bytes, over product_message_max_bytes (4096)" in message
    assert f"joblife jobs republish {first}" in message
    mask, quicklook = sorted(rows(session, [first]), key=lambda r: r.product)
    assert mask.published_at is None and "product_message_max_bytes" in (mask.error or "")
    assert quicklook.published_at is not None
    listed = json.loads(run("publications", "list", "--state", "failed", "--json").stdout)
    assert [r["message_id"] for r in listed] == [big.message_id]

    # The broker takes it (its max_message_size is larger): the cap raised, republished.
    result = run("jobs", "republish", str(first))
    assert result.exit_code == 0, result.output
    again = make_service().run_cycle()
    assert (again.result.confirmed, again.result.done) == (1, 1)
    [delivered] = amqp.drain(queue)
    assert delivered.properties.message_id == big.message_id
    assert json.loads(delivered.body)["padding"] == "x" * 6000
    assert statuses(session, [first]) == {first: S.DONE}


def test_a_job_with_a_too_large_and_an_unroutable_message_names_both(
    session: Session,
    make_service: Callable[..., PublicationService],
    amqp: AmqpTestBroker,
    joblife_env: str,
):
    """One job, its mask over the byte cap and its quicklook bound to no queue: the job
    fails once (internal_error) and its message and details name both problems, so the
    operator fixes both before republishing instead of meeting the second one after."""
    [job_id] = processed_jobs(session, 1)
    exchange = amqp.exchange("products")
    amqp.queue("masks", exchange, "example.mask")  # no queue for quicklook
    big = next(r for r in rows(session, [job_id]) if r.product == "mask")
    big.body = {**big.body, "padding": "x" * 6000}
    session.commit()

    result = make_service(product_message_max_bytes=4096).run_cycle().result

    assert (result.too_large, result.returned, result.failed_jobs) == (1, 1, 1)
    assert statuses(session, [job_id]) == {job_id: S.INTERNAL_ERROR}
    _, message = history(session, job_id)[-1]
    assert message is not None
    assert "too large to publish (mask)" in message
    assert "not routed to any queue (quicklook)" in message and "NO_ROUTE" in message
    with session.get_bind().connect() as conn:
        details = conn.execute(
            text(
                "SELECT details FROM job_status_changes WHERE job_id = :id ORDER BY id DESC LIMIT 1"
            ),
            {"id": job_id},
        ).scalar_one()
    assert [d["product"] for d in details["too_large"]] == ["mask"]
    assert [d["product"] for d in details["unroutable"]] == ["quicklook"]


def test_the_broker_s_own_size_refusal_says_which_setting_to_lower():
    """Were product_message_max_bytes above the broker's max_message_size, the broker
    closes the channel (the text is RabbitMQ's, from a real refusal): the lost
    connection's reason says what to set."""
    refusal = pika.exceptions.ChannelClosedByBroker(
        406,
        "PRECONDITION_FAILED - message size 134217729 is larger than configured max size 134217728",
    )
    assert "set product_message_max_bytes at or below" in broker_module._size_hint(refusal)
    other = pika.exceptions.ChannelClosedByBroker(406, "PRECONDITION_FAILED - inequivalent arg")
    assert broker_module._size_hint(other) == ""


def test_no_broker_url_keeps_messages_in_the_outbox(
    session: Session,
    engine: Engine,
    make_service: Callable[..., PublicationService],
    joblife_env: str,
    monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.delenv("JOBLIFE_AMQP_URL", raising=False)
    monkeypatch.setenv("JOBLIFE_PUBLICATION_SPOOL", "none")  # else the embedded default spool
    get_settings.cache_clear()
    ids = processed_jobs(session, 2)
    service = make_service(None, publication_spool="none")
    assert not service.enabled

    report = service.run_cycle()
    assert not report.enabled and report.result.jobs == 0 and report.error is None
    orchestrator = Orchestrator(
        ServiceContext(engine, service.context.settings), RecordingExecutor(), ["publish"]
    )
    cycle = orchestrator.run_once()
    assert cycle.errors == {} and cycle.results["publish"]["enabled"] is False
    assert statuses(session, ids) == dict.fromkeys(ids, S.PROCESSED)

    listed = run("publications", "list")
    assert listed.exit_code == 0, listed.output
    assert len(re.findall(r"│\s*pending\s*│", listed.output)) == 4
    assert "no broker configured" in listed.output
    publish = run("publish", "--once")
    assert publish.exit_code == 1
    assert "no broker (JOBLIFE_AMQP_URL) nor spool (JOBLIFE_PUBLICATION_SPOOL)" in publish.output
    assert all(r.published_at is None for r in rows(session))


def test_partly_published_job_resends_only_the_unconfirmed_products(
    session: Session,
    make_service: Callable[..., PublicationService],
    amqp: AmqpTestBroker,
    queue: str,
):
    [job_id] = processed_jobs(session, 1)
    set_job_status(session, job_id, S.START_PUBLICATION, expected=S.PROCESSED)
    earlier = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)
    mask = next(r for r in rows(session) if r.product == "mask")
    mask.published_at = earlier  # confirmed by an earlier run, before it was interrupted
    session.commit()

    report = make_service().run_cycle()

    assert report.result.messages == 1 and report.result.done == 1
    received = amqp.drain(queue)
    assert [(m.properties.headers["product"]) for m in received] == ["quicklook"]
    assert statuses(session, [job_id]) == {job_id: S.DONE}
    assert next(r for r in rows(session) if r.product == "mask").published_at == earlier


def test_republish_done_jobs_sends_a_new_round(
    session: Session,
    make_service: Callable[..., PublicationService],
    amqp: AmqpTestBroker,
    queue: str,
    joblife_env: str,
):
    ids = processed_jobs(session, 2)
    service = make_service()
    service.run_cycle()
    first = {r.message_id for r in rows(session)}
    assert len(amqp.drain(queue)) == 4

    result = run("jobs", "republish", *map(str, ids), "-m", "catalogue rebuilt")
    assert result.exit_code == 0, result.output
    assert "republished 2 jobs" in result.output
    assert statuses(session, ids) == dict.fromkeys(ids, S.START_PUBLICATION)
    assert service.run_cycle().result.done == 2

    again = amqp.drain(queue)
    assert len(again) == 4 and not ({m.properties.message_id for m in again} & first)
    assert {r.republication for r in rows(session)} == {0, 1}
    for row in rows(session):  # the database's uuid3 is Python's
        if row.republication == 1:
            job = session.get(Job, row.job_id)
            assert row.message_id == republication_message_id(job.unique_id, row.product, 1, 1)
    assert statuses(session, ids) == dict.fromkeys(ids, S.DONE)
    assert (S.START_PUBLICATION, "catalogue rebuilt") in history(session, ids[0])

    [fresh] = processed_jobs(session, 1, prefix="F")
    refused = run("jobs", "republish", str(ids[0]), str(fresh))
    assert refused.exit_code == 1 and f"job {fresh} is processed" in refused.output
    assert statuses(session, ids) == dict.fromkeys(ids, S.DONE)  # all or nothing


def test_feedback_queue_reports_map_to_the_job_by_message_id(
    session: Session,
    make_service: Callable[..., PublicationService],
    amqp: AmqpTestBroker,
    queue: str,
):
    [job_id, other] = processed_jobs(session, 2)
    feedback = amqp.name("feedback")
    amqp.queues.append(feedback)
    service = make_service(amqp_feedback_queue=feedback)
    service.run_cycle()
    assert statuses(session, [job_id, other]) == {job_id: S.DONE, other: S.DONE}
    target = next(r for r in rows(session) if r.job_id == job_id and r.product == "quicklook")

    amqp.publish(feedback, b"not json")
    amqp.publish(
        feedback,
        json.dumps({"message_id": target.message_id, "error": "catalogue refused"}).encode(),
    )
    wait_for(lambda: service.publisher.feedback_inbox or service.idle(0.2), timeout=10)  # type: ignore[union-attr]
    wait_for(lambda: service.run_cycle().feedback or service.idle(0.2), timeout=10)

    assert statuses(session, [job_id, other]) == {job_id: S.EXTERNAL_ERROR, other: S.DONE}
    _, message = history(session, job_id)[-1]
    assert "catalogue refused" in message and target.message_id in message
    assert next(r for r in rows(session) if r.id == target.id).error == "catalogue refused"
    assert amqp.depth(feedback) == 0  # the malformed one was rejected, not requeued


# -- topology from the configuration ------------------------------------------------------
def refusal(amqp: AmqpTestBroker, exchange: str, exchange_type: str, durable: bool) -> str | None:
    """Why the broker refuses to declare ``exchange`` so (None: accepted, i.e. it exists
    with that type and durability, or did not exist)."""
    try:
        with amqp.channel() as channel:
            channel.exchange_declare(exchange, exchange_type, durable=durable)
    except pika.exceptions.ChannelClosedByBroker as exc:
        return exc.reply_text
    return None


def test_routing_key_template_from_the_settings(
    session: Session, make_service: Callable[..., PublicationService], amqp: AmqpTestBroker
):
    template = "{input_product_type}.{tile_id}.{job_type}.{product}"
    [tiled] = processed_jobs(session, 1, prefix="T", tile_id="31TCJ")
    [untiled] = processed_jobs(session, 1, prefix="U")  # no tile: "none"
    exchange = amqp.exchange("products")
    everything = amqp.queue("all", exchange, "#")
    tile = amqp.queue("tile", exchange, "s2.31TCJ.#")
    masks = amqp.queue("masks", exchange, "*.*.example.mask")

    report = make_service(amqp_routing_key_template=template).run_cycle()

    assert report.error is None and report.result.done == 2
    keys = {
        (job_id, f"s2.{tile_id}.example.{product}")
        for job_id, tile_id in ((tiled, "31TCJ"), (untiled, "none"))
        for product in PRODUCTS
    }
    assert {(m.properties.headers["job_id"], m.routing_key) for m in amqp.drain(everything)} == keys
    assert {m.routing_key for m in amqp.drain(tile)} == {f"s2.31TCJ.example.{p}" for p in PRODUCTS}
    assert sorted(m.routing_key for m in amqp.drain(masks)) == [
        "s2.31TCJ.example.mask",
        "s2.none.example.mask",
    ]
    assert {(r.job_id, r.routing_key) for r in rows(session)} == keys  # recorded as sent


@pytest.mark.parametrize(
    ("exchange_type", "bindings", "routed"),
    [
        # A direct exchange matches keys exactly: "#" is no wildcard there.
        pytest.param("direct", [("example.mask", None), ("#", None)], {"mask"}, id="direct"),
        # A fanout exchange ignores the routing key.
        pytest.param("fanout", [("unrelated", None)], {"mask", "quicklook"}, id="fanout"),
        # A headers exchange routes on the message headers, not the key.
        pytest.param(
            "headers",
            [("example.mask", {"x-match": "all", "job_type": "example", "product": "quicklook"})],
            {"quicklook"},
            id="headers",
        ),
    ],
)
def test_exchange_declared_with_the_configured_type(
    exchange_type: str,
    bindings: list[tuple[str, dict[str, Any] | None]],
    routed: set[str],
    session: Session,
    make_service: Callable[..., PublicationService],
    amqp: AmqpTestBroker,
):
    exchange = amqp.name("products")
    assert not amqp.exchange_exists(exchange)
    service = make_service(amqp_exchange_type=exchange_type)
    assert service.run_cycle().connected  # nothing to publish: connects and declares
    assert refusal(amqp, exchange, exchange_type, durable=True) is None  # as declared
    other = "topic" if exchange_type != "topic" else "direct"
    assert "inequivalent arg 'type'" in (refusal(amqp, exchange, other, durable=True) or "")
    assert "inequivalent arg 'durable'" in (
        refusal(amqp, exchange, exchange_type, durable=False) or ""
    )
    queue = amqp.queue("bound")
    for routing_key, arguments in bindings:
        amqp.bind(queue, exchange, routing_key, arguments)
    [job_id] = processed_jobs(session, 1)

    report = service.run_cycle()

    received = amqp.drain(queue)
    assert sorted(m.properties.headers["product"] for m in received) == sorted(routed)
    unroutable = sorted(set(PRODUCTS) - routed)
    assert (report.result.confirmed, report.result.returned) == (len(routed), len(unroutable))
    if not unroutable:
        assert statuses(session, [job_id]) == {job_id: S.DONE}
        return
    assert statuses(session, [job_id]) == {job_id: S.EXTERNAL_ERROR}
    _, message = history(session, job_id)[-1]
    assert "NO_ROUTE" in message and all(product in message for product in unroutable)


def test_topology_not_ours_is_only_checked(
    session: Session,
    make_service: Callable[..., PublicationService],
    amqp: AmqpTestBroker,
    joblife_env: str,
    monkeypatch: pytest.MonkeyPatch,
):
    """``amqp_declare_topology=false``: joblife declares nothing; a missing exchange (or
    feedback queue) is a clear error and the messages wait; once it exists, they go."""
    ids = processed_jobs(session, 2)
    exchange = amqp.name("products")
    service = make_service(amqp_declare_topology=False)

    report = service.run_cycle()

    assert not report.connected and report.error is not None
    assert "404" in report.error and f"exchange {exchange!r} does not exist" in report.error
    assert "amqp_declare_topology" in report.error
    assert not amqp.exchange_exists(exchange)  # checked, not declared
    monkeypatch.setenv("JOBLIFE_AMQP_URL", amqp.url)
    monkeypatch.setenv("JOBLIFE_AMQP_EXCHANGE", exchange)
    monkeypatch.setenv("JOBLIFE_AMQP_DECLARE_TOPOLOGY", "false")
    get_settings.cache_clear()
    published = run("publish", "--once")
    assert published.exit_code == 1 and f"exchange {exchange!r} does not exist" in published.output
    assert statuses(session, ids) == dict.fromkeys(ids, S.PROCESSED)
    assert all(r.published_at is None for r in rows(session))

    # The exchange is the broker administrators' (here of another type than the setting's:
    # it is not declared, so its type is not checked either).
    queue = amqp.queue("all", amqp.exchange("products", "fanout"), "")
    wait_for(
        lambda: service.run_cycle(max_batches=0).result.done, timeout=10, message="publication"
    )
    assert len(amqp.drain(queue)) == 4
    assert statuses(session, ids) == dict.fromkeys(ids, S.DONE)

    feedback = amqp.name("feedback")  # a feedback queue is checked the same way
    missing = make_service(amqp_declare_topology=False, amqp_feedback_queue=feedback)
    report = missing.run_cycle()
    assert (
        report.error is not None and f"feedback queue {feedback!r} does not exist" in report.error
    )


KNOWN_PLACEHOLDERS = "{job_type}, {product}, {input_product_type}, {tile_id}"


@pytest.mark.parametrize(
    ("template", "complaint"),
    [
        ("{job_type}.{produkt}", "uses unknown placeholders {produkt}"),
        ("{job_type}.{}", "uses unknown placeholders {}"),
        ("{job_type.upper}", "uses unknown placeholders {job_type.upper}"),
        ("{job_type}.{product", "expected '}' before end of string"),
        ("{product!x}", "Unknown conversion specifier x"),
        ("{product:d}", "Unknown format code 'd'"),
    ],
)
def test_routing_key_template_is_checked_before_anything_is_sent(
    template: str,
    complaint: str,
    session: Session,
    amqp: AmqpTestBroker,
    joblife_env: str,
    monkeypatch: pytest.MonkeyPatch,
):
    with pytest.raises(ConfigurationError) as refused:
        Topology.from_settings(Settings(amqp_routing_key_template=template))
    assert complaint in str(refused.value) and KNOWN_PLACEHOLDERS in str(refused.value)
    assert f"amqp_routing_key_template {template!r}" in str(refused.value)

    ids = processed_jobs(session, 1)
    monkeypatch.setenv("JOBLIFE_AMQP_URL", amqp.url)
    monkeypatch.setenv("JOBLIFE_AMQP_EXCHANGE", amqp.track_exchange(amqp.name("products")))
    monkeypatch.setenv("JOBLIFE_AMQP_ROUTING_KEY_TEMPLATE", template)
    get_settings.cache_clear()
    for command in (["publish", "--once"], ["run", "--once", "--services", "publish"]):
        result = run(*command)
        assert result.exit_code == 1 and complaint in result.output, result.output
    assert not amqp.exchange_exists(amqp.name("products"))  # refused before connecting
    assert statuses(session, ids) == {ids[0]: S.PROCESSED}


# -- timeliness ------------------------------------------------------------------------------
def test_timeliness_per_type_against_known_dates(session: Session, joblife_env: str):
    base = datetime(2026, 11, 1, tzinfo=UTC)
    hours = [1, 2, 3, 5]
    jobs = make_jobs(session, len(hours) + 1, prefix="T", input_publication_date=base)
    for job, h in zip(jobs, hours, strict=False):
        job.output_publication_date = base + timedelta(hours=h)
    move_to(session, [jobs[-1].id], S.PROCESSED)  # published input, output pending
    session.commit()

    result = run("timeliness", "--target", "3h", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["target_seconds"] == 3 * 3600
    [row] = data["job_types"]
    assert row["job_type"] == "example"
    assert (row["published"], row["pending"]) == (4, 1)
    assert row["p50_seconds"] == pytest.approx(2.5 * 3600)
    assert row["p90_seconds"] == pytest.approx(4.4 * 3600)  # 3h + 0.7 * (5h - 3h)
    assert row["p99_seconds"] == pytest.approx(4.94 * 3600)
    assert row["max_seconds"] == pytest.approx(5 * 3600)
    assert (row["within_target"], row["within_target_share"]) == (3, 0.75)

    window = json.loads(
        run("timeliness", "--target", "1h", "--since", "2026-11-01T02:30:00+00:00", "--json").stdout
    )
    [row] = window["job_types"]
    assert (row["published"], row["within_target"]) == (2, 0)  # 3h and 5h only
    table = run("timeliness")
    assert table.exit_code == 0 and "example" in table.output and "target: 3h" in table.output


def test_claim_locks_only_the_jobs_its_batch_publishes(engine: Engine, session: Session):
    ids = processed_jobs(session, 5)  # 2 messages each
    topology = Topology("unused")
    with Session(engine) as first, Session(engine) as second:
        mine = claim(first, 3, topology, {"example": ExampleJob})
        assert [job.id for job in mine] == ids[:1]  # 2 messages; a second job would be 4
        assert [len(job.rows) for job in mine] == [2]
        # The jobs beyond the cut were locked, then released: another relay takes them.
        theirs = claim(second, 100, topology, {"example": ExampleJob})
        assert [job.id for job in theirs] == ids[1:]
        first.rollback()
        second.rollback()


def test_publish_once_and_run_once_publish_with_a_broker(
    session: Session,
    amqp: AmqpTestBroker,
    queue: str,
    joblife_env: str,
    monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.setenv("JOBLIFE_AMQP_URL", amqp.url)
    monkeypatch.setenv("JOBLIFE_AMQP_EXCHANGE", amqp.name("products"))
    get_settings.cache_clear()
    first = processed_jobs(session, 2)

    result = run("publish", "--once", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["confirmed"], report["done"], report["connected"]) == (4, 2, True)
    assert len(amqp.drain(queue)) == 4

    second = processed_jobs(session, 1, prefix="R")
    result = run("run", "--once", "--services", "publish", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["results"]["publish"]["done"] == 1
    assert len(amqp.drain(queue)) == 2
    assert set(statuses(session, first + second).values()) == {S.DONE}


def test_joblife_run_keeps_one_broker_connection_alive_while_idle(
    session: Session,
    engine: Engine,
    amqp: AmqpTestBroker,
    queue: str,
    broker_proxy: TcpProxy,
):
    """The orchestrator serves the broker connection while it waits between cycles: with
    a 1 s heartbeat and 4 s idle waits, an unserved connection is dropped by the broker
    (two missed heartbeats), and the next batch would need a second connection."""
    settings = Settings(
        amqp_url=broker_proxy.url(amqp.url),
        amqp_exchange=amqp.name("products"),
        amqp_heartbeat_seconds=1,
        amqp_reconnect_max_seconds=0.2,
        loop_interval=4.0,
    )
    orchestrator = Orchestrator(ServiceContext(engine, settings), RecordingExecutor(), ["publish"])
    first = processed_jobs(session, 2)
    thread = threading.Thread(target=orchestrator.run_forever, daemon=True)
    thread.start()
    try:
        wait_for(lambda: set(statuses(session, first).values()) == {S.DONE}, timeout=30)
        # Idle through more than two heartbeat intervals (a whole loop interval).
        thread.join(timeout=5.0)
        second = processed_jobs(session, 1, prefix="R")
        wait_for(lambda: set(statuses(session, second).values()) == {S.DONE}, timeout=30)
    finally:
        orchestrator.stop_event.set()
        thread.join(timeout=30)
    assert not thread.is_alive()
    assert len(amqp.drain(queue)) == 6
    assert broker_proxy.connections == 1


def test_an_operator_role_may_republish(session: Session):
    """``republish_jobs`` is an operator procedure: it works with the operator role's
    privileges (no write privilege on jobs or publications of its own)."""
    ids = processed_jobs(session, 1)
    move_to_done = [S.START_PUBLICATION, S.PUBLISHED, S.DONE]
    for step in move_to_done:
        set_job_status(session, ids, step)
    session.commit()
    session.execute(text("SET ROLE joblife_operator"))
    may_insert = session.execute(
        text("SELECT has_table_privilege('publications', 'INSERT')")
    ).scalar_one()
    assert may_insert is False
    [change] = republish(session, ids, "as an operator")
    session.commit()
    assert (change.previous_status, change.status) == (S.DONE, S.START_PUBLICATION)
    session.execute(text("RESET ROLE"))
    assert len([r for r in rows(session, ids) if r.republication == 1]) == 2


def test_the_service_role_may_relay(
    db_url: str, session: Session, amqp: AmqpTestBroker, queue: str
):
    """The relay needs no more than the joblife_service role's privileges."""
    ids = processed_jobs(session, 2)
    engine = create_joblife_engine(db_url, connect_args={"options": "-c role=joblife_service"})
    settings = Settings(amqp_url=amqp.url, amqp_exchange=amqp.name("products"))
    service = PublicationService(ServiceContext(engine, settings))
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT current_user")).scalar_one() == "joblife_service"
        report = service.run_cycle()
    finally:
        service.close()
        engine.dispose()
    assert report.error is None and report.result.done == 2
    assert len(amqp.drain(queue)) == 4
    assert set(statuses(session, ids).values()) == {S.DONE}
