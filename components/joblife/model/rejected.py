"""``rejected_products``: discovered products that creation refused, one row per product
of a job type (see :mod:`joblife.lifecycle.creation`).

A product is refused when a value of it cannot be stored (a NUL character, a name that is
not valid UTF-8) or when its key is unsafe (``..``, empty segments, a leading ``/``,
control characters; such a product is also recorded as a cancelled job when its values
can be stored). Rediscovered at every cycle, it stays one row: ``last_seen`` and
``times_seen`` follow. Written only through ``record_rejected_products()`` (installed by
migration 0012), readable by every joblife role.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from joblife.model.base import Base


class RejectedProduct(Base):
    """One refused product of one job type."""

    __tablename__ = "rejected_products"

    job_type: Mapped[str] = mapped_column(Text, primary_key=True)
    #: The product's id as discovered, escaped (``joblife.storage.keys.escape``): control
    #: characters and undecodable bytes as escapes, never raw.
    name: Mapped[str] = mapped_column(Text, primary_key=True)
    #: unsafe_key, nul or not_utf8 (the label of ``joblife_rejected_products_total``).
    reason_class: Mapped[str] = mapped_column(Text)
    #: What was refused and why, values escaped.
    reason: Mapped[str] = mapped_column(Text)
    first_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    times_seen: Mapped[int] = mapped_column(BigInteger, server_default=text("1"))
