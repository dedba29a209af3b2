"""The Jobs page's filter read from a request: the page's query string, or the ``f_``
fields a bulk action carries.

A filter value is refused by name, before any read, when it holds a character PostgreSQL
text cannot store (a NUL, or a surrogate standing for an undecodable byte): the product
and error filters are sent to the database as text, where such a value would fail the
statement with the driver's own message instead of the filter's.
"""

from __future__ import annotations

from collections.abc import Mapping

from joblife.db.text import why_unstorable
from joblife.web.job_reads import QUERY_KEYS, JobFilter


def parse_filter(params: Mapping[str, str]) -> JobFilter:
    """:meth:`JobFilter.from_query` of ``params`` (a multi-dict's repeated keys read
    too), after refusing a value of any filter key that PostgreSQL text cannot hold.
    ValueError with a message naming the filter (``product filter: must not contain a NUL
    character``), or the one of :meth:`JobFilter.from_query`."""
    getlist = getattr(params, "getlist", None)
    for key in QUERY_KEYS.values():
        values = getlist(key) if getlist else [params.get(key)]
        for value in values:
            reason = why_unstorable(value)
            if reason is not None:
                raise ValueError(f"{key} filter: must not contain {reason}")
    return JobFilter.from_query(params)
