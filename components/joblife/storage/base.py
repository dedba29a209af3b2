"""The storage interface every backend implements, and its errors.

Keys are ``/``-separated paths relative to the backend's root (an S3 bucket and prefix, a
local directory). A failure of the storage itself is an :class:`ExternalJobError` (the job
is retried); an object that does not exist is :class:`ObjectNotFound`, a subclass of it.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from joblife.errors import ExternalJobError


class StorageError(ExternalJobError):
    """The storage failed (unreachable, refused, out of space...): retried as external."""


class ObjectNotFound(StorageError):
    """The object asked for does not exist."""

    def __init__(self, message: str, location: str) -> None:
        super().__init__(message)
        self.location = location


@dataclass(frozen=True, slots=True)
class StoredObject:
    """One object found in storage: its key, size in bytes and when it was last written
    (UTC, from the listing)."""

    key: str
    size: int
    modified: datetime


@dataclass(frozen=True, slots=True)
class Transfer:
    """One file to download (``key`` → ``path``) or upload (``path`` → ``key``)."""

    key: str
    path: Path


class Storage(ABC):
    """Exists, list (by prefix and regex), download, upload, delete; plus concurrent
    many-file transfers. Implementations must be safe to call from several threads."""

    #: How many files :meth:`download_many` / :meth:`upload_many` move at the same time.
    concurrency: int = 4

    @abstractmethod
    def url(self, key: str = "") -> str:
        """The URL of ``key`` (for messages and the status details)."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether the object ``key`` exists."""

    @abstractmethod
    def list(self, prefix: str = "") -> list[StoredObject]:
        """Every object whose key starts with ``prefix``, sorted by key."""

    def modified_at(self, key: str) -> datetime:
        """When the object ``key`` was last written (UTC). Listings carry it already
        (:attr:`StoredObject.modified`); this asks about one object."""
        raise StorageError(f"{type(self).__name__} cannot tell when {key!r} was written")

    @abstractmethod
    def download(self, key: str, path: Path) -> int:
        """Copy ``key`` to the local file ``path`` (parents created); return its size.
        :class:`ObjectNotFound` if it does not exist."""

    @abstractmethod
    def upload(self, path: Path, key: str) -> int:
        """Copy the local file ``path`` to ``key`` (replacing it); return its size. The
        object appears whole or not at all."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key``; no error if it does not exist."""

    def find(self, prefix: str = "", pattern: str | None = None) -> list[StoredObject]:
        """The objects under ``prefix`` whose key relative to it fully matches the regular
        expression ``pattern`` (all of them when None)."""
        objects = self.list(prefix)
        if pattern is None:
            return objects
        regex = re.compile(pattern)
        return [o for o in objects if regex.fullmatch(o.key[len(prefix) :])]

    def download_many(self, transfers: Sequence[Transfer]) -> int:
        """Download every transfer, ``concurrency`` at a time; return the bytes moved."""
        return self._many(lambda t: self.download(t.key, t.path), transfers)

    def upload_many(self, transfers: Sequence[Transfer]) -> int:
        """Upload every transfer, ``concurrency`` at a time; return the bytes moved."""
        return self._many(lambda t: self.upload(t.path, t.key), transfers)

    def _many(self, action: Callable[[Transfer], int], transfers: Sequence[Transfer]) -> int:
        if len(transfers) <= 1 or self.concurrency <= 1:
            return sum(action(t) for t in transfers)
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="transfer") as pool:
            # map re-raises the first failure once every transfer started has ended.
            return sum(pool.map(action, transfers))


def join_key(*parts: str) -> str:
    """Join key parts with single slashes (empty parts skipped)."""
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))
