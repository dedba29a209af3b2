"""The ``joblife`` command on real PostgreSQL: what it prints matches the database, filters
filter, operator actions go through the one door all-or-nothing, and errors are one line
(a traceback only with --debug)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from joblife.cli.main import app
from joblife.cli.output import format_duration
from joblife.cli.parsing import parse_duration, parse_since, parse_statuses
from joblife.config import get_settings
from joblife.db.status import set_job_status
from joblife.model import JobStatus
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session
from typer.testing import CliRunner, Result

from tests.support.example_type import ExampleJob
from tests.support.factories import move_to

S = JobStatus
MISSING_ID = 987_654_321


@pytest.fixture(autouse=True)
def _plain_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tables as a pipe gets them: no colours, no width from the environment."""
    for name in ("COLUMNS", "LINES", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.delenv("JOBLIFE_DEBUG", raising=False)


def run(*args: str) -> Result:
    """Invoke ``joblife ARGS`` in-process."""
    return CliRunner().invoke(app, list(args))


def run_json(*args: str) -> Any:
    result = run(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def table_rows(output: str) -> list[list[str]]:
    """The body rows of the rich tables in ``output``, as lists of cell texts."""
    return [
        [cell.strip() for cell in line.strip().strip("│").split("│")]
        for line in output.splitlines()
        if line.startswith("│")
    ]


def table_headers(output: str) -> list[list[str]]:
    """The header rows of the rich tables in ``output``."""
    return [
        [cell.strip() for cell in line.strip().strip("┃").split("┃")]
        for line in output.splitlines()
        if line.startswith("┃")
    ]


def assert_one_line_error(result: Result, *fragments: str) -> str:
    """Exit status 1, nothing on stdout, exactly one line on stderr containing ``fragments``."""
    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


def make_example_jobs(session: Session, count: int, prefix: str) -> list[int]:
    jobs = [
        ExampleJob(input_product_id=f"{prefix}-{i}", band=f"B{i:02d}", resolution_m=10)
        for i in range(count)
    ]
    session.add_all(jobs)
    session.commit()
    return [job.id for job in jobs]


def insert_other_job(engine: Engine, product: str, age: timedelta) -> int:
    """A job of a type not registered here, created ``age`` ago (raw SQL, as another
    installation would)."""
    with engine.begin() as conn:
        return conn.execute(
            text(
                "INSERT INTO jobs (job_type, input_product_id, worker_flavor, status_changed_at)"
                " VALUES ('other', :product, 'small', now() - :age) RETURNING id"
            ),
            {"product": product, "age": age},
        ).scalar_one()


def statuses(engine: Engine, job_ids: list[int]) -> dict[int, JobStatus]:
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT id, status FROM jobs WHERE id = ANY (:ids)"), {"ids": job_ids}
        )
        return {row.id: JobStatus(row.status) for row in rows}


def history_size(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(text("SELECT count(*) FROM job_status_changes")).scalar_one()


@pytest.fixture
def populated(joblife_env: str, session: Session, engine: Engine) -> dict[str, list[int]]:
    """example: 3 initialized, 2 ready, 1 internal_error, 1 external_error, 1 done;
    other: 2 initialized, created 3 days ago."""
    initialized = make_example_jobs(session, 3, "init")
    ready = make_example_jobs(session, 2, "ready")
    move_to(session, ready, S.READY)
    internal = make_example_jobs(session, 1, "internal")
    move_to(session, internal, S.INTERNAL_ERROR)
    external = make_example_jobs(session, 1, "external")
    move_to(session, external, S.EXTERNAL_ERROR)
    done = make_example_jobs(session, 1, "done")
    move_to(session, done, S.DONE)
    other = [insert_other_job(engine, f"other-{i}", timedelta(days=3)) for i in range(2)]
    return {
        "initialized": initialized,
        "ready": ready,
        "internal_error": internal,
        "external_error": external,
        "done": done,
        "other": other,
    }


# -- joblife status ---------------------------------------------------------------------------


def database_counts(engine: Engine) -> dict[str, dict[str, int]]:
    """Counts straight from the jobs table (not through the view the command reads)."""
    counts: dict[str, dict[str, int]] = {}
    with engine.connect() as conn:
        for row in conn.execute(
            text("SELECT job_type, status, count(*) AS n FROM jobs GROUP BY 1, 2")
        ):
            counts.setdefault(row.job_type, {})[JobStatus(row.status).label] = row.n
    return counts


def test_status_table_counts_match_the_database(populated: dict, engine: Engine) -> None:
    expected = database_counts(engine)
    assert expected["example"] == {
        "initialized": 3, "ready": 2, "internal_error": 1, "external_error": 1, "done": 1,
    }  # fmt: skip
    result = run("status")
    assert result.exit_code == 0, result.output
    [headers] = table_headers(result.stdout)
    present = sorted({JobStatus.parse(s) for by in expected.values() for s in by})
    assert headers == ["job type", *(s.label for s in present), "total"]
    rows = {row[0]: row[1:] for row in table_rows(result.stdout)}
    assert set(rows) == {"example", "other", "total"}
    for job_type, by_status in expected.items():
        cells = [int(c) for c in rows[job_type]]
        assert cells[:-1] == [by_status.get(s.label, 0) for s in present]
        assert cells[-1] == sum(by_status.values())
    assert [int(c) for c in rows["total"]][-1] == 10
    assert "no jobs yet" not in result.stdout


def test_status_json_counts_match_the_database(populated: dict, engine: Engine) -> None:
    expected = database_counts(engine)
    data = run_json("status")
    assert data["statuses"] == [
        "initialized", "ready", "done", "internal_error", "external_error",
    ]  # fmt: skip
    by_type = {entry["job_type"]: entry for entry in data["job_types"]}
    assert {t: e["counts"] for t, e in by_type.items()} == expected
    assert by_type["example"]["total"] == 8
    assert by_type["other"]["total"] == 2
    assert data["totals"]["initialized"] == 5
    assert data["total"] == 10


def test_status_on_an_empty_database_prints_an_empty_table(joblife_env: str) -> None:
    result = run("status")
    assert result.exit_code == 0, result.output
    assert table_headers(result.stdout) == [["job type", "total"]]
    assert table_rows(result.stdout) == []
    assert "no jobs yet" in result.stdout
    assert run_json("status") == {
        "statuses": [],
        "job_types": [],
        "totals": {},
        "total": 0,
        "rejected_products": {},
    }


def test_status_counts_the_products_creation_refused(joblife_env: str, engine: Engine) -> None:
    """Refused products are not jobs: `status` names them apart, by type."""
    from joblife.lifecycle.creation import Rejection, record_rejections

    now = datetime.now(UTC)
    refused = [Rejection("'in/a\\x00.h5'", "nul", "input_product_id contains a NUL")]
    record_rejections(engine, "example", refused, now)
    record_rejections(engine, "example", refused, now)  # rediscovered: still one product
    record_rejections(engine, "other", [Rejection("'b'", "unsafe_key", "'..'")], now)
    result = run("status")
    assert result.exit_code == 0, result.output
    assert "products refused at creation (not jobs): example 1, other 1" in result.stdout
    assert run_json("status")["rejected_products"] == {"example": 1, "other": 1}


# -- joblife jobs list ------------------------------------------------------------------------


def listed_ids(*args: str) -> list[int]:
    return [job["id"] for job in run_json("jobs", "list", *args)]


def test_jobs_list_is_newest_first_with_every_overview_field(
    populated: dict, engine: Engine
) -> None:
    jobs = run_json("jobs", "list")
    with engine.connect() as conn:
        expected = (
            conn.execute(text("SELECT id FROM jobs ORDER BY status_changed_at DESC, id DESC"))
            .scalars()
            .all()
        )
    assert [job["id"] for job in jobs] == expected
    # The two 'other' jobs changed status 3 days ago: they come last.
    assert {job["id"] for job in jobs[-2:]} == set(populated["other"])
    first = jobs[0]
    assert first["status"] == "done"
    assert isinstance(first["time_in_status"], float) and first["time_in_status"] >= 0
    assert datetime.fromisoformat(first["status_changed_at"]).tzinfo is not None
    uuid.UUID(first["unique_id"])
    assert first["priority"] == "nrt"


def test_jobs_list_filters_by_type_and_status(populated: dict) -> None:
    assert sorted(listed_ids("--type", "other")) == sorted(populated["other"])
    assert sorted(listed_ids("--status", "ready")) == sorted(populated["ready"])
    both = listed_ids("--status", "internal_error", "--status", "EXTERNAL_ERROR")
    assert sorted(both) == sorted(populated["internal_error"] + populated["external_error"])
    assert sorted(listed_ids("-s", "ready,done")) == sorted(populated["ready"] + populated["done"])
    combined = listed_ids("--type", "example", "--status", "initialized")
    assert sorted(combined) == sorted(populated["initialized"])
    assert listed_ids("--type", "other", "--status", "ready") == []


def test_jobs_list_filters_by_since(populated: dict, session: Session, engine: Engine) -> None:
    all_ids = {i for ids in populated.values() for i in ids}
    recent = all_ids - set(populated["other"])
    assert set(listed_ids("--since", "1d")) == recent
    assert set(listed_ids("--since", "4d")) == all_ids
    # An absolute time, between the changes made so far and a new one.
    with engine.connect() as conn:
        cut = conn.execute(text("SELECT clock_timestamp()")).scalar_one()
    set_job_status(session, populated["ready"][:1], "queued", message="later")
    session.commit()
    assert listed_ids("--since", cut.isoformat()) == populated["ready"][:1]
    assert listed_ids("--since", cut.astimezone(UTC).isoformat()) == populated["ready"][:1]


def test_jobs_list_limit_keeps_the_most_recent(populated: dict) -> None:
    everything = listed_ids("--limit", "0")
    assert len(everything) == 10
    assert listed_ids("--limit", "3") == everything[:3]
    result = run("jobs", "list", "--limit", "3")
    assert result.exit_code == 0, result.output
    assert [int(row[0]) for row in table_rows(result.stdout)] == everything[:3]
    assert "more match" in result.stdout
    result = run("jobs", "list", "--limit", "10")
    assert len(table_rows(result.stdout)) == 10
    assert "more match" not in result.stdout
    assert "10 jobs" in result.stdout


def test_jobs_list_table_shows_the_jobs(populated: dict) -> None:
    result = run("jobs", "list", "--status", "ready")
    assert result.exit_code == 0, result.output
    rows = table_rows(result.stdout)
    assert sorted(int(r[0]) for r in rows) == sorted(populated["ready"])
    assert {r[4] for r in rows} == {"ready"}
    assert {r[2] for r in rows} == {"ready-0", "ready-1"}
    assert {r[7] for r in rows} == {"0/3"}


def assert_usage_error(result: Result, option: str, *fragments: str) -> str:
    """Exit status 2, nothing on stdout, typer's "Invalid value for 'OPTION'" on stderr
    with ``fragments`` (the message as one line: the box it is drawn in removed)."""
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    message = " ".join(result.stderr.replace("│", " ").split())
    assert f"Invalid value for '{option}'" in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_jobs_list_rejects_an_unknown_status_naming_the_known_ones(joblife_env: str) -> None:
    message = assert_usage_error(run("jobs", "list", "--status", "bogus"), "--status", "'bogus'")
    for status in JobStatus:
        assert status.label in message


def test_jobs_list_rejects_a_malformed_since(joblife_env: str) -> None:
    assert_usage_error(run("jobs", "list", "--since", "yesterday"), "--since", "'yesterday'")


# -- joblife jobs show ------------------------------------------------------------------------


@pytest.fixture
def walked_job(joblife_env: str, session: Session) -> int:
    """A job with a varied history: ready, queued, external_error (with details), retried."""
    [job_id] = make_example_jobs(session, 1, "walk")
    set_job_status(session, job_id, "ready", message="configured")
    set_job_status(session, job_id, "queued", message="dispatching")
    set_job_status(
        session, job_id, "external_error", message="bucket unreachable", details={"code": 503}
    )
    session.commit()
    return job_id


def test_jobs_show_json_has_every_field_and_the_full_timeline(
    walked_job: int, engine: Engine
) -> None:
    assert run("jobs", "retry", str(walked_job), "-m", "try again").exit_code == 0
    data = run_json("jobs", "show", str(walked_job))
    job = data["job"]
    assert job["id"] == walked_job
    assert job["job_type"] == "example"
    assert job["input_product_id"] == "walk-0"
    assert job["status"] == "ready"
    expected_fields = {
        "status_changed_at", "time_in_status", "attempt", "max_attempts", "worker_flavor",
        "created_at", "unique_id", "input_path", "output_path", "priority", "nomad_job_id",
    }  # fmt: skip
    assert expected_fields <= set(job)
    assert data["type_fields"] == {"band": "B00", "resolution_m": 10}
    with engine.connect() as conn:
        stored = (
            conn.execute(
                text("SELECT message FROM job_status_changes WHERE job_id = :id ORDER BY id"),
                {"id": walked_job},
            )
            .scalars()
            .all()
        )
    timeline = data["timeline"]
    assert [(c["previous_status"], c["status"]) for c in timeline] == [
        (None, "initialized"),
        ("initialized", "ready"),
        ("ready", "queued"),
        ("queued", "external_error"),
        ("external_error", "ready"),
    ]
    assert [c["message"] for c in timeline] == stored
    assert timeline[-1]["message"] == "try again"
    assert timeline[3]["details"] == {"code": 503}
    times = [datetime.fromisoformat(c["time"]) for c in timeline]
    assert times == sorted(times)


def test_jobs_show_table_prints_fields_and_timeline(walked_job: int) -> None:
    result = run("jobs", "show", str(walked_job))
    assert result.exit_code == 0, result.output
    rows = table_rows(result.stdout)
    fields = {r[0]: r[1] for r in rows if len(r) == 2}
    assert fields["id"] == str(walked_job)
    assert fields["status"] == "external_error"
    assert fields["band"] == "B00"
    changes = [r[1] for r in rows if len(r) == 4]
    assert changes == [
        "(created) → initialized",
        "initialized → ready",
        "ready → queued",
        "queued → external_error",
    ]
    [error_row] = [r for r in rows if len(r) == 4 and r[2] == "bucket unreachable"]
    assert error_row[3] == '{"code": 503}'


def test_jobs_show_of_an_unregistered_type_shows_the_common_fields(populated: dict) -> None:
    job_id = populated["other"][0]
    data = run_json("jobs", "show", str(job_id))
    assert data["job"]["job_type"] == "other"
    assert data["type_fields"] is None
    assert [c["status"] for c in data["timeline"]] == ["initialized"]
    result = run("jobs", "show", str(job_id))
    assert "not registered" in result.stdout


def test_jobs_show_of_a_missing_job_is_an_error(joblife_env: str) -> None:
    assert_one_line_error(run("jobs", "show", str(MISSING_ID)), f"job {MISSING_ID} not found")


# -- joblife jobs retry | cancel | check ------------------------------------------------------


def test_check_then_retry_through_the_one_door(populated: dict, engine: Engine) -> None:
    internal, external = populated["internal_error"][0], populated["external_error"][0]
    result = run("jobs", "check", str(internal), str(external), "--message", "seen it")
    assert result.exit_code == 0, result.output
    assert statuses(engine, [internal, external]) == {
        internal: S.ERROR_CHECKED, external: S.ERROR_CHECKED,
    }  # fmt: skip
    changed = {int(r[0]): (r[1], r[2]) for r in table_rows(result.stdout)}
    assert changed == {
        internal: ("internal_error", "→ error_checked"),
        external: ("external_error", "→ error_checked"),
    }
    assert "checked 2 jobs" in result.stdout
    with engine.connect() as conn:
        message = (
            conn.execute(
                text("SELECT message FROM job_status_changes WHERE job_id = :id ORDER BY id DESC"),
                {"id": internal},
            )
            .scalars()
            .first()
        )
    assert message == "seen it"

    changes = run_json("jobs", "retry", str(internal))
    assert [(c["job_id"], c["previous_status"], c["status"]) for c in changes] == [
        (internal, "error_checked", "ready")
    ]
    datetime.fromisoformat(changes[0]["changed_at"])
    assert statuses(engine, [internal])[internal] == S.READY


def test_retry_of_an_internal_error_reports_where_the_job_came_from(
    populated: dict, engine: Engine
) -> None:
    internal = populated["internal_error"][0]
    changes = run_json("jobs", "retry", str(internal))
    assert [(c["previous_status"], c["status"]) for c in changes] == [("internal_error", "ready")]
    assert statuses(engine, [internal])[internal] == S.READY


def test_cancel_reports_and_commits(populated: dict, engine: Engine) -> None:
    ids = populated["ready"]
    result = run("jobs", "cancel", *map(str, ids))
    assert result.exit_code == 0, result.output
    assert {int(r[0]): r[1] for r in table_rows(result.stdout)} == dict.fromkeys(ids, "ready")
    assert "cancelled 2 jobs" in result.stdout
    assert set(statuses(engine, ids).values()) == {S.CANCELLED}


def test_a_refused_change_is_one_line_and_changes_nothing(populated: dict, engine: Engine) -> None:
    ready = populated["ready"][0]
    before = history_size(engine)
    line = assert_one_line_error(run("jobs", "check", str(ready)), f"job {ready}", "ready")
    assert "error_checked" in line
    assert statuses(engine, [ready])[ready] == S.READY
    assert history_size(engine) == before


def test_an_invalid_transition_names_both_statuses_and_the_allowed_ones(
    populated: dict,
) -> None:
    done = populated["done"][0]
    line = assert_one_line_error(run("jobs", "cancel", str(done)))
    assert f"job {done}: transition done -> cancelled is not allowed" in line
    assert "allowed from done: start_publication" in line


def test_debug_prints_the_traceback_before_the_error_line(populated: dict) -> None:
    ready = populated["ready"][0]
    result = run("--debug", "jobs", "check", str(ready))
    assert result.exit_code == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert "StatusConflict" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: job ")


@pytest.mark.parametrize("bad", ["done", "missing"])
def test_a_batch_with_one_bad_job_changes_nothing(
    bad: str, populated: dict, engine: Engine
) -> None:
    good = populated["ready"] + populated["initialized"]
    bad_id = populated["done"][0] if bad == "done" else MISSING_ID
    before = statuses(engine, good)
    history = history_size(engine)
    result = run("jobs", "cancel", *map(str, good[:2]), str(bad_id), *map(str, good[2:]))
    expected = f"job {bad_id}: transition" if bad == "done" else f"job(s) {bad_id} not found"
    assert_one_line_error(result, expected)
    assert statuses(engine, good) == before
    assert history_size(engine) == history
    # The same batch without the bad job goes through.
    assert run("jobs", "cancel", *map(str, good)).exit_code == 0
    assert set(statuses(engine, good).values()) == {S.CANCELLED}


def test_a_non_numeric_id_is_a_usage_error(joblife_env: str) -> None:
    result = run("jobs", "cancel", "twelve")
    assert result.exit_code == 2
    assert "Traceback" not in result.output


# -- database errors --------------------------------------------------------------------------


@pytest.fixture
def unreachable(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("JOBLIFE_DATABASE_URL", "postgresql://postgres:s3cr3tpw@127.0.0.1:1/x")
    get_settings.cache_clear()
    yield "s3cr3tpw"
    get_settings.cache_clear()


@pytest.mark.parametrize(
    "args", [("status",), ("jobs", "list", "--json"), ("jobs", "retry", "1"), ("db", "current")]
)
def test_an_unreachable_database_is_one_line_naming_it(unreachable: str, args: tuple) -> None:
    result = run(*args)
    assert_one_line_error(result, "cannot reach the job database", "127.0.0.1:1/x", "***")
    assert unreachable not in result.output


def test_an_unreachable_database_with_debug_shows_the_traceback(unreachable: str) -> None:
    result = run("--debug", "status")
    assert result.exit_code == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert "OperationalError" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: cannot reach")


# -- joblife db -------------------------------------------------------------------------------


def test_db_url_hides_the_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOBLIFE_DATABASE_URL", "postgresql://ops:t0ps3cret@db.example:5433/jobs")
    get_settings.cache_clear()
    try:
        hidden = run("db", "url")
        shown = run("db", "url", "--show-password")
        libpq = run("db", "url", "--libpq", "--show-password")
    finally:
        get_settings.cache_clear()
    assert hidden.exit_code == 0, hidden.output
    assert hidden.stdout.strip() == "postgresql+psycopg2://ops:***@db.example:5433/jobs"
    assert "t0ps3cret" not in hidden.output
    assert shown.stdout.strip() == "postgresql+psycopg2://ops:t0ps3cret@db.example:5433/jobs"
    assert libpq.stdout.strip() == "postgresql://ops:t0ps3cret@db.example:5433/jobs"


def test_db_url_prints_the_configured_database(joblife_env: str) -> None:
    result = run("db", "url", "--show-password")
    assert result.exit_code == 0, result.output
    assert make_url(result.stdout.strip()) == make_url(joblife_env)


def test_db_current_at_head(joblife_env: str) -> None:
    data = run_json("db", "current")
    assert data["at_head"] is True
    assert data["heads"] == ["0020", "e001"]
    # e001 depends on 0001: Alembic records only the branch tips, which imply the rest.
    assert data["current"] == ["0020", "e001"]
    assert data["pending"] == []
    assert data["unknown"] == []
    result = run("db", "current")
    assert result.exit_code == 0, result.output
    assert "is at the heads" in result.stdout


@pytest.fixture
def empty_database(
    admin_engine: Engine, pg_admin_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """An empty (never migrated) database, configured as joblife's."""
    name = f"jl_cli_{uuid.uuid4().hex[:12]}"
    with admin_engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(pg_admin_url).set(database=name).render_as_string(hide_password=False)
    monkeypatch.setenv("JOBLIFE_DATABASE_URL", url)
    get_settings.cache_clear()
    yield url
    get_settings.cache_clear()
    with admin_engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def test_db_upgrade_brings_an_empty_database_to_head(empty_database: str) -> None:
    result = run("db", "current", "--json")
    assert result.exit_code == 1
    state = json.loads(result.stdout)
    assert (state["current"], state["pending"], state["at_head"]) == (
        [],
        [
            "0001",
            "0002",
            "0003",
            "0004",
            "0005",
            "0006",
            "0007",
            "0008",
            "0009",
            "0010",
            "0011",
            "0012",
            "0013",
            "0014",
            "0015",
            "0016",
            "0017",
            "0018",
            "0019",
            "0020",
            "e001",
        ],
        False,
    )
    result = run("db", "current")
    assert result.exit_code == 1
    pending = (
        "0001, 0002, 0003, 0004, 0005, 0006, 0007, 0008, 0009, 0010, 0011, 0012, 0013, 0014, "
        "0015, 0016, 0017, 0018, 0019, 0020, e001"
    )
    assert f"NOT at the heads (pending: {pending})" in result.stdout
    assert_one_line_error(run("jobs", "list"), "not migrated", "joblife db upgrade")

    result = run("db", "upgrade", "--revision", "0001")
    assert result.exit_code == 0, result.output
    assert "applied 0001\n" in result.stdout
    assert (
        "still pending: 0002, 0003, 0004, 0005, 0006, 0007, 0008, 0009, 0010, 0011, 0012, "
        "0013, 0014, 0015, 0016, 0017, 0018, 0019, 0020, e001" in result.stdout
    )
    assert run("db", "current").exit_code == 1

    result = run("db", "upgrade")
    assert result.exit_code == 0, result.output
    assert "applied" in result.stdout and "e001" in result.stdout
    assert "the database is at the heads" in result.stdout
    assert run("db", "current").exit_code == 0
    assert run_json("status")["total"] == 0
    again = run("db", "upgrade")
    assert again.exit_code == 0 and "nothing to apply" in again.stdout


def test_db_current_flags_revisions_it_does_not_know(joblife_env: str, engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE alembic_version SET version_num = 'zz99' WHERE version_num = 'e001'")
        )
    result = run("db", "current", "--json")
    assert result.exit_code == 1
    state = json.loads(result.stdout)
    assert state["unknown"] == ["zz99"]
    assert state["at_head"] is False


def test_db_stop_with_a_configured_url_says_so(joblife_env: str) -> None:
    result = run("db", "stop")
    assert result.exit_code == 0, result.output
    assert "a database URL is configured" in result.stdout
    assert "nothing stopped" in result.stdout


# -- parsing and formatting -------------------------------------------------------------------


def test_parse_since_accepts_durations_and_iso_times() -> None:
    now = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
    assert parse_since("2h", now) == now - timedelta(hours=2)
    assert parse_since("3d", now) == now - timedelta(days=3)
    assert parse_since("1h30m", now) == now - timedelta(minutes=90)
    assert parse_since("2026-11-01T08:00+00:00", now) == datetime(2026, 11, 1, 8, tzinfo=UTC)
    naive = parse_since("2026-11-01", now)
    assert naive.tzinfo is not None
    assert naive.replace(tzinfo=None) == datetime(2026, 11, 1)
    for bad in ("2x", "yesterday", "", "h2"):
        with pytest.raises(ValueError, match="invalid point in time"):
            parse_since(bad, now)
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration("soon")


def test_parse_statuses_is_ordered_and_deduplicated() -> None:
    assert parse_statuses(["ready,DONE", " ready ", "internal_error"]) == [
        S.READY, S.DONE, S.INTERNAL_ERROR,
    ]  # fmt: skip
    assert parse_statuses(None) == []
    with pytest.raises(ValueError, match="known: initialized"):
        parse_statuses(["ready", "nope"])


def test_format_duration() -> None:
    assert format_duration(timedelta(seconds=12)) == "12s"
    assert format_duration(timedelta(minutes=4, seconds=3)) == "4m 03s"
    assert format_duration(timedelta(hours=2, minutes=5, seconds=59)) == "2h 05m"
    assert format_duration(timedelta(days=3, hours=4)) == "3d 04h"
    assert format_duration(None) == ""


def test_counter_of_listed_statuses_matches_status_command(populated: dict) -> None:
    """The two read paths (jobs_overview, job_status_summary) agree."""
    listed = Counter((j["job_type"], j["status"]) for j in run_json("jobs", "list", "--limit", "0"))
    summary = run_json("status")
    from_summary = Counter(
        {(e["job_type"], s): n for e in summary["job_types"] for s, n in e["counts"].items()}
    )
    assert listed == from_summary


def test_an_unexpected_error_is_one_line_unless_debug(
    joblife_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(session: Session) -> None:
        raise RuntimeError("something broke\nsecond line")

    monkeypatch.setattr("joblife.cli.queries.status_summary", broken)
    assert_one_line_error(run("status"), "unexpected RuntimeError: something broke", "--debug")
    result = run("--debug", "status")
    assert result.exit_code == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert "second line" in result.stderr


# -- db roles (issue 13, item 11) ---------------------------------------------------------------
@pytest.fixture
def roles_admin(
    admin_engine: Engine, pg_admin_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, str]]:
    """The admin's URL configured; unique names for a database and its four logins,
    dropped afterwards."""
    tag = uuid.uuid4().hex[:8]
    names = {p: f"jl_{tag}_{p}" for p in ("database", "owner", "service", "worker", "operator")}
    monkeypatch.setenv("JOBLIFE_DATABASE_URL", pg_admin_url)
    get_settings.cache_clear()
    yield names
    get_settings.cache_clear()
    with admin_engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{names["database"]}" WITH (FORCE)'))
        for part in ("owner", "service", "worker", "operator"):
            if conn.execute(
                text("SELECT 1 FROM pg_roles WHERE rolname = :n"), {"n": names[part]}
            ).first():
                conn.execute(text(f'DROP ROLE "{names[part]}"'))


def roles_args(names: dict[str, str]) -> list[str]:
    return ["db", "roles", *(f"--{part}={name}" for part, name in names.items())]


def logins(engine: Engine, names: dict[str, str]) -> set[str]:
    with engine.connect() as conn:
        found = conn.execute(
            text("SELECT rolname FROM pg_roles WHERE rolname = ANY(:n)"),
            {"n": list(names.values())},
        )
        return set(found.scalars())


def test_db_roles_sql_prints_an_idempotent_script_and_creates_nothing(
    roles_admin: dict[str, str], admin_engine: Engine
) -> None:
    result = run(*roles_args(roles_admin), "--sql", "--service-password", "s'pw")
    assert result.exit_code == 0, result.output
    script = result.stdout
    assert f"CREATE ROLE \"{roles_admin['service']}\" LOGIN PASSWORD 's''pw'" in script
    assert f'GRANT joblife_worker TO "{roles_admin["worker"]}"' in script
    assert f'CREATE DATABASE "{roles_admin["database"]}" OWNER "{roles_admin["owner"]}"' in script
    assert "IF NOT EXISTS" in script and "\\gexec" in script
    assert "-- worker_database_url: the workers (if this script creates the role): " in script
    assert logins(admin_engine, roles_admin) == set()


def test_db_roles_creates_then_keeps_or_resets_passwords(
    roles_admin: dict[str, str], admin_engine: Engine
) -> None:
    first = run(*roles_args(roles_admin), "--worker-password", "w1")
    assert first.exit_code == 0, first.output
    assert f"created database {roles_admin['database']}" in first.stdout
    assert first.stdout.count("(created)") == 4
    assert f"postgresql://{roles_admin['worker']}:w1@" in first.stdout
    assert logins(admin_engine, roles_admin) == {
        v for k, v in roles_admin.items() if k != "database"
    }

    again = run(*roles_args(roles_admin), "--worker-password", "w2")
    assert again.exit_code == 0, again.output
    assert "created database" not in again.stdout
    assert again.stdout.count("(unchanged)") == 3 and "(password set)" in again.stdout
    # A kept password is not printed (the generated one was not applied).
    assert f"postgresql://{roles_admin['owner']}@" in again.stdout
    with admin_engine.connect() as conn:
        members = conn.execute(
            text(
                "SELECT count(*) FROM pg_auth_members m WHERE m.member = ANY("
                "SELECT oid FROM pg_roles WHERE rolname = ANY(:n))"
            ),
            {"n": list(roles_admin.values())},
        ).scalar()
    assert members == 3  # service, worker, operator: one group each, granted once


def test_db_roles_stores_any_password_hashed(
    roles_admin: dict[str, str], admin_engine: Engine
) -> None:
    """A password with dollar quotes and quotes in it is set as given, and the server
    stores (and is sent) only its SCRAM verifier."""
    password = "a$$b'c$jl$d"
    result = run(*roles_args(roles_admin), "--service-password", password)
    assert result.exit_code == 0, result.output
    with admin_engine.connect() as conn:
        stored = conn.execute(
            text("SELECT rolpassword FROM pg_authid WHERE rolname = :n"),
            {"n": roles_admin["service"]},
        ).scalar()
    assert stored.startswith("SCRAM-SHA-256$") and password not in stored
    # The verifier is the password's (RFC 5802: StoredKey = H(HMAC(SaltedPassword, ...))).
    iterations_salt, keys = stored.removeprefix("SCRAM-SHA-256$").split("$")
    iterations, salt = iterations_salt.split(":")
    salted = hashlib.pbkdf2_hmac(
        "sha256", password.encode(), base64.b64decode(salt), int(iterations)
    )
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    assert base64.b64encode(hashlib.sha256(client_key).digest()).decode() == keys.split(":")[0]
    script = run(*roles_args(roles_admin), "--sql", "--service-password", password).stdout
    assert "a$$b''c$jl$d" in script and "DO $jl_" in script  # a tag the password lacks


def test_db_roles_refuses_a_name_that_is_not_a_plain_identifier(
    roles_admin: dict[str, str],
) -> None:
    assert_usage_error(
        run("db", "roles", "--owner", 'x"; DROP ROLE y; --'), "--owner", "role or database name"
    )


def test_retry_refusal_names_every_retryable_status(populated: dict, engine: Engine) -> None:
    ready = populated["ready"][0]
    line = assert_one_line_error(run("jobs", "retry", str(ready)), f"job {ready} is ready")
    assert "internal_error, external_error or error_checked" in line
    assert statuses(engine, [ready])[ready] == S.READY
