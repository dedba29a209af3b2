"""``joblife demo``: the whole life cycle of the three reference job types on the embedded
defaults, in one process (the command line is :mod:`joblife.cli.demo_command`).

1. :func:`demo_environment` points this process (and the workers it forks) at the demo:
   the data dir, the reference types' input prefixes (``demo/<run id>/<type>`` in the
   configured storage, local under the data dir by default), the publication spool when no
   broker is configured, and short service intervals.
2. :func:`generate_inputs` writes a small synthetic input set for the run: HDF5
   recordings, image stacks, and tile products of one tile over several dates whose
   publication order is not their measurement order (an out-of-order date).
3. :func:`run_demo` migrates the database, runs the :class:`Orchestrator` (creation,
   configuration, dispatch to the local executor, monitor, publication) until every demo
   job reached a final status, reporting progress after each cycle, and returns a
   :class:`DemoResult` (status counts, step durations, timeliness). The database is left
   as it is, for ``joblife status`` and ``joblife jobs show``.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from joblife.config import Settings, get_settings
from joblife.db import migrate
from joblife.db.engine import create_joblife_engine
from joblife.executors.local import LocalExecutor
from joblife.lifecycle.common import ServiceContext, utc_now
from joblife.lifecycle.orchestrator import Orchestrator
from joblife.model import Job, JobStatus
from joblife.ops.stats import TypeStats, job_stats
from joblife.publication.spool import spool_path
from joblife.publication.timeliness import TimelinessRow, timeliness_summary
from joblife.storage import Transfer, open_storage

S = JobStatus
DEMO_TYPES = ("h5repack", "image_ingest", "tile_series")
#: Statuses a demo job does not leave without an operator.
SETTLED = frozenset({S.DONE, S.CANCELLED, S.INTERNAL_ERROR, S.ERROR_CHECKED})
#: Days between two dates of a demo tile (Sentinel-2's revisit).
REVISIT = timedelta(days=5)


@dataclass
class DemoInputs:
    """What :func:`generate_inputs` wrote: the run id and the product ids per type."""

    run_id: str
    products: dict[str, list[str]] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(len(ids) for ids in self.products.values())


@dataclass
class DemoResult:
    """The outcome of a demo run."""

    inputs: DemoInputs
    elapsed_seconds: float
    counts: dict[str, dict[str, int]]
    stats: list[TypeStats]
    timeliness: list[TimelinessRow]
    job_ids: dict[str, list[int]]
    spool: Path | None
    timed_out: bool = False
    #: Why the demo stopped early: a demo type's discovery failed.
    errors: list[str] = field(default_factory=list)

    @property
    def all_done(self) -> bool:
        """Whether every demo job ended ``done``."""
        done = sum(c.get(str(S.DONE), 0) for c in self.counts.values())
        return not self.timed_out and not self.errors and done == self.inputs.total


def demo_environment(data_dir: Path | None, run_id: str) -> dict[str, str]:
    """The ``JOBLIFE_*`` variables of a demo run (set in this process, inherited by the
    workers it forks). Settings the user configured (database, storage, broker) are kept;
    without a broker the messages go to the spool under the data dir."""
    env: dict[str, str] = {}
    if data_dir is not None:
        env["JOBLIFE_DATA_DIR"] = str(data_dir.resolve())
    for job_type in DEMO_TYPES:
        env[f"JOBLIFE_{job_type.upper()}_INPUT_PREFIX"] = f"demo/{run_id}/{job_type}"
    env.update(
        JOBLIFE_LOOP_INTERVAL="0.2",
        JOBLIFE_CONFIGURE_RECHECK_SECONDS="0.3",
        JOBLIFE_LOCAL_START_METHOD="fork",
    )
    settings = Settings()  # what the user configured, before the demo's own values
    if settings.amqp_url is None and not settings.publication_spool:
        directory = Path(env.get("JOBLIFE_DATA_DIR") or settings.data_dir) / "publication-spool"
        env["JOBLIFE_PUBLICATION_SPOOL"] = str(directory)
    return env


@contextmanager
def applied(env: Mapping[str, str]) -> Iterator[Settings]:
    """Set ``env`` in ``os.environ`` for the block (restored after) and yield the
    settings it gives."""
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    get_settings.cache_clear()
    try:
        yield get_settings()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        get_settings.cache_clear()


def new_run_id() -> str:
    """A run id: the time and a random suffix (product ids never repeat across runs)."""
    return f"{utc_now():%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"


def generate_inputs(settings: Settings, run_id: str, per_type: int) -> DemoInputs:
    """Write the run's synthetic inputs into the configured storage (see the module
    docstring); return their product ids."""
    from joblife.science import synthetic  # numpy, h5py, Pillow: only for the demo

    storage = open_storage(settings=settings)
    inputs = DemoInputs(run_id)
    now = utc_now()
    with tempfile.TemporaryDirectory(prefix="joblife-demo-") as tmp:
        root = Path(tmp)
        for index in range(per_type):
            synthetic.make_recording(
                root / "h5repack" / f"recording_{run_id}_{index:02d}.h5",
                channels=8,
                samples=20_000,
                seed=index,
            )
            stack = root / "image_ingest" / f"stack_{run_id}_{index:02d}"
            synthetic.make_image_stack(stack, frames=3, seed=index)
            (stack / "README.txt").write_text("not an image: left out by the filter\n")
        # Product ids carry the run id: a second run creates new jobs.
        inputs.products["h5repack"] = [f"recording_{run_id}_{i:02d}.h5" for i in range(per_type)]
        inputs.products["image_ingest"] = [f"stack_{run_id}_{i:02d}" for i in range(per_type)]
        inputs.products["tile_series"] = _tile_products(
            synthetic, root / "tile_series", demo_tile(run_id), per_type, now
        )
        transfers = [
            Transfer(f"demo/{run_id}/{path.relative_to(root).as_posix()}", path)
            for path in sorted(root.rglob("*"))
            if path.is_file()
        ]
        storage.upload_many(transfers)
    return inputs


def demo_tile(run_id: str) -> str:
    """The run's own tile (5 characters, like a Sentinel-2 tile id): a series per run, so
    each run's dates wait for each other and not for an earlier run's."""
    return "D" + run_id.rsplit("-", 1)[-1][:4].upper()


def _tile_products(
    synthetic: ModuleType, directory: Path, tile_id: str, count: int, now: datetime
) -> list[str]:
    """``count`` dates of one tile, 5 days apart, the last measured an hour ago. The
    second newest date is published last: the newest date is discovered first and must
    wait for it (an out-of-order date)."""
    measured = [
        (now - timedelta(hours=1) - (count - 1 - k) * REVISIT).replace(microsecond=0)
        for k in range(count)
    ]
    order = list(range(count))
    if count >= 2:
        order[-2], order[-1] = order[-1], order[-2]  # the newest date is published first
    published = {k: now - timedelta(seconds=3) + rank * timedelta(milliseconds=500)
                 for rank, k in enumerate(order)}  # fmt: skip
    names = []
    for k in range(count):
        product = synthetic.make_tile_product(
            directory, tile_id, measured[k], published[k], size=128, seed=k
        )
        names.append(product.product_id)
    return names


def demo_jobs(session: Session, inputs: DemoInputs) -> list[tuple[str, int, JobStatus, int, int]]:
    """The run's jobs: (type, id, status, attempt, max attempts)."""
    rows = []
    for job_type, products in inputs.products.items():
        stmt = select(Job.job_type, Job.id, Job.status_id, Job.attempt, Job.max_attempts).where(
            Job.job_type == job_type, Job.input_product_id.in_(products)
        )
        rows += [(t, i, JobStatus(s), a, m) for t, i, s, a, m in session.execute(stmt)]
    return rows


