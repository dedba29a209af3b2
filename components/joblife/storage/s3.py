"""S3 storage through boto3 (``s3://bucket/prefix``), against AWS or any S3-compatible
endpoint (``s3_endpoint_url``): multipart and concurrent transfers, standard retries.

Credentials come from the settings (``s3_access_key_id`` / ``s3_secret_access_key``) or
boto3's own chain (``AWS_*`` variables, profile, instance role); they are handed to boto3
only, never kept on this object nor written to a log or a message.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from joblife.storage.base import (
    ObjectNotFound,
    Storage,
    StorageError,
    StoredObject,
    join_key,
    remaining_bytes,
    safe_key,
)

MIB = 1024 * 1024
_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}


class S3Storage(Storage):
    """Objects under ``prefix`` in ``bucket``; a key is relative to the prefix. Opened by
    :func:`joblife.storage.open_storage` from an ``s3://bucket/prefix`` URL and the
    settings (``max_attempts`` counts every attempt of a request, the first included;
    files from ``multipart_threshold`` bytes on move in parts). Dates are S3's
    ``LastModified``: whole seconds, UTC; a multipart upload is dated by its start."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        max_attempts: int = 5,
        multipart_threshold: int = 16 * MIB,
        multipart_chunksize: int = 16 * MIB,
        part_concurrency: int = 8,
        concurrency: int = 4,
    ) -> None:
        self.bucket = bucket
        self.prefix = _bucket_prefix(prefix)
        self.endpoint_url = endpoint_url
        self.concurrency = concurrency
        session = boto3.session.Session(
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
            region_name=region,
        )
        self.client = session.client(
            "s3",
            endpoint_url=endpoint_url,
            config=Config(
                # total_max_attempts counts the first attempt; botocore's max_attempts
                # would count only the retries (one attempt more than asked for).
                retries={"total_max_attempts": max_attempts, "mode": "standard"},
                # Enough connections for every part of every file moving at once.
                max_pool_connections=max(10, concurrency * part_concurrency),
            ),
        )
        self.transfer_config = TransferConfig(
            multipart_threshold=multipart_threshold,
            multipart_chunksize=multipart_chunksize,
            max_concurrency=part_concurrency,
            use_threads=True,
        )

    def url(self, key: str = "") -> str:
        return f"s3://{self.bucket}/{join_key(self.prefix, key)}"

    def _key(self, key: str, *, prefix: bool = False) -> str:
        # Refused, not repaired: stripping slashes would make ``in//abs.h5`` the object
        # ``in/abs.h5``. Only a folder's one trailing "/" goes (list() adds its own).
        key = safe_key(key, prefix=prefix)
        key = key[:-1] if prefix and key.endswith("/") else key
        return f"{self.prefix}/{key}" if self.prefix and key else self.prefix or key

    def _error(self, action: str, key: str, exc: Exception) -> StorageError:
        """The StorageError of ``exc``: S3's answer (code, message, how many attempts were
        made) if it answered, even through s3transfer's own error types."""
        where = self.url(key) + (f" at {self.endpoint_url}" if self.endpoint_url else "")
        answer = _client_error(exc)
        if answer is not None:
            error = answer.response.get("Error", {})
            code = str(error.get("Code", ""))
            if code in _NOT_FOUND:
                return ObjectNotFound(f"{self.url(key)} does not exist", self.url(key))
            message = error.get("Message", "")
            retries = answer.response.get("ResponseMetadata", {}).get("RetryAttempts", 0)
            tries = f" after {retries + 1} attempts" if retries else ""
            return StorageError(f"S3 refused to {action} {where}{tries}: {code} {message}".rstrip())
        return StorageError(f"S3 could not {action} {where}: {exc}")

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            error = self._error("check", key, exc)
            if isinstance(error, ObjectNotFound):
                return False
            raise error from exc
        except BotoCoreError as exc:
            raise self._error("check", key, exc) from exc
        return True

    def modified_at(self, key: str) -> datetime:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except (ClientError, BotoCoreError) as exc:
            raise self._error("check", key, exc) from exc
        return head["LastModified"].astimezone(UTC)

    def list(self, prefix: str = "") -> list[StoredObject]:
        """Every object whose key starts with ``prefix``, sorted by key: boto3's
        ``ListObjectsV2`` paginator reads every page (1,000 keys each) until S3 says the
        listing is complete, so a listing of any length is whole (and held in memory).
        A failed page fails the listing (:class:`StorageError`, after the retries)."""
        full = self._key(prefix, prefix=True)
        if prefix.endswith("/") or (self.prefix and not prefix):
            full += "/"
        strip = len(self.prefix) + 1 if self.prefix else 0
        found = []
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=full
            )
            for page in pages:
                for item in page.get("Contents", []):
                    found.append(
                        StoredObject(
                            item["Key"][strip:],
                            int(item["Size"]),
                            item["LastModified"].astimezone(UTC),
                        )
                    )
        except (ClientError, BotoCoreError) as exc:
            raise self._error("list", prefix, exc) from exc
        return sorted(found, key=lambda o: o.key)

    def download(self, key: str, path: Path) -> int:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.client.download_file(
                self.bucket, self._key(key), str(path), Config=self.transfer_config
            )
        except (ClientError, BotoCoreError) as exc:
            raise self._error("download", key, exc) from exc
        return path.stat().st_size

    def upload(self, path: Path, key: str) -> int:
        size = path.stat().st_size
        try:
            # A multipart upload appears only when completed: whole or not at all.
            self.client.upload_file(
                str(path), self.bucket, self._key(key), Config=self.transfer_config
            )
        except (ClientError, BotoCoreError) as exc:
            raise self._error("upload to", key, exc) from exc
        except Exception as exc:  # s3transfer wraps some client errors in its own types
            if isinstance(exc, OSError) and exc.filename:
                raise
            raise self._error("upload to", key, exc) from exc
        return size

    def upload_file(self, file: BinaryIO, key: str) -> int:
        size = remaining_bytes(file)
        try:
            # Multipart parts are read from this file object only: what was opened and
            # checked is what is sent. Completed or aborted: whole or not at all.
            self.client.upload_fileobj(
                file, self.bucket, self._key(key), Config=self.transfer_config
            )
        except (ClientError, BotoCoreError) as exc:
            raise self._error("upload to", key, exc) from exc
        except Exception as exc:  # s3transfer wraps some client errors in its own types
            if isinstance(exc, OSError) and exc.filename:
                raise
            raise self._error("upload to", key, exc) from exc
        return size

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except (ClientError, BotoCoreError) as exc:
            raise self._error("delete", key, exc) from exc


def _bucket_prefix(prefix: str) -> str:
    """The key prefix of a URL's path (``/in/`` of ``s3://bucket/in/``): without the one
    ``/`` after the bucket and a folder's trailing ``/``. The rest must be a safe key, else
    :class:`KeyRefused`: a product's URL becomes a storage too, and stripping every slash
    would make ``s3://bucket//abs.h5`` the object ``abs.h5``."""
    body = prefix[1:] if prefix.startswith("/") else prefix
    body = body[:-1] if body.endswith("/") else body
    return safe_key(body) if body else ""


def _client_error(exc: BaseException | None) -> ClientError | None:
    """``exc`` or the ClientError it was raised from (s3transfer wraps some)."""
    while exc is not None and not isinstance(exc, ClientError):
        exc = exc.__cause__ or exc.__context__
    return exc
