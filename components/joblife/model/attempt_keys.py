"""``attempt_proof_keys``: each job's current attempt proof key (revision 0016), the key of
the per-transaction proof of the attempt secret that the worker doors check (see
:mod:`joblife.db.worker_doors`).

Only the database owner reads or writes it (row level security without a policy): the
doors and the dispatcher's writer ``joblife_store_attempt_secrets()`` run as the owner. No
joblife role reads it; the model describes the schema.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, ForeignKey, LargeBinary
from sqlalchemy.orm import Mapped, mapped_column

from joblife.model.base import Base


class AttemptProofKey(Base):
    """One job's current attempt proof key; valid while ``secret_hash`` is the job's
    ``attempt_secret_hash``."""

    __tablename__ = "attempt_proof_keys"

    job_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    secret_hash: Mapped[bytes] = mapped_column(LargeBinary)
    proof_key: Mapped[bytes] = mapped_column(LargeBinary)
