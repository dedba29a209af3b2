"""Discovery helpers for job types: what a ``get_jobs_to_create(start, end)`` needs to list
its input products in storage, the helpers joblife's reference job types use. Public API:
every name of ``__all__`` keeps its meaning within a major version of joblife (the storage
interface itself is :mod:`joblife.storage`).

A discovery, as the partner guide's worked example does it::

    from joblife.discovery import find, get_settings, input_location, join_key

    storage, prefix, objects = find("ndvi/inputs", get_settings(), r"[^/]+/metadata\\.json")
    for item in objects:  # item.key is relative to the location: "<product>/metadata.json"
        storage.download(join_key(prefix, item.key), local_path)  # read it (its date...)
        input_path = input_location("ndvi/inputs", item.key.split("/")[0])

The guarantees:

- **Time zones.** Creation calls ``get_jobs_to_create(start, end)`` with timezone-aware
  datetimes: ``end`` is the cycle's "now" in UTC; ``start`` is the discovery cursor less
  the overlap (``modified_since``), ``end`` less ``discovery_lookback_hours`` for a type
  with no job yet, or :data:`EVERYTHING` (``listing_diff``). A cursor is read back from
  the database as an aware datetime in the server's ``TimeZone`` (UTC unless configured
  otherwise): compare ``start`` and ``end`` as datetimes, which is exact whatever their
  offsets, and call ``.astimezone(UTC)`` before formatting one. Keep the products dated
  in ``[start, end)``. Dates found in storage (:attr:`StoredObject.modified`) are aware,
  in UTC; a date read from a product (a catalogue, a metadata file) must carry its UTC
  offset: creation refuses a naive ``input_publication_date`` (``ValueError``), and
  comparing a naive date with ``start`` raises ``TypeError``.
- **Locations and keys.** A discovery location is a key prefix of the configured storage
  (``ndvi/inputs``: the ``/`` at its ends do not matter) or a URL (``file:///data/in``,
  ``s3://bucket/in``; one ``https://`` object can be opened but not listed).
  :func:`find` returns keys relative to the location, sorted, and the prefix to put
  before them (:func:`join_key`) to read an object from the storage it returns;
  :func:`input_location` makes the ``input_path`` of a product from the location and a
  relative key, in the form the worker fetches. :func:`join_key` strips the ``/`` at the
  ends of each part and drops empty parts; it does not validate. Keys are checked when
  used: a storage refuses an unsafe key (:class:`joblife.storage.KeyRefused`; ``..``,
  ``.``, empty segments, control characters: :func:`joblife.storage.check_key`), and
  creation records a product whose ``input_path`` is unsafe as a cancelled job naming
  the reason: neither repairs a name.
- **Patterns** are regular expressions matched against the *whole* key relative to the
  location (``re.fullmatch``): ``r"[^/]+\\.h5"`` takes ``a.h5`` but not ``sub/a.h5`` nor
  ``a.h5.tmp``. None takes every object.
- **Large listings.** :func:`find` reads the location's whole listing, then filters it:
  on S3 it pages through ``ListObjectsV2`` (1,000 keys a page) to the last page, so no
  product is missed however many there are; the listing is one list in memory, and a
  pattern does not shorten it (a narrower location does). Every creation cycle lists
  again: in ``modified_since`` mode, keep only the products dated in the window.
"""

from __future__ import annotations

from datetime import datetime
from typing import Final

from joblife.config import get_settings
from joblife.jobtypes.discovery import find, input_listing, input_location, open_location
from joblife.lifecycle import discovery_modes
from joblife.storage import join_key, open_storage

__all__ = [
    "EVERYTHING",
    "LISTING_DIFF",
    "MODIFIED_SINCE",
    "find",
    "get_settings",
    "input_listing",
    "input_location",
    "join_key",
    "open_location",
    "open_storage",
]

MODIFIED_SINCE: Final[str] = discovery_modes.MODIFIED_SINCE
"""``JobTemplate.DISCOVERY_MODE`` (the default): ``start`` is the discovery cursor (the
newest input publication date of the type's jobs) less ``DISCOVERY_OVERLAP_SECONDS``; a
type with no job yet looks back ``discovery_lookback_hours``."""

LISTING_DIFF: Final[str] = discovery_modes.LISTING_DIFF
"""``JobTemplate.DISCOVERY_MODE``: ``start`` is :data:`EVERYTHING` at every cycle, and the
products already known are skipped by creation."""

EVERYTHING: Final[datetime] = discovery_modes.EVERYTHING
"""The ``start`` of a ``listing_diff`` window: 1970-01-01 UTC (every product listed)."""
