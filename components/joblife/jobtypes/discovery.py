"""What the reference job types share to discover their input products in storage.

A discovery location (a setting) is either a key prefix of the configured storage
(``demo/inputs/h5``) or a full URL (``file:///data/h5``, ``s3://bucket/h5``; for one object,
``https://host/image.tif`` too), resolved the way the worker resolves ``input_path``
(:meth:`WorkerContext.storage_for`), so the ``input_path`` a job gets from
:func:`input_location` is one the worker can fetch.

Storage listings carry no dates: :func:`modified_at` asks the backend for an object's
modification time, the publication date of a product that carries none of its own.
"""

from __future__ import annotations

from datetime import UTC, datetime

from joblife.config import Settings
from joblife.storage import Storage, StorageError, StoredObject, join_key, open_storage
from joblife.storage.local import FileStorage


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
    return storage, prefix, [StoredObject(o.key[len(prefix) :], o.size) for o in objects]


def input_location(location: str, relative: str) -> str:
    """The location (URL or key, like ``location``) of ``relative`` under ``location``."""
    if "://" in location:
        return f"{location.rstrip('/')}/{relative.lstrip('/')}"
    return join_key(location, relative)


def modified_at(storage: Storage, key: str) -> datetime:
    """When the object ``key`` was last written (UTC): a file's modification time, an S3
    object's ``LastModified``, an HTTP object's ``Last-Modified``."""
    if isinstance(storage, FileStorage):
        try:
            stamp = (storage.root / key).stat().st_mtime
        except OSError as exc:
            raise StorageError(f"cannot stat {storage.url(key)}: {exc}") from exc
        return datetime.fromtimestamp(stamp, UTC)
    from joblife.storage.http import HttpSource

    if isinstance(storage, HttpSource):
        return storage.modified_at(key)
    from joblife.storage.s3 import S3Storage  # boto3 only when S3 is in use

    if isinstance(storage, S3Storage):
        head = storage.client.head_object(Bucket=storage.bucket, Key=join_key(storage.prefix, key))
        return head["LastModified"].astimezone(UTC)
    raise StorageError(f"{type(storage).__name__} cannot tell when {key!r} was written")
