"""What a job's worker-side hooks receive: the attempt's context."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from joblife.config import Settings
from joblife.worker.heartbeat import Heartbeat


@dataclass
class WorkerContext:
    """One attempt of one job, as seen by ``job_pre_processing`` / ``job_processing`` /
    ``job_post_processing``."""

    job_id: int
    attempt: int
    settings: Settings
    work_dir: Path
    heartbeat: Heartbeat
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("joblife.worker"))
