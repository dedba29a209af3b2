"""The supervisor of a science process: nothing it started outlives it.

``python -I reaper.py STATUS_FD -- COMMAND...`` (run by file, so that it needs neither
joblife nor the worker's environment: only the standard library). It makes itself a child
subreaper (Linux ``PR_SET_CHILD_SUBREAPER``), so that every descendant whose parent exits,
a ``setsid`` daemon included, is re-parented to it rather than to init; runs ``COMMAND``
(same environment, directory and output); writes ``started`` (or why it could not start
it) to ``STATUS_FD`` and closes it. When the command ends, or on SIGTERM (the runner's
timeout), it kills every remaining descendant with SIGKILL, reaps them, and exits with the
command's code (128+N if a signal N ended it; 143 after a SIGTERM).

This is cleanup, not a sandbox: a step that kills its supervisor first can leave a process
behind (the container runner's PID namespace is the boundary for untrusted code).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys

PR_SET_CHILD_SUBREAPER = 36
#: Exit code when the command could not be started (as a shell says "not found").
CANNOT_START = 127


class _Terminated(Exception):
    """SIGTERM arrived: end the step."""


def _terminate(signum: int, frame: object) -> None:
    raise _Terminated


def become_subreaper() -> None:
    """Adopt every orphaned descendant (Linux; elsewhere only the process group is killed)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def descendants(root: int) -> list[int]:
    """The pids of every descendant of ``root`` (from /proc, zombies included)."""
    children: dict[int, list[int]] = {}
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as stat:
                    fields = stat.read().rsplit(b")", 1)[1].split()
            except (OSError, IndexError):
                continue  # it ended meanwhile
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_descendants() -> None:
    """SIGKILL every descendant and reap them, until none is left (a dying process's
    children are re-parented to us, and show up in the next round)."""
    me = os.getpid()
    while pids := descendants(me):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        try:
            os.waitpid(-1, 0)  # one child gone (or a zombie reaped): look again
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        except ChildProcessError:
            return


def main(argv: list[str]) -> int:
    status_fd, separator, *command = argv
    if separator != "--" or not command:
        print("usage: reaper.py STATUS_FD -- COMMAND...", file=sys.stderr)
        return 2
    become_subreaper()
    signal.signal(signal.SIGTERM, _terminate)
    try:
        with os.fdopen(int(status_fd), "w") as status:
            try:
                child = subprocess.Popen(command)
            except (OSError, ValueError) as exc:
                status.write(str(exc))
                return CANNOT_START
            status.write("started")
        code = child.wait()
    except _Terminated:
        code = -signal.SIGTERM
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the cleanup runs to its end
        kill_descendants()
    return 128 - code if code < 0 else code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
