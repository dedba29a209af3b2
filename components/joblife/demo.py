"""``joblife demo``: the whole life cycle of the three reference job types on the embedded
defaults, in one process (the command line is :mod:`joblife.cli.demo_command`).

1. :func:`prepare_demo` gives the demo a database of its own: ``joblife_demo`` on the
   embedded server, dropped and created empty at each run (:func:`fresh_demo_database`),
   so that the demo's services (which act on every job of their database) touch only the
   demo's jobs. A configured ``database_url`` is refused unless the caller allows it
   (:class:`ConfiguredDatabaseRefused`). With :func:`demo_environment` it points this
   process (and the workers it forks) at the demo: the data dir, the database, the
   reference types' input prefixes (``demo/<run id>/<type>`` in the configured storage,
   local under the data dir by default), the publication spool when no broker is
   configured, and short service intervals.
2. :func:`generate_inputs` writes a small synthetic input set for the run: HDF5
   recordings, image stacks, and tile products of one tile over several dates whose
   publication order is not their measurement order (an out-of-order date).
3. :func:`run_demo` migrates the database, runs the :class:`Orchestrator` (creation,
   configuration, dispatch to the local executor, monitor, publication) until every demo
   job reached a final status, reporting progress after each cycle, and returns a
   :class:`DemoResult` (status counts, step durations, timeliness). The database is left
   as it is, for ``joblife status`` and ``joblife jobs show`` with the environment of
   :meth:`DemoSetup.shell_prefix` (the demo's own database).
"""

from __future__ import annotations

import os
import shlex
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
from urllib.parse import quote

from sqlalchemy import Engine, create_engine, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from joblife.config import Settings, default_data_dir, get_settings
from joblife.db import migrate
from joblife.db.embedded import embedded_database_url
from joblife.db.engine import create_joblife_engine
from joblife.errors import ConfigurationError
from joblife.executors.local import LocalExecutor
from joblife.lifecycle.common import ServiceContext, utc_now
from joblife.lifecycle.orchestrator import Orchestrator
from joblife.logs import redact
from joblife.model import Job, JobStatus
from joblife.ops.stats import TypeStats, job_stats
from joblife.publication.spool import DEFAULT_SPOOL_DIR, effective_spool, spool_disabled
from joblife.publication.timeliness import TimelinessRow, timeliness_summary
from joblife.signals import stop_on_signals
from joblife.storage import Transfer, open_storage

S = JobStatus
DEMO_TYPES = ("h5repack", "image_ingest", "tile_series")
#: Statuses a demo job does not leave without an operator.
SETTLED = frozenset({S.DONE, S.CANCELLED, S.INTERNAL_ERROR, S.ERROR_CHECKED})
#: Days between two dates of a demo tile (Sentinel-2's revisit).
REVISIT = timedelta(days=5)
#: The demo's own database on the embedded server (created empty at each run).
DEMO_DATABASE = "joblife_demo"
#: The demo's service intervals (a tile date waiting for the previous one is re-checked
#: at once, not after the default minute).
RUN_PACE = {"JOBLIFE_LOOP_INTERVAL": "0.2", "JOBLIFE_CONFIGURE_RECHECK_SECONDS": "0.3"}
#: The flag of ``joblife demo`` that lets it run in a configured database.
ALLOW_CONFIGURED_FLAG = "--allow-configured-database"


class ConfiguredDatabaseRefused(ConfigurationError):
    """``database_url`` is configured and the demo was not allowed to run there: its
    services would act on every job of that database, not only on the demo's."""


