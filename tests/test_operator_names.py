"""Who acted (migration 0017), on real PostgreSQL: every history row the operator procedures
write names the operator in its details (``"operator"``): the name the caller gave for the
call (``operator=``, set transaction-locally), else the login of the session, never the
procedures' owner; the name never outlives its call or its transaction, directly or through
PgBouncer in transaction mode; a name that cannot be stored as given is cleaned and capped,
never a failure; the CLI names the OS user; the revision keeps the procedures' rights and
its downgrade restores them as they were."""

from __future__ import annotations

import getpass
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest
from alembic import command
from joblife.cli.actions import cli_operator
from joblife.cli.main import app
from joblife.db import migrate
from joblife.db.status import (
    OPERATOR_NAME_MAX_BYTES,
    StatusChange,
    acknowledge_jobs,
    cancel_jobs,
    republish_jobs,
    retry_jobs,
    set_job_status,
)
from joblife.errors import StatusConflict
from joblife.model import JobStatus
from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from tests.support.factories import make_jobs, move_to
from tests.test_publication import processed_jobs
from tests.test_roles import login_as, run

if TYPE_CHECKING:  # the module is a plugin of this one (pytest_plugins), imported by pytest
    from tests.support.pgbouncer import PgBouncer

#: The fixture pgbouncer_factory.
pytest_plugins = ["tests.support.pgbouncer"]

S = JobStatus
PROCEDURES = ("acknowledge_jobs", "cancel_jobs", "retry_jobs", "republish_jobs")
Call = Callable[..., list[StatusChange]]


@dataclass(frozen=True)
class Action:
    """An operator procedure: how to bring jobs where it applies, its Python wrapper, the
    CLI command behind it, the details it records (but the name) and the history rows it
    writes per job."""

    prepare: Callable[[Session, int], list[int]]
    call: Call
    command: str
    details: dict[str, str]
    rows_per_job: int


def _in_status(status: JobStatus) -> Callable[[Session, int], list[int]]:
    def prepare(session: Session, count: int) -> list[int]:
        ids = [job.id for job in make_jobs(session, count, prefix=f"{status.label}-")]
        move_to(session, ids, status)
        return ids

    return prepare


def _done_with_products(session: Session, count: int) -> list[int]:
    ids = processed_jobs(session, count, prefix="republish-")
    for step in (S.START_PUBLICATION, S.PUBLISHED, S.DONE):
        set_job_status(session, ids, step)
    session.commit()
    return ids


ACTIONS = {
    "acknowledge": Action(
        _in_status(S.INTERNAL_ERROR),
        acknowledge_jobs,
        "check",
        {"by": "operator", "action": "acknowledge"},
        1,
    ),
    "cancel": Action(
        _in_status(S.READY), cancel_jobs, "cancel", {"by": "operator", "action": "cancel"}, 1
    ),
    # internal_error is acknowledged on the way: two rows, both the retry's.
    "retry": Action(
        _in_status(S.INTERNAL_ERROR),
        retry_jobs,
        "retry",
        {"by": "operator", "action": "retry"},
        2,
    ),
    "republish": Action(
        _done_with_products,
        republish_jobs,
        "republish",
        {"stage": "publication", "by": "operator", "action": "republish"},
        1,
    ),
}