def status_counts(session: Session, inputs: DemoInputs) -> dict[str, dict[str, int]]:
    """Per demo type, how many of its jobs are in each status."""
    counts: dict[str, dict[str, int]] = {t: {} for t in inputs.products}
    for job_type, _, status, _, _ in demo_jobs(session, inputs):
        counts[job_type][str(status)] = counts[job_type].get(str(status), 0) + 1
    return counts


def _creation_errors(reports: list[dict[str, Any]]) -> list[str]:
    """The discovery failures of the demo types in one creation cycle (the demo cannot
    finish without its jobs: it stops and says why)."""
    return [
        f"creation of {r['job_type']} jobs failed: {r['error']}"
        for r in reports
        if r.get("error") and r.get("job_type") in DEMO_TYPES
    ]


def _settled(rows: list[tuple[str, int, JobStatus, int, int]], expected: int) -> bool:
    if len(rows) < expected:
        return False
    return all(
        status in SETTLED or (status is S.EXTERNAL_ERROR and attempt >= max_attempts)
        for _, _, status, attempt, max_attempts in rows
    )


def run_demo(
    settings: Settings,
    inputs: DemoInputs,
    on_progress: Callable[[dict[str, dict[str, int]], float], None] | None = None,
    timeout: float = 300.0,
) -> DemoResult:
    """Migrate, then run the orchestrator until every job of ``inputs`` is settled (or
    ``timeout`` seconds passed); ``on_progress(counts, elapsed)`` after each cycle."""
    started, since = time.monotonic(), utc_now()
    engine = create_joblife_engine(settings=settings)
    try:
        migrate.upgrade(engine, settings=settings)
        # The local executor whatever the configuration names: the demo runs here.
        executor = LocalExecutor.from_settings(settings)
        context = ServiceContext(engine, settings)
        stop = threading.Event()
        orchestrator = Orchestrator(context, executor, stop_event=stop)
        timed_out, errors = False, []
        try:
            while True:
                marker = executor.change_marker()  # before dispatch counts what runs
                report = orchestrator.run_once()
                errors = _creation_errors(report.results.get("create") or [])
                with context.session() as session:
                    rows = demo_jobs(session, inputs)
                    counts = status_counts(session, inputs)
                elapsed = time.monotonic() - started
                if on_progress is not None:
                    on_progress(counts, elapsed)
                if _settled(rows, inputs.total) or errors:
                    break
                if elapsed > timeout:
                    timed_out = True
                    break
                if not report.busy:
                    executor.wait_for_change(settings.loop_interval, stop, marker)
        finally:
            orchestrator.close()
        elapsed = time.monotonic() - started
        with context.session() as session:
            job_ids: dict[str, list[int]] = {}
            for job_type, job_id, *_ in demo_jobs(session, inputs):
                job_ids.setdefault(job_type, []).append(job_id)
            stats = [s for s in job_stats(session, since, utc_now()) if s.job_type in DEMO_TYPES]
            target = timedelta(hours=settings.timeliness_target_hours)
            timeliness = [
                t for t in timeliness_summary(session, target, since) if t.job_type in DEMO_TYPES
            ]
        return DemoResult(
            inputs=inputs,
            elapsed_seconds=elapsed,
            counts=counts,
            stats=stats,
            timeliness=timeliness,
            job_ids={t: sorted(ids) for t, ids in job_ids.items()},
            spool=spool_path(settings.publication_spool) if settings.publication_spool else None,
            timed_out=timed_out,
            errors=errors,
        )
    finally:
        engine.dispose()
