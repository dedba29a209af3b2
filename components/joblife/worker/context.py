"""What a job's worker-side hooks receive: the attempt's context (work dir, storage,
runners, and the figures of where the time went)."""

from __future__ import annotations

import errno
import logging
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from joblife.config import Settings
from joblife.errors import ExternalJobError
from joblife.logs import JobLogger
from joblife.runners import Runner, make_runner
from joblife.storage import Storage, Transfer, child_key, open_storage
from joblife.storage.keys import UnsafeKey, escape
from joblife.worker.heartbeat import Heartbeat
from joblife.worker.workfiles import UnsafeWorkFile, WorkFile, WorkTree

#: The work dir's layout (``<work root>/<unique_id>/<name>``).
WORK_SUBDIRS = ("input", "output", "aux", "logs")
#: The errors of a full disk (no space left, quota exceeded).
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
#: Most files of ``logs/`` uploaded per attempt (the bytes: ``logs_upload_max_bytes``).
LOGS_UPLOAD_MAX_FILES = 1000
#: joblife's own log, capped by ``science_log_max_bytes``: uploaded before the others.
SCIENCE_LOG = "science.log"
#: A file system counts as nearly full with less than this free (or 5 % of it, if less).
NEARLY_FULL_BYTES = 64 * 1024 * 1024


def is_disk_full(exc: BaseException | None) -> bool:
    """Whether ``exc`` is an out-of-space error (ENOSPC, EDQUOT)."""
    return isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS


@dataclass(frozen=True)
class DiskSpace:
    """Free and total bytes of the file system holding ``path``."""

    path: Path
    free: int
    total: int

    @classmethod
    def of(cls, path: Path) -> DiskSpace:
        """The space of ``path``'s file system (its nearest existing ancestor's)."""
        while not path.exists() and path != path.parent:
            path = path.parent
        usage = shutil.disk_usage(path)
        return cls(path, usage.free, usage.total)

    @property
    def nearly_full(self) -> bool:
        """Less than :data:`NEARLY_FULL_BYTES` (or 5 % of the file system) is free."""
        return self.free < min(NEARLY_FULL_BYTES, self.total // 20)

    def describe(self) -> str:
        return f"{self.free} bytes free of {self.total} on the file system of {self.path}"

    def as_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "free_bytes": self.free, "total_bytes": self.total}


def work_root(settings: Settings) -> Path:
    """Where a worker makes its jobs' work dirs."""
    return settings.work_root or settings.data_dir / "work"


@dataclass
class StepFigures:
    """Files, bytes and seconds of one step (download, processing, upload)."""

    files: int = 0
    bytes: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"files": self.files, "bytes": self.bytes, "seconds": round(self.seconds, 3)}


