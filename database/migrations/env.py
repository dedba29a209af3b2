"""Alembic environment for joblife.

The database URL comes from joblife's settings (``JOBLIFE_DATABASE_URL`` or the embedded
server) unless the caller passes a connection in ``config.attributes["connection"]``.
Version directories: joblife's own plus those of installed job-type packages (entry-point
group ``joblife.migrations``) and the ``migration_locations`` setting; see joblife.db.migrate.
"""

from __future__ import annotations

from alembic import context
from joblife.db.engine import create_joblife_engine
from joblife.db.history_partitions import include_name
from joblife.model import Base, load_job_types
from sqlalchemy import Connection

config = context.config
load_job_types()  # job types' tables belong to the metadata autogenerate compares against
target_metadata = Base.metadata


def run_with(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        compare_server_default=True,
        include_name=include_name,  # not the history's monthly partitions (revision 0015)
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        run_with(connection)
        return
    engine = create_joblife_engine()
    try:
        with engine.connect() as connection:
            run_with(connection)
            connection.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("joblife migrations run online only (they read the catalog)")
run_migrations_online()
