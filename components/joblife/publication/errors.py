"""The errors of publication, typed so that callers can act on them."""

from __future__ import annotations

from joblife.errors import JoblifeError


class BrokerUnavailable(JoblifeError):
    """The broker cannot be reached, or refused the connection or the topology."""
