"""Local filesystem storage (``file:///path``): the embedded default, and a shared
filesystem (NFS...) in production."""

from __future__ import annotations

import errno
import os
import shutil
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from joblife.storage.base import (
    ObjectNotFound,
    Storage,
    StorageError,
    StoredObject,
    safe_key,
)

_TMP_PREFIX = ".joblife-tmp-"
#: Bytes copied per read when uploading from an open file.
_COPY_BUFFER = 1 << 20


class FileStorage(Storage):
    """Objects are files under ``root`` (resolved when opened); a key is their path
    relative to it. A key whose path leads out of the root through a symbolic link is a
    :class:`StorageError`. An upload is written to a hidden temporary file next to its
    target and renamed into place: listings never show a partial file."""

    def __init__(self, root: Path, concurrency: int = 4) -> None:
        self.root = Path(root).resolve()
        self.concurrency = concurrency

    def url(self, key: str = "") -> str:
        return (self.root / key).as_uri() if key else self.root.as_uri()

    def _path(self, key: str, *, prefix: bool = False) -> Path:
        # An unsafe key is refused, not repaired (``in//abs.h5`` is not ``in/abs.h5``); a
        # safe key is still resolved: a link in the root must not lead out of it.
        path = (self.root / safe_key(key, prefix=prefix)).resolve()
        if path != self.root and self.root not in path.parents:
            raise StorageError(f"storage key {key!r} leaves the storage root {self.root}")
        return path

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> list[StoredObject]:
        """Every file whose key starts with ``prefix``, sorted by key, dated by its
        modification time (UTC-aware); an upload's temporary files are left out. Only the
        deepest folder the prefix names is walked; under a folder that does not exist,
        nothing (no error)."""
        # Walk only the deepest directory the prefix names, then filter by the rest.
        base = self._path(prefix.rsplit("/", 1)[0], prefix=True) if "/" in prefix else self.root
        if not base.is_dir():
            return []
        found = []
        for directory, _, files in os.walk(base):
            for name in files:
                if name.startswith(_TMP_PREFIX):
                    continue
                path = Path(directory) / name
                key = path.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    stat = path.stat()
                    written = datetime.fromtimestamp(stat.st_mtime, UTC)
                    found.append(StoredObject(key, stat.st_size, written))
        return sorted(found, key=lambda o: o.key)

    def modified_at(self, key: str) -> datetime:
        try:
            stamp = self._path(key).stat().st_mtime
        except OSError as exc:
            raise StorageError(f"cannot stat {self.url(key)}: {exc}") from exc
        return datetime.fromtimestamp(stamp, UTC)

    def download(self, key: str, path: Path) -> int:
        source = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            shutil.copyfile(source, path)
        except FileNotFoundError:
            if not source.is_file():
                raise ObjectNotFound(f"{self.url(key)} does not exist", self.url(key)) from None
            raise
        return path.stat().st_size

    def upload(self, path: Path, key: str) -> int:
        with open(path, "rb") as file:  # an error here is the local file's, not the storage's
            return self.upload_file(file, key)

    def upload_file(self, file: BinaryIO, key: str) -> int:
        target = self._path(key)
        tmp = target.parent / f"{_TMP_PREFIX}{uuid.uuid4().hex}"
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as out:
                shutil.copyfileobj(file, out, _COPY_BUFFER)
                size = out.tell()
            os.replace(tmp, target)  # whole or not at all
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            space = " (no space left)" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else ""
            raise StorageError(f"cannot write {self.url(key)}{space}: {exc}") from exc
        return size

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)
