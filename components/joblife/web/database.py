"""How the dashboard's endpoints use the job database: reads in read-only transactions
with a statement timeout (a page can never hold the database with a runaway query), and
actions in one transaction that records the acting operator's name, both off the event
loop (in Starlette's thread pool)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import text
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

T = TypeVar("T")

#: The longest any statement of a page may run (a safety net: the pages' reads are
#: bounded and meant to answer in milliseconds).
READ_TIMEOUT_MS = 10_000


def _read(request: Request, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    with Session(request.app.state.engine) as session, session.begin():
        session.execute(text("SET TRANSACTION READ ONLY"))
        session.execute(text(f"SET LOCAL statement_timeout = {READ_TIMEOUT_MS}"))
        return function(session, *args, **kwargs)


async def read(request: Request, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``function(session, *args, **kwargs)`` in a read-only transaction."""
    return await run_in_threadpool(_read, request, function, *args, **kwargs)


async def cached_read(
    request: Request, key: Any, function: Callable[..., T], *args: Any, **kwargs: Any
) -> T:
    """:func:`read` through the app's shared cache: one database read per ``key`` per
    refresh interval, whatever the number of browsers asking."""
    cache = request.app.state.cache

    def compute() -> T:
        return _read(request, function, *args, **kwargs)

    return await run_in_threadpool(cache.get, key, compute)


def _write(request: Request, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    with Session(request.app.state.engine, expire_on_commit=False) as session, session.begin():
        return function(session, *args, **kwargs)


async def write(request: Request, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``function(session, *args, **kwargs)`` in one transaction, committed if it returns,
    rolled back if it raises."""
    return await run_in_threadpool(_write, request, function, *args, **kwargs)
