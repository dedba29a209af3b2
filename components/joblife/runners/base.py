"""The runner contract: run one science step, return what happened.

A runner runs ``RunSpec.command`` (in ``RunSpec.image`` for a container runner) with the work
dir available, streams its output to ``RunSpec.log_path``, kills it when ``timeout`` passes,
and always leaves nothing running behind. A science step that ran and failed is a
:class:`RunResult` (its return code, the last log lines); a runner that could not run it at
all (engine down, image missing, executable missing) raises :class:`ExternalJobError`.

Science code is untrusted (docs/partner-guide.md, "Isolation of the science step"): its
environment is an allow-list (:func:`science_environment`), never the worker's; its output
is redacted (every configured secret, passwords in URLs) and bounded (:class:`Capture`)
before anything of it is kept in memory, written to the log file or stored.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import os
import stat
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from joblife.logs import redact

if TYPE_CHECKING:
    from joblife.config import Settings

#: Return code recorded when the runner killed the step at its timeout (as timeout(1) does).
TIMEOUT_RETURN_CODE = 124

#: The worker's environment variables a science step gets (``fnmatch`` patterns): where to
#: find programs and Python modules (a process step often runs the worker's own Python),
#: the locale, time zone and temporary directory; nothing else of the worker's (its
#: database URL, its storage keys...). A container gets only the locale and time zone of
#: these (:data:`CONTAINER_ENVIRONMENT`): the worker's paths mean nothing there.
PROCESS_ENVIRONMENT = (
    "PATH",
    "PYTHONPATH",
    "VIRTUAL_ENV",
    "HOME",
    "LANG",
    "LANGUAGE",
    "LC_*",
    "TZ",
    "TMPDIR",
)
CONTAINER_ENVIRONMENT = ("LANG", "LANGUAGE", "LC_*", "TZ")


def science_environment(
    spec: Mapping[str, str],
    allowed: Sequence[str] = PROCESS_ENVIRONMENT,
    worker: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment of a science step: the ``allowed`` variables of the ``worker``'s
    environment (default ``os.environ``), then the spec's own (the job's ``JOBLIFE_*``
    variables and the type's ``SCIENCE_ENVIRONMENT``) over them."""
    source = os.environ if worker is None else worker
    chosen = {
        name: value
        for name, value in source.items()
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in allowed)
    }
    return {**chosen, **spec}


@dataclass(frozen=True)
class ContainerIsolation:
    """The isolation the docker runner applies to a science container; each field relaxes
    one default (docs/partner-guide.md, "Isolation of the science step"). A type relaxes
    it with ``SCIENCE_ISOLATION = ContainerIsolation(read_only_root=False)``."""

    #: Run as ``SCIENCE_USER`` even if it is root (uid 0); otherwise a container that
    #: would run as root on a root worker runs as ``container_unprivileged_user``.
    allow_root: bool = False
    #: A read-only root file system (the work dir and a tmpfs at ``/tmp`` are writable).
    read_only_root: bool = True
    #: ``no-new-privileges``: no setuid binary or file capability raises privileges.
    no_new_privileges: bool = True
    #: Capabilities added back after dropping them all (e.g. ``{"CHOWN"}``).
    capabilities: frozenset[str] = frozenset()
    #: Most processes in the container; None: the ``container_pids_limit`` setting, -1: no
    #: limit.
    pids_limit: int | None = None


#: The defaults: every restriction on.
DEFAULT_ISOLATION = ContainerIsolation()


@dataclass(frozen=True)
class RunSpec:
    """What to run and with what."""

    command: Sequence[str]
    work_dir: Path
    log_path: Path
    timeout: float
    image: str | None = None
    environment: Mapping[str, str] = field(default_factory=dict)
    #: Where the work dir is mounted in a container (a process runs in it directly).
    mount_point: str = "/work"
    user: str | None = None
    network_mode: str = "none"
    cpus: float | None = None
    memory_mib: int | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    log_tail_lines: int = 40
    #: The container's isolation (ignored by the process runner).
    isolation: ContainerIsolation = DEFAULT_ISOLATION


