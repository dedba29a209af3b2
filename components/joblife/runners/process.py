"""``ProcessRunner``: science code that is a local executable (the demo, machines without a
container engine). Runs in the work dir, in its own process group, killed whole at the
timeout."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time

from joblife.errors import ExternalJobError
from joblife.runners.base import TIMEOUT_RETURN_CODE, LogTail, Runner, RunResult, RunSpec


class ProcessRunner(Runner):
    """Runs the command as a child process; its environment is the worker's plus
    ``spec.environment``. The container-only fields (image, user, limits) are ignored."""

    kind = "process"

    def run(self, spec: RunSpec) -> RunResult:
        tail = LogTail(spec.log_path, spec.log_tail_lines)
        start = time.monotonic()
        try:
            process = subprocess.Popen(
                list(spec.command),
                cwd=spec.work_dir,
                env={**os.environ, **spec.environment},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: the timeout kills it all
            )
        except OSError as exc:
            tail.close()
            raise ExternalJobError(
                f"cannot start the science command {spec.command[0]!r} on this worker: {exc}"
            ) from exc
        reader = threading.Thread(target=_pump, args=(process, tail), daemon=True)
        reader.start()
        timed_out = False
        try:
            process.wait(timeout=spec.timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            # Whatever happened (timeout, an exception, a signal), nothing is left running.
            _kill_group(process)
            process.wait()
            reader.join(timeout=5)
        duration = time.monotonic() - start
        lines = tail.close()
        code = TIMEOUT_RETURN_CODE if timed_out else _return_code(process.returncode)
        return RunResult(code, duration, lines, timed_out=timed_out, details=tail.problem())


def _pump(process: subprocess.Popen[bytes], tail: LogTail) -> None:
    """Copy the step's output to the log until it closes its end of the pipe. The pipe is
    always drained to the end (a log that cannot be written loses the output, not the
    step: :class:`LogTail` never raises), or the step would block writing to it."""
    assert process.stdout is not None
    with process.stdout:
        for chunk in iter(lambda: process.stdout.read1(65536), b""):  # type: ignore[union-attr]
            tail.write(chunk)


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


def _return_code(code: int) -> int:
    """A process killed by signal N reports 128+N, as a shell (and docker) would."""
    return 128 - code if code < 0 else code
