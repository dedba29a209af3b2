"""The RabbitMQ side of publication: one long-lived connection, publisher confirms.

:class:`ConfirmingPublisher` drives a pika ``SelectConnection`` from the caller's thread:
each call runs the connection's I/O loop until what it waits for has happened (the
connection is open, every message of a batch is confirmed, a deadline passed), then
returns. A batch is published as a whole confirm window: every message is sent at once
and the broker's ``basic.ack`` (often one for many messages, ``multiple``) are collected
as they come, instead of one round trip per message (pika's ``BlockingChannel`` waits
for each message's confirmation in turn: 2-3k messages/s to a durable queue here, see
docs/benchmarks.md).

Messages are persistent (delivery mode 2), JSON, published with ``mandatory``: a message
no queue is bound for comes back as ``basic.return`` before its ``basic.ack``, and is
reported :attr:`Outcome.RETURNED`, never as confirmed. The I/O loop also serves the
heartbeats while the caller waits (:meth:`ConfirmingPublisher.wait`), and collects the
deliveries of the optional feedback queue, which the caller handles outside its own
transactions and then settles (:meth:`ConfirmingPublisher.settle`).
"""

from __future__ import annotations

import contextlib
import enum
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pika
import pika.channel
import pika.exceptions
import pika.frame
import pika.spec

from joblife.errors import ConfigurationError
from joblife.lifecycle.common import utc_now
from joblife.publication.errors import BrokerUnavailable
from joblife.publication.topology import CONTENT_TYPE, Topology

log = logging.getLogger("joblife.publication.broker")

#: Feedback deliveries the broker sends before the earlier ones are settled.
FEEDBACK_PREFETCH = 100
PERSISTENT = 2


class Outcome(enum.Enum):
    """What became of one published message."""

    CONFIRMED = "confirmed"  # the broker took responsibility for it (routed, persisted)
    RETURNED = "returned"  # unroutable: no queue bound for its routing key
    NACKED = "nacked"  # the broker refused it (internal error): send it again later
    TOO_LARGE = "too_large"  # over product_message_max_bytes: never sent (the relay's answer)
    UNCONFIRMED = "unconfirmed"  # no answer (connection lost, deadline): send it again


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """One product message, ready to publish."""

    message_id: str
    routing_key: str
    body: bytes
    headers: dict[str, Any]


@dataclass(slots=True)
class Delivery:
    """The broker's answer for one message of a batch."""

    outcome: Outcome = Outcome.UNCONFIRMED
    at: datetime | None = None  # when the answer came
    reason: str | None = None  # why it was returned or refused


@dataclass(frozen=True, slots=True)
class FeedbackMessage:
    """A delivery from the feedback queue, to be settled with :meth:`ConfirmingPublisher.settle`."""

    delivery_tag: int
    properties: pika.spec.BasicProperties
    body: bytes
    channel_number: int


class Settlement(enum.Enum):
    """How a feedback delivery is settled."""

    ACK = "ack"  # handled
    REJECT = "reject"  # unusable: dropped (or dead-lettered, if the queue has a DLX)
    REQUEUE = "requeue"  # not handled now (e.g. database down): delivered again


@dataclass
class SentBatch:
    """A batch sent and not yet waited for: pass it to
    :meth:`ConfirmingPublisher.wait_confirmed`."""

    deliveries: list[Delivery]
    unanswered: int = 0
    returned: dict[int, str] = field(default_factory=dict)  # index → reason


