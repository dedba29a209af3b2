"""Errors as an operator sees them: one line on stderr, exit status 1, no traceback
unless ``--debug`` (which prints the traceback before that line). An invalid setting is
refused at start the same way, with exit status 2 (a usage error: nothing was attempted).

Usage errors (unknown option, missing argument, an option value the command cannot use:
see :mod:`joblife.cli.usage`) stay typer's: usage text, exit status 2.
"""

from __future__ import annotations

import re
import traceback
from typing import Any

import typer
from typer.core import TyperGroup

from joblife.cli.output import printed_secrets
from joblife.cli.state import CliState
from joblife.errors import JoblifeError

EXIT_ERROR = 1
EXIT_INVALID_SETTING = 2

# Exceptions typer/click use for control flow and usage errors: never ours to report.
# (ClickException is reached through BadParameter so that no click import is needed:
# recent typer versions vendor click.)
_FRAMEWORK_EXCEPTIONS: tuple[type[BaseException], ...] = (
    typer.Exit,
    typer.Abort,
    *(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException"),
)

# SQLSTATEs meaning the schema is missing or old: the database needs `joblife db upgrade`.
_NOT_MIGRATED_CODES = {"42P01", "42883", "42703"}  # undefined table / function / column

# The server's refusal of a connection to a database it does not have (libpq reports it
# without a SQLSTATE, as a connection failure).
_MISSING_DATABASE = re.compile(r'database "(?P<name>.+)" does not exist')


def _first_line(text: str) -> str:
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    return lines[0] if lines else ""


def _scrub(message: str) -> str:
    """``message`` without the configured secrets or credentials in URLs (see
    :func:`joblife.logs.redact`)."""
    from joblife.logs import redact

    return redact(message, printed_secrets())


def missing_database(detail: str) -> str | None:
    """The name of the database in a "database ... does not exist" connection refusal,
    else None."""
    found = _MISSING_DATABASE.search(detail)
    return found["name"] if found else None


def describe_error(error: BaseException, state: CliState | None) -> str:
    """The one-line description of ``error`` for an operator."""
    from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError

    from joblife.config import InvalidSettingError

    if isinstance(error, InvalidSettingError):  # already one line; the state needs settings
        return str(error)
    where = state.display_url() if state is not None else None
    at = f" at {where}" if where else ""
    if isinstance(error, JoblifeError | ValueError):
        return str(error) or type(error).__name__
    if isinstance(error, OperationalError):
        detail = _first_line(str(error.orig)) if error.orig is not None else _first_line(str(error))
        if getattr(error.orig, "pgcode", None) is None:
            name = missing_database(detail)
            if name is not None:
                return (
                    f"the job database {name!r}{at} does not exist: run `joblife db upgrade` "
                    "(it creates the database when the login may create databases), else "
                    f"ask an administrator for CREATE DATABASE {quoted_identifier(name)}"
                )
            return f"cannot reach the job database{at}: {detail}"
        return f"job database{at}: {detail}"
    if isinstance(error, DBAPIError):
        code = getattr(error.orig, "pgcode", None)
        detail = _first_line(str(error.orig))
        if code in _NOT_MIGRATED_CODES:
            return (
                f"the job database{at} is not migrated to this joblife version ({detail}): "
                "run `joblife db upgrade`"
            )
        return f"job database{at}: {detail}"
    if isinstance(error, SQLAlchemyError):
        return f"database: {_first_line(str(error))}"
    if isinstance(error, KeyboardInterrupt):
        return "interrupted"
    return (
        f"unexpected {type(error).__name__}: {_first_line(str(error))} "
        "(run with --debug for the traceback)"
    )


def quoted_identifier(name: str) -> str:
    """``name`` as a PostgreSQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def report_error(error: BaseException, state: CliState | None) -> None:
    """Print ``error`` on stderr: its traceback first if --debug, then the one line."""
    if state is not None and state.debug:
        typer.echo(_scrub("".join(traceback.format_exception(error)).rstrip()), err=True)
    typer.echo(f"error: {_scrub(describe_error(error, state))}", err=True)


class JoblifeGroup(TyperGroup):
    """The root command group: turns any error of a command into one line and exit 1."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except _FRAMEWORK_EXCEPTIONS:
            raise
        except (Exception, KeyboardInterrupt) as error:
            state = ctx.obj if isinstance(ctx.obj, CliState) else None
            report_error(error, state)
            if isinstance(error, KeyboardInterrupt):
                raise typer.Exit(130) from None
            from joblife.config import InvalidSettingError

            if isinstance(error, InvalidSettingError):
                raise typer.Exit(EXIT_INVALID_SETTING) from None
            raise typer.Exit(EXIT_ERROR) from None
