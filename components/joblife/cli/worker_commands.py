"""``joblife worker run JOB_ID``: what a worker (a Nomad task, a local process) runs."""

from __future__ import annotations

from typing import Annotated

import typer

worker_app = typer.Typer(name="worker", help="The worker side: run one attempt of a job.")


@worker_app.command("run")
def run(
    job_id: Annotated[int, typer.Argument(help="The job to run.")],
    attempt: Annotated[
        int | None,
        typer.Option(help="The attempt this execution is for (a mismatch exits 0, doing nothing)."),
    ] = None,
) -> None:
    """Run one attempt: started → pre_processing → processing → post_processing → processed.
    Exit 0: do not relaunch; exit 2: relaunch requested (an external error)."""
    from joblife.worker.runner import run_worker_process

    raise typer.Exit(run_worker_process(job_id, attempt))