@dataclass
class WorkerContext:
    """One attempt of one job, as seen by ``job_pre_processing`` / ``job_processing`` /
    ``job_post_processing``."""

    job_id: int
    attempt: int
    settings: Settings
    work_dir: Path
    heartbeat: Heartbeat
    #: The worker's logger: its lines carry the job's fields (the worker passes a
    #: :class:`~joblife.logs.JobLogger` it keeps current).
    log: logging.Logger | JobLogger = field(
        default_factory=lambda: logging.getLogger("joblife.worker")
    )
    #: Where the time went: ``download`` / ``upload`` figures, ``processing`` (the runner's
    #: summary), ``skipped``, ``logs``...; merged into the status details.
    figures: dict[str, Any] = field(default_factory=dict)
    #: The last science log lines, kept for the status details of a failure.
    log_tail: list[str] = field(default_factory=list)
    #: Set by pre-processing when every output already exists: the science step is skipped.
    skip_science: bool = False
    #: Where the science logs are uploaded for post-mortem (set by pre-processing).
    logs_location: str | None = None
    _storage: Storage | None = None

    # -- the work dir ------------------------------------------------------------------------
    @property
    def input_dir(self) -> Path:
        return self.work_dir / "input"

    @property
    def output_dir(self) -> Path:
        return self.work_dir / "output"

    @property
    def aux_dir(self) -> Path:
        return self.work_dir / "aux"

    @property
    def logs_dir(self) -> Path:
        return self.work_dir / "logs"

    def make_work_dir(self) -> None:
        """A clean work dir with its sub-dirs (what an earlier, killed attempt on this
        machine left is removed first)."""
        self.remove_work_dir()
        for name in WORK_SUBDIRS:
            (self.work_dir / name).mkdir(parents=True)

    def remove_work_dir(self) -> None:
        """Remove the work dir and everything in it (no error if there is none)."""
        if self.work_dir.exists():
            shutil.rmtree(self.work_dir)

    # -- storage and runners -----------------------------------------------------------------
    @property
    def storage(self) -> Storage:
        """The configured storage (``JOBLIFE_STORAGE_URL``), opened once per attempt."""
        if self._storage is None:
            self._storage = open_storage(settings=self.settings)
        return self._storage

    def storage_for(self, location: str) -> tuple[Storage, str]:
        """The storage and key of ``location``: a URL (``s3://bucket/key``,
        ``file:///path``) or a key of the configured storage."""
        if "://" not in location:
            return self.storage, location
        return open_storage(location, self.settings), ""

    def runner(self, kind: str) -> Runner:
        """The runner called ``kind`` (``docker`` or ``process``)."""
        return make_runner(kind, self.settings)

    # -- the worker's disk --------------------------------------------------------------------
    def disk_space(self) -> DiskSpace:
        """The free and total space of the work dir's file system."""
        return DiskSpace.of(self.work_dir)

    @contextmanager
    def disk_full_is_external(self, step: str) -> Iterator[None]:
        """Run a step of the worker's own: an out-of-space error (ENOSPC, EDQUOT) on the
        worker's disk becomes an ExternalJobError (retried elsewhere or later) saying so,
        with the file being written and the space left; the disk figures are recorded."""
        try:
            yield
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            space = self.disk_space()
            self.figures["disk"] = space.as_dict()
            where = exc.filename or f"a file in {self.work_dir}"
            raise ExternalJobError(
                f"the worker's disk is full: no space left during {step} writing {where} "
                f"({space.describe()}): {exc.strerror or exc}"
            ) from exc

    def disk_full_note(self) -> str:
        """For the message of a failed science step: ``"; the worker's disk is full (...)"``
        when the work dir's file system is (nearly) full, else ``""``. The disk figures
        are recorded then."""
        space = self.disk_space()
        if not space.nearly_full:
            return ""
        self.figures["disk"] = space.as_dict()
        return f"; the worker's disk is full ({space.describe()})"

    # -- figures -----------------------------------------------------------------------------
    @contextmanager
    def measure(self, step: str) -> Iterator[StepFigures]:
        """Time a transfer step and accumulate its figures under ``figures[step]``; a full
        disk is reported as :meth:`disk_full_is_external` does."""
        figures = StepFigures(**self.figures.get(step, {}))
        start = time.perf_counter()
        try:
            with self.disk_full_is_external(step):
                yield figures
        finally:
            figures.seconds += time.perf_counter() - start
            self.figures[step] = figures.as_dict()

    def close(self) -> None:
        """End of the attempt, whatever happened: upload the logs (best effort: a failure
        is logged, never raised) and remove the work dir. Safe to call twice."""
        if self.logs_location and "logs" not in self.figures:
            try:
                self._upload_logs(self.logs_location)
            except Exception as exc:  # the attempt's outcome matters more than its logs
                self.log.error("job %s: could not upload the logs: %s", self.job_id, exc)
        try:
            self.remove_work_dir()
        except OSError as exc:
            self.log.error("job %s: could not remove %s: %s", self.job_id, self.work_dir, exc)

    def _upload_logs(self, location: str) -> None:
        """Upload the regular files of ``logs/`` under ``location``, read as the outputs
        are (:class:`~joblife.worker.workfiles.WorkTree`: no link followed); what the
        science step left there that is not one, or whose name is no safe key, is skipped
        and logged. At most :data:`LOGS_UPLOAD_MAX_FILES` files and ``logs_upload_max_bytes``
        bytes go, ``science.log`` first: the science step writes what it likes there, and
        the others are skipped, logged and counted (``logs_skipped``)."""
        tree = WorkTree(self.work_dir, "logs")
        try:
            files, refused = tree.scan()
        except UnsafeWorkFile as exc:
            self.log.warning("job %s: logs not uploaded: %s", self.job_id, exc)
            return
        for entry in refused:
            self.log.warning("job %s: log not uploaded: %s", self.job_id, entry)
        storage, prefix = self.storage_for(location)
        names: dict[str, str] = {}
        for file in self._within_logs_budget(tree, files):
            try:
                names[child_key(prefix, file.name)] = file.name
            except UnsafeKey as exc:
                label = escape(tree.label(file.name))
                self.log.warning("job %s: log %s not uploaded: %s", self.job_id, label, exc.reason)
        transfers = [Transfer(key, self.logs_dir / name) for key, name in names.items()]
        storage.upload_many_opened(transfers, lambda transfer: tree.open(names[transfer.key]))
        self.figures["logs"] = storage.url(prefix)

    def _within_logs_budget(self, tree: WorkTree, files: list[WorkFile]) -> list[WorkFile]:
        """The ``files`` of ``logs/`` to upload, ``science.log`` first, within the budget;
        each file past it is skipped, the skip logged and recorded in the figures."""
        budget = self.settings.logs_upload_max_bytes
        ordered = sorted(files, key=lambda f: f.name != SCIENCE_LOG)  # stable: by name after
        kept: list[WorkFile] = []
        skipped: list[WorkFile] = []
        for file in ordered:
            if len(kept) < LOGS_UPLOAD_MAX_FILES and file.size <= budget:
                kept.append(file)
                budget -= file.size
            else:
                skipped.append(file)
        if skipped:
            size = sum(f.size for f in skipped)
            self.figures["logs_skipped"] = {"files": len(skipped), "bytes": size}
            shown = ", ".join(escape(tree.label(f.name)) for f in skipped[:5])
            more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
            self.log.warning(
                "job %s: %d logs (%d bytes) not uploaded, past the budget of %d files and %d "
                "bytes: %s%s",
                self.job_id,
                len(skipped),
                size,
                LOGS_UPLOAD_MAX_FILES,
                self.settings.logs_upload_max_bytes,
                shown,
                more,
            )
        return kept

    def details(self) -> dict[str, Any]:
        """The figures for the status details (and the log tail, if any)."""
        details: dict[str, Any] = dict(self.figures)
        if self.log_tail:
            details["log_tail"] = self.log_tail
        return details