def last_change_id(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(text("SELECT coalesce(max(id), 0) FROM job_status_changes")).scalar()


def details_since(engine: Engine, job_ids: Sequence[int], after: int) -> list[dict[str, Any]]:
    """The details of the history rows of ``job_ids`` written after change ``after``."""
    with engine.connect() as conn:
        return list(
            conn.execute(
                text(
                    "SELECT details FROM job_status_changes"
                    " WHERE job_id = ANY (:ids) AND id > :after ORDER BY id"
                ),
                {"ids": list(job_ids), "after": after},
            ).scalars()
        )


def recorded_names(engine: Engine, job_ids: Sequence[int], after: int) -> list[str | None]:
    return [d.get("operator") for d in details_since(engine, job_ids, after)]


def login(engine: Engine) -> str:
    with engine.connect() as conn:
        return conn.execute(text("SELECT session_user")).scalar_one()


def rights(engine: Engine) -> dict[str, tuple[Any, ...]]:
    """Per operator procedure: SECURITY DEFINER?, its SET clauses, its ACL."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT proname, prosecdef, proconfig, proacl::text[] FROM pg_proc"
                " WHERE proname = ANY (:names) AND pronamespace = current_schema()::regnamespace"
            ),
            {"names": list(PROCEDURES)},
        ).all()
    return {row[0]: tuple(row[1:]) for row in rows}


# -- the procedures ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ACTIONS))
def test_each_procedure_records_the_named_operator(
    name: str, session: Session, engine: Engine
) -> None:
    action = ACTIONS[name]
    ids = action.prepare(session, 2)
    mark = last_change_id(engine)
    changes = action.call(session, ids, "by hand", operator="alice")
    session.commit()
    assert sorted(c.job_id for c in changes) == ids
    recorded = details_since(engine, ids, mark)
    assert recorded == [{**action.details, "operator": "alice"}] * (2 * action.rows_per_job)


@pytest.mark.parametrize("name", sorted(ACTIONS))
def test_without_a_name_the_session_login_is_recorded(
    name: str, session: Session, engine: Engine
) -> None:
    action = ACTIONS[name]
    ids = action.prepare(session, 1)
    mark = last_change_id(engine)
    action.call(session, ids)
    session.commit()
    assert (
        details_since(engine, ids, mark)
        == [{**action.details, "operator": login(engine)}] * action.rows_per_job
    )


def test_the_login_is_the_callers_not_the_owners(
    session: Session, engine: Engine, admin_engine: Engine, db_url: str
) -> None:
    """Inside the SECURITY DEFINER procedures current_user is their owner: the name comes
    from session_user, the caller's login, also after SET ROLE."""
    first, second, third = (job.id for job in make_jobs(session, 3))
    move_to(session, [first, second, third], S.EXTERNAL_ERROR)
    owner = login(engine)
    mark = last_change_id(engine)
    with login_as(admin_engine, db_url, "joblife_operator") as operator:
        user = login(operator)
        run(operator, "SELECT * FROM retry_jobs(ARRAY[:id]::bigint[])", id=first)
        with operator.begin() as conn:  # the role may name the operator itself
            retry_jobs(conn, [second], operator="bob")
    assert user != owner
    assert recorded_names(engine, [first], mark) == [user]
    assert recorded_names(engine, [second], mark) == ["bob"]

    session.execute(text("SET ROLE joblife_operator"))
    assert session.execute(text("SELECT current_user")).scalar_one() == "joblife_operator"
    retry_jobs(session, [third])
    session.commit()
    session.execute(text("RESET ROLE"))
    assert recorded_names(engine, [third], mark) == [owner]


# -- the name's scope -------------------------------------------------------------------------


def test_the_name_is_for_its_call_only(session: Session, engine: Engine) -> None:
    """A later call of the same transaction without a name records the login, and a name
    the caller set for the transaction itself comes back after a named call."""
    ids = [job.id for job in make_jobs(session, 4)]
    move_to(session, ids, S.READY)
    mark = last_change_id(engine)
    cancel_jobs(session, [ids[0]], operator="alice")
    cancel_jobs(session, [ids[1]])
    session.execute(text("SELECT set_config('joblife.operator', 'carol', true)"))
    cancel_jobs(session, [ids[2]], operator="alice")
    cancel_jobs(session, [ids[3]])
    session.commit()
    by_job = [recorded_names(engine, [job_id], mark) for job_id in ids]
    assert by_job == [["alice"], [login(engine)], ["alice"], ["carol"]]


def test_the_name_ends_with_its_call_and_transaction_on_one_connection(engine: Engine) -> None:
    """On one connection: the setting is back as it was right after a named call, a refused
    named call leaves nothing behind (its transaction is rolled back), and the next
    transaction records the login."""
    with Session(engine) as session:
        first, second = (job.id for job in make_jobs(session, 2))
        move_to(session, [first, second], S.READY)
    user = login(engine)
    mark = last_change_id(engine)
    setting = text("SELECT current_setting('joblife.operator', true)")
    with engine.connect() as conn:
        with conn.begin():
            pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
            cancel_jobs(conn, [first], operator="alice")
            assert conn.execute(setting).scalar_one() in ("", None)
        with pytest.raises(StatusConflict), conn.begin():
            retry_jobs(conn, [second], operator="mallory")  # a ready job: refused
        with conn.begin():
            assert conn.execute(text("SELECT pg_backend_pid()")).scalar_one() == pid
            assert conn.execute(setting).scalar_one() in ("", None)
            assert conn.execute(text("SELECT joblife_operator_name()")).scalar_one() == user
            cancel_jobs(conn, [second])
    assert recorded_names(engine, [first], mark) == ["alice"]
    assert recorded_names(engine, [second], mark) == [user]


def test_the_name_ends_with_its_transaction_through_pgbouncer(
    pgbouncer_factory: Callable[..., PgBouncer], db_url: str, session: Session, engine: Engine
) -> None:
    """Two clients on one server connection (transaction pooling, a pool of 1): the second
    client's transaction never acts under the first one's name. A session-level setting
    would leak (shown last): the check is not blind."""
    bouncer = pgbouncer_factory(pool_size=1)
    ids = [job.id for job in make_jobs(session, 3)]
    move_to(session, ids, S.READY)
    pooled = create_engine(bouncer.url(db_url))
    mark = last_change_id(engine)

    def backend(conn: Connection) -> int:
        return conn.execute(text("SELECT pg_backend_pid()")).scalar_one()

    try:
        with pooled.connect() as alice, pooled.connect() as other:
            with alice.begin():
                alice_pid = backend(alice)
                cancel_jobs(alice, [ids[0]], operator="alice")
            with other.begin():
                assert backend(other) == alice_pid
                cancel_jobs(other, [ids[1]])
            # What a session SET would do: the next client's transaction inherits it.
            with alice.begin():
                alice.execute(text("SELECT set_config('joblife.operator', 'leaked', false)"))
            with other.begin():
                assert backend(other) == alice_pid
                cancel_jobs(other, [ids[2]])
    finally:
        pooled.dispose()
    names = [recorded_names(engine, [job_id], mark) for job_id in ids]
    assert names == [["alice"], [login(engine)], ["leaked"]]


# -- names that cannot be stored as given -----------------------------------------------------


@pytest.mark.parametrize(
    ("given", "check"),
    [
        ("ev\x00e", lambda stored: stored == "ev\ufffde"),
        ("\udcffbob", lambda stored: stored == "\ufffdbob"),
        ("  alice \n", lambda stored: stored == "alice"),
        (
            "x" * 100_000,
            lambda stored: stored.startswith("x" * 100) and "[cut: 100000 bytes" in stored,
        ),
        ("é" * 150, lambda stored: stored.startswith("é" * 50) and "[cut: 300 bytes" in stored),
    ],
    ids=["nul", "undecodable-byte", "blanks", "huge", "multibyte-over-the-cap"],
)
def test_an_unstorable_name_is_cleaned_and_capped(
    given: str, check: Callable[[str], bool], session: Session, engine: Engine
) -> None:
    ids = ACTIONS["retry"].prepare(session, 1)
    mark = last_change_id(engine)
    retry_jobs(session, ids, operator=given)
    session.commit()
    names = recorded_names(engine, ids, mark)
    assert len(names) == 2 and names[0] == names[1]
    stored = names[0]
    assert isinstance(stored, str) and check(stored), stored
    assert len(stored.encode()) <= OPERATOR_NAME_MAX_BYTES


def test_a_blank_name_is_no_name(session: Session, engine: Engine) -> None:
    ids = ACTIONS["cancel"].prepare(session, 1)
    mark = last_change_id(engine)
    cancel_jobs(session, ids, operator=" \t ")
    session.commit()
    assert recorded_names(engine, ids, mark) == [login(engine)]


# -- the CLI ----------------------------------------------------------------------------------


def _os_user(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    for variable in ("LOGNAME", "USER", "LNAME", "USERNAME"):  # getpass.getuser()'s order
        monkeypatch.setenv(variable, name)


@pytest.mark.parametrize("name", sorted(ACTIONS))
def test_the_cli_records_the_os_user(
    name: str,
    joblife_env: str,
    session: Session,
    engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    action = ACTIONS[name]
    _os_user(monkeypatch, "alice-cli")
    ids = action.prepare(session, 1)
    mark = last_change_id(engine)
    result = CliRunner().invoke(app, ["jobs", action.command, str(ids[0]), "--json"])
    assert result.exit_code == 0, result.output
    assert [c["job_id"] for c in json.loads(result.stdout)] == ids
    assert (
        details_since(engine, ids, mark)
        == [{**action.details, "operator": "alice-cli"}] * action.rows_per_job
    )


def test_the_cli_without_an_os_user_records_the_login(
    joblife_env: str, session: Session, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_user() -> str:
        raise OSError("No username set in the environment")

    monkeypatch.setattr(getpass, "getuser", no_user)
    assert cli_operator() is None
    ids = ACTIONS["retry"].prepare(session, 1)
    mark = last_change_id(engine)
    result = CliRunner().invoke(app, ["jobs", "retry", str(ids[0])])
    assert result.exit_code == 0, result.output
    assert recorded_names(engine, ids, mark) == [login(engine)] * 2


# -- the revision -----------------------------------------------------------------------------


def test_the_revision_keeps_the_rights_and_its_downgrade_restores_the_procedures(
    session: Session, engine: Engine
) -> None:
    with engine.connect() as conn:
        schema = conn.execute(text("SELECT current_schema()")).scalar_one()
    at_head = rights(engine)
    assert set(at_head) == set(PROCEDURES)
    for secdef, config, _acl in at_head.values():
        assert (secdef, config) == (True, [f"search_path={schema}, pg_temp"])
    old, new = ACTIONS["retry"].prepare(session, 2)

    with engine.begin() as conn:
        command.downgrade(migrate.alembic_config(conn), "0016")
    assert migrate.current_revisions(engine) == {"0016", "e001"}
    assert rights(engine) == at_head  # owner's rights, search_path and grants as at 0016
    with engine.connect() as conn:
        gone = conn.execute(text("SELECT to_regprocedure('joblife_operator_name()')"))
        assert gone.scalar_one() is None
    mark = last_change_id(engine)
    retry_jobs(session, [old])
    session.commit()
    assert details_since(engine, [old], mark) == [{"by": "operator", "action": "retry"}] * 2

    migrate.upgrade(engine)
    assert rights(engine) == at_head
    mark = last_change_id(engine)
    retry_jobs(session, [new], operator="alice")
    session.commit()
    assert (
        details_since(engine, [new], mark)
        == [{"by": "operator", "action": "retry", "operator": "alice"}] * 2
    )
