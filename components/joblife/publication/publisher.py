"""What the relay needs of a publisher: the broker's
:class:`~joblife.publication.broker.ConfirmingPublisher` or the local
:class:`~joblife.publication.spool.SpoolPublisher`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from joblife.publication.broker import (
    Delivery,
    FeedbackMessage,
    OutgoingMessage,
    SentBatch,
    Settlement,
)


class Publisher(Protocol):
    """Publishes batches of product messages and reports, per message, whether it was
    confirmed (taken responsibility for). ``connect`` raises
    :class:`~joblife.publication.errors.BrokerUnavailable`."""

    @property
    def connected(self) -> bool: ...

    @property
    def last_error(self) -> str | None: ...

    def connect(self) -> None: ...

    def close(self) -> None: ...

    def send(self, messages: Sequence[OutgoingMessage]) -> SentBatch: ...

    def wait_confirmed(self, batch: SentBatch, timeout: float) -> list[Delivery]: ...

    def wait(self, seconds: float) -> None: ...

    def take_feedback(self) -> list[FeedbackMessage]: ...

    def settle(self, message: FeedbackMessage, settlement: Settlement) -> None: ...
