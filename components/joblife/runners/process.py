"""``ProcessRunner``: science code that is a local executable (the demo, machines without a
container engine). Runs in the work dir under a supervisor (:mod:`joblife.runners.reaper`)
that leaves nothing running when the step ends or is stopped at its timeout, with an
allow-listed environment (:func:`~joblife.runners.base.science_environment`)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from joblife.errors import ExternalJobError
from joblife.runners.base import (
    PROCESS_ENVIRONMENT,
    TIMEOUT_RETURN_CODE,
    Capture,
    LogTail,
    Runner,
    RunResult,
    RunSpec,
    science_environment,
)

#: The supervisor, run by file name (it needs only the standard library).
REAPER = Path(__file__).with_name("reaper.py")
#: How long the supervisor has to clean up after SIGTERM before the group is killed.
STOP_GRACE_SECONDS = 5.0


class ProcessRunner(Runner):
    """Runs the command as a child process of a supervisor; its environment is the
    allow-listed part of the worker's (:data:`~joblife.runners.base.PROCESS_ENVIRONMENT`)
    and ``spec.environment``. The container-only fields (image, user, limits, isolation)
    are ignored: a process is no sandbox, only its environment and its leftovers are
    controlled."""

    kind = "process"

    def __init__(self, capture: Capture | None = None) -> None:
        self.capture = capture or Capture()

    def run(self, spec: RunSpec) -> RunResult:
        tail = LogTail(spec.log_path, spec.log_tail_lines, self.capture)
        start = time.monotonic()
        process = self._start(spec, tail)
        reader = threading.Thread(target=_pump, args=(process, tail), daemon=True)
        reader.start()
        timed_out = False
        try:
            process.wait(timeout=spec.timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            # Whatever happened (timeout, an exception, a signal), nothing is left running.
            _stop(process)
            reader.join(timeout=5)
        duration = time.monotonic() - start
        lines = tail.close()
        code = TIMEOUT_RETURN_CODE if timed_out else _return_code(process.returncode)
        return RunResult(code, duration, lines, timed_out=timed_out, details=tail.problem())

    def _start(self, spec: RunSpec, tail: LogTail) -> subprocess.Popen[bytes]:
        """The supervisor running the command, once it said it started it; an
        ExternalJobError if the command cannot start."""
        status_read, status_write = os.pipe()
        try:
            process = subprocess.Popen(
                [sys.executable, "-I", str(REAPER), str(status_write), "--", *spec.command],
                cwd=spec.work_dir,
                env=science_environment(spec.environment, PROCESS_ENVIRONMENT),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                pass_fds=(status_write,),
                start_new_session=True,  # its own group: killed whole if it does not stop
            )
        except OSError as exc:
            os.close(status_read)
            tail.close()
            raise ExternalJobError(
                f"cannot start the science command {spec.command[0]!r} on this worker: {exc}"
            ) from exc
        finally:
            os.close(status_write)
        with os.fdopen(status_read, "rb") as status:
            answer = status.read().decode(errors="replace")
        if answer != "started":
            _stop(process)
            assert process.stdout is not None
            output = process.stdout.read(4096).decode(errors="replace").strip()
            process.stdout.close()
            tail.close()
            raise ExternalJobError(
                f"cannot start the science command {spec.command[0]!r} on this worker: "
                f"{answer or output or 'its supervisor ended at once'}"
            )
        return process


def _pump(process: subprocess.Popen[bytes], tail: LogTail) -> None:
    """Copy the step's output to the log until it closes its end of the pipe. The pipe is
    always drained to the end (a log that cannot be written loses the output, not the
    step: :class:`LogTail` never raises), or the step would block writing to it."""
    assert process.stdout is not None
    with process.stdout:
        for chunk in iter(lambda: process.stdout.read1(65536), b""):  # type: ignore[union-attr]
            tail.write(chunk)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """End the supervisor: SIGTERM (it kills and reaps every descendant), then SIGKILL to
    its whole process group if it has not ended within :data:`STOP_GRACE_SECONDS`."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=STOP_GRACE_SECONDS)
    # Also after a normal end: whatever is left in its group (should the supervisor have
    # been killed by the step itself).
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _return_code(code: int) -> int:
    """A process killed by signal N reports 128+N, as a shell (and docker) would."""
    return 128 - code if code < 0 else code
