"""``joblife web`` (the operator dashboard) and ``joblife web-users`` (its users)."""

from __future__ import annotations

import getpass
from typing import Annotated

import typer

from joblife.cli.output import add_row, make_table, print_table
from joblife.cli.state import get_state

web_users_app = typer.Typer(
    name="web-users",
    help="The dashboard's users (name, role, password hash) in web_users_file.",
    no_args_is_help=True,
)


def web(
    ctx: typer.Context,
    address: Annotated[
        str | None, typer.Option("--address", help="Listen address (default: web_address).")
    ] = None,
    port: Annotated[
        int | None, typer.Option("--port", help="Listen port (default: web_port).")
    ] = None,
) -> None:
    """Serve the operator dashboard (default http://127.0.0.1:8080). With no user yet, an
    operator 'admin' is created and its password printed once."""
    import uvicorn

    from joblife.config import get_settings
    from joblife.web.app import SERVER_OPTIONS, create_app
    from joblife.web.users import UserStore, create_first_user, users_file

    settings = get_settings()
    updates = {k: v for k, v in (("web_address", address), ("web_port", port)) if v is not None}
    if updates:
        settings = settings.model_copy(update=updates)
    store = UserStore(users_file(settings))
    password = create_first_user(store)
    if password is not None:
        typer.echo(
            f"created the dashboard user 'admin' (operator) with password: {password}\n"
            f"  (kept hashed in {store.path}; manage users with `joblife web-users`)"
        )
    state = get_state(ctx)
    app = create_app(settings, state.engine(), store)
    host = settings.web_address
    shown = f"[{host}]" if ":" in host else host
    typer.echo(
        f"joblife web: http://{shown}:{settings.web_port}/ on {state.display_url()} (Ctrl-C stops)"
    )
    uvicorn.run(app, host=host, port=settings.web_port, **SERVER_OPTIONS)


def _store():
    from joblife.config import get_settings
    from joblife.web.users import UserStore, users_file

    return UserStore(users_file(get_settings()))


@web_users_app.command("add")
def add_user(
    name: Annotated[str, typer.Argument(help="User name (letters, digits, . _ @ -).")],
    role: Annotated[str, typer.Option("--role", help="viewer or operator.")] = "viewer",
    no_password: Annotated[
        bool,
        typer.Option(
            "--no-password", help="No password: only a trusted proxy header can name the user."
        ),
    ] = False,
) -> None:
    """Add a user, or replace one (new role and password). The password is asked twice
    (or read from stdin when it is not a terminal)."""
    from joblife.web.users import Role, check_user_name

    try:
        check_user_name(name)
        parsed = Role.parse(role)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None
    password = None if no_password else _ask_password()
    store = _store()
    store.set(name, parsed, password)
    typer.echo(f"{name}: {parsed.label} in {store.path}")


def _ask_password() -> str:
    import sys

    if not sys.stdin.isatty():
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            raise typer.BadParameter("the passwords differ")
    if len(password) < 8:
        raise typer.BadParameter("the password must have at least 8 characters")
    return password


@web_users_app.command("remove")
def remove_user(name: Annotated[str, typer.Argument(help="User name.")]) -> None:
    """Remove a user (their sessions end at their next request)."""
    store = _store()
    if not store.remove(name):
        typer.echo(f"no user {name!r} in {store.path}", err=True)
        raise typer.Exit(1)
    typer.echo(f"removed {name}")


@web_users_app.command("list")
def list_users() -> None:
    """The users and their roles."""
    store = _store()
    table = make_table(["user", "role"])
    for user in store.users():
        add_row(table, [user.name, user.role.label])
    print_table(table)
    typer.echo(f"{len(store.users())} users in {store.path}")
