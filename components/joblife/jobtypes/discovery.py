"""What the reference job types share to discover their input products in storage.

A discovery location (a setting) is either a key prefix of the configured storage
(``demo/inputs/h5``) or a full URL (``file:///data/h5``, ``s3://bucket/h5``; for one object,
``https://host/image.tif`` too), resolved the way the worker resolves ``input_path``
(:meth:`WorkerContext.storage_for`), so the ``input_path`` a job gets from
:func:`input_location` is one the worker can fetch.

A product that carries no publication date of its own is dated by when its object was
last written: :attr:`StoredObject.modified` from the listing, or ``storage.modified_at``
for one object.

A product made of many objects keeps what discovery found of it (:func:`input_listing`, in
``jobs.input_listing``): the worker fetches exactly those objects, or fails naming the
ones that went missing or changed size since (a missing part is not a product).

A type lists its location and keeps the products dated in the window it is given; creation
chooses the window (``JobTemplate.DISCOVERY_MODE``), leaves the newest products settling,
skips the known ones and, with ``REPROCESS_ON_CHANGE``, reprocesses a product whose date or
listing changed (:mod:`joblife.lifecycle.discovery_modes`).
"""

from __future__ import annotations

from collections.abc import Iterable

from joblife.config import Settings
from joblife.storage import Storage, StoredObject, join_key, open_storage


def open_location(location: str, settings: Settings) -> tuple[Storage, str]:
    """The storage and key prefix of a discovery ``location`` (a URL or a key of the
    configured storage); the prefix ends with ``/`` unless it is the storage's root."""
    if "://" in location:
        storage, key = open_storage(location, settings), ""
    else:
        storage, key = open_storage(settings=settings), location.strip("/")
    return storage, f"{key}/" if key else ""


def find(
    location: str, settings: Settings, pattern: str | None
) -> tuple[Storage, str, list[StoredObject]]:
    """The objects under ``location`` whose key relative to it fully matches ``pattern``
    (all when None): the storage, the prefix, and the objects with their keys relative to
    it, sorted."""
    storage, prefix = open_location(location, settings)
    objects = storage.find(prefix, pattern)
    return (
        storage,
        prefix,
        [StoredObject(o.key[len(prefix) :], o.size, o.modified) for o in objects],
    )


def input_location(location: str, relative: str) -> str:
    """The location (URL or key, like ``location``) of ``relative`` under ``location``."""
    if "://" in location:
        return f"{location.rstrip('/')}/{relative.lstrip('/')}"
    return join_key(location, relative)


def input_listing(objects: Iterable[StoredObject]) -> dict[str, int]:
    """The ``input_listing`` of a job whose input is ``objects`` (their keys relative to
    its ``input_path``, as :func:`find` gives them): ``{key: size}``."""
    return {o.key: o.size for o in objects}
