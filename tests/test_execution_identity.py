"""An execution is named by the job's unique id with its attempt (issue 14, item 6): a
database re-created against the same Nomad cluster or the same local state directory
numbers its jobs and attempts from 1 again, and its jobs must not be given the executions
of the old jobs with the same id and attempt (Nomad returns the child of a token until it
is garbage-collected; the local executor starts nothing for a token it has a claim of)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from joblife.config import Settings, get_settings
from joblife.db.engine import create_joblife_engine
from joblife.errors import ExecutorError
from joblife.executors.base import ExecutionRequest, execution_token, parse_execution_token
from joblife.executors.local import LocalExecutor
from joblife.executors.nomad import NomadExecutor
from joblife.model import JobStatus
from pydantic import SecretStr
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from tests.support.lifecycle import FAST_SERVICES, Lifecycle, kill_leftovers, wait_for
from tests.support.nomad import NomadWorld

S = JobStatus
PARENT = "joblife-test"


@pytest.fixture
def second_database(
    admin_engine: Engine, template_database: str, pg_admin_url: str
) -> Iterator[str]:
    """The URL of another fresh, migrated database: the "re-created" one."""
    name = f"jl_test_{uuid.uuid4().hex[:12]}"
    with admin_engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"'))
    url = make_url(pg_admin_url).set(database=name, drivername="postgresql+psycopg2")
    yield url.render_as_string(hide_password=False)
    with admin_engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def second_engine(second_database: str) -> Iterator[Engine]:
    engine = create_joblife_engine(second_database)
    yield engine
    engine.dispose()


def test_token_names_the_job_its_attempt_and_unique_id():
    unique = uuid.UUID("12345678-9abc-4def-8123-456789abcdef")
    token = execution_token(123456789012345, 7, unique)
    assert token == "123456789012345-7-123456789abc4def8123456789abcdef"
    assert execution_token(1, 1, str(unique)) == execution_token(1, 1, unique.hex)
    assert parse_execution_token(token) == (123456789012345, 7, unique.hex)
    assert parse_execution_token("4-2") == (4, 2, None)  # references of before
    assert parse_execution_token("4-2-xyz") is None


# == Nomad ========================================================================================
def test_nomad_recreated_database_gets_new_children(
    make_nomad_world: Callable[..., NomadWorld],
    second_database: str,
    second_engine: Engine,
):
    old = make_nomad_world()
    double, cluster = old.double, old.double.cluster
    [job_id] = old.lifecycle.add_jobs({"behaviour": "crash", "max_attempts": 1})
    old.lifecycle.dispatch()
    old_child = old.lifecycle.job(job_id).nomad_job_id
    assert old_child is not None
    wait_for(
        lambda: [a["ClientStatus"] for a in cluster.allocations_of(old_child)] == ["failed"],
        timeout=60,
        message="the old job's task to be killed",
    )

    # The database re-created: its first job has the same id and attempt, a new unique id,
    # and its workers reach the new database.
    settings = old.settings.model_copy(update={"database_url": SecretStr(second_database)})
    executor = NomadExecutor.from_settings(settings)
    new = NomadWorld(double, settings, executor, Lifecycle(second_engine, settings, executor))  # type: ignore[arg-type]
    cluster.extra_env["JOBLIFE_DATABASE_URL"] = second_database
    lc = new.lifecycle
    assert lc.add_jobs({}) == [job_id]
    assert lc.job(job_id).unique_id != old.lifecycle.job(job_id).unique_id

    def done() -> bool:
        lc.dispatch()
        lc.monitor_cycle()
        return lc.status(job_id) in (S.DONE, S.INTERNAL_ERROR)

    wait_for(done, timeout=90, interval=0.2, message=lambda: str(lc.describe(job_id)))
    job = lc.job(job_id)
    assert (job.status, job.attempt, job.exit_code) == (S.DONE, 1, 0)
    assert S.EXTERNAL_ERROR not in [c.status for c in lc.history(job_id)]
    assert job.nomad_job_id not in (None, old_child)
    child = cluster.get(job.nomad_job_id)
    assert child["DispatchIdempotencyToken"] == lc.token(job_id, 1)
    assert child["Meta"]["job_id"] == str(job_id) and child["Meta"]["attempt"] == "1"
    assert cluster.task_runs[job.nomad_job_id] == 1
    assert sorted(cluster.children(PARENT)) == sorted([old_child, job.nomad_job_id])


# == the local executor ===========================================================================
@pytest.fixture
def local_world(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[Engine, str], Lifecycle]]:
    """Lifecycles on the given databases sharing one local state directory (and data dir);
    each executor's workers reach its own database."""
    data_dir = tmp_path / "data"
    monkeypatch.setenv("JOBLIFE_DATA_DIR", str(data_dir))
    monkeypatch.setenv("JOBLIFE_HEARTBEAT_INTERVAL_SECONDS", "0.2")
    get_settings.cache_clear()
    made: list[Lifecycle] = []

    def make(engine: Engine, database_url: str) -> Lifecycle:
        values: dict[str, Any] = {
            "database_url": database_url,
            "data_dir": data_dir,
            **FAST_SERVICES,
            "heartbeat_interval_seconds": 0.2,
        }
        executor = LocalExecutor(
            tmp_path / "exec", stop_grace_seconds=5, worker_database_url=database_url
        )
        made.append(Lifecycle(engine, Settings(**values), executor))
        return made[-1]

    yield make
    for lc in reversed(made):  # a later zygote holds the pipe of an earlier one
        lc.executor.close()
    kill_leftovers([tmp_path / "exec"], [r for lc in made for r in lc.records_seen])
    get_settings.cache_clear()


