"""``joblife db ...``: migrate, locate and stop the job database."""

from __future__ import annotations

from typing import Annotated

import typer
from sqlalchemy.engine import make_url

from joblife.cli.output import print_json
from joblife.cli.revisions import revision_state
from joblife.cli.state import get_state, hide_password
from joblife.config import get_settings
from joblife.db import migrate
from joblife.db.embedded import stop_embedded_server

db_app = typer.Typer(
    name="db",
    help="The job database: migrate it, print its URL, check its revision, stop the embedded"
    " server.",
    no_args_is_help=True,
)


def _revisions(revisions: set[str]) -> str:
    return ", ".join(sorted(revisions)) or "none (empty database)"


@db_app.command("upgrade")
def upgrade(
    ctx: typer.Context,
    revision: Annotated[
        str, typer.Option(help="Alembic revision to migrate to ('heads': every branch's head).")
    ] = "heads",
) -> None:
    """Migrate the job database (joblife's and every job type's migrations)."""
    state = get_state(ctx)
    engine = state.engine()
    before = revision_state(engine)
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
