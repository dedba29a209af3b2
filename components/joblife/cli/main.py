"""The ``joblife`` command: its root, global options and subcommands.

Building the command tree imports only typer and the command modules, which import what
their commands need (SQLAlchemy, the settings, the executors, pika, rich...) when they run:
``joblife --version`` and ``--help`` start in a fraction of the time the whole package
takes to import (``python bench/startup.py``).
"""

from __future__ import annotations

from typing import Annotated

import typer

from joblife import __version__
from joblife.cli import actions, ops_commands
from joblife.cli.db_commands import db_app
from joblife.cli.demo_command import demo
from joblife.cli.errors import JoblifeGroup
from joblife.cli.jobs_commands import jobs_app
from joblife.cli.nomad_commands import nomad_app
from joblife.cli.publication_commands import (
    publications_app,
    publish,
    republish_command,
    timeliness,
)
from joblife.cli.service_commands import configure, create, dispatch, monitor, run
from joblife.cli.state import CliState
from joblife.cli.status_command import status
from joblife.cli.web_commands import web, web_users_app
from joblife.cli.worker_commands import worker_app

app = typer.Typer(
    name="joblife",
    cls=JoblifeGroup,
    help="joblife: the job lifecycle system. Operator commands on the job database.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # Help texts are Markdown: a paragraph's lines are joined and reflowed to the terminal
    # (typer's "rich" mode keeps every line break of a docstring), `code` is shown as code.
    rich_markup_mode="markdown",
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(db_app)
app.add_typer(jobs_app)
app.add_typer(nomad_app)
app.add_typer(worker_app)
app.command("status")(status)
for _service in (create, configure, dispatch, monitor, run):
    app.command(_service.__name__)(_service)
jobs_app.command("retry")(actions.retry)
jobs_app.command("cancel")(actions.cancel)
jobs_app.command("check")(actions.check)
app.command("health")(ops_commands.health)
app.add_typer(ops_commands.metrics_app)
app.command("stats")(ops_commands.stats)
app.command("cleanup")(ops_commands.cleanup)
jobs_app.command("stale")(ops_commands.stale)
app.add_typer(publications_app)
app.command("publish")(publish)
app.command("timeliness")(timeliness)
jobs_app.command("republish")(republish_command)
app.command("demo")(demo)
app.command("web")(web)
app.add_typer(web_users_app)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"joblife {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    debug: Annotated[
        bool,
        typer.Option(
            "--debug",
            envvar="JOBLIFE_DEBUG",
            help="Show tracebacks of errors and debug logs.",
        ),
    ] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version."
        ),
    ] = False,
) -> None:
    """joblife: the job lifecycle system. Operator commands on the job database."""
    import logging
    import os

    from joblife.config import apply_file_umask, get_settings
    from joblife.logs import command_log_level, setup_logging

    state = CliState(debug=debug)
    ctx.obj = state
    ctx.call_on_close(state.close)
    settings = get_settings()
    # Files and dirs this process and the workers it forks create (work dirs, executor
    # state and logs, file storage, the spool) are private by default; the previous mask
    # is restored when the command ends (a command run in-process leaves nothing behind).
    previous_umask = apply_file_umask(settings)
    ctx.call_on_close(lambda: os.umask(previous_umask))
    if debug:  # first: setup_logging lets the libraries' own lines through when debugging
        logging.getLogger("joblife").setLevel(logging.DEBUG)
    setup_logging(command_log_level(ctx.invoked_subcommand, debug, settings))


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
