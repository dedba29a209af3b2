"""The database engine and sessions, from ``JOBLIFE_DATABASE_URL`` or the embedded server."""

from __future__ import annotations

from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from joblife.config import Settings, get_settings
from joblife.db.embedded import embedded_database_url


def database_url(settings: Settings | None = None) -> str:
    """The URL of the job database: the configured one, or the embedded server's (started
    if needed). A plain ``postgresql://`` URL is given the psycopg2 driver."""
    settings = settings or get_settings()
    if settings.database_url is None:
        return embedded_database_url(settings.embedded_database_dir)
    url = make_url(settings.database_url.get_secret_value())
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg2")
    return url.render_as_string(hide_password=False)


def create_joblife_engine(
    url: str | None = None, settings: Settings | None = None, **kwargs
) -> Engine:
    """An engine on the job database. Connections are checked before use, so a restarted
    database is reconnected to transparently between transactions."""
    kwargs.setdefault("pool_pre_ping", True)
    kwargs.setdefault("connect_args", {"application_name": "joblife", "connect_timeout": 10})
    return create_engine(url or database_url(settings), **kwargs)


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions on ``engine``; objects stay readable after commit (no expire on commit)."""
    return sessionmaker(engine, expire_on_commit=False)
