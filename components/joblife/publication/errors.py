"""The errors of publication, typed so that callers can act on them."""

from __future__ import annotations

from joblife.errors import JoblifeError


class BrokerUnavailable(JoblifeError):
    """The broker cannot be reached, or refused the connection or the topology."""


class RepublishRefused(JoblifeError):
    """An operator asked to republish a job that cannot be republished (said why)."""

    def __init__(self, message: str, job_id: int) -> None:
        super().__init__(message)
        self.job_id = job_id
