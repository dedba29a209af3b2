"""The least a ``joblife jobs show`` can cost with the CLI's stack, without any of joblife:
a typer app (a group, a command with an argument and an option, a root option), a
pydantic-settings model of one field loaded in the root callback, a psycopg2 connection
and one query, and a rich table printed. ``bench/startup.py`` runs it beside the joblife
commands (the ``stack floor`` row): what is above it is joblife's own.

    JOBLIFE_DATABASE_URL=postgresql://... python bench/stack_floor.py jobs show 1
"""

from __future__ import annotations

from typing import Annotated

import typer

app = typer.Typer(add_completion=False)
jobs = typer.Typer()
app.add_typer(jobs, name="jobs")
state: dict[str, str] = {}


@app.callback()
def root(debug: Annotated[bool, typer.Option("--debug")] = False) -> None:
    """Load the settings (one field), as joblife's root callback loads them."""
    from pydantic_settings import BaseSettings, SettingsConfigDict

    class Settings(BaseSettings):
        model_config = SettingsConfigDict(env_prefix="JOBLIFE_")
        database_url: str

    url = Settings().database_url  # type: ignore[call-arg] - read from the environment
    state["dsn"] = url.replace("postgresql+psycopg2://", "postgresql://", 1)


@jobs.command("show")
def show(job_id: int, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Read one row and print it as a table."""
    import psycopg2

    connection = psycopg2.connect(state["dsn"])
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT id, job_type FROM jobs WHERE id = %s", (job_id,))
            row = cursor.fetchone()
    finally:
        connection.close()
    if as_json:
        print(row)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("field", "value")
    for name, value in zip(("id", "job_type"), row or (), strict=False):
        table.add_row(name, str(value))
    Console().print(table)


if __name__ == "__main__":
    app()
