"""The documented least-privilege setup, end to end (issue 13, item 11), on real PostgreSQL:
an admin runs ``joblife db roles``; the owner, service, worker and operator are separate
NON-superuser logins; the owner migrates, ``joblife run`` runs as the service login, its
local-executor workers as the worker login (``worker_database_url``), and the operator
login runs ``status`` / ``jobs list`` / ``jobs retry``.

Also: a non-superuser owner with no privilege on ``joblife.status_door`` migrates (the
status door used to store that custom parameter in its definition, which PostgreSQL lets
only a superuser or, on 15+, a user granted ``SET ON PARAMETER`` do), and the door of
database/sql/v0013_status_door.sql shuts the guard again after each call."""

from __future__ import annotations

import json
import re
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from joblife.db.migration_helpers import read_sql_file
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import DBAPIError

from tests.test_lifecycle_end_to_end import (
    JOBLIFE,
    REPO,
    Processes,
    joblife_env,
    status_counts,
    write_products,
)

PARTS = ("owner", "service", "worker", "operator")


@dataclass
class Deployment:
    """A database and its four logins, made by ``joblife db roles``."""

    database: str
    names: dict[str, str]
    urls: dict[str, str]
    roles_output: str

    def engine(self, part: str) -> Engine:
        return create_engine(self.urls[part].replace("postgresql://", "postgresql+psycopg2://"))


def admin_joblife(pg_admin_url: str, *args: str) -> subprocess.CompletedProcess:
    env = joblife_env(pg_admin_url, Path("/nonexistent"))
    return subprocess.run(
        [*JOBLIFE, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=60
    )


def drop_deployment(admin_engine: Engine, database: str, names: dict[str, str]) -> None:
    """Drop the database and the logins."""
    with admin_engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        for name in names.values():
            conn.execute(text(f'DROP ROLE IF EXISTS "{name}"'))


@pytest.fixture
def deployment(admin_engine: Engine, pg_admin_url: str) -> Iterator[Deployment]:
    """``joblife db roles`` run by the admin: a new database owned by a new owner login,
    and a service, worker and operator login (the operator's password generated)."""
    tag = uuid.uuid4().hex[:8]
    database = f"jl_roles_{tag}"
    names = {part: f"jl_{tag}_{part}" for part in PARTS}
    try:
        result = admin_joblife(
            pg_admin_url,
            "db", "roles", "--database", database,
            *(f"--{part}={names[part]}" for part in PARTS),
            "--owner-password", f"own'{tag}", "--service-password", f"svc-{tag}",
            "--worker-password", f"wrk-{tag}",
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        urls = dict(zip(PARTS, re.findall(r"postgresql://\S+", result.stdout), strict=True))
        yield Deployment(database, names, urls, result.stdout)
    finally:
        drop_deployment(admin_engine, database, names)


def joblife_as(url: str, data_dir: Path, *args: str, **extra: str) -> subprocess.CompletedProcess:
    env = {**joblife_env(url, data_dir), **extra}
    return subprocess.run(
        [*JOBLIFE, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=120
    )


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, f"exit {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_db_roles_makes_ordinary_logins_and_an_owned_database(
    deployment: Deployment, admin_engine: Engine
) -> None:
    assert f"created database {deployment.database}" in deployment.roles_output
    with admin_engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT r.rolname, r.rolsuper, r.rolcreaterole, r.rolcreatedb, "
                "ARRAY(SELECT g.rolname FROM pg_auth_members m JOIN pg_roles g "
                "      ON g.oid = m.roleid WHERE m.member = r.oid ORDER BY 1) AS groups "
                "FROM pg_roles r WHERE r.rolname = ANY(:names)"
            ),
            {"names": list(deployment.names.values())},
        ).all()
        owner = conn.execute(
            text("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = :d"),
            {"d": deployment.database},
        ).scalar()
    by_name = {row.rolname: row for row in rows}
    names = deployment.names
    assert all(not (r.rolsuper or r.rolcreaterole or r.rolcreatedb) for r in rows), rows
    assert by_name[names["owner"]].groups == []
    assert by_name[names["service"]].groups == ["joblife_service"]
    assert by_name[names["worker"]].groups == ["joblife_worker"]
    assert by_name[names["operator"]].groups == ["joblife_operator"]
    assert owner == names["owner"]
    # Every printed URL logs in (the operator's with its generated password).
    for part in PARTS:
        engine = deployment.engine(part)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT current_user")).scalar() == names[part]
        engine.dispose()


