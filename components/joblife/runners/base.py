"""The runner contract: run one science step, return what happened.

A runner runs ``RunSpec.command`` (in ``RunSpec.image`` for a container runner) with the work
dir available, streams its output to ``RunSpec.log_path``, kills it when ``timeout`` passes,
and always leaves nothing running behind. A science step that ran and failed is a
:class:`RunResult` (its return code, the last log lines); a runner that could not run it at
all (engine down, image missing, executable missing) raises :class:`ExternalJobError`.
"""

from __future__ import annotations

import contextlib
import errno
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

#: Return code recorded when the runner killed the step at its timeout (as timeout(1) does).
TIMEOUT_RETURN_CODE = 124


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


class LogTail:
    """Writes a stream of bytes to the log file and keeps its last lines.

    Writing never raises: a log file that cannot be written (a full disk...) must not stop
    the runner draining the step's output, or the step would block on a full pipe. What
    cannot be written is dropped (the last lines are still kept in memory), the first
    error is remembered in :attr:`error` and the bytes lost are counted."""

    def __init__(self, path: Path, lines: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        # Unbuffered: what reached the file is known exactly when a write fails.
        self._file: BinaryIO | None = path.open("ab", buffering=0)
        self._lines: deque[str] = deque(maxlen=lines)
        self._partial = b""
        #: The first error writing the log file (None if it was written whole).
        self.error: OSError | None = None
        #: Bytes of output received, and those that could not be written.
        self.received = 0
        self.dropped = 0

    def write(self, chunk: bytes) -> None:
        self.received += len(chunk)
        self._write(memoryview(chunk))
        data = self._partial + chunk
        *complete, self._partial = data.split(b"\n")
        self._lines.extend(line.decode(errors="replace") for line in complete)

    def _write(self, data: memoryview) -> None:
        """Write ``data`` whole, or count what could not be written; after the first error
        the file is closed and the rest of the output dropped."""
        file = self._file
        if file is None:
            self.dropped += len(data)
            return
        try:
            while data:
                written = file.write(data)
                if not written:
                    raise OSError(errno.EIO, "the log file takes no more bytes")
                data = data[written:]
        except OSError as exc:
            self.error, self._file = exc, None
            self.dropped += len(data)
            with contextlib.suppress(OSError):
                file.close()

    def close(self) -> list[str]:
        """Close the file; return the last lines."""
        if self._partial:
            self._lines.append(self._partial.decode(errors="replace"))
            self._partial = b""
        if self._file is not None:
            self._file.close()
            self._file = None
        return list(self._lines)

    def problem(self) -> dict[str, Any]:
        """``{"log_error": ...}`` for the run's details if the log could not be written
        whole, else ``{}``."""
        if self.error is None:
            return {}
        return {
            "log_error": (
                f"could not write {self.path} ({self.dropped} of {self.received} bytes of "
                f"output dropped): {self.error.strerror or self.error}"
            )
        }