@dataclass
class RunResult:
    """What happened: the return code (:data:`TIMEOUT_RETURN_CODE` if killed at the
    timeout), the wall time, the last log lines, and what exactly ran."""

    return_code: int
    duration: float
    log_tail: list[str]
    timed_out: bool = False
    #: The image actually run (``name:tag@id``), None for a process.
    image: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def summary(self) -> dict[str, Any]:
        """The JSON-able figures for the status details."""
        return {
            "return_code": self.return_code,
            "seconds": round(self.duration, 3),
            "timed_out": self.timed_out,
            **({"image": self.image} if self.image else {}),
            **self.details,
        }


class Runner(ABC):
    """Runs science steps; see the module docstring for the contract."""

    kind: str

    @abstractmethod
    def run(self, spec: RunSpec) -> RunResult:
        """Run ``spec`` to its end or its timeout."""


@dataclass(frozen=True)
class Capture:
    """How a runner captures a step's output: what is redacted and how much is kept."""

    #: Values replaced by ``***`` wherever they appear (the configured secrets).
    secrets: tuple[str, ...] = ()
    #: A line longer than this is cut in the kept tail (its whole text still goes to the
    #: log file, in pieces of about this size).
    line_max_bytes: int = 4096
    #: Most bytes of the kept tail (the last lines stored in the status details).
    tail_max_bytes: int = 64 * 1024
    #: Most bytes of the log file; output past it is read and dropped (counted).
    file_max_bytes: int = 64 * 1024 * 1024

    @classmethod
    def from_settings(cls, settings: Settings) -> Capture:
        """The capture the configuration asks for, redacting its every secret."""
        from joblife.logs import configured_secrets

        return cls(
            secrets=tuple(configured_secrets(settings)),
            line_max_bytes=settings.science_log_line_max_bytes,
            tail_max_bytes=settings.science_log_tail_max_bytes,
            file_max_bytes=settings.science_log_max_bytes,
        )


