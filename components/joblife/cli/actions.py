"""``joblife jobs retry|cancel|check``: operator status changes through the one door.

Each command is all or nothing: if any job refuses the change, nothing changes and the
command exits with status 1 naming the job and the reason. The history records who acted:
the OS login name of the user running the command (see :func:`cli_operator`).
"""

from __future__ import annotations

import getpass
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Protocol

import typer

from joblife.cli.output import add_row, make_table, print_json, print_table
from joblife.cli.state import get_state

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from joblife.db.status import StatusChange


class Operation(Protocol):
    """An operator action on jobs, in the session's transaction: ``(session, job_ids,
    message, operator=name)`` → the status changes."""

    def __call__(
        self,
        session: Session,
        job_ids: Sequence[int],
        message: str | None,
        /,
        *,
        operator: str | None,
    ) -> list[StatusChange]: ...


IdsArgument = Annotated[list[int], typer.Argument(metavar="ID...", help="Job ids.")]
MessageOption = Annotated[
    str | None, typer.Option("--message", "-m", help="Why (kept in the status history).")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def cli_operator() -> str | None:
    """The name CLI actions are recorded under: the OS login name (``getpass.getuser()``:
    $LOGNAME, $USER, $LNAME or $USERNAME, else the password database), or None when there
    is none (the database then records the login of the connection)."""
    try:
        return getpass.getuser() or None
    except (OSError, KeyError, ImportError):  # no variable, no passwd entry, no pwd module
        return None


def apply(
    ctx: typer.Context,
    operation: Operation,
    verb: str,
    job_ids: Sequence[int],
    message: str | None,
    as_json: bool,
) -> None:
    """Run ``operation`` on the jobs in one transaction (committed on success), as the
    operator :func:`cli_operator` names, and print what changed, from each job's status
    before the command to its status after."""
    from joblife.cli.queries import current_statuses

    operator = cli_operator()
    with get_state(ctx).session() as session:
        before = current_statuses(session, job_ids)
        changes = operation(session, list(job_ids), message, operator=operator)
    rows = [
        {
            "job_id": change.job_id,
            "previous_status": before.get(change.job_id, change.previous_status).label,
            "status": change.status.label,
            "changed_at": change.changed_at,
        }
        for change in changes
    ]
    if as_json:
        print_json(rows)
        return
    table = make_table(["job", "from", "to", "at"], right=["job"])
    for row in rows:
        add_row(
            table, [row["job_id"], row["previous_status"], f"→ {row['status']}", row["changed_at"]]
        )
    print_table(table)
    typer.echo(f"{verb} {len(rows)} job{'s' if len(rows) != 1 else ''}")


def retry(
    ctx: typer.Context,
    job_ids: IdsArgument,
    message: MessageOption = None,
    as_json: JsonOption = False,
) -> None:
    """Send failed jobs back to ready.

    Jobs in internal_error (acknowledged on the way), external_error or error_checked go
    to ready; a job out of attempts gets one more.
    """
    from joblife.db.status import retry_jobs

    apply(ctx, retry_jobs, "retried", job_ids, message, as_json)


def cancel(
    ctx: typer.Context,
    job_ids: IdsArgument,
    message: MessageOption = None,
    as_json: JsonOption = False,
) -> None:
    """Cancel jobs (any status that allows it); a running execution is stopped first."""
    from joblife.executors import build_executor
    from joblife.lifecycle.cancellation import cancel_and_stop

    executor = build_executor(dispatching=False)  # it only stops executions

    def operation(
        session: Session, ids: Sequence[int], text: str | None, /, *, operator: str | None
    ) -> list[StatusChange]:
        return cancel_and_stop(session, executor, ids, text, operator=operator)

    apply(ctx, operation, "cancelled", job_ids, message, as_json)


def check(
    ctx: typer.Context,
    job_ids: IdsArgument,
    message: MessageOption = None,
    as_json: JsonOption = False,
) -> None:
    """Acknowledge errors: internal_error or external_error → error_checked."""
    from joblife.db.status import acknowledge_jobs

    apply(ctx, acknowledge_jobs, "checked", job_ids, message, as_json)
