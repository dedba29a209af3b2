"""The database's migration state, as ``joblife db current`` reports it."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine

from joblife.db import migrate


@dataclass(frozen=True)
class RevisionState:
    """Where the database stands against the migrations this installation knows."""

    current: set[str]
    heads: set[str]
    pending: set[str]  # revisions not applied yet
    unknown: set[str]  # revisions of the database this installation does not know

    @property
    def at_head(self) -> bool:
        """Every known revision applied, none unknown."""
        return not self.pending and not self.unknown


def revision_state(engine: Engine) -> RevisionState:
    """The database's revisions compared with this installation's migrations."""
    return RevisionState(
        current=migrate.current_revisions(engine),
        heads=migrate.head_revisions(),
        pending=migrate.pending_revisions(engine),
        unknown=migrate.unknown_revisions(engine),
    )