def test_an_owner_with_no_parameter_privilege_migrates_every_revision(
    deployment: Deployment, admin_engine: Engine, tmp_path: Path
) -> None:
    """The owner `db roles` made (no superuser, no SET ON PARAMETER granted) migrates to
    every head: no migration stores a custom parameter (before migration 0013 the status
    door of 0001 did, and this failed with "permission denied to set parameter")."""
    owner = deployment.names["owner"]
    with admin_engine.connect() as conn:
        granted = conn.execute(
            text(
                "SELECT count(*) FROM pg_parameter_acl, aclexplode(paracl) a "
                "WHERE a.grantee = CAST(:owner AS regrole)"
            ),
            {"owner": owner},
        ).scalar()
    assert granted == 0
    output = ok(joblife_as(deployment.urls["owner"], tmp_path, "db", "upgrade"))
    assert "the database is at the heads" in output
    engine = deployment.engine("owner")
    with engine.connect() as conn:
        config = conn.execute(
            text("SELECT proconfig FROM pg_proc WHERE proname = 'set_job_status'")
        ).scalar()
    engine.dispose()
    assert not any(c.startswith("joblife.") for c in config or []), config


def test_the_status_door_sql_needs_no_parameter_privilege(
    deployment: Deployment, tmp_path: Path
) -> None:
    """database/sql/v0013_status_door.sql installs set_job_status() again as a non-superuser
    owner with no SET ON PARAMETER; the door it opens is closed again after each call and
    after a failed one."""
    ok(joblife_as(deployment.urls["owner"], tmp_path, "db", "upgrade"))
    engine = deployment.engine("owner")
    try:
        with engine.begin() as conn:
            cursor = conn.connection.cursor()
            cursor.execute(read_sql_file("v0013_status_door.sql"))
            cursor.close()
            config, secdef = conn.execute(
                text("SELECT proconfig, prosecdef FROM pg_proc WHERE proname = 'set_job_status'")
            ).one()
        assert not any(c.startswith("joblife.") for c in config), config
        assert secdef  # the owner's rights again (joblife_grant_role_privileges)

        with engine.begin() as conn:
            job_id = conn.execute(
                text(
                    "INSERT INTO jobs (job_type, worker_flavor, input_product_id, "
                    "input_publication_date, status) "
                    "VALUES ('test', 'extra_small', 'door', now(), 1) RETURNING id"
                )
            ).scalar()
        with engine.begin() as conn:
            conn.execute(
                text("SELECT set_job_status(ARRAY[:id]::bigint[], 'ready')"), {"id": job_id}
            )
            # The door is shut again in the same transaction: the guard refuses.
            with pytest.raises(DBAPIError) as info, conn.begin_nested():
                conn.execute(text("UPDATE jobs SET status = 12 WHERE id = :id"), {"id": job_id})
            assert info.value.orig.pgcode == "JL005"
            # A refused change leaves it shut too.
            with pytest.raises(DBAPIError), conn.begin_nested():
                to_done = text("SELECT set_job_status(ARRAY[:id]::bigint[], 'done')")
                conn.execute(to_done, {"id": job_id})
            door = conn.execute(text("SELECT current_setting('joblife.status_door', true)"))
            assert door.scalar() in (None, "")
    finally:
        engine.dispose()


# -- the whole run -----------------------------------------------------------------------------
N_GOOD = 4


