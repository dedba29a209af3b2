"""Database access: engine and sessions, the embedded server, migrations, and thin
wrappers of the stored procedures."""

from joblife.db.engine import create_joblife_engine, database_url, session_factory
from joblife.db.status import StatusChange, set_job_status

__all__ = [
    "StatusChange",
    "create_joblife_engine",
    "database_url",
    "session_factory",
    "set_job_status",
]
