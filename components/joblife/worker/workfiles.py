"""The files a science step left in its work dir, read without trusting them.

The science code writes in the work dir and may leave there what leads out of it: a symbolic
link (``output/x -> /etc/shadow``), ``output`` itself replaced by a link to a host folder, a
hard link to a host file, a FIFO that would block its reader. A :class:`WorkTree` reads only
regular files that really lie inside the work dir: each directory and file is opened relative
to its parent's descriptor with ``O_NOFOLLOW`` (no link is followed, not even one swapped in
after the walk), and the opened descriptor is checked with ``fstat``: a regular file with one
name (``st_nlink`` 1: a second name may be a host file) on the work dir's file system. What is
uploaded is read from that checked descriptor.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from joblife.storage.keys import escape

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO swapped in after the walk must not wait for a writer.
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
#: Deeper trees are refused (no key that deep fits S3's 1,024 bytes anyway).
MAX_DEPTH = 256
_KINDS = {
    stat.S_IFLNK: "a symbolic link (not followed)",
    stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
}


class UnsafeWorkFile(Exception):
    """An entry of the work dir that is not read: ``name`` (relative to the work dir, as
    found: it may hold undecodable bytes) and why."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{escape(name)} {reason}")
        self.name = name
        self.reason = reason


@dataclass(frozen=True, slots=True)
class WorkFile:
    """A regular file of a tree: its ``/``-separated name relative to the tree, its size."""

    name: str
    size: int


class WorkTree:
    """One sub-directory of the work dir (``output``, ``logs``), read without following
    links; see the module docstring."""

    def __init__(self, work_dir: Path, name: str) -> None:
        self.work_dir = work_dir
        self.name = name

    def label(self, relative: str = "") -> str:
        """``relative`` as named in messages: from the work dir (``output/a/b``)."""
        return f"{self.name}/{relative}"

    def scan(self) -> tuple[list[WorkFile], list[UnsafeWorkFile]]:
        """Every regular file of the tree, sorted by name, and every entry refused (a link,
        a file that is not regular, has other names or lies on another file system). A
        tree that does not exist is empty; one that is a link raises UnsafeWorkFile."""
        files: list[WorkFile] = []
        refused: list[UnsafeWorkFile] = []
        try:
            with self._root() as (fd, device):
                self._scan(fd, "", device, 0, files, refused)
        except FileNotFoundError:
            return [], []
        return sorted(files, key=lambda f: f.name), refused

    @contextmanager
    def open(self, name: str) -> Iterator[BinaryIO]:
        """The regular file ``name`` (relative to the tree) opened for reading, checked on
        its descriptor; UnsafeWorkFile if it is not (any more) one to read."""
        parts = name.split("/")
        with self._root() as (fd, device):
            opened: list[int] = []
            try:
                parent = fd
                for index, part in enumerate(parts[:-1]):
                    parent = _open(
                        parent, part, _DIR_FLAGS, self.label("/".join(parts[: index + 1]))
                    )
                    opened.append(parent)
                file_fd = _open(parent, parts[-1], _FILE_FLAGS, self.label(name))
            finally:
                for each in opened:
                    os.close(each)
        try:
            problem = _problem(os.fstat(file_fd), device)
            if problem:
                raise UnsafeWorkFile(self.label(name), problem)
            file = os.fdopen(file_fd, "rb")
        except BaseException:
            os.close(file_fd)
            raise
        with file:
            yield file

    def write_new(self, name: str, data: bytes) -> None:
        """Write ``data`` as the new file ``name`` directly in the tree (0600), replacing
        whatever the science step left under that name: never through a link it planted."""
        with self._root() as (fd, _):
            try:
                os.unlink(name, dir_fd=fd)  # unlink removes a link, never what it names
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise UnsafeWorkFile(
                    self.label(name), f"cannot be replaced: {exc.strerror}"
                ) from None
            new = _open(fd, name, _NEW_FILE_FLAGS, self.label(name), 0o600)
            with os.fdopen(new, "wb") as out:
                out.write(data)

    @contextmanager
    def _root(self) -> Iterator[tuple[int, int]]:
        """The tree's directory descriptor and the work dir's device."""
        work = os.open(self.work_dir, _DIR_FLAGS)
        try:
            device = os.fstat(work).st_dev
            root = _open(work, self.name, _DIR_FLAGS, self.label())
        finally:
            os.close(work)
        try:
            if os.fstat(root).st_dev != device:
                raise UnsafeWorkFile(self.label(), "lies on another file system than the work dir")
            yield root, device
        finally:
            os.close(root)

    def _scan(
        self,
        fd: int,
        relative: str,
        device: int,
        depth: int,
        files: list[WorkFile],
        refused: list[UnsafeWorkFile],
    ) -> None:
        subdirs: list[str] = []
        with os.scandir(fd) as entries:
            for entry in entries:
                name = relative + entry.name
                try:
                    info = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # gone since it was listed
                if stat.S_ISDIR(info.st_mode) and info.st_dev == device:
                    subdirs.append(entry.name)
                elif problem := _problem(info, device):
                    refused.append(UnsafeWorkFile(self.label(name), problem))
                else:
                    files.append(WorkFile(name, info.st_size))
        for subdir in subdirs:
            name = relative + subdir
            if depth >= MAX_DEPTH:
                refused.append(UnsafeWorkFile(self.label(name), f"is nested over {MAX_DEPTH} deep"))
                continue
            try:
                child = _open(fd, subdir, _DIR_FLAGS, self.label(name))
            except UnsafeWorkFile as exc:
                refused.append(exc)
                continue
            except FileNotFoundError:
                continue
            try:
                self._scan(child, f"{name}/", device, depth + 1, files, refused)
            finally:
                os.close(child)


def _problem(info: os.stat_result, device: int) -> str | None:
    """Why the entry ``info`` describes is not a file to read, or None."""
    kind = stat.S_IFMT(info.st_mode)
    if kind != stat.S_IFREG:
        what = _KINDS.get(kind, "not a regular file")
        return f"is {what}" + (" on another file system" if kind == stat.S_IFDIR else "")
    if info.st_nlink > 1:
        return (
            f"has {info.st_nlink} hard links (another name may be a file outside the work "
            "dir): write a copy, not a link"
        )
    if info.st_dev != device:
        return "lies on another file system than the work dir"
    return None


def _open(parent: int, name: str, flags: int, label: str, mode: int = 0o777) -> int:
    """``os.open(name, flags, dir_fd=parent)``; a link or a wrong kind of entry found
    there raises UnsafeWorkFile naming ``label``, a missing one FileNotFoundError."""
    try:
        return os.open(name, flags, mode, dir_fd=parent)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EEXIST):
            try:
                kind = stat.S_IFMT(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode)
            except OSError:
                kind = None
            what = _KINDS.get(kind, "not a directory") if kind is not None else "gone"
            raise UnsafeWorkFile(label, f"is {what}") from None
        raise UnsafeWorkFile(label, f"cannot be opened: {exc.strerror}") from None