class ConfirmingPublisher:
    """One connection to the broker with a confirm-mode channel; see the module docstring.

    Not thread-safe: one thread uses it (only :meth:`interrupt` may be called from
    another). ``connect`` raises :class:`BrokerUnavailable`; once connected, a lost
    connection makes :attr:`connected` False and the messages not confirmed yet
    :attr:`Outcome.UNCONFIRMED`; call ``connect`` again.
    """

    def __init__(
        self,
        url: str,
        topology: Topology,
        *,
        heartbeat: int = 60,
        connect_timeout: float = 10.0,
        feedback_queue: str | None = None,
    ) -> None:
        try:
            pika.URLParameters(url)
        except (ValueError, TypeError) as exc:
            raise ConfigurationError(f"amqp_url {_safe_url(url)!r} is invalid: {exc}") from None
        self.url = url
        self.topology = topology
        self.heartbeat = heartbeat
        self.connect_timeout = connect_timeout
        self.feedback_queue = feedback_queue
        self.feedback_inbox: list[FeedbackMessage] = []
        self._connection: pika.SelectConnection | None = None
        self._channel: pika.channel.Channel | None = None
        self._feedback_channel: pika.channel.Channel | None = None
        self._ready = False
        self._closing = False
        self._error: str | None = None
        self._next_tag = 0
        # Messages sent and not answered yet, by delivery tag (ascending), and by id.
        self._inflight: dict[int, tuple[SentBatch, int, str]] = {}
        self._by_id: dict[str, tuple[SentBatch, int]] = {}
        self._until: Callable[[], bool] | None = None
        self._interrupted = False  # set by interrupt(), from any thread

    # -- connection ------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        """Whether the connection and the confirm channel are open and usable."""
        return self._ready and self._error is None

    @property
    def last_error(self) -> str | None:
        """Why the connection was lost or could not be opened (None while connected)."""
        return self._error

    def connect(self) -> None:
        """Open the connection, a confirm-mode channel, the exchange (declared durable, or
        checked when the topology is not ours) and the feedback consumer, or raise
        :class:`BrokerUnavailable` saying why."""
        self.close()
        self._ready, self._error, self._next_tag = False, None, 0
        self._inflight.clear()
        self._by_id.clear()
        self.feedback_inbox = []
        parameters = pika.URLParameters(self.url)
        parameters.heartbeat = self.heartbeat
        parameters.connection_attempts = 1
        parameters.socket_timeout = self.connect_timeout
        parameters.stack_timeout = self.connect_timeout
        parameters.blocked_connection_timeout = max(self.connect_timeout, 30.0)
        parameters.client_properties = {"connection_name": "joblife publication"}
        self._connection = pika.SelectConnection(
            parameters,
            on_open_callback=self._on_connection_open,
            on_open_error_callback=self._on_connection_open_error,
            on_close_callback=self._on_connection_closed,
        )
        self._run(lambda: self._ready or self._error is not None, self.connect_timeout + 1)
        if not self.connected:
            reason = self._error or (
                "interrupted (stopping)"
                if self._interrupted
                else f"no answer within {self.connect_timeout:.0f} s"
            )
            self.close()
            raise BrokerUnavailable(f"cannot publish to {_safe_url(self.url)}: {reason}")
        log.info("connected to %s", _safe_url(self.url))

    def interrupt(self) -> None:
        """Make every wait of this publisher return at once, now and from now on (a
        connection, confirmations, a graceful close): messages without an answer stay
        ``UNCONFIRMED`` and ``connect`` fails. The only method another thread may call: a
        stopping process uses it not to wait for a broker that does not answer."""
        self._interrupted = True
        connection = self._connection
        if connection is not None:
            # Runs _poke in the I/O loop's thread: the loop stops if it is running, or at
            # once when it starts (a later _run sees the flag before it starts the loop).
            with contextlib.suppress(Exception):
                connection.ioloop.add_callback_threadsafe(self._poke)

    def close(self) -> None:
        """Close the connection (if open) and release its I/O loop."""
        connection, self._connection = self._connection, None
        self._ready = False
        self._closing = True
        self._channel = self._feedback_channel = None
        if connection is None:
            return
        if connection.is_open:
            with contextlib.suppress(pika.exceptions.AMQPError):
                connection.close()
            self._connection = connection
            self._run(lambda: connection.is_closed, 5.0)
            self._connection = None
        connection.ioloop.close()
        self._closing = False

    # -- publishing ------------------------------------------------------------------------
    def publish(self, messages: Sequence[OutgoingMessage], timeout: float) -> list[Delivery]:
        """Publish ``messages`` as one confirm window and wait up to ``timeout`` seconds for
        the broker's answers: :meth:`send` then :meth:`wait_confirmed`."""
        return self.wait_confirmed(self.send(messages), timeout)

    def send(self, messages: Sequence[OutgoingMessage]) -> SentBatch:
        """Publish ``messages`` without waiting for the broker's answers (several batches
        may be in flight). Raises :class:`BrokerUnavailable` if not connected; a
        connection lost while sending leaves the batch's messages ``UNCONFIRMED``."""
        if not self.connected or self._channel is None:
            raise BrokerUnavailable(f"not connected to {_safe_url(self.url)}: {self._error}")
        batch = SentBatch([Delivery() for _ in messages])
        stamp = int(time.time())
        try:
            for index, message in enumerate(messages):
                properties = pika.BasicProperties(
                    content_type=CONTENT_TYPE,
                    content_encoding="utf-8",
                    delivery_mode=PERSISTENT,
                    message_id=message.message_id,
                    headers=message.headers,
                    timestamp=stamp,
                    app_id="joblife",
                )
                self._channel.basic_publish(
                    self.topology.exchange,
                    message.routing_key,
                    message.body,
                    properties,
                    mandatory=True,
                )
                self._next_tag += 1
                self._inflight[self._next_tag] = (batch, index, message.message_id)
                self._by_id[message.message_id] = (batch, index)
                batch.unanswered += 1
        except (pika.exceptions.AMQPError, OSError) as exc:
            self._lost(f"{type(exc).__name__}: {exc}")
        return batch

    def wait_confirmed(self, batch: SentBatch, timeout: float) -> list[Delivery]:
        """Wait up to ``timeout`` seconds for the answers of ``batch``; one
        :class:`Delivery` per message, in order. Messages without an answer when the
        connection is lost or the deadline passes are ``UNCONFIRMED`` (after a deadline the
        connection is closed: late answers must not be taken for later messages')."""
        self._run(lambda: batch.unanswered == 0 or not self.connected, timeout)
        if batch.unanswered and self.connected:
            if self._interrupted:
                self._lost(f"stopped before {batch.unanswered} confirmations arrived")
            else:
                log.warning(
                    "%d of %d messages not confirmed within %.1f s: reconnecting",
                    batch.unanswered,
                    len(batch.deliveries),
                    timeout,
                )
                self._lost(f"{batch.unanswered} confirmations not received within {timeout} s")
            self.close()
        if not self.connected:
            self._inflight.clear()
            self._by_id.clear()
        return batch.deliveries

    # -- waiting and feedback --------------------------------------------------------------
    def wait(self, seconds: float) -> None:
        """Serve the connection (heartbeats, feedback deliveries) for up to ``seconds``;
        return early when feedback arrived or the connection was lost."""
        if self._connection is None:
            time.sleep(max(seconds, 0.0))
            return
        self._run(lambda: bool(self.feedback_inbox) or not self.connected, seconds)

    def take_feedback(self) -> list[FeedbackMessage]:
        """The feedback deliveries received so far (the caller settles each one)."""
        inbox, self.feedback_inbox = self.feedback_inbox, []
        return inbox

    def settle(self, message: FeedbackMessage, settlement: Settlement) -> None:
        """Acknowledge, reject or requeue a feedback delivery. A delivery of a channel that
        is gone cannot be settled: the broker delivers it again."""
        channel = self._feedback_channel
        if (
            channel is None
            or not channel.is_open
            or channel.channel_number != (message.channel_number)
        ):
            return
        if settlement is Settlement.ACK:
            channel.basic_ack(message.delivery_tag)
        else:
            channel.basic_nack(message.delivery_tag, requeue=settlement is Settlement.REQUEUE)

    # -- the I/O loop ----------------------------------------------------------------------
    def _run(self, until: Callable[[], bool], timeout: float) -> None:
        """Run the I/O loop until ``until()`` holds (checked after every event) or
        ``timeout`` seconds passed."""
        connection = self._connection
        if connection is None or until() or self._interrupted:
            return
        ioloop = connection.ioloop
        timer = ioloop.call_later(max(timeout, 0.0), ioloop.stop)
        self._until = lambda: until() or self._interrupted
        try:
            ioloop.start()
        finally:
            self._until = None
            ioloop.remove_timeout(timer)

    def _poke(self) -> None:
        if self._until is not None and self._until() and self._connection is not None:
            self._connection.ioloop.stop()

    def _lost(self, reason: str) -> None:
        if self._error is None:
            self._error = reason
            if not self._closing:
                log.warning("broker connection lost: %s", reason)
        self._ready = False
        self._poke()

    # -- callbacks -------------------------------------------------------------------------
    def _on_connection_open(self, connection: pika.SelectConnection) -> None:
        connection.channel(on_open_callback=self._on_channel_open)

    def _on_connection_open_error(self, _connection: Any, error: BaseException | str) -> None:
        self._lost(_describe(error))

    def _on_connection_closed(self, _connection: Any, reason: BaseException) -> None:
        self._channel = self._feedback_channel = None
        self.feedback_inbox = []  # unsettled deliveries come again on a new channel
        self._lost(_describe(reason))

    def _on_channel_open(self, channel: pika.channel.Channel) -> None:
        self._channel = channel
        channel.add_on_close_callback(self._on_channel_closed)
        channel.add_on_return_callback(self._on_return)
        channel.confirm_delivery(
            ack_nack_callback=self._on_confirmation, callback=self._on_confirm_selected
        )

    def _on_confirm_selected(self, _frame: pika.frame.Method) -> None:
        assert self._channel is not None
        self._channel.exchange_declare(
            exchange=self.topology.exchange,
            exchange_type=self.topology.exchange_type,
            durable=True,
            passive=not self.topology.declare,
            callback=self._on_exchange_ok,
        )

    def _on_exchange_ok(self, _frame: pika.frame.Method) -> None:
        if self.feedback_queue and self._connection is not None:
            self._connection.channel(on_open_callback=self._on_feedback_channel_open)
        else:
            self._set_ready()

    def _on_feedback_channel_open(self, channel: pika.channel.Channel) -> None:
        self._feedback_channel = channel
        channel.add_on_close_callback(self._on_channel_closed)
        channel.basic_qos(prefetch_count=FEEDBACK_PREFETCH)
        channel.queue_declare(
            self.feedback_queue,  # type: ignore[arg-type]
            durable=True,
            passive=not self.topology.declare,
            callback=self._on_feedback_queue_ok,
        )

    def _on_feedback_queue_ok(self, _frame: pika.frame.Method) -> None:
        assert self._feedback_channel is not None
        self._feedback_channel.basic_consume(
            self.feedback_queue,  # type: ignore[arg-type]
            self._on_feedback,
            auto_ack=False,
            callback=lambda _frame: self._set_ready(),
        )

    def _set_ready(self) -> None:
        self._ready = True
        self._poke()

    def _on_channel_closed(self, channel: pika.channel.Channel, reason: BaseException) -> None:
        # A channel closes on a refused declaration (e.g. the exchange does not exist and
        # the topology is not ours) or a protocol error: the connection is no use then.
        feedback = channel is self._feedback_channel
        what = "feedback channel" if feedback else "channel"
        hints = self._declaration_hint(reason, feedback) + _size_hint(reason)
        self._lost(f"{what} closed: {_describe(reason)}{hints}")
        connection = self._connection
        if connection is not None and connection.is_open:
            connection.close()

    def _declaration_hint(self, reason: BaseException, feedback: bool) -> str:
        """What to do when the broker refused the check of a topology that is not ours
        (``amqp_declare_topology`` false: the exchange or feedback queue must exist)."""
        refused = isinstance(reason, pika.exceptions.ChannelClosedByBroker)
        if self._ready or self.topology.declare or not refused or reason.reply_code != 404:
            return ""
        what = (
            f"feedback queue {self.feedback_queue!r}"
            if feedback
            else f"exchange {self.topology.exchange!r}"
        )
        return (
            f"; the {what} does not exist and amqp_declare_topology is false (joblife only "
            "checks it): declare it on the broker, or set amqp_declare_topology=true"
        )

    def _on_return(
        self,
        _channel: pika.channel.Channel,
        method: pika.spec.Basic.Return,
        properties: pika.spec.BasicProperties,
        _body: bytes,
    ) -> None:
        found = self._by_id.get(properties.message_id or "")
        if found is None:
            log.warning("returned message %s is not in flight", properties.message_id)
            return
        batch, index = found
        batch.returned[index] = (
            f"returned by the broker: {method.reply_code} {method.reply_text} (exchange "
            f"{method.exchange!r}, routing key {method.routing_key!r})"
        )

    def _on_confirmation(self, frame: pika.frame.Method) -> None:
        method = frame.method
        acked = isinstance(method, pika.spec.Basic.Ack)
        if method.multiple:  # every tag up to this one; tags are in ascending order
            tags = list(itertools.takewhile(lambda t: t <= method.delivery_tag, self._inflight))
        else:
            tags = [method.delivery_tag]
        now = utc_now()
        for tag in tags:
            found = self._inflight.pop(tag, None)
            if found is None:
                continue
            batch, index, message_id = found
            self._by_id.pop(message_id, None)
            batch.unanswered -= 1
            delivery = batch.deliveries[index]
            delivery.at = now
            if not acked:
                delivery.outcome, delivery.reason = Outcome.NACKED, "refused by the broker (nack)"
            elif index in batch.returned:
                delivery.outcome, delivery.reason = Outcome.RETURNED, batch.returned[index]
            else:
                delivery.outcome = Outcome.CONFIRMED
        self._poke()

    def _on_feedback(
        self,
        channel: pika.channel.Channel,
        method: pika.spec.Basic.Deliver,
        properties: pika.spec.BasicProperties,
        body: bytes,
    ) -> None:
        self.feedback_inbox.append(
            FeedbackMessage(method.delivery_tag, properties, body, channel.channel_number)
        )
        self._poke()


def _size_hint(reason: BaseException) -> str:
    """What to do when the broker closed the channel on a message over its
    ``max_message_size`` (406 "message size … is larger than … max size …"): the relay
    would send it again at every reconnection, losing the messages sent with it."""
    refused = isinstance(reason, pika.exceptions.ChannelClosedByBroker)
    if not refused or reason.reply_code != 406 or "max size" not in reason.reply_text:
        return ""
    return (
        "; a product message is larger than the broker accepts: set "
        "product_message_max_bytes at or below the broker's max_message_size (a larger "
        "message then fails its job without being sent)"
    )


def _describe(error: BaseException | str) -> str:
    if isinstance(error, str):
        return error
    text = str(error) or repr(error)
    return f"{type(error).__name__}: {text}"


def _safe_url(url: str) -> str:
    """``url`` without its password."""
    try:
        parameters = pika.URLParameters(url)
    except (ValueError, TypeError):
        return url.split("@")[-1]
    vhost = parameters.virtual_host
    return f"amqp://{parameters.host}:{parameters.port}/{'' if vhost == '/' else vhost}"
