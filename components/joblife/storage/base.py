"""The storage interface every backend implements, and its errors.

Keys are ``/``-separated paths relative to the backend's root (an S3 bucket and prefix, a
local directory). A failure of the storage itself is an :class:`ExternalJobError` (the job
is retried); an object that does not exist is :class:`ObjectNotFound`, a subclass of it.
"""

from __future__ import annotations

import io
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

from joblife.errors import ExternalJobError, InternalJobError
from joblife.storage.keys import UnsafeKey, check_key, key_under


class StorageError(ExternalJobError):
    """The storage failed (unreachable, refused, out of space...): retried as external."""


class ObjectNotFound(StorageError):
    """The object asked for does not exist."""

    def __init__(self, message: str, location: str) -> None:
        super().__init__(message)
        self.location = location


class KeyRefused(InternalJobError):
    """A key that :func:`joblife.storage.keys.check_key` refuses was handed to a storage:
    refused, never rewritten (``in//abs.h5`` is not ``in/abs.h5``). Not the storage's
    failure but the caller's input: an internal error, not retried."""

    def __init__(self, message: str, key: str) -> None:
        super().__init__(message)
        self.key = key


def safe_key(key: str, *, prefix: bool = False) -> str:
    """``key`` if :func:`~joblife.storage.keys.check_key` accepts it, ``""`` (the root) too;
    with ``prefix``, one trailing ``/`` is allowed. Otherwise :class:`KeyRefused`."""
    body = key[:-1] if prefix and key.endswith("/") else key
    if body:
        try:
            check_key(body)
        except UnsafeKey as exc:
            raise KeyRefused(str(exc), key) from None
    return key


def remaining_bytes(file: BinaryIO) -> int:
    """How many bytes ``file`` holds from its current position to its end."""
    try:
        return max(os.fstat(file.fileno()).st_size - file.tell(), 0)
    except (OSError, AttributeError, io.UnsupportedOperation):
        here = file.tell()
        end = file.seek(0, os.SEEK_END)
        file.seek(here)
        return end - here


@dataclass(frozen=True, slots=True)
class StoredObject:
    """One object found in storage: its key, size in bytes and when it was last written
    (UTC, from the listing)."""

    key: str
    """The object's key: relative to the storage's root from :meth:`Storage.list` and
    :meth:`Storage.find`, relative to the discovery location from
    :func:`joblife.discovery.find`."""
    size: int
    """Its size in bytes."""
    modified: datetime
    """When it was last written: timezone-aware, in UTC (a file's modification time; S3's
    ``LastModified``, in whole seconds)."""


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
        """The full URL of ``key`` (``""``: the storage's root), for messages and the status
        details: ``file:///root/key``, ``s3://bucket/prefix/key``; an ``http(s)`` URL
        without its credentials. It only formats ``key``: nothing is checked or contacted."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether the object ``key`` exists (file storage: a file; a folder is not an
        object). :class:`KeyRefused` for an unsafe key; a storage that cannot answer
        raises :class:`StorageError` rather than answering False."""

    @abstractmethod
    def list(self, prefix: str = "") -> list[StoredObject]:
        """Every object whose key starts with ``prefix`` (a string prefix: ``in`` lists
        ``in2/x`` too; end it with ``/`` for a folder; ``""``: every object), sorted by
        key, with keys relative to the storage's root and UTC-aware dates. The whole
        listing: a backend whose listing comes in pages (S3) reads every page."""

    def modified_at(self, key: str) -> datetime:
        """When the object ``key`` was last written, timezone-aware in UTC. Listings carry
        it already (:attr:`StoredObject.modified`); this asks about one object."""
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
    def upload_file(self, file: BinaryIO, key: str) -> int:
        """Copy the open binary ``file``, from its position to its end, to ``key``
        (replacing it); return the bytes written. The object appears whole or not at all.
        What is uploaded is what this file object reads: a caller that checked an opened
        descriptor (:mod:`joblife.worker.workfiles`) uploads exactly that file."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key``; no error if it does not exist."""

    def find(self, prefix: str = "", pattern: str | None = None) -> list[StoredObject]:
        """The objects of :meth:`list` ``(prefix)`` whose key relative to ``prefix``
        (``key[len(prefix):]``) fully matches the regular expression ``pattern``
        (``re.fullmatch``: ``r"a"`` does not match ``a.h5``; all of them when None). The
        keys returned are relative to the storage's root, sorted; dates are UTC-aware. The
        whole listing is read and filtered here: a pattern does not narrow the listing,
        a longer ``prefix`` does. ``re.error`` for an invalid pattern."""
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

    def upload_many_opened(
        self,
        transfers: Sequence[Transfer],
        opener: Callable[[Transfer], AbstractContextManager[BinaryIO]],
    ) -> int:
        """Upload every transfer from the file ``opener(transfer)`` opens (and checks),
        ``concurrency`` at a time, each closed once sent; return the bytes moved."""

        def one(transfer: Transfer) -> int:
            with opener(transfer) as file:
                return self.upload_file(file, transfer.key)

        return self._many(one, transfers)

    def _many(self, action: Callable[[Transfer], int], transfers: Sequence[Transfer]) -> int:
        if len(transfers) <= 1 or self.concurrency <= 1:
            return sum(action(t) for t in transfers)
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="transfer") as pool:
            # map re-raises the first failure once every transfer started has ended.
            return sum(pool.map(action, transfers))


def join_key(*parts: str) -> str:
    """Join key parts with single slashes: each part loses the ``/`` at its ends, empty
    parts are skipped (``join_key("in/", "", "/a.h5")`` is ``in/a.h5``; no part: ``""``).
    Nothing inside a part is changed or checked (``a//b``, ``..`` stay; a storage then
    refuses the key): for a name from outside, use :func:`child_key`."""
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))


def child_key(prefix: str, name: str) -> str:
    """The key of ``name`` (a key relative to ``prefix``; ``prefix`` ``""`` is the root)
    under ``prefix``: :class:`~joblife.storage.keys.UnsafeKey` unless ``name`` is a safe
    key and the key lies under ``prefix`` (never repaired, unlike :func:`join_key`)."""
    check_key(name)
    base = prefix.strip("/")
    key = f"{base}/{name}" if base else name
    if not key_under(key, base):
        raise UnsafeKey(key, f"does not lie under {prefix!r}")
    return key
