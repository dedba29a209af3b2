"""``python -m tests.nomad_double [--port N]``: the double in a process of its own (for the
benchmarks), without a task-running client; prints its address, serves until stdin
closes or SIGTERM."""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import threading
from pathlib import Path

from tests.nomad_double.server import NomadDouble


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="nomad-double-") as work:
        double = NomadDouble(Path(work), run_tasks=False)
        double.port = args.port
        double.start()
        print(double.address, flush=True)
        done = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: done.set())
        threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
        done.wait()
        double.close()


if __name__ == "__main__":
    main()