def test_local_recreated_database_runs_its_own_attempt(
    local_world: Callable[[Engine, str], Lifecycle],
    engine: Engine,
    joblife_env: str,
    second_database: str,
    second_engine: Engine,
):
    old = local_world(engine, joblife_env)
    [job_id] = old.add_jobs({"behaviour": "crash", "max_attempts": 1})
    assert old.dispatch().dispatched == 1
    assert old.exit_code(job_id, 1) == 137

    lc = local_world(second_engine, second_database)  # same state directory
    assert lc.add_jobs({}) == [job_id]
    assert lc.dispatch().dispatched == 1
    lc.wait_status(job_id, S.DONE, monitor=True)
    job = lc.job(job_id)
    assert (job.attempt, job.exit_code) == (1, 0)
    assert job.nomad_job_id == f"local:{lc.token(job_id, 1)}"
    assert S.EXTERNAL_ERROR not in [c.status for c in lc.history(job_id)]
    assert lc.exit_code(job_id, 1) == 0 and old.exit_code(job_id, 1) == 137
    record = lc.record(job_id, 1)
    assert (record["job_id"], record["unique_id"]) == (job_id, str(job.unique_id))


def test_local_record_of_another_job_is_not_adopted(
    local_world: Callable[[Engine, str], Lifecycle], engine: Engine, joblife_env: str
):
    """A record under a token that names another job (moved or written by hand) is
    neither adopted by a dispatch nor reported as this attempt's outcome."""
    lc = local_world(engine, joblife_env)
    [job_id] = lc.add_jobs({})
    lc.dispatch()
    lc.wait_status(job_id, S.DONE, monitor=True)
    token = lc.token(job_id, 1)
    stranger = execution_token(job_id, 1, uuid.uuid4())
    for suffix in ("claim", "json", "exit"):
        source = lc.executor.state_dir / f"{token}.{suffix}"
        (lc.executor.state_dir / f"{stranger}.{suffix}").write_text(source.read_text())
    status = lc.executor.status([f"local:{stranger}"])[f"local:{stranger}"]
    assert status.state.value == "lost"
    assert "is not this attempt's" in (status.reason or "")
    assert f"not {stranger.split('-')[2]}" in (status.reason or "")
    request = ExecutionRequest(job_id, 1, "test", "extra_small", unique_id=stranger.split("-")[2])
    with pytest.raises(ExecutorError, match="not adopted"):
        lc.executor.dispatch(request, stranger)
