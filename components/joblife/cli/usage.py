"""Usage errors found after parsing: an option value the command cannot use (a status,
a date, a duration, a job type nobody knows) is reported like typer's own usage errors,
"Invalid value for '--OPTION': why", with exit status 2, before anything is changed."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from sqlalchemy.orm import Session


@contextmanager
def usage(option: str, ctx: typer.Context | None = None) -> Iterator[None]:
    """Turn a ValueError raised in the block into a usage error about ``option`` (keep the
    block to the parsing of that option's value: a ValueError of anything else is not the
    option's fault)."""
    try:
        yield
    except ValueError as error:
        raise typer.BadParameter(str(error), ctx=ctx, param_hint=f"'{option}'") from None


def check_job_type(
    ctx: typer.Context, session: Session, job_type: str | None, option: str = "--type"
) -> None:
    """A usage error unless ``job_type`` (a filter; None: no filter) is a type that has
    jobs in the database or is registered here (it may have none yet). The registry is
    loaded only for a type without jobs."""
    if job_type is None:
        return
    from joblife.cli.queries import present_job_types

    present = present_job_types(session)
    if job_type in present:
        return
    registered = registered_job_types()
    if job_type in registered:
        return
    known = ", ".join(sorted({*present, *registered})) or "none"
    raise typer.BadParameter(
        f"unknown job type {job_type!r}: known types are {known}",
        ctx=ctx,
        param_hint=f"'{option}'",
    )


def registered_job_types() -> set[str]:
    """The names of the job types registered here (those that load)."""
    from joblife.model.registry import JobTypeError, load_job_types

    try:
        return set(load_job_types())
    except JobTypeError:  # a registry that cannot load names none; the database still does
        return set()