@dataclass
class DemoSetup:
    """Where a demo run works: its environment (:func:`demo_environment`, plus its own
    database), and what a shell needs to look at its jobs afterwards."""

    env: dict[str, str]
    #: The demo's own database (None: the configured database, allowed by the caller).
    database_url: str | None
    #: The data dir, unless it is the default one (given, or from the settings).
    data_dir: Path | None = None

    def shell_prefix(self, database: bool = True, services: bool = False) -> str:
        """The ``VAR=value`` words (shell-quoted, with a trailing space; may be empty) that
        point a ``joblife`` command at the demo: its data dir unless the default, its own
        database unless ``database`` is false, and with ``services`` what ``joblife run``
        needs to go on with the run as the demo does (its input prefixes, the demo's
        short service intervals)."""
        words = []
        if self.data_dir is not None:
            words.append(f"JOBLIFE_DATA_DIR={shlex.quote(str(self.data_dir.resolve()))}")
        if database and self.database_url is not None:
            words.append(f"JOBLIFE_DATABASE_URL={shlex.quote(self.database_url)}")
        if services:
            words += [
                f"{name}={shlex.quote(value)}"
                for name, value in self.env.items()
                if name.endswith("_INPUT_PREFIX") or name in RUN_PACE
            ]
        return "".join(f"{word} " for word in words)


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
    workers it forks). Settings the user configured (database, storage, broker) are kept
    (:func:`prepare_demo` adds the demo's own database); without a broker the messages go
    to the spool under the data dir, even with ``publication_spool = none``."""
    env: dict[str, str] = {}
    if data_dir is not None:
        env["JOBLIFE_DATA_DIR"] = str(data_dir.resolve())
    for job_type in DEMO_TYPES:
        env[f"JOBLIFE_{job_type.upper()}_INPUT_PREFIX"] = f"demo/{run_id}/{job_type}"
    env.update(RUN_PACE, JOBLIFE_LOCAL_START_METHOD="fork")
    settings = Settings()  # what the user configured, before the demo's own values
    if settings.amqp_url is None and (not settings.publication_spool or spool_disabled(settings)):
        directory = Path(env.get("JOBLIFE_DATA_DIR") or settings.data_dir) / DEFAULT_SPOOL_DIR
        env["JOBLIFE_PUBLICATION_SPOOL"] = str(directory)
    return env


def demo_database_url(embedded_url: str) -> str:
    """The URL of the demo's database on the embedded server whose ``joblife`` database
    is at ``embedded_url``, as a user types it (``postgresql://``, no empty password)."""
    url = make_url(embedded_url).set(drivername="postgresql", database=DEMO_DATABASE)
    socket_dir = url.query.get("host")
    if isinstance(socket_dir, str) and not url.password and not url.host:
        # The server's Unix socket: the directory as a path, not percent-encoded.
        return f"postgresql://{url.username}@/{DEMO_DATABASE}?host={quote(socket_dir, safe='/')}"
    return url.render_as_string(hide_password=False)


def fresh_demo_database(settings: Settings) -> str:
    """Start (or reuse) the embedded server of ``settings.data_dir``, drop its demo
    database (with the connections of an earlier run's workers, if any) and create it
    empty; return its URL (:func:`demo_database_url`)."""
    main = embedded_database_url(settings.embedded_database_dir)
    admin = create_engine(main, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{DEMO_DATABASE}" WITH (FORCE)'))
            conn.execute(text(f'CREATE DATABASE "{DEMO_DATABASE}"'))
    finally:
        admin.dispose()
    return demo_database_url(main)


def existing_demo_database(engine: Engine, settings: Settings) -> str | None:
    """For commands on the embedded database (``engine`` on its ``joblife`` database): the
    URL of the demo's database on the same server if a demo run made one, else None (also
    when ``database_url`` is configured: the demo never made one there)."""
    if settings.database_url is not None:
        return None
    with engine.connect() as conn:
        found = conn.execute(
            text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": DEMO_DATABASE}
        ).first()
    if found is None:
        return None
    return demo_database_url(engine.url.render_as_string(hide_password=False))


def prepare_demo(
    data_dir: Path | None, run_id: str, allow_configured_database: bool = False
) -> DemoSetup:
    """The environment of a demo run (:func:`demo_environment`) in a database of its own:
    :data:`DEMO_DATABASE` on the embedded server of the data dir, created empty
    (:func:`fresh_demo_database`). A configured ``database_url`` raises
    :class:`ConfiguredDatabaseRefused` unless ``allow_configured_database``: the demo then
    runs there, and its services act on every job of that database."""
    env = demo_environment(data_dir, run_id)
    with applied(env) as settings:
        if data_dir is None and settings.data_dir != default_data_dir():
            data_dir = settings.data_dir  # JOBLIFE_DATA_DIR: the printed commands need it too
        configured = settings.database_url
        if configured is not None:
            if not allow_configured_database:
                raise ConfiguredDatabaseRefused(
                    f"database_url is configured ({redact(configured.get_secret_value())}): "
                    "the demo's services (creation, dispatch to local workers, monitor, "
                    "publication) would act on every job of that database, not only on "
                    "the demo's. Run the demo on the embedded server, in a database of its "
                    "own (unset JOBLIFE_DATABASE_URL, or database_url in the config file), "
                    f"or pass {ALLOW_CONFIGURED_FLAG} to run it in that database anyway"
                )
            return DemoSetup(env, None, data_dir)
        url = fresh_demo_database(settings)
    # The workers too (worker_database_url would otherwise send them elsewhere).
    env.update(JOBLIFE_DATABASE_URL=url, JOBLIFE_WORKER_DATABASE_URL=url)
    return DemoSetup(env, url, data_dir)


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


def left_jobs(settings: Settings, inputs: DemoInputs) -> list[tuple[str, int, JobStatus, int, int]]:
    """The run's jobs as they are now (after an interruption): a new engine, disposed."""
    engine = create_joblife_engine(settings=settings)
    try:
        with Session(engine) as session:
            return demo_jobs(session, inputs)
    finally:
        engine.dispose()


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
            # Ctrl-C ends the loop after its cycle (twice: at once), as `joblife run`.
            with stop_on_signals(stop, "stopping the demo", second_interrupt_aborts=True):
                while not stop.is_set():
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
        if stop.is_set():  # Ctrl-C: the caller says what the demo left and how to go on
            raise KeyboardInterrupt
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
            spool=effective_spool(settings),
            timed_out=timed_out,
            errors=errors,
        )
    finally:
        engine.dispose()
