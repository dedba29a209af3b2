"""``job_counts`` and ``job_count_deltas``: how many jobs of each type are in each status,
maintained by the database as jobs change (revision 0014).

Every statement that inserts, updates or deletes jobs appends its net change per (type,
status) to ``job_count_deltas`` (statement triggers with transition tables: no row that
every writer would have to lock); ``fold_job_counts()`` moves the deltas into
``job_counts``. Read them through the ``job_status_counts`` view (both summed, exact in
any snapshot) or :mod:`joblife.db.counts`; nothing but the triggers and the database
functions writes them.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, SmallInteger, Table, Text
from sqlalchemy.orm import Mapped, mapped_column

from joblife.model.base import Base


class JobCount(Base):
    """The folded count of one (job type, status); pairs without jobs have no row."""

    __tablename__ = "job_counts"

    job_type: Mapped[str] = mapped_column(Text, primary_key=True)
    status: Mapped[int] = mapped_column(SmallInteger, primary_key=True, autoincrement=False)
    jobs: Mapped[int] = mapped_column(BigInteger)


#: Changes not folded yet: one row per (type, status) per statement that changed jobs.
#: No key, no index: rows are only appended, then read and deleted all together.
job_count_deltas = Table(
    "job_count_deltas",
    Base.metadata,
    Column("job_type", Text, nullable=False),
    Column("status", SmallInteger, nullable=False),
    Column("delta", BigInteger, nullable=False),
)