def run_until(env: dict[str, str], engine: Engine, processes: Processes, wanted: Counter) -> None:
    """``joblife run --once`` (as the service login) until the statuses are ``wanted``."""
    deadline = time.monotonic() + 90
    while (counts := status_counts(engine)) != wanted:
        settled = bool(counts) and set(counts) <= {"done", "internal_error", "cancelled"}
        assert not settled and time.monotonic() < deadline, (
            f"statuses {dict(counts)}, wanted {dict(wanted)}; failures: {failures(engine)}"
        )
        processes.run(env, "run", "--once")


def failures(engine: Engine) -> list[str]:
    """The last message of every failed job."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT j.id, c.message FROM jobs j JOIN LATERAL (SELECT message FROM "
                "job_status_changes c WHERE c.job_id = j.id ORDER BY c.id DESC LIMIT 1) c "
                "ON true WHERE j.status IN (13, 14) ORDER BY j.id"
            )
        ).all()
    return [f"job {row.id}: {row.message}" for row in rows]


@pytest.mark.slow
def test_a_whole_run_with_four_separate_non_superuser_logins(
    deployment: Deployment, admin_engine: Engine, tmp_path: Path
) -> None:
    processes = Processes(logs=tmp_path)
    data_dir = tmp_path / "data"
    urls, names = deployment.urls, deployment.names
    try:
        # The owner migrates: no superuser, no warning; it owns what it installed.
        upgraded = joblife_as(urls["owner"], data_dir, "db", "upgrade")
        ok(upgraded)
        assert "superuser" not in upgraded.stderr
        owner_engine = deployment.engine("owner")
        with owner_engine.connect() as conn:
            jobs_owner = "SELECT tableowner FROM pg_tables WHERE tablename = 'jobs'"
            assert conn.execute(text(jobs_owner)).scalar() == names["owner"]
            # The service login cannot call the worker's doors: a worker that inherited its URL
            # fails every attempt (the bug this test guards against).
            as_worker = conn.execute(
                text(
                    "SELECT p.oid::regprocedure::text FROM pg_proc p "
                    "WHERE p.proname LIKE 'worker%' AND p.prosecdef "
                    "AND has_function_privilege(:s, p.oid, 'EXECUTE')"
                ),
                {"s": names["service"]},
            )
            assert as_worker.scalars().all() == []

        # The services run as the service login, their workers as the worker login.
        write_products(data_dir / "test-products", N_GOOD)
        write_products(
            data_dir / "test-products", 1, prefix="F",
            behaviour="fail_internal", behaviour_attempts=1,
        )  # fmt: skip
        service_env = {
            **joblife_env(urls["service"], data_dir),
            "JOBLIFE_WORKER_DATABASE_URL": urls["worker"],
        }
        run_until(
            service_env, owner_engine, processes,
            Counter({"done": N_GOOD, "internal_error": 1}),
        )  # fmt: skip
        with owner_engine.connect() as conn:
            failed_id, message = conn.execute(
                text(
                    "SELECT j.id, c.message FROM jobs j JOIN job_status_changes c "
                    "ON c.job_id = j.id AND c.status = j.status WHERE j.status = 13"
                )
            ).one()
        assert "permission denied" not in (message or ""), message

        # The operator watches and retries with its own login.
        status = json.loads(ok(joblife_as(urls["operator"], data_dir, "status", "--json")))
        assert status["totals"] == {"done": N_GOOD, "internal_error": 1}
        listed = json.loads(
            ok(joblife_as(urls["operator"], data_dir, "jobs", "list", "-s", "internal_error",
                          "--json"))
        )  # fmt: skip
        assert [job["id"] for job in listed] == [failed_id]
        ok(joblife_as(urls["operator"], data_dir, "jobs", "retry", str(failed_id)))
        run_until(service_env, owner_engine, processes, Counter({"done": N_GOOD + 1}))
        with owner_engine.connect() as conn:
            attempts = conn.execute(
                text("SELECT attempt FROM jobs WHERE id = :id"), {"id": failed_id}
            ).scalar()
        assert attempts == 2
        owner_engine.dispose()
    finally:
        processes.cleanup()
