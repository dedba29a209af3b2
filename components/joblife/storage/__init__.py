"""Storage: one interface (:class:`Storage`), a backend per URL scheme.

``JOBLIFE_STORAGE_URL`` chooses it: ``s3://bucket/prefix``
(:class:`~joblife.storage.s3.S3Storage`, imported only when used) or ``file:///path``
(:class:`FileStorage`); unset, ``<data_dir>/storage`` on the local disk. An input location
may also be one ``http://`` or ``https://`` URL (:class:`~joblife.storage.http.HttpSource`,
read-only: one object to download, nothing to list or write).
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
from joblife.storage.local import FileStorage

__all__ = [
    "FileStorage",
    "KeyRefused",
    "ObjectNotFound",
    "Storage",
    "StorageError",
    "StoredObject",
    "Transfer",
    "child_key",
    "default_storage_url",
    "join_key",
    "open_storage",
]


def default_storage_url(settings: Settings) -> str:
    """The configured storage URL, or local storage under the data dir."""
    return settings.storage_url or (settings.data_dir / "storage").resolve().as_uri()


def open_storage(url: str | None = None, settings: Settings | None = None) -> Storage:
    """The storage for ``url`` (default: the configured one), set up from ``settings``."""
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
