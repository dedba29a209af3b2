"""``joblife db ...``: migrate, locate and stop the job database; make its login roles.
Alembic and SQLAlchemy are imported by the commands, not with this module."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from joblife.cli.errors import missing_database, quoted_identifier
from joblife.cli.output import print_json
from joblife.cli.state import CliState, get_state, hide_password
from joblife.cli.usage import usage

if TYPE_CHECKING:
    from joblife.cli.revisions import RevisionState

db_app = typer.Typer(
    name="db",
    help="The job database: migrate it, print its URL, check its revision, stop the embedded"
    " server, create the login roles.",
    no_args_is_help=True,
)

#: The database a login connects to when it creates the job database (every PostgreSQL
#: server has it unless an administrator dropped it).
MAINTENANCE_DATABASE = "postgres"


def _revisions(revisions: set[str]) -> str:
    return ", ".join(sorted(revisions)) or "none (empty database)"


@db_app.command("upgrade")
def upgrade(
    ctx: typer.Context,
    revision: Annotated[
        str, typer.Option(help="Alembic revision to migrate to ('heads': every branch's head).")
    ] = "heads",
) -> None:
    """Migrate the job database (joblife's and every job type's migrations).

    A database that does not exist yet is created first when the login may create
    databases (CREATEDB or superuser).
    """
    from joblife.cli.revisions import revision_state
    from joblife.db import migrate

    state = get_state(ctx)
    engine = state.engine()
    before = _revisions_creating_database(state)
    warning = migrate.superuser_warning(engine) if before.pending else None
    if warning:
        typer.echo(warning, err=True)
    migrate.upgrade(engine, revision)
    after = revision_state(engine)
    applied = before.pending - after.pending
    where = state.display_url()
    if applied:
        typer.echo(f"{where}: applied {', '.join(sorted(applied))}")
    else:
        typer.echo(f"{where}: nothing to apply")
    typer.echo(
        "the database is at the heads"
        if after.at_head
        else f"still pending: {', '.join(sorted(after.pending))}"
    )


def _revisions_creating_database(state: CliState) -> RevisionState:
    """The database's revision state; a missing database is created first if the login
    may (else the connection error stands: it says what to do)."""
    from sqlalchemy.exc import OperationalError

    from joblife.cli.revisions import revision_state

    try:
        return revision_state(state.engine())
    except OperationalError as error:
        name = missing_database(str(error.orig or error))
        if name is None or not create_database(state.database_url(), name):
            raise
    typer.echo(f"created the database {name} (it did not exist)")
    return revision_state(state.engine())


def create_database(url: str, name: str) -> bool:
    """Create the database ``name`` on the server of ``url``, connected as its login to
    :data:`MAINTENANCE_DATABASE`; False (nothing done) if the login may not create
    databases or cannot connect there."""
    from sqlalchemy import text
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import OperationalError

    from joblife.db.engine import create_joblife_engine

    maintenance = make_url(url).set(database=MAINTENANCE_DATABASE)
    engine = create_joblife_engine(
        maintenance.render_as_string(hide_password=False), isolation_level="AUTOCOMMIT"
    )
    try:
        with engine.connect() as connection:
            allowed = connection.execute(
                text("SELECT rolcreatedb OR rolsuper FROM pg_roles WHERE rolname = current_user")
            ).scalar()
            if not allowed:
                return False
            connection.execute(text(f"CREATE DATABASE {quoted_identifier(name)}"))
    except OperationalError:  # the maintenance database is not reachable for this login
        return False
    finally:
        engine.dispose()
    return True


@db_app.command("url")
def url(
    ctx: typer.Context,
    show_password: Annotated[
        bool, typer.Option("--show-password", help="Print the password instead of ***.")
    ] = False,
    libpq: Annotated[
        bool,
        typer.Option("--libpq", help="A plain postgresql:// URL, for psql, without the driver."),
    ] = False,
) -> None:
    """Print the URL of the job database (starting the embedded server if it is the one)."""
    from sqlalchemy.engine import make_url

    value = get_state(ctx).database_url()
    if libpq:
        value = make_url(value).set(drivername="postgresql").render_as_string(hide_password=False)
    typer.echo(value if show_password else hide_password(value))


@db_app.command("current")
def current(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Show the database's revisions and the heads; exit status 1 if not at the heads."""
    from joblife.cli.revisions import revision_state

    state = get_state(ctx)
    revisions = revision_state(state.engine())
    if as_json:
        print_json(
            {
                "url": state.display_url(),
                "current": sorted(revisions.current),
                "heads": sorted(revisions.heads),
                "pending": sorted(revisions.pending),
                "unknown": sorted(revisions.unknown),
                "at_head": revisions.at_head,
            }
        )
    else:
        typer.echo(f"database: {state.display_url()}")
        typer.echo(f"current:  {_revisions(revisions.current)}")
        typer.echo(f"heads:    {_revisions(revisions.heads)}")
        if revisions.unknown:
            typer.echo(
                f"the database is at revisions this joblife does not know "
                f"({', '.join(sorted(revisions.unknown))}): is joblife or a job type package "
                "older than the database?"
            )
        if revisions.pending:
            pending = ", ".join(sorted(revisions.pending))
            typer.echo(
                f"the database is NOT at the heads (pending: {pending}): run `joblife db upgrade`"
            )
        if revisions.at_head:
            typer.echo("the database is at the heads")
    if not revisions.at_head:
        raise typer.Exit(1)


