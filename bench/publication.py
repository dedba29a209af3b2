"""Benchmark of publication over RabbitMQ (issue 6's targets).

Run: ``python bench/publication.py`` (``--help`` for the options). Not a test: it prints
figures, the targets and whether each is met; ``docs/benchmarks.md`` records a run.

The script creates its own database on the PostgreSQL server given by ``--database-url``
/ ``JOBLIFE_BENCH_DATABASE_URL`` (an admin URL) and a uniquely named durable exchange and
queue on the broker given by ``--amqp-url`` / ``JOBLIFE_BENCH_AMQP_URL``; all are deleted
at the end, even on failure.

1. **Relay** (``--messages``, default 10,000): that many ``test`` jobs in ``processed``,
   one outbox row each (the worker's bodies and message ids), are relayed by
   ``PublicationService.run_cycle`` (what ``joblife publish`` runs): claims with SKIP
   LOCKED, processed → start_publication, publication in confirm windows of
   ``--batch-size`` messages (persistent, mandatory, to a durable queue), rows marked
   published and jobs moved published → done, one transaction per batch. Measured: wall
   time from the first claim to the last commit, messages per second. Checked: every row
   published, every job done, the queue holds exactly that many messages with distinct ids.
2. **One connection per message** (``--baseline-messages``, default 300: the system this
   replaces): open a connection, a confirm channel, publish one message, close. Its time
   per message is extrapolated to ``--messages`` for the ratio (it is not run 10,000
   times: that would take minutes and thousands of connections).
3. **The broker alone**, no database (``--blocking-messages``, default 2,000 messages):
   pika's ``BlockingChannel`` with ``confirm_delivery`` (each ``basic_publish`` waits for
   its own confirmation), against joblife's ``ConfirmingPublisher`` (confirm windows of
   ``--batch-size``) — why the relay publishes confirm windows.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pika
from benchkit import add_database_url_argument, bench_database, print_table, sqlalchemy_url
from joblife.config import Settings
from joblife.db.engine import create_joblife_engine
from joblife.db.migrate import upgrade
from joblife.db.status import set_job_status
from joblife.jobtypes.test_job import TestJob
from joblife.lifecycle.common import ServiceContext, utc_now
from joblife.model import Job, JobStatus, Publication
from joblife.publication.broker import ConfirmingPublisher, Outcome, OutgoingMessage
from joblife.publication.relay import PublicationService
from joblife.publication.topology import Topology
from joblife.worker.runner import message_id
from sqlalchemy import Engine, func, insert, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

S = JobStatus
TARGET_RATE = 5000.0
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
TO_PROCESSED = [
    S.READY,
    S.QUEUED,
    S.STARTED,
    S.PRE_PROCESSING,
    S.PROCESSING,
    S.POST_PROCESSING,
    S.PROCESSED,
]


@contextmanager
def broker_corner(url: str) -> Iterator[tuple[str, str]]:
    """A durable topic exchange and a durable queue bound to it, deleted on exit."""
    name = f"joblife-bench-{uuid.uuid4().hex[:8]}"
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.exchange_declare(name, "topic", durable=True)
    channel.queue_declare(name, durable=True)
    channel.queue_bind(name, name, "#")
    try:
        yield name, name
    finally:
        channel.queue_delete(name)
        channel.exchange_delete(name)
        connection.close()


def queue_depth(url: str, queue: str) -> int:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        return connection.channel().queue_declare(queue, passive=True).method.message_count
    finally:
        connection.close()


def purge(url: str, queue: str) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        connection.channel().queue_purge(queue)
    finally:
        connection.close()


def make_outbox(engine: Engine, count: int) -> None:
    """``count`` processed test jobs with one outbox row each, as the worker leaves them."""
    started = time.perf_counter()
    now = utc_now()
    with Session(engine) as session:
        jobs = [
            TestJob(input_product_id=f"B{i:07d}", input_publication_date=now, publish=True)
            for i in range(count)
        ]
        session.add_all(jobs)
        session.commit()
        ids = [job.id for job in jobs]
        for step in TO_PROCESSED:
            set_job_status(session, ids, step, message="bench")
        session.execute(
            update(Job)
            .where(Job.id.in_(ids))
            .values(attempt=1, exit_code=0, output_path="test://products/bench")
        )
        session.commit()
        rows = []
        for job in jobs:
            session.refresh(job)
            [body] = job.get_products_publication_jsons()
            rows.append(
                {
                    "job_id": job.id,
                    "attempt": 1,
                    "product": "result",
                    "message_id": message_id(job.unique_id, "result", 1),
                    "body": body,
                }
            )
        session.execute(insert(Publication), rows)
        session.commit()
    print(
        f"setup: {count} processed jobs with outbox rows in {time.perf_counter() - started:.1f} s"
    )


def run_relay(engine: Engine, amqp_url: str, exchange: str, batch_size: int) -> tuple[float, int]:
    """Relay the whole outbox once (connection included); (seconds, messages confirmed)."""
    settings = Settings(
        amqp_url=amqp_url,
        amqp_exchange=exchange,
        publication_batch_size=batch_size,
        log_level="WARNING",
    )
    service = PublicationService(ServiceContext(engine, settings))
    try:
        started = time.perf_counter()
        report = service.run_cycle(max_batches=0)
        elapsed = time.perf_counter() - started
    finally:
        service.close()
    if report.error or report.result.unconfirmed or report.result.returned:
        sys.exit(f"relay did not confirm everything: {report.as_dict()}")
    return elapsed, report.result.confirmed


def one_connection_per_message(amqp_url: str, exchange: str, count: int) -> float:
    body = b'{"product":"result"}'
    started = time.perf_counter()
    for i in range(count):
        connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish(
            exchange,
            "test.result",
            body,
            pika.BasicProperties(delivery_mode=2, message_id=f"baseline-{i}"),
            mandatory=True,
        )
        connection.close()
    return (time.perf_counter() - started) / count


def blocking_confirms(amqp_url: str, exchange: str, count: int) -> float:
    body = b'{"product":"result"}'
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    channel = connection.channel()
    channel.confirm_delivery()
    started = time.perf_counter()
    for i in range(count):
        channel.basic_publish(
            exchange,
            "test.result",
            body,
            pika.BasicProperties(delivery_mode=2, message_id=f"blocking-{i}"),
            mandatory=True,
        )
    elapsed = time.perf_counter() - started
    connection.close()
    return count / elapsed


def confirm_windows(amqp_url: str, exchange: str, count: int, batch_size: int) -> float:
    """joblife's publisher alone (no database): ``count`` messages in confirm windows of
    ``batch_size``; msg/s."""
    publisher = ConfirmingPublisher(amqp_url, Topology(exchange))
    publisher.connect()
    messages = [
        OutgoingMessage(f"window-{i}", "test.result", b'{"product":"result"}', {"job_id": i})
        for i in range(count)
    ]
    started = time.perf_counter()
    for first in range(0, count, batch_size):
        deliveries = publisher.publish(messages[first : first + batch_size], 30)
        if any(d.outcome is not Outcome.CONFIRMED for d in deliveries):
            sys.exit("confirm windows: a message was not confirmed")
    elapsed = time.perf_counter() - started
    publisher.close()
    return count / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_database_url_argument(parser)
    parser.add_argument(
        "--amqp-url",
        default=os.environ.get("JOBLIFE_BENCH_AMQP_URL", DEFAULT_AMQP_URL),
        # argparse formats help with %: the URL's %2F must be escaped.
        help=f"broker URL (env JOBLIFE_BENCH_AMQP_URL; default {DEFAULT_AMQP_URL})".replace(
            "%", "%%"
        ),
    )
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--baseline-messages", type=int, default=300)
    parser.add_argument("--blocking-messages", type=int, default=2000)
    parser.add_argument("--keep", action="store_true", help="keep the scratch database")
    args = parser.parse_args()

    with (
        bench_database(make_url(args.database_url), args.keep) as url,
        broker_corner(args.amqp_url) as (exchange, queue),
    ):
        engine = create_joblife_engine(sqlalchemy_url(url))
        try:
            upgrade(engine)
            make_outbox(engine, args.messages)
            elapsed, confirmed = run_relay(engine, args.amqp_url, exchange, args.batch_size)
            with Session(engine) as session:
                unpublished = session.scalar(
                    select(func.count()).where(Publication.published_at.is_(None))
                )
                not_done = session.scalar(select(func.count()).where(Job.status_id != S.DONE))
        finally:
            engine.dispose()
        depth = queue_depth(args.amqp_url, queue)
        exact = (
            confirmed == args.messages
            and unpublished == 0
            and not_done == 0
            and depth == args.messages
        )
        print(
            f"relay: {confirmed} messages confirmed in {elapsed:.2f} s; queue depth {depth}, "
            f"unpublished rows {unpublished}, jobs not done {not_done}"
        )
        purge(args.amqp_url, queue)
        rate = confirmed / elapsed
        per_connection = one_connection_per_message(args.amqp_url, exchange, args.baseline_messages)
        baseline_total = per_connection * args.messages
        relay_total = args.messages / rate
        blocking_rate = blocking_confirms(args.amqp_url, exchange, args.blocking_messages)
        purge(args.amqp_url, queue)
        window_rate = confirm_windows(
            args.amqp_url, exchange, args.blocking_messages, args.batch_size
        )
        purge(args.amqp_url, queue)

    print()
    print_table(
        [
            (
                f"relay, {args.messages} outbox rows, confirms (msg/s)",
                f"{rate:,.0f}",
                f">= {TARGET_RATE:,.0f}",
                "PASS" if rate >= TARGET_RATE else "FAIL",
            ),
            (
                "every message confirmed once, rows published, jobs done",
                "yes" if exact else "NO",
                "yes",
                "PASS" if exact else "FAIL",
            ),
            (
                f"one connection per message ({args.baseline_messages} run, ms/msg)",
                f"{per_connection * 1000:.2f}",
                "",
                "",
            ),
            (
                f"  extrapolated to {args.messages} messages (s)",
                f"{baseline_total:.1f}",
                "",
                "",
            ),
            (
                "ratio relay / one connection per message",
                f"{baseline_total / relay_total:.0f}x faster",
                "",
                "",
            ),
            (
                f"broker only: BlockingChannel, confirm per message ({args.blocking_messages}, "
                "msg/s)",
                f"{blocking_rate:,.0f}",
                "",
                "",
            ),
            (
                f"broker only: ConfirmingPublisher, windows of {args.batch_size} "
                f"({args.blocking_messages}, msg/s)",
                f"{window_rate:,.0f}",
                "",
                "",
            ),
        ]
    )


if __name__ == "__main__":
    main()
