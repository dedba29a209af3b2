"""The ``joblife`` command: its root, global options and subcommands."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from joblife import __version__
from joblife.cli import actions
from joblife.cli.db_commands import db_app
from joblife.cli.errors import JoblifeGroup
from joblife.cli.jobs_commands import jobs_app
from joblife.cli.service_commands import configure, create, dispatch, monitor, run
from joblife.cli.state import CliState
from joblife.cli.status_command import status
from joblife.cli.worker_commands import worker_app

app = typer.Typer(
    name="joblife",
    cls=JoblifeGroup,
    help="joblife: the job lifecycle system. Operator commands on the job database.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(db_app)
app.add_typer(jobs_app)
app.add_typer(worker_app)
app.command("status")(status)
for _service in (create, configure, dispatch, monitor, run):
    app.command(_service.__name__)(_service)
jobs_app.command("retry")(actions.retry)
jobs_app.command("cancel")(actions.cancel)
jobs_app.command("check")(actions.check)


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
    state = CliState(debug=debug)
    ctx.obj = state
    ctx.call_on_close(state.close)
    if debug:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        logging.getLogger("joblife").setLevel(logging.DEBUG)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
