"""Benchmark of the Nomad executor against the API double on loopback (issue 4's targets).

Run: ``python bench/nomad_executor.py`` (``--help`` for the options; not ``bench/nomad.py``:
a script of that name would shadow python-nomad's ``nomad`` package). Not a test: it prints figures,
the targets and whether each is met; ``docs/benchmarks.md`` records a run. No database is
needed. The double (``python -m tests.nomad_double``) runs in a process of its own, without
a task-running client, so the figures measure joblife's side (python-nomad, one kept-alive
session) plus the double's Python HTTP server.

1. **Dispatch rate**: ``--jobs`` (default 10,000) ``NomadExecutor.dispatch`` calls in a
   row (``nomad_dispatch_rate`` 0: no pacing), each ``POST /v1/job/joblife-test/dispatch
   ?idempotency_token=...``; then 500 more through a client without connection reuse (a
   new session per request) for comparison.
2. **Reconciliation**: ``--ended`` (default 100) of those children are given an ended
   allocation (exit codes 0/2/137), then one ``NomadExecutor.status`` over every child
   (one monitor pass over ``--jobs`` in-flight jobs), timed, with the requests it made;
   and one over a monitor batch of 500 (the default ``batch_size``).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import requests
from benchkit import print_table

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from joblife.config import Settings  # noqa: E402
from joblife.executors.base import ExecutionRequest, ExecutionState  # noqa: E402
from joblife.executors.nomad import NomadExecutor  # noqa: E402
from joblife.model import load_job_types  # noqa: E402
from joblife.nomad.client import nomad_client  # noqa: E402
from joblife.nomad.deploy import deploy_specs  # noqa: E402
from joblife.nomad.specs import render_specs  # noqa: E402

PARENT = "joblife-test"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--ended", type=int, default=100)
    args = parser.parse_args()
    double = subprocess.Popen(
        [sys.executable, "-m", "tests.nomad_double"],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        address = double.stdout.readline().strip()
        run(address, args.jobs, args.ended)
    finally:
        double.terminate()
        double.wait(timeout=10)


def run(address: str, jobs: int, ended: int) -> None:
    settings = Settings(nomad_addr=address, nomad_dispatch_rate=0)
    specs = [s for s in render_specs(settings, load_job_types(settings)) if s.kind == "processing"]
    deploy_specs(nomad_client(settings), specs)
    executor = NomadExecutor.from_settings(settings)

    latencies = []
    began = time.perf_counter()
    children = []
    for job_id in range(1, jobs + 1):
        start = time.perf_counter()
        children.append(
            executor.dispatch(
                ExecutionRequest(job_id, 1, "test", "extra_small", PARENT), f"{job_id}-1"
            )
        )
        latencies.append(time.perf_counter() - start)
    rate = jobs / (time.perf_counter() - began)
    p50 = statistics.median(latencies) * 1000
    p99 = statistics.quantiles(latencies, n=100)[98] * 1000

    fresh = []
    for job_id in range(jobs + 1, jobs + 501):
        client = nomad_client(settings)  # a new session: a new connection per request
        start = time.perf_counter()
        client.job.request(
            PARENT,
            "dispatch",
            method="post",
            params={"idempotency_token": f"{job_id}-1"},
            json={"Meta": {"job_id": str(job_id), "attempt": "1"}},
        )
        fresh.append(time.perf_counter() - start)
    fresh_rate = len(fresh) / sum(fresh)

    step = max(1, jobs // ended)
    finished = children[::step][:ended]
    for code, group in zip(
        (0, 2, 137), (finished[0::3], finished[1::3], finished[2::3]), strict=True
    ):
        requests.post(
            f"{address}/_double/finish", json={"JobIDs": group, "ExitCode": code}, timeout=60
        )

    before = requests.get(f"{address}/_double/requests", timeout=10).json()
    start = time.perf_counter()
    statuses = executor.status(children)
    full_pass = time.perf_counter() - start
    after = requests.get(f"{address}/_double/requests", timeout=10).json()
    made = {
        k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)
    }
    made.pop("GET /_double/requests", None)
    exited = sum(1 for s in statuses.values() if s.state is ExecutionState.EXITED)
    assert len(statuses) == len(children) and exited == len(finished), (len(statuses), exited)

    start = time.perf_counter()
    executor.status(children[:500])
    batch = time.perf_counter() - start

    print(f"double at {address}; {jobs} children of {PARENT}, {len(finished)} ended")
    print(f"requests of the full reconciliation pass: {made}")
    print_table(
        [
            (
                "dispatches/s, python-nomad, kept-alive session",
                f"{rate:.0f}/s (p50 {p50:.2f} ms, p99 {p99:.2f} ms)",
                ">= 300/s",
                "met" if rate >= 300 else "NOT met",
            ),
            ("dispatches/s, new connection per request", f"{fresh_rate:.0f}/s", "-", "-"),
            (
                f"reconciliation pass over {jobs} in-flight jobs",
                f"{full_pass:.2f} s, {sum(made.values())} requests",
                "< 2 s",
                "met" if full_pass < 2 else "NOT met",
            ),
            ("status of a monitor batch of 500", f"{batch * 1000:.0f} ms", "-", "-"),
        ]
    )


if __name__ == "__main__":
    main()
