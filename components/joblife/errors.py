"""joblife's exception hierarchy: every error a caller can act on has its own type."""

from __future__ import annotations

from collections.abc import Sequence


class JoblifeError(Exception):
    """Base class of joblife's errors; ``str()`` is one line fit for an operator."""


class ConfigurationError(JoblifeError):
    """The configuration is invalid or names something that does not exist."""


class DatabaseUnavailable(JoblifeError):
    """The job database cannot be reached or started."""


class StatusError(JoblifeError):
    """A status change was refused by the database (the one door)."""


class UnknownStatus(StatusError):
    """A status name that is not one of the 16."""

    def __init__(self, message: str, status: str | None = None) -> None:
        super().__init__(message)
        self.status = status


class InvalidTransition(StatusError):
    """The transition from the job's current status to the requested one is not allowed."""

    def __init__(
        self, message: str, job_id: int | None, from_status: str | None, to_status: str
    ) -> None:
        super().__init__(message)
        self.job_id = job_id
        self.from_status = from_status
        self.to_status = to_status


class StatusConflict(StatusError):
    """Compare-and-set lost: the job is no longer in the status the caller expected
    (another writer changed it first)."""

    def __init__(
        self,
        message: str,
        job_id: int,
        actual: str,
        expected: Sequence[str],
        requested: str,
    ) -> None:
        super().__init__(message)
        self.job_id = job_id
        self.actual = actual
        self.expected = list(expected)
        self.requested = requested


class JobNotFound(StatusError):
    """One or more job ids do not exist."""

    def __init__(self, message: str, job_ids: Sequence[int]) -> None:
        super().__init__(message)
        self.job_ids = list(job_ids)


class StatusWriteRefused(StatusError):
    """A write of ``jobs.status`` or of the history outside the one door."""


class RepublishRefused(StatusError):
    """An operator asked to republish a job that cannot be republished (said why)."""

    def __init__(self, message: str, job_id: int | None) -> None:
        super().__init__(message)
        self.job_id = job_id


class JobFailure(JoblifeError):
    """A job's processing failed. Raised by job-type hooks to say which kind of failure."""


class InternalJobError(JobFailure):
    """A bug or an invalid input: the job goes to ``internal_error`` and is not retried
    automatically (worker exit code 0: do not relaunch)."""


class ExternalJobError(JobFailure):
    """A dependency failed (storage, network, a service): the job goes to
    ``external_error`` and is retried with backoff (worker exit code 2: relaunch)."""


class ExecutorError(JoblifeError):
    """The executor could not dispatch, inspect or stop an execution."""
