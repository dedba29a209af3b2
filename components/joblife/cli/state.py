"""What the commands of one ``joblife`` invocation share: the --debug flag and a lazily
created engine on the job database (disposed when the command ends).

SQLAlchemy and the settings are imported when a command first needs them: ``joblife
--version`` and ``--help`` import neither."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.orm import Session

#: The drivers of the URLs joblife connects with (``postgresql://`` means psycopg2).
SUPPORTED_DRIVERS = ("postgresql", "postgresql+psycopg2")


def hide_password(url: str) -> str:
    """``url`` with its password replaced by ``***`` (an empty password is dropped)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        return "<unparsable URL>"
    if parsed.password == "":
        # URL.set(password=None) means "unchanged"; URL is a named tuple.
        parsed = parsed._replace(password=None)
    return parsed.render_as_string(hide_password=True)


def check_driver(url: str) -> None:
    """Refuse ``url`` (InvalidSettingError, exit status 2) unless its scheme is one of
    :data:`SUPPORTED_DRIVERS`: a ``postgresql+asyncpg://`` URL passes the settings' check
    but no engine of joblife's can use it."""
    from sqlalchemy.engine import make_url

    from joblife.config import InvalidSettingError

    driver = make_url(url).drivername
    if driver not in SUPPORTED_DRIVERS:
        schemes = " or ".join(f"{d}://" for d in SUPPORTED_DRIVERS)
        raise InvalidSettingError(
            f"setting database_url={hide_password(url)}: unsupported scheme {driver}://: "
            f"joblife connects to PostgreSQL with psycopg2, give a {schemes} URL"
        )


@dataclass
class CliState:
    """Per-invocation state, kept in the root click context's ``obj``."""

    debug: bool = False
    url: str | None = field(default=None, repr=False)
    _engine: Engine | None = field(default=None, repr=False)

    def database_url(self) -> str:
        """The job database URL (the embedded server is started if that is the one)."""
        if self.url is None:
            from joblife.db.engine import database_url

            self.url = database_url()
        return self.url

    def engine(self) -> Engine:
        """The engine on the job database, created on first use."""
        if self._engine is None:
            from joblife.db.engine import create_joblife_engine

            url = self.database_url()
            check_driver(url)
            self._engine = create_joblife_engine(url)
        return self._engine

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session in one transaction: committed if the block succeeds, else rolled back."""
        from sqlalchemy.orm import Session

        with Session(self.engine(), expire_on_commit=False) as session, session.begin():
            yield session

    def display_url(self) -> str | None:
        """The database URL in use (or configured), password hidden; None if unknown."""
        if self.url is not None:
            return hide_password(self.url)
        from joblife.config import get_settings

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
