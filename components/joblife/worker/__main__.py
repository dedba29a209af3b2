"""``python -m joblife.worker JOB_ID [--attempt N]``: the worker without the CLI.

The same as ``joblife worker run``, minus the import of the whole command line (typer,
rich and every command's modules): what the local executor's ``exec`` start method runs,
where each attempt pays the interpreter's start-up.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Run one attempt; return the worker's exit code (0: do not relaunch, 2: relaunch)."""
    parser = argparse.ArgumentParser(
        prog="python -m joblife.worker", description="Run one attempt of a job."
    )
    parser.add_argument("job_id", type=int, help="the job to run")
    parser.add_argument(
        "--attempt", type=int, default=None, help="the attempt this execution is for"
    )
    args = parser.parse_args(argv)
    from joblife.config import apply_file_umask, get_settings
    from joblife.worker.runner import run_worker_process

    apply_file_umask(get_settings())  # as every joblife entry point: private files

    return run_worker_process(args.job_id, args.attempt)


if __name__ == "__main__":
    sys.exit(main())