class LogTail:
    """Writes a stream of bytes to the log file, redacted, and keeps its last lines.

    Linear and bounded: output is redacted and written line by line as it comes; in memory
    are only the current line (at most twice :attr:`Capture.line_max_bytes`, and its
    kept start) and the kept tail (at most ``lines`` lines and ``tail_max_bytes``). A line
    longer than ``line_max_bytes`` is written to the file in pieces: its next
    ``2 x line_max_bytes`` are redacted together and only about the first half of them is
    written (cut after a space or tab where it has one), so a secret shorter than
    ``line_max_bytes`` running across the cut (a URL password, ``?X-Amz-Signature=...``, a
    configured secret) is redacted whole before it is cut; only the first piece is kept in
    the tail. The file holds at most ``file_max_bytes``: output past it is still read (the
    step must never block on a full pipe) and counted as dropped.

    The file is opened without following a link (``O_NOFOLLOW``, ``logs`` and the file
    itself): the science step writes in the work dir and may have planted
    ``logs/science.log -> /a/host/file`` for the worker to append to. Such a log, a FIFO or
    a file with other names (hard links) is not written at all: like a log that cannot be
    written, the step still runs (the log loses its text, not the step), and
    :meth:`problem` reports it as ``log_error``.

    Writing never raises: a log file that cannot be written (a full disk...) must not stop
    the runner draining the step's output. What cannot be written is dropped (the last
    lines are still kept in memory), the first error is remembered in :attr:`error` and
    the bytes lost are counted."""

    def __init__(self, path: Path, lines: int, capture: Capture | None = None) -> None:
        capture = capture or Capture()
        self.path = path
        self.capture = capture
        self._secrets = capture.secrets
        longest = max((len(s.encode()) for s in capture.secrets if len(s) >= 4), default=0)
        self._line_max = max(capture.line_max_bytes, 2 * longest, 64)
        # A line is cut once this many bytes of it are pending: redacted together, the
        # bytes past the cut complete a secret that runs across it.
        self._pending_max = 2 * self._line_max
        #: The first error writing the log file (None if it was written whole).
        self.error: OSError | None = None
        # Unbuffered: what reached the file is known exactly when a write fails.
        self._file: BinaryIO | None = None
        try:
            self._file = os.fdopen(_open_log(path), "ab", buffering=0)
        except UnsafeLog as exc:
            self.error = exc
        self._lines: deque[str] = deque()
        self._lines_max = lines
        self._tail_bytes = 0
        self._pending = bytearray()  # the current line, not yet written
        self._head: str | None = None  # the kept start of an over-long current line
        self._cut_bytes = 0  # bytes of the current line past its kept start
        self._written = 0
        #: Bytes of output received, and those (redacted) that could not be written.
        self.received = 0
        self.dropped = 0
        #: Bytes dropped because the file reached ``file_max_bytes``.
        self.capped = 0

    @property
    def buffered(self) -> int:
        """Bytes of output held in memory (the current line and the kept tail)."""
        return (
            len(self._pending)
            + self._tail_bytes
            + len((self._head or "").encode(errors="surrogateescape"))
        )

    def write(self, chunk: bytes) -> None:
        """Take the next ``chunk`` of output."""
        self.received += len(chunk)
        end = chunk.rfind(b"\n") + 1
        if end:
            # Every complete line at once: redaction never crosses a line end, so
            # redacting them together is redacting each.
            self._complete(bytes(self._pending) + chunk[:end])
            self._pending.clear()
        rest = memoryview(chunk)[end:]
        while rest:
            room = self._pending_max - len(self._pending)
            if room > 0:  # redaction may have made the pending text longer than its max
                self._pending += rest[:room]
                rest = rest[room:]
            if len(self._pending) >= self._pending_max:
                self._cut()

    def _complete(self, block: bytes) -> None:
        """Write and keep the complete lines ``block`` (it ends with a newline)."""
        text = self._redact(block)
        self._write(memoryview(text.encode(errors="surrogateescape")))
        lines = text[:-1].split("\n")
        if self._head is not None:  # the first line ends an over-long one
            self._keep_cut(
                self._head, self._cut_bytes + len(lines[0].encode(errors="surrogateescape"))
            )
            self._head, self._cut_bytes, lines = None, 0, lines[1:]
        for line in lines[-self._lines_max :]:
            self._keep(line)

    def _cut(self) -> None:
        """Write the first piece of the pending over-long line; keep its start.

        The whole pending text (``2 x line_max``) is redacted before it is cut after
        ``line_max`` at most: a secret shorter than ``line_max`` that starts before the cut
        ends before the text does, so it is redacted whole, never in two pieces that each
        look harmless. What follows the cut stays pending, redacted: redacting it again
        with what comes next changes nothing of it but completes a secret cut at its end
        (``password=***`` + ``rest`` is redacted whole again; ``redact`` is built for it)."""
        text = self._redact(bytes(self._pending)).encode(errors="surrogateescape")
        limit = self._line_max
        blank = max(text.rfind(b" ", limit // 2, limit), text.rfind(b"\t", limit // 2, limit))
        cut = blank + 1 if blank >= 0 else limit
        piece = text[:cut]
        self._pending[:] = text[cut:]
        self._write(memoryview(piece))
        if self._head is None:
            self._head = piece.decode(errors="surrogateescape")
        else:
            self._cut_bytes += cut

    def _redact(self, data: bytes) -> str:
        # surrogateescape: bytes that are not UTF-8 reach the file as they came.
        return redact(data.decode(errors="surrogateescape"), self._secrets)

    def _keep(self, line: str) -> None:
        """Keep ``line`` in the tail (cut to ``line_max_bytes``), dropping the oldest lines
        past ``lines`` or ``tail_max_bytes``."""
        data = line.encode(errors="surrogateescape")  # the bytes as they came (redacted)
        if len(data) > self._line_max:
            self._keep_cut(line, 0)
            return
        text = data.decode(errors="replace")  # bytes that are not UTF-8: U+FFFD
        self._append(text, len(text.encode()))

    def _keep_cut(self, head: str, more: int) -> None:
        """Keep the start of an over-long line and how many more bytes it had."""
        data = head.encode(errors="surrogateescape")
        more += max(0, len(data) - self._line_max)
        text = data[: self._line_max].decode(errors="replace")
        text += f" [... {more} more bytes of this line in the log file]"
        self._append(text, len(text.encode()))

    def _append(self, line: str, size: int) -> None:
        self._lines.append(line)
        self._tail_bytes += size
        while self._lines and (
            len(self._lines) > self._lines_max or self._tail_bytes > self.capture.tail_max_bytes
        ):
            self._tail_bytes -= len(self._lines.popleft().encode())

    def _write(self, data: memoryview) -> None:
        """Write ``data`` whole (up to ``file_max_bytes``), or count what could not be
        written; after the first error the file is closed and the rest of the output
        dropped."""
        room = max(0, self.capture.file_max_bytes - self._written)
        if len(data) > room:
            self.capped += len(data) - room
            self.dropped += len(data) - room
            data = data[:room]
        file = self._file
        if file is None:
            self.dropped += len(data)
            return
        try:
            while data:
                written = file.write(data)
                if not written:
                    raise OSError(errno.EIO, "the log file takes no more bytes")
                self._written += written
                data = data[written:]
        except OSError as exc:
            self.error, self._file = exc, None
            self.dropped += len(data)
            with contextlib.suppress(OSError):
                file.close()

    def close(self) -> list[str]:
        """Write the last, unfinished line; close the file; return the kept lines."""
        if self._pending or self._head is not None:
            piece = self._redact(bytes(self._pending))
            self._pending.clear()
            self._write(memoryview(piece.encode(errors="surrogateescape")))
            if self._head is None:
                self._keep(piece)
            else:
                self._keep_cut(
                    self._head, self._cut_bytes + len(piece.encode(errors="surrogateescape"))
                )
                self._head = None
        if self._file is not None:
            self._file.close()
            self._file = None
        return list(self._lines)

    def problem(self) -> dict[str, Any]:
        """For the run's details: ``log_error`` if the log could not be written whole,
        ``log_dropped_bytes`` and ``log_capped`` if it reached ``file_max_bytes``; else
        ``{}``."""
        details: dict[str, Any] = {}
        if self.capped:
            details["log_dropped_bytes"] = self.capped
            details["log_capped"] = (
                f"the science log is capped at {self.capture.file_max_bytes} bytes "
                f"(science_log_max_bytes): the last {self.capped} bytes of output were dropped"
            )
        if self.error is not None:
            details["log_error"] = (
                f"could not write {self.path} ({self.dropped} of {self.received} bytes of "
                f"output dropped): {self.error.strerror or self.error}"
            )
        return details


class UnsafeLog(OSError):
    """The log path holds what the worker must not write through: a link, a FIFO, a file
    with other names."""


_LOG_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO planted there must not wait for a reader (ENXIO without one).
_LOG_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
#: What the errors of opening a log path say the science step planted there.
_PLANTED = {
    errno.ELOOP: "a symbolic link (not followed)",
    errno.ENOTDIR: "not a directory",  # ``logs`` replaced by a file
    errno.ENXIO: "a FIFO or a socket",
    errno.EISDIR: "a directory",
}


def _open_log(path: Path) -> int:
    """A descriptor appending to ``path`` (created 0600), opened without following a link
    in its last two parts (``logs/science.log``: the science step may replace either);
    UnsafeLog if either is a link, or the file is a FIFO, a directory or has other names.
    Other errors (the worker's own: permissions, a full disk) raise as they are."""
    with contextlib.suppress(FileExistsError):  # a file or a dangling link: refused below
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        parent = os.open(path.parent, _LOG_DIR_FLAGS)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):  # a link to a folder: ENOTDIR too
            link = path.parent.is_symlink()
            kind = _PLANTED[errno.ELOOP if link else errno.ENOTDIR]
            raise UnsafeLog(exc.errno, f"{path.parent} is {kind}") from None
        raise
    try:
        fd = os.open(path.name, _LOG_FLAGS, 0o600, dir_fd=parent)
    except OSError as exc:
        if exc.errno in _PLANTED:
            raise UnsafeLog(exc.errno, f"it is {_PLANTED[exc.errno]}") from None
        raise
    finally:
        os.close(parent)
    try:
        info = os.fstat(fd)
        if stat.S_ISFIFO(info.st_mode):  # one with a reader opens
            raise UnsafeLog(errno.ENXIO, f"it is {_PLANTED[errno.ENXIO]}")
        if stat.S_ISREG(info.st_mode) and info.st_nlink > 1:
            raise UnsafeLog(
                errno.EMLINK, f"it has {info.st_nlink} hard links (another may be a host file)"
            )
        os.set_blocking(fd, True)  # a device (/dev/full in tests): block as a file would
    except BaseException:
        os.close(fd)
        raise
    return fd