@db_app.command("stop")
def stop() -> None:
    """Stop the embedded PostgreSQL server (not a server given by JOBLIFE_DATABASE_URL)."""
    from joblife.config import get_settings
    from joblife.db.embedded import stop_embedded_server

    settings = get_settings()
    if settings.database_url is not None:
        shown = hide_password(settings.database_url.get_secret_value())
        typer.echo(
            f"a database URL is configured ({shown}): joblife does not manage that server, "
            "nothing stopped"
        )
        return
    pgdata = settings.embedded_database_dir
    stopped = stop_embedded_server(pgdata)
    if stopped:
        typer.echo(f"stopped the embedded PostgreSQL server in {pgdata}")
    else:
        typer.echo(f"the embedded PostgreSQL server in {pgdata} is not running")


@db_app.command("roles")
def make_roles(
    ctx: typer.Context,
    database: Annotated[
        str | None,
        typer.Option(help="The joblife database (created, owned by the owner, if missing)."),
    ] = None,
    owner: Annotated[str, typer.Option(help="Login that owns the schema and migrates.")] = (
        "joblife_owner"
    ),
    service: Annotated[str, typer.Option(help="Login of the services (joblife_service).")] = (
        "joblife_run"
    ),
    worker: Annotated[str, typer.Option(help="Login of the workers (joblife_worker).")] = (
        "joblife_worker_login"
    ),
    operator: Annotated[str, typer.Option(help="Login of operators (joblife_operator).")] = (
        "joblife_ops"
    ),
    owner_password: Annotated[
        str | None, typer.Option(envvar="JOBLIFE_ROLES_OWNER_PASSWORD", show_default=False)
    ] = None,
    service_password: Annotated[
        str | None, typer.Option(envvar="JOBLIFE_ROLES_SERVICE_PASSWORD", show_default=False)
    ] = None,
    worker_password: Annotated[
        str | None, typer.Option(envvar="JOBLIFE_ROLES_WORKER_PASSWORD", show_default=False)
    ] = None,
    operator_password: Annotated[
        str | None, typer.Option(envvar="JOBLIFE_ROLES_OPERATOR_PASSWORD", show_default=False)
    ] = None,
    sql: Annotated[
        bool,
        typer.Option(
            "--sql", "--print", help="Print the idempotent psql script instead of running it."
        ),
    ] = False,
) -> None:
    """Create the login roles of a least-privilege deployment.

    Run by an admin, with the admin's JOBLIFE_DATABASE_URL: an owner that migrates, and a
    service, worker and operator login granted joblife_service, joblife_worker,
    joblife_operator. Idempotent: an existing role keeps its password unless one is given;
    a missing one gets the given or a generated password. Prints each part's URL.
    """
    from sqlalchemy.engine import make_url

    from joblife.db import roles

    names = {"--owner": owner, "--service": service, "--worker": worker, "--operator": operator}
    for option, name in [*names.items(), ("--database", database)]:
        with usage(option, ctx):
            if name is not None:
                roles.check_name(name)
    if len(set(names.values())) != len(names):
        raise typer.BadParameter(
            "each part needs a login of its own", ctx=ctx, param_hint=f"'{', '.join(names)}'"
        )
    state = get_state(ctx)
    admin_url = state.database_url()
    database = database or make_url(admin_url).database or "joblife"
    plan = roles.plan_roles(
        database,
        {"owner": owner, "service": service, "worker": worker, "operator": operator},
        {
            "owner": owner_password,
            "service": service_password,
            "worker": worker_password,
            "operator": operator_password,
        },
    )
    if sql:
        typer.echo(roles.roles_script(plan), nl=False)
        for login in plan.logins:
            note = " (if this script creates the role)" if login.generated else ""
            url = roles.login_url(admin_url, database, login.name, login.password)
            typer.echo(f"-- {roles.USES[login.part]}{note}: {url}")
        return
    result = roles.apply_roles(state.engine(), plan)
    if result.database_created:
        typer.echo(f"created database {database}, owned by {plan.owner.name}")
    for login in plan.logins:
        outcome = result.logins[login.name]
        password = None if outcome == "unchanged" else login.password
        url = roles.login_url(admin_url, database, login.name, password)
        typer.echo(f"{login.part:<9} {login.name} ({outcome})")
        typer.echo(f"          {roles.USES[login.part]}: {url}")
    for warning in result.warnings:
        typer.echo(f"warning: {warning}", err=True)
