"""What the commands of one ``joblife`` invocation share: the --debug flag and a lazily
created engine on the job database (disposed when the command ends)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import typer
from sqlalchemy import Engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import Session

from joblife.config import get_settings
from joblife.db.engine import create_joblife_engine, database_url


def hide_password(url: str) -> str:
    """``url`` with its password replaced by ``***`` (an empty password is dropped)."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return "<unparsable URL>"
    if parsed.password == "":
        # URL.set(password=None) means "unchanged"; URL is a named tuple.
        parsed = parsed._replace(password=None)
    return parsed.render_as_string(hide_password=True)


@dataclass
class CliState:
    """Per-invocation state, kept in the root click context's ``obj``."""

    debug: bool = False
    url: str | None = field(default=None, repr=False)
    _engine: Engine | None = field(default=None, repr=False)

    def database_url(self) -> str:
        """The job database URL (the embedded server is started if that is the one)."""
        if self.url is None:
            self.url = database_url()
        return self.url

    def engine(self) -> Engine:
        """The engine on the job database, created on first use."""
        if self._engine is None:
            self._engine = create_joblife_engine(self.database_url())
        return self._engine

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session in one transaction: committed if the block succeeds, else rolled back."""
        with Session(self.engine(), expire_on_commit=False) as session, session.begin():
            yield session

    def display_url(self) -> str | None:
        """The database URL in use (or configured), password hidden; None if unknown."""
        if self.url is not None:
            return hide_password(self.url)
        configured = get_settings().database_url
        return hide_password(configured.get_secret_value()) if configured else None

    def close(self) -> None:
        """Release the engine's connections."""
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None


def get_state(ctx: typer.Context) -> CliState:
    """The invocation's state (created if the root callback did not run, as in some tests)."""
    root = ctx.find_root()
    if not isinstance(root.obj, CliState):
        root.obj = CliState()
        root.call_on_close(root.obj.close)
    return root.obj
