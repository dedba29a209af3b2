"""The ``joblife`` command's surface (issue 17, items 7, 12, 14, 16, 17): help texts that
render, usage errors that exit 2 before anything is touched, a command tree that imports
none of the heavy dependencies, error messages that say what to do, and ``jobs show``'s
fields. Against the real PostgreSQL where a database is involved."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from joblife.cli import choices
from joblife.cli.main import app
from joblife.config import get_settings
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session
from typer.testing import Result

from tests.support.example_type import ExampleJob
from tests.test_cli import _plain_terminal, run  # noqa: F401 - the autouse fixture

JOBLIFE = [sys.executable, "-m", "joblife.cli.main"]
#: A URL on which nothing listens: a command that reached for the database would fail.
UNREACHABLE = "postgresql://postgres:pw@127.0.0.1:1/nowhere"


def one_line(text_: str) -> str:
    """``text_`` with rich's box characters removed and every run of blanks made one
    space: what a message or paragraph says, whatever its wrapping."""
    for box in "│╭╮╰╯─":
        text_ = text_.replace(box, " ")
    return " ".join(text_.split())


def assert_usage_error(result: Result, option: str, *fragments: str) -> str:
    """Exit status 2, nothing on stdout, typer's "Invalid value for 'OPTION'" and
    ``fragments`` on stderr; the message as one line."""
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    message = one_line(result.stderr)
    assert f"Invalid value for '{option}" in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


def assert_one_line_error(result: Result, *fragments: str, exit_code: int = 1) -> str:
    """``exit_code``, nothing on stdout, one ``error:`` line on stderr with ``fragments``."""
    assert result.exit_code == exit_code, result.output
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


# -- help texts (item 14) ----------------------------------------------------------------


def command_tree() -> list[tuple[tuple[str, ...], Any]]:
    """Every command and group of the app with its path (the root's is ``()``)."""
    found = []

    def walk(path: tuple[str, ...], command: Any) -> None:
        found.append((path, command))
        for name, sub in sorted(getattr(command, "commands", {}).items()):
            walk((*path, name), sub)

    walk((), typer.main.get_command(app))
    return found


def summary(command: Any) -> str:
    """The first paragraph of a command's help, as one line, without Markdown's code marks."""
    first = (command.help or "").strip().split("\n\n")[0]
    return " ".join(first.replace("`", "").split())


def test_the_tree_has_every_command() -> None:
    paths = {" ".join(path) for path, _ in command_tree()}
    expected = {
        "status", "run", "health", "stats", "cleanup", "publish", "timeliness", "demo", "web",
        "db upgrade", "db roles", "jobs list", "jobs show", "jobs retry", "jobs stale",
        "jobs republish", "jobs check-counts", "metrics serve", "publications list",
        "nomad render", "nomad deploy", "worker run", "web-users add",
    }  # fmt: skip
    assert expected <= paths


@pytest.mark.parametrize(
    "path", [path for path, _ in command_tree()], ids=lambda p: " ".join(p) or "joblife"
)
def test_every_command_has_a_summary_and_no_rest_markup(path: tuple[str, ...]) -> None:
    command = dict(command_tree())[path]
    assert summary(command), f"{path}: no help"
    texts = [command.help or "", command.short_help or ""]
    texts += [getattr(param, "help", None) or "" for param in command.params]
    for text_ in texts:
        assert "``" not in text_, f"{path}: {text_!r}"


@pytest.mark.parametrize(
    "path",
    [path for path, command in command_tree() if getattr(command, "commands", None)],
    ids=lambda p: " ".join(p) or "joblife",
)
def test_group_help_lists_each_summary_unbroken(path: tuple[str, ...]) -> None:
    """Each subcommand's summary is printed as one paragraph, reflowed (not cut where the
    docstring's lines end), and no double backtick is shown."""
    group = dict(command_tree())[path]
    result = run(*path, "--help")
    assert result.exit_code == 0, result.output
    assert "``" not in result.stdout
    listing = one_line(result.stdout)
    for name, sub in group.commands.items():
        assert f"{name} {summary(sub)}" in listing, (name, summary(sub))


@pytest.mark.parametrize(
    "path",
    [path for path, command in command_tree() if path and not getattr(command, "commands", None)],
    ids=" ".join,
)
def test_command_help_renders_its_text(path: tuple[str, ...]) -> None:
    command = dict(command_tree())[path]
    result = run(*path, "--help")
    assert result.exit_code == 0, result.output
    assert "``" not in result.stdout
    rendered = one_line(result.stdout)
    assert summary(command) in rendered
    for paragraph in (command.help or "").split("\n\n")[1:]:
        assert " ".join(paragraph.replace("`", "").split()) in rendered


# -- start-up: what the command tree imports (item 16) -----------------------------------

HEAVY_MODULES = (
    "sqlalchemy",
    "sqlalchemy.orm",
    "alembic",
    "psycopg2",
    "docker",
    "boto3",
    "botocore",
    "pika",
    "nomad",
    "numpy",
    "h5py",
    "psutil",
    "prometheus_client",
    "rich",
    "uvicorn",
    "starlette",
    "pydantic_settings",
)


def test_the_command_tree_imports_no_heavy_dependency() -> None:
    """``import joblife.cli.main`` (what --version and --help pay before anything else)
    builds the tree without SQLAlchemy, the executors' clients, pika, numpy or rich."""
    code = (
        "import json, sys, typer, joblife.cli.main as m\n"
        "typer.main.get_command(m.app)\n"
        f"print(json.dumps(sorted(set({list(HEAVY_MODULES)!r}) & set(sys.modules))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert json.loads(result.stdout) == []


def test_version_prints_without_touching_the_configuration(tmp_path: Path) -> None:
    env = dict(os.environ, JOBLIFE_DATABASE_URL="not a url", JOBLIFE_DATA_DIR=str(tmp_path))
    result = subprocess.run(
        [*JOBLIFE, "--version"], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("joblife ")


def test_the_choices_are_copies_of_their_originals() -> None:
    from joblife.lifecycle.orchestrator import SERVICES
    from joblife.ops.health import CHECKS
    from joblife.ops.metrics import DEFAULT_PORT
    from joblife.publication.outbox import PUBLICATION_STATES

    assert choices.HEALTH_CHECKS == CHECKS
    assert choices.PUBLICATION_STATES == PUBLICATION_STATES
    assert choices.SERVICES == SERVICES
    assert choices.DEFAULT_METRICS_PORT == DEFAULT_PORT
    assert [c.value for c in choices.HealthCheck] == list(CHECKS)
    assert [s.value for s in choices.PublicationState] == list(PUBLICATION_STATES)


# -- usage errors exit 2 (item 12) -------------------------------------------------------


@pytest.fixture
def unreachable_database(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("JOBLIFE_DATABASE_URL", UNREACHABLE)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.mark.parametrize(
    ("args", "option", "fragment"),
    [
        (["jobs", "list", "--status", "bogus"], "--status", "unknown job status 'bogus'"),
        (["jobs", "list", "--since", "yesterday"], "--since", "'yesterday'"),
        (["stats", "--since", "yesterday"], "--since", "'yesterday'"),
        (["stats", "--until", "soon"], "--until", "'soon'"),
        (["stats", "--since", "1h", "--until", "2h"], "--until", "empty period"),
        (["timeliness", "--target", "abc"], "--target", "invalid duration 'abc'"),
        (["timeliness", "--since", "yesterday"], "--since", "'yesterday'"),
        (["timeliness", "--until", "yesterday"], "--until", "'yesterday'"),
        (["cleanup", "--older-than", "banana"], "--older-than", "invalid duration 'banana'"),
        (["health", "--check", "bogus"], "--check", "'bogus' is not one of"),
        (["publications", "list", "--state", "bogus"], "--state", "'bogus' is not one of"),
        (["run", "--once", "--services", "create,nosuch"], "--services", "'nosuch'"),
        (["run", "--once", "--services", ","], "--services", "no service"),
        (["db", "roles", "--owner", "Bad-Name"], "--owner", "role or database name"),
        (["db", "roles", "--database", "x;y", "--sql"], "--database", "'x;y'"),
        (["jobs", "cancel", "twelve"], "ID...", "valid integer"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else None,
)
def test_a_bad_option_value_is_a_usage_error_before_the_database(
    unreachable_database: None, args: list[str], option: str, fragment: str
) -> None:
    """Exit status 2 and typer's message naming the option; the database (unreachable
    here) is not reached for."""
    message = assert_usage_error(run(*args), option, fragment)
    assert "cannot reach" not in message


@pytest.fixture
def example_and_other(joblife_env: str, session: Session, engine: Engine) -> None:
    """One job of the registered type ``example`` and one of ``other``, a type not
    registered here (another installation's)."""
    session.add(ExampleJob(input_product_id="p-1", band="B01", resolution_m=10))
    session.commit()
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO jobs (job_type, input_product_id, worker_flavor) "
                "VALUES ('other', 'o-1', 'small')"
            )
        )


@pytest.mark.parametrize(
    "args", [["jobs", "list", "--type", "nosuch"], ["stats", "--type", "nosuch", "--json"]]
)
def test_an_unknown_job_type_filter_names_the_known_types(
    example_and_other: None, args: list[str]
) -> None:
    message = assert_usage_error(run(*args), "--type", "unknown job type 'nosuch'")
    known = message.split("known types are ", 1)[1].split(", ")
    # The registered types (they may have no job yet) and the types the database has.
    assert {"example", "other", "h5repack", "test"} <= set(known)


def test_a_known_job_type_without_jobs_filters_to_nothing(example_and_other: None) -> None:
    result = run("jobs", "list", "--type", "h5repack")
    assert result.exit_code == 0, result.output
    assert "no matching jobs" in result.stdout
    other = run("jobs", "list", "--type", "other", "--json")
    assert [job["input_product_id"] for job in json.loads(other.stdout)] == ["o-1"]
    stats = run("stats", "--type", "other", "--json")
    assert stats.exit_code == 0, stats.output
    assert [t["job_type"] for t in json.loads(stats.stdout)["job_types"]] == ["other"]


# -- error messages (item 17) ------------------------------------------------------------


@pytest.fixture
def missing_database(
    pg_admin_url: str, admin_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """A configured database URL whose database does not exist (dropped afterwards if a
    test created it); yields the database's name."""
    name = f"jl_missing_{uuid.uuid4().hex[:10]}"
    url = make_url(pg_admin_url).set(database=name).render_as_string(hide_password=False)
    monkeypatch.setenv("JOBLIFE_DATABASE_URL", url)
    get_settings.cache_clear()
    yield name
    get_settings.cache_clear()
    with admin_engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def database_exists(admin_engine: Engine, name: str) -> bool:
    with admin_engine.connect() as conn:
        found = conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name})
        return found.first() is not None


def test_a_missing_database_says_how_to_create_it(missing_database: str) -> None:
    line = assert_one_line_error(run("jobs", "list"), f"'{missing_database}'", "does not exist")
    assert "joblife db upgrade" in line
    assert f'CREATE DATABASE "{missing_database}"' in line


def test_db_upgrade_creates_a_missing_database_when_the_login_may(
    missing_database: str, admin_engine: Engine
) -> None:
    result = run("db", "upgrade")
    assert result.exit_code == 0, result.output
    assert f"created the database {missing_database}" in result.stdout
    assert "the database is at the heads" in result.stdout
    assert database_exists(admin_engine, missing_database)
    assert json.loads(run("status", "--json").stdout)["total"] == 0


@pytest.fixture
def login_without_createdb(
    pg_admin_url: str, admin_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """A login that may not create databases, configured on a database that does not
    exist; yields the database's name."""
    role = f"jl_nocreate_{uuid.uuid4().hex[:8]}"
    name = f"jl_missing_{uuid.uuid4().hex[:10]}"
    with admin_engine.connect() as conn:
        conn.execute(text(f'CREATE ROLE "{role}" LOGIN NOCREATEDB'))
    url = make_url(pg_admin_url).set(username=role, password=None, database=name)
    monkeypatch.setenv("JOBLIFE_DATABASE_URL", url.render_as_string(hide_password=False))
    get_settings.cache_clear()
    yield name
    get_settings.cache_clear()
    with admin_engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'DROP ROLE "{role}"'))


def test_db_upgrade_without_the_right_to_create_says_what_to_ask(
    login_without_createdb: str, admin_engine: Engine
) -> None:
    line = assert_one_line_error(run("db", "upgrade"), "does not exist", "CREATE DATABASE")
    assert f"'{login_without_createdb}'" in line
    assert not database_exists(admin_engine, login_without_createdb)


@pytest.mark.parametrize(
    "url",
    [
        "mysql://user:pw@127.0.0.1:3306/joblife",
        "sqlite:///joblife.db",
        "postgresql+asyncpg://user:pw@127.0.0.1:5432/joblife",
    ],
)
def test_an_unsupported_url_scheme_names_the_ones_that_work(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOBLIFE_DATABASE_URL", url)
    get_settings.cache_clear()
    try:
        line = assert_one_line_error(run("jobs", "list"), "database_url", exit_code=2)
    finally:
        get_settings.cache_clear()
    assert "postgresql://" in line
    assert "pw" not in line  # the password stays hidden


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port on 127.0.0.1 something already listens on."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


def test_metrics_serve_on_a_port_in_use_names_it(joblife_env: str, busy_port: int) -> None:
    line = assert_one_line_error(run("metrics", "serve", "--port", str(busy_port)))
    assert f"127.0.0.1:{busy_port}" in line
    assert f"port {busy_port} is in use" in line
    assert "--port" in line


def test_run_with_a_metrics_port_in_use_names_it_and_runs_nothing(
    joblife_env: str, busy_port: int, tmp_path: Path, engine: Engine
) -> None:
    env = dict(os.environ, JOBLIFE_METRICS_PORT=str(busy_port), JOBLIFE_DATA_DIR=str(tmp_path))
    result = subprocess.run(
        [*JOBLIFE, "run", "--interval", "0.2"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: cannot serve the metrics on 127.0.0.1:")
    assert f"port {busy_port} is in use" in lines[-1]
    assert "metrics_port" in lines[-1]


# -- jobs show: science_image (item 7) ---------------------------------------------------


def test_jobs_show_has_the_science_image(
    joblife_env: str, session: Session, engine: Engine
) -> None:
    job = ExampleJob(input_product_id="img-1", band="B02", resolution_m=20)
    session.add(job)
    session.commit()
    image = "registry.example/science/ndvi:1.4@sha256:" + "ab" * 32
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE jobs SET science_image = :image WHERE id = :id"),
            {"image": image, "id": job.id},
        )
    data = json.loads(run("jobs", "show", str(job.id), "--json").stdout)
    assert data["job"]["science_image"] == image
    result = run("jobs", "show", str(job.id))
    assert result.exit_code == 0, result.output
    fields = {
        cells[0]: cells[1]
        for line in result.stdout.splitlines()
        if line.startswith("│")
        and len(cells := [c.strip() for c in line.strip("│").split("│")]) == 2
    }
    assert fields["science_image"] == image
