"""Publication over RabbitMQ: the outbox relay with publisher confirms, the topology from
configuration, consumer feedback and timeliness; without a broker, an fsynced local spool. See
:mod:`joblife.publication.relay`."""

from joblife.errors import RepublishRefused
from joblife.publication.broker import ConfirmingPublisher, Delivery, Outcome, OutgoingMessage
from joblife.publication.errors import BrokerUnavailable
from joblife.publication.outbox import list_publications, republish
from joblife.publication.publisher import Publisher
from joblife.publication.relay import PublicationReport, PublicationService
from joblife.publication.spool import SpoolPublisher
from joblife.publication.timeliness import TimelinessRow, timeliness_summary
from joblife.publication.topology import Topology

__all__ = [
    "BrokerUnavailable",
    "ConfirmingPublisher",
    "Delivery",
    "Outcome",
    "OutgoingMessage",
    "PublicationReport",
    "PublicationService",
    "Publisher",
    "RepublishRefused",
    "SpoolPublisher",
    "TimelinessRow",
    "Topology",
    "list_publications",
    "republish",
    "timeliness_summary",
]
