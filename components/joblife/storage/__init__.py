"""Storage: one interface (:class:`Storage`), a backend per URL scheme. Public API.

``JOBLIFE_STORAGE_URL`` chooses it: ``s3://bucket/prefix``
(:class:`joblife.storage.s3.S3Storage`, imported only when used) or ``file:///path``
(:class:`FileStorage`); unset, ``<data_dir>/storage`` on the local disk. An input location
may also be one ``http://`` or ``https://`` URL (:class:`joblife.storage.http.HttpSource`,
read-only: one object to download, nothing to list or write). :func:`open_storage` opens
any of them; a job type's discovery uses it (or :mod:`joblife.discovery`, which opens a
discovery location, a key or a URL, for it).

Every name of ``__all__`` is the public, documented API: it keeps its meaning within a
major version of joblife. What every backend guarantees:

- **Keys** are ``/``-separated paths relative to the storage's root (an S3 bucket and
  prefix, a local directory). A key that :func:`check_key` refuses (a ``..`` or ``.``
  segment, an empty segment: ``a//b``, a leading or trailing ``/``; a control character,
  bytes that were not UTF-8, more than 1,024 bytes) is refused with :class:`KeyRefused`,
  never repaired (``in//abs.h5`` is not ``in/abs.h5``), by every method that reads,
  writes or deletes an object (:meth:`Storage.url` only formats it). A prefix given to
  :meth:`Storage.list` or :meth:`Storage.find` may end with one ``/`` (a folder).
- **Key normalisation** is explicit: :func:`join_key` strips the ``/`` around each part,
  drops empty parts and joins the rest with one ``/`` (``join_key("in/", "/a.h5")`` is
  ``in/a.h5``); it does not validate what is inside a part (``a//b``, ``..`` stay as
  given, and a storage then refuses the key). For a name from outside (a product's, a
  science output's), :func:`child_key` validates it and checks that it stays under its
  prefix. joblife compares keys as given: it neither folds case nor normalises Unicode.
- **Listings are whole and sorted.** :meth:`Storage.list` returns every object whose key
  starts with the prefix (a string prefix: ``in`` also lists ``in2/x``; end it with ``/``
  for a folder), sorted by key. S3 pages through its listing (``ListObjectsV2``, 1,000
  keys a page) to the last page; the result is one list in memory. Files of an upload in
  progress are not listed (file storage), an S3 upload appears when complete.
- **Patterns match whole keys.** :meth:`Storage.find` keeps the listed objects whose key
  *relative to the prefix* fully matches the regular expression (``re.fullmatch``:
  ``r"a"`` does not match ``a.h5``); the keys it returns are relative to the storage's
  root, like :meth:`Storage.list`'s. (:func:`joblife.discovery.find` returns them relative
  to the discovery location.)
- **Dates are timezone-aware, in UTC.** :attr:`StoredObject.modified` and
  :meth:`Storage.modified_at` are when the object was last written: a file's modification
  time (sub-second), S3's ``LastModified`` (whole seconds; a multipart upload is dated by
  its start), HTTP's ``Last-Modified``.
- **Writes are whole or nothing**: an uploaded object appears complete or not at all.
- **Errors**: a failure of the storage is a :class:`StorageError` (an external error: the
  job is retried), an object that does not exist :class:`ObjectNotFound` (a subclass;
  :meth:`Storage.exists` answers False instead), an unsafe key :class:`KeyRefused` (an
  internal error: not retried); :func:`check_key` and :func:`child_key` raise
  :class:`UnsafeKey` (a ``ValueError``).
- Every storage may be used from several threads at once.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from joblife.config import Settings, get_settings
from joblife.errors import ConfigurationError
from joblife.storage.base import (
    KeyRefused,
    ObjectNotFound,
    Storage,
    StorageError,
    StoredObject,
    Transfer,
    child_key,
    join_key,
)
from joblife.storage.keys import UnsafeKey, check_key
from joblife.storage.local import FileStorage

__all__ = [
    "FileStorage",
    "KeyRefused",
    "ObjectNotFound",
    "Storage",
    "StorageError",
    "StoredObject",
    "Transfer",
    "UnsafeKey",
    "check_key",
    "child_key",
    "default_storage_url",
    "join_key",
    "open_storage",
]


def default_storage_url(settings: Settings) -> str:
    """The configured storage URL (``storage_url``), or the ``file://`` URL of
    ``<data_dir>/storage`` when it is unset."""
    return settings.storage_url or (settings.data_dir / "storage").resolve().as_uri()


def open_storage(url: str | None = None, settings: Settings | None = None) -> Storage:
    """The storage for ``url``: ``s3://bucket/prefix``, ``file:///path`` or one
    ``http(s)://`` object (read-only); None, the configured one (:func:`default_storage_url`).
    ``settings`` (default: :func:`joblife.config.get_settings`) give the S3 endpoint,
    credentials and transfer limits. Nothing is contacted until the storage is used.
    Raises :class:`joblife.errors.ConfigurationError` for a URL it cannot open (another
    scheme, an ``s3://`` URL without a bucket, a ``file://`` URL with a host) and
    :class:`KeyRefused` for an ``s3://`` URL whose path is not a safe key."""
    settings = settings or get_settings()
    url = url or default_storage_url(settings)
    parts = urlsplit(url)
    concurrency = settings.storage_transfer_concurrency
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ConfigurationError(f"storage URL {url!r}: file URLs take no host")
        return FileStorage(Path(unquote(parts.path)), concurrency=concurrency)
    if parts.scheme == "s3":
        # Imported here: boto3 is heavy, and a worker on file:// storage never needs it.
        from joblife.storage.s3 import MIB, S3Storage

        if not parts.netloc:
            raise ConfigurationError(f"storage URL {url!r} names no bucket (s3://bucket/prefix)")
        secret = settings.s3_secret_access_key
        key_id = settings.s3_access_key_id
        return S3Storage(
            parts.netloc,
            unquote(parts.path),
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            access_key_id=key_id.get_secret_value() if key_id else None,
            secret_access_key=secret.get_secret_value() if secret else None,
            max_attempts=settings.s3_max_attempts,
            multipart_threshold=settings.s3_multipart_threshold_mib * MIB,
            multipart_chunksize=settings.s3_multipart_chunksize_mib * MIB,
            part_concurrency=settings.s3_part_concurrency,
            concurrency=concurrency,
        )
    if parts.scheme in ("http", "https"):
        from joblife.storage.http import HttpSource, safe_url

        if not parts.hostname:
            raise ConfigurationError(f"URL {safe_url(url)!r} names no host")
        return HttpSource(url)
    raise ConfigurationError(
        f"storage URL {url!r}: unsupported scheme {parts.scheme!r} (use s3:// or file://; "
        "http(s):// for one object to read)"
    )
