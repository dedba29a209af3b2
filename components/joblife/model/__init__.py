"""The data model: jobs, their statuses, the JobTemplate contract, flavors and priorities."""

from joblife.model.attempt_keys import AttemptProofKey
from joblife.model.base import Base
from joblife.model.counts import JobCount, job_count_deltas
from joblife.model.flavors import WorkerFlavor, flavor_catalogue, get_flavor
from joblife.model.job import Job, JobStatusChange, JobStatusRow, JobStatusTransition, Publication
from joblife.model.priority import Priority
from joblife.model.registry import (
    JobTypeError,
    get_job_type,
    load_job_types,
    register_job_type,
    validate_job_type,
)
from joblife.model.rejected import RejectedProduct
from joblife.model.status import ALLOWED_TRANSITIONS, JobStatus
from joblife.model.template import JobsToCreate, JobTemplate

__all__ = [
    "ALLOWED_TRANSITIONS",
    "AttemptProofKey",
    "Base",
    "Job",
    "JobCount",
    "JobStatus",
    "JobStatusChange",
    "JobStatusRow",
    "JobStatusTransition",
    "JobTemplate",
    "JobTypeError",
    "JobsToCreate",
    "Priority",
    "Publication",
    "RejectedProduct",
    "WorkerFlavor",
    "flavor_catalogue",
    "get_flavor",
    "get_job_type",
    "job_count_deltas",
    "load_job_types",
    "register_job_type",
    "validate_job_type",
]
