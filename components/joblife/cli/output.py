"""Rendering for the CLI: rich tables for people, JSON for programs.

JSON output: datetimes and dates in ISO 8601, intervals as seconds (float), UUIDs as
strings. Tables never interpret data as rich markup.

Every value printed, as a table cell or in JSON, passes :func:`joblife.logs.redact` with
the configured secrets: a credentialed or presigned URL a job was discovered with
(``jobs.input_path``), or a status message quoting one, is shown without its password,
signature or token. (The database keeps what was discovered: a psql reader sees it all.)

rich, the settings and the redaction are imported when first used, not with this module:
every command module imports it, and ``joblife --version`` or ``--help`` needs none of them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any
from uuid import UUID

import typer

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from joblife.config import Settings

#: Width of tables written to a pipe or a file (a terminal's own width is used otherwise).
NON_TERMINAL_WIDTH = 200

_secrets_of: tuple[Settings | None, list[str]] = (None, [])


def printed_secrets() -> list[str]:
    """The configured secret values (none if the configuration cannot be read), computed
    once per settings object: every printed value is searched for them."""
    global _secrets_of
    from joblife.config import get_settings
    from joblife.logs import configured_secrets

    try:
        settings = get_settings()
    except Exception:  # an invalid configuration: the command reports it itself
        return []
    if _secrets_of[0] is not settings:
        _secrets_of = (settings, configured_secrets(settings))
    return _secrets_of[1]


def redacted(value: Any, secrets: list[str] | None = None) -> Any:
    """``value`` with every string in it (in mappings and lists too) passed through
    :func:`joblife.logs.redact`; other values unchanged."""
    from joblife.logs import redact

    secrets = printed_secrets() if secrets is None else secrets
    if isinstance(value, str):
        return redact(value, secrets)
    if isinstance(value, Mapping):
        return {k: redacted(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redacted(v, secrets) for v in value]
    return value


def to_jsonable(value: Any) -> Any:
    """``value`` with datetimes, intervals, UUIDs and decimals made JSON-friendly."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [to_jsonable(v) for v in value]
    return value


def print_json(data: Any) -> None:
    """Write ``data`` to stdout as indented JSON, secrets redacted."""
    typer.echo(json.dumps(redacted(to_jsonable(data)), indent=2, ensure_ascii=False))


def print_line(text: str, *, err: bool = False) -> None:
    """Write one line of text (job data, a service's report) to stdout, or stderr with
    ``err``, secrets redacted."""
    from joblife.logs import redact

    typer.echo(redact(text, printed_secrets()), err=err)


def console() -> Console:
    """A console on the current stdout (tables wide enough when not on a terminal)."""
    from rich.console import Console

    out = Console(highlight=False, soft_wrap=False)
    if not out.is_terminal and "COLUMNS" not in os.environ:
        out.width = NON_TERMINAL_WIDTH
    return out


def format_duration(value: timedelta | None) -> str:
    """A short human duration: ``12s``, ``4m 03s``, ``2h 05m``, ``3d 04h``."""
    if value is None:
        return ""
    seconds = int(value.total_seconds())
    sign = "-" if seconds < 0 else ""
    seconds = abs(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        text = f"{days}d {hours:02d}h"
    elif hours:
        text = f"{hours}h {minutes:02d}m"
    elif minutes:
        text = f"{minutes}m {secs:02d}s"
    else:
        text = f"{secs}s"
    return sign + text


def format_value(value: Any) -> str:
    """One table cell: datetimes to the second, intervals as durations, JSON compact."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat(sep=" ", timespec="seconds")
    if isinstance(value, timedelta):
        return format_duration(value)
    if isinstance(value, Mapping | list):
        return json.dumps(to_jsonable(value), ensure_ascii=False, separators=(", ", ": "))
    return str(value)


def make_table(
    headers: Sequence[str], *, right: Iterable[str] = (), title: str | None = None
) -> Table:
    """A table with ``headers``; the columns named in ``right`` are right-aligned."""
    from rich.table import Table

    table = Table(title=title, title_justify="left", header_style="bold")
    right_aligned = set(right)
    for header in headers:
        table.add_column(header, justify="right" if header in right_aligned else "left")
    return table


def add_row(table: Table, values: Iterable[Any], *, end_section: bool = False) -> None:
    """Add a row of raw values, formatted, secrets redacted, and never read as markup."""
    from rich.text import Text

    from joblife.logs import redact

    secrets = printed_secrets()
    cells = (Text(redact(format_value(v), secrets)) for v in values)
    table.add_row(*cells, end_section=end_section)


def print_table(table: Table) -> None:
    """Print ``table`` to stdout."""
    console().print(table)
