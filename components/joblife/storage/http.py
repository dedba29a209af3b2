"""A read-only HTTP(S) source: one object at a URL that needs no storage account (seed 004:
"a single URL which does not require authentication").

``open_storage("https://host/path/image.tif")`` gives an :class:`HttpSource` rooted at that
URL; key ``""`` is the URL itself (a non-empty key is joined below its path). It can tell
whether the object exists and when it was last modified (``HEAD``; ``GET`` for a server that
refuses ``HEAD``), and download it: streamed to disk in chunks (never held in memory),
written next to its final name and renamed into place once complete. It cannot list, upload
or delete: those raise :class:`StorageError`.

Requests send ``Accept-Encoding: identity`` so the bytes saved are the file's own. Each
request has a connect timeout and a read timeout (the longest wait for the next bytes, not
for the whole transfer). A failure is a :class:`StorageError` (an external error: the job is
retried), :class:`ObjectNotFound` for HTTP 404 and 410; messages name the method, the status
code and the URL without credentials (user info and query string hidden, see
:func:`safe_url`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote, urlsplit, urlunsplit

import requests

from joblife.storage.base import ObjectNotFound, Storage, StorageError, StoredObject

#: Seconds to wait for a connection, and for the next bytes of an answer.
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 60.0
#: Bytes written to disk per chunk of a download.
CHUNK_BYTES = 1 << 20
_HEADERS = {"Accept-Encoding": "identity", "User-Agent": "joblife"}


def safe_url(url: str) -> str:
    """``url`` fit for messages: without user info (``user:password@``), its query string
    (which may carry a token or a signature) shown as ``?...``, and no fragment."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, "..." if parts.query else "", ""))


class HttpStatusError(StorageError):
    """The server answered with an error status (other than 404 / 410: ObjectNotFound)."""

    def __init__(self, message: str, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code


class HttpSource(Storage):
    """The object at an ``http://`` or ``https://`` URL, read-only; see the module
    docstring."""

    def __init__(
        self,
        root: str,
        connect_timeout: float = CONNECT_TIMEOUT,
        read_timeout: float = READ_TIMEOUT,
    ) -> None:
        parts = urlsplit(root)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL with a host: {safe_url(root)!r}")
        self.root = root
        self.timeout = (connect_timeout, read_timeout)
        self.concurrency = 1

    # -- the Storage interface -----------------------------------------------------------
    def url(self, key: str = "") -> str:
        return safe_url(self._full(key))

    def exists(self, key: str) -> bool:
        try:
            self._probe(key)
        except ObjectNotFound:
            return False
        return True

    def list(self, prefix: str = "") -> list[StoredObject]:
        raise StorageError(
            f"cannot list {self.url(prefix)}: an http(s) URL names one object "
            "(use a storage prefix, s3:// or file://, for many)"
        )

    def download(self, key: str, path: Path) -> int:
        url = self._full(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial")
        try:
            with self._request("GET", url, stream=True) as response, partial.open("wb") as out:
                for chunk in _chunks(response, url, self.timeout):
                    out.write(chunk)
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)
        return path.stat().st_size

    def upload(self, path: Path, key: str) -> int:
        raise StorageError(f"cannot write {self.url(key)}: an http(s) source is read-only")

    def upload_file(self, file: BinaryIO, key: str) -> int:
        raise StorageError(f"cannot write {self.url(key)}: an http(s) source is read-only")

    def delete(self, key: str) -> None:
        raise StorageError(f"cannot delete {self.url(key)}: an http(s) source is read-only")

    # -- what discovery asks -------------------------------------------------------------
    def modified_at(self, key: str = "") -> datetime:
        """When the object was last modified (UTC): its ``Last-Modified`` header, else the
        server's ``Date``, else now."""
        headers = self._probe(key)
        for name in ("Last-Modified", "Date"):
            value = headers.get(name)
            if not value:
                continue
            try:
                stamp = parsedate_to_datetime(value)
            except (TypeError, ValueError):
                continue
            return stamp.astimezone(UTC) if stamp.tzinfo else stamp.replace(tzinfo=UTC)
        return datetime.now(UTC)

    # -- HTTP ----------------------------------------------------------------------------
    def _full(self, key: str) -> str:
        if not key:
            return self.root
        parts = urlsplit(self.root)
        path = f"{parts.path.rstrip('/')}/{quote(key.lstrip('/'))}"
        return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))

    def _probe(self, key: str) -> Mapping[str, str]:
        """The headers of the object (``HEAD``, or a ``GET`` whose body is not read when
        the server does not allow ``HEAD``)."""
        url = self._full(key)
        try:
            with self._request("HEAD", url, allow_redirects=True) as response:
                return response.headers
        except HttpStatusError as exc:
            if exc.status_code not in (405, 501):
                raise
        with self._request("GET", url, stream=True) as response:
            return response.headers

    def _request(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        """The answer to ``method url``, a success (2xx after redirects); otherwise a
        :class:`StorageError` (:class:`ObjectNotFound` for 404/410)."""
        try:
            response = requests.request(
                method, url, headers=_HEADERS, timeout=self.timeout, **kwargs
            )
        except requests.RequestException as exc:
            raise _failure(method, url, exc, self.timeout) from None
        if response.status_code >= 400:
            response.close()
            message = f"{method} {safe_url(url)} answered HTTP {response.status_code}" + (
                f" {response.reason}" if response.reason else ""
            )
            if response.status_code in (404, 410):
                raise ObjectNotFound(message, safe_url(url))
            raise HttpStatusError(message, response.status_code)
        return response


def _chunks(response: requests.Response, url: str, timeout: tuple[float, float]) -> Iterator[bytes]:
    """The body of ``response`` in chunks; a read that fails or times out, or a body shorter
    than its ``Content-Length``, as a :class:`StorageError`."""
    try:
        yield from response.iter_content(CHUNK_BYTES)
    except requests.RequestException as exc:
        raise _failure("GET", url, exc, timeout) from None


def _failure(
    method: str, url: str, exc: requests.RequestException, timeout: tuple[float, float]
) -> StorageError:
    """A :class:`StorageError` for a request that got no (complete) answer, naming the cause
    but never the credentials (requests' own messages may quote the query string)."""
    if isinstance(exc, requests.Timeout) or _is_timeout(exc):
        why = f"timed out (connect {timeout[0]:g} s, read {timeout[1]:g} s)"
    elif isinstance(exc, requests.exceptions.SSLError):
        why = "TLS error"
    elif isinstance(exc, requests.exceptions.ChunkedEncodingError):
        why = "the answer ended before its end (connection broken or body truncated)"
    else:
        why = _os_cause(exc) or type(exc).__name__
    return StorageError(f"{method} {safe_url(url)} failed: {why}")


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and what it wraps (arguments, ``reason``, cause and context), depth first."""
    seen: list[BaseException] = []
    todo = [exc]
    while todo and len(seen) < 20:
        current = todo.pop()
        if any(current is s for s in seen):
            continue
        seen.append(current)
        inner = [a for a in getattr(current, "args", ()) if isinstance(a, BaseException)]
        reason = getattr(current, "reason", None)
        todo += [
            e
            for e in (*inner, reason, current.__cause__, current.__context__)
            if isinstance(e, BaseException)
        ]
    return seen


def _is_timeout(exc: BaseException) -> bool:
    return any(isinstance(e, TimeoutError) or "Timeout" in type(e).__name__ for e in _causes(exc))


def _os_cause(exc: BaseException) -> str | None:
    """The operating system's word for the failure (``Connection refused``...), if any."""
    for cause in _causes(exc):
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror
    return None
