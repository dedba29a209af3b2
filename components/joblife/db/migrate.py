"""Migrations: Alembic configured in code, so that an installed joblife migrates anywhere.

Version directories are joblife's own, those of installed job-type packages (entry-point
group ``joblife.migrations``: ``name = "mypkg.migrations"``, a package whose directory holds
Alembic revision files) and the ``migration_locations`` setting. A job type's migration
``depends_on`` joblife's revision that it needs and carries its own ``branch_labels``.
"""

from __future__ import annotations

import os
from importlib.metadata import entry_points
from importlib.resources import files
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, text

from joblife.config import Settings, get_settings

MIGRATIONS_ENTRY_POINT_GROUP = "joblife.migrations"


def _package_dir(package: str) -> Path:
    return Path(str(files(package)))


def version_locations(settings: Settings | None = None) -> list[Path]:
    """Every directory holding revision files, joblife's first."""
    settings = settings or get_settings()
    locations = [_package_dir("joblife._database.migrations") / "versions"]
    for entry_point in entry_points(group=MIGRATIONS_ENTRY_POINT_GROUP):
        locations.append(_package_dir(entry_point.value))
    locations.extend(Path(p).resolve() for p in settings.migration_locations)
    return locations


def alembic_config(
    connection: Connection | None = None, settings: Settings | None = None
) -> Config:
    """An Alembic configuration for joblife's migrations (optionally on a given connection)."""
    config = Config()
    config.set_main_option("script_location", str(_package_dir("joblife._database.migrations")))
    # os.pathsep is Alembic's default separator for version_locations.
    config.set_main_option("path_separator", "os")
    config.set_main_option(
        "version_locations", os.pathsep.join(str(p) for p in version_locations(settings))
    )
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def upgrade(engine: Engine, revision: str = "heads", settings: Settings | None = None) -> None:
    """Migrate the database of ``engine`` to ``revision`` (default: every branch's head)."""
    with engine.begin() as connection:
        command.upgrade(alembic_config(connection, settings), revision)


def current_revisions(engine: Engine) -> set[str]:
    """The revisions the database is at (empty if never migrated)."""
    with engine.connect() as connection:
        return set(MigrationContext.configure(connection).get_current_heads())


def head_revisions(settings: Settings | None = None) -> set[str]:
    """The head of every branch (joblife's and each job type's)."""
    return set(ScriptDirectory.from_config(alembic_config(settings=settings)).get_heads())


def unknown_revisions(engine: Engine, settings: Settings | None = None) -> set[str]:
    """Revisions the database records that this installation does not know (a newer
    joblife, or a job type no longer installed, migrated it)."""
    script = ScriptDirectory.from_config(alembic_config(settings=settings))
    return current_revisions(engine) - {r.revision for r in script.walk_revisions()}


def pending_revisions(engine: Engine, settings: Settings | None = None) -> set[str]:
    """The revisions not applied yet (empty when the database is up to date).

    Alembic records only the tips: a job type's revision that ``depends_on`` joblife's
    stands for both, so applied = the recorded revisions and all their ancestors."""
    script = ScriptDirectory.from_config(alembic_config(settings=settings))
    everything = {r.revision for r in script.walk_revisions()}
    current = tuple(sorted(current_revisions(engine) & everything))
    if not current:
        return everything
    return everything - {r.revision for r in script.iterate_revisions(current, "base")}


def superuser_warning(engine: Engine) -> str | None:
    """A warning if the connected user is a superuser (migrating as one makes every
    SECURITY DEFINER function run as superuser); None otherwise."""
    with engine.connect() as connection:
        user, superuser = connection.execute(
            text("SELECT current_user, r.rolsuper FROM pg_roles r WHERE r.rolname = current_user")
        ).one()
    if not superuser:
        return None
    return (
        f"warning: migrating as the superuser {user}: joblife's SECURITY DEFINER functions "
        "(the status door, the worker and operator procedures) run with their owner's rights, "
        "so they will run as superuser; migrate as a dedicated owner (`joblife db roles`)"
    )
