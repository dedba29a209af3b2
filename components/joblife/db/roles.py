"""The login roles of a least-privilege deployment (``joblife db roles``), made by an admin.

One login per part, each granted the group role migration 0007 gives its privileges to:

======== ============================ =============================================
part     group role                   used as
======== ============================ =============================================
owner    (owns the database)          ``joblife db upgrade``, ``joblife cleanup``
service  ``joblife_service``          ``database_url`` of ``joblife run`` / services
worker   ``joblife_worker``           ``worker_database_url`` (the workers' URL)
operator ``joblife_operator``         the operators' URL (``status``, ``jobs …``)
======== ============================ =============================================

Everything is idempotent: a role that exists keeps its password unless one is given; the
group roles and the database are created only if missing. The owner is an ordinary user
(no superuser, CREATEROLE or CREATEDB): the admin makes the group roles and the database
(owned by the owner); the owner then migrates with no other privilege.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

from psycopg2.extensions import encrypt_password
from sqlalchemy import Connection, Engine, text
from sqlalchemy.engine import make_url

#: The group roles of migration 0007, by part.
GROUP_ROLES = {
    "service": "joblife_service",
    "worker": "joblife_worker",
    "operator": "joblife_operator",
}
PARTS = ("owner", "service", "worker", "operator")
#: What each part's URL is for, as printed.
USES = {
    "owner": "owner: `joblife db upgrade`, `joblife cleanup`",
    "service": "database_url: `joblife run` and the services",
    "worker": "worker_database_url: the workers",
    "operator": "operators: `joblife status`, `joblife jobs ...`",
}
_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


@dataclass(frozen=True)
class Login:
    """One login role to make: its part, name, and the password to set (None: keep the
    existing one); ``generated`` if joblife made the password up."""

    part: str
    name: str
    password: str | None
    generated: bool = False

    @property
    def group(self) -> str | None:
        return GROUP_ROLES.get(self.part)


@dataclass
class RolesPlan:
    """What ``joblife db roles`` makes: the logins and the database (owned by the owner)."""

    database: str
    logins: list[Login]

    @property
    def owner(self) -> Login:
        return next(login for login in self.logins if login.part == "owner")


@dataclass
class RolesResult:
    """What :func:`apply_roles` did: per login name "created", "password set" or
    "unchanged"; whether it created the database; warnings for the admin."""

    logins: dict[str, str]
    database_created: bool
    warnings: list[str]


def check_name(name: str) -> str:
    """``name`` if it is a plain lower-case SQL identifier; ValueError otherwise."""
    if not _NAME.match(name):
        raise ValueError(
            f"role or database name {name!r}: use lower-case letters, digits and _ "
            "(at most 63, not starting with a digit)"
        )
    return name


def plan_roles(
    database: str,
    names: dict[str, str],
    passwords: dict[str, str | None],
    generate: bool = True,
) -> RolesPlan:
    """The plan for ``database``: one login per part (``names[part]``), with the password
    given, else (``generate``) a new random one that applies only if the role is created."""
    logins = []
    for part in PARTS:
        given = passwords.get(part)
        password = given if given is not None else (secrets.token_urlsafe(24) if generate else None)
        logins.append(Login(part, check_name(names[part]), password, given is None and generate))
    if len({login.name for login in logins}) != len(logins):
        raise ValueError("each part needs a login of its own (owner, service, worker, operator)")
    return RolesPlan(check_name(database), logins)


def _literal(value: str) -> str:
    """A SQL string literal (standard_conforming_strings, PostgreSQL's default)."""
    if "\x00" in value:
        raise ValueError("a password cannot contain a NUL character")
    return "'" + value.replace("'", "''") + "'"


def _ident(name: str) -> str:
    """A quoted identifier (names are checked by :func:`check_name`; quoting keeps words
    such as ``user`` usable)."""
    return f'"{check_name(name)}"'


def _login_statement(login: Login, stored_password: str | None = None) -> str:
    """A DO block that creates ``login`` (or sets the password it was given) and grants it
    its group role; a race with another admin counts as "exists". ``stored_password``:
    what to store instead of the clear password (a SCRAM verifier hashed on the client, so
    that the clear password reaches neither the server's logs nor ``pg_stat_activity``)."""
    secret = stored_password if stored_password is not None else login.password
    password = _literal(secret) if secret is not None else "NULL"
    change = "" if login.generated else f" PASSWORD {password}"
    name = _ident(login.name)
    grant = (
        f"""
    IF NOT EXISTS (SELECT 1 FROM pg_auth_members m WHERE m.roleid = '{login.group}'::regrole
                      AND m.member = {_literal(name)}::regrole) THEN
        GRANT {login.group} TO {name};
    END IF;"""
        if login.group
        else ""
    )
    body = f"""
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = {_literal(login.name)}) THEN
        CREATE ROLE {name} LOGIN PASSWORD {password};
    ELSE
        ALTER ROLE {name} LOGIN{change};
    END IF;{grant}
END;
"""
    return f"DO {_dollar_quoted(body)};"


def _dollar_quoted(body: str) -> str:
    """``body`` between dollar quotes whose tag it does not contain (a password may hold
    ``$$``, which would end a plain ``$$`` quote early)."""
    tag = "$jl$"
    while tag in body:
        tag = f"$jl_{secrets.token_hex(4)}$"
    return f"{tag}{body}{tag}"


def group_roles_statement() -> str:
    """Creates the three NOLOGIN group roles if missing (as migration 0007 would, so that
    the owner needs no CREATEROLE)."""
    names = ", ".join(_literal(role) for role in GROUP_ROLES.values())
    return f"""DO $$
DECLARE
    v_role text;
BEGIN
    FOREACH v_role IN ARRAY ARRAY[{names}] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = v_role) THEN
            EXECUTE format('CREATE ROLE %I NOLOGIN', v_role);
        END IF;
    END LOOP;
END;
$$;"""


def connect_grants_statement(plan: RolesPlan) -> str:
    """CONNECT on the database for the owner and the group roles (in case PUBLIC lost it)."""
    roles = ", ".join([_ident(plan.owner.name), *GROUP_ROLES.values()])
    return f"GRANT CONNECT ON DATABASE {_ident(plan.database)} TO {roles};"


def roles_script(plan: RolesPlan) -> str:
    """The whole plan as one idempotent psql script (``psql -v ON_ERROR_STOP=1 -f``)."""
    create_database = (
        f"SELECT 'CREATE DATABASE {_ident(plan.database)} OWNER {_ident(plan.owner.name)}' "
        f"WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = "
        f"{_literal(plan.database)})\\gexec"
    )
    parts = [
        "-- joblife least-privilege roles: run once per server by an admin (psql).",
        group_roles_statement(),
        *(_login_statement(login) for login in plan.logins),
        create_database,
        connect_grants_statement(plan),
    ]
    return "\n\n".join(part for part in parts if part) + "\n"


def _existing(connection: Connection, names: Iterable[str]) -> dict[str, bool]:
    """Existing roles among ``names`` -> whether each is a superuser."""
    rows = connection.execute(
        text("SELECT rolname, rolsuper FROM pg_roles WHERE rolname = ANY(:names)"),
        {"names": list(names)},
    ).all()
    return {row.rolname: row.rolsuper for row in rows}


def apply_roles(engine: Engine, plan: RolesPlan) -> RolesResult:
    """Carry out ``plan`` on the server of ``engine`` (an admin's connection: superuser,
    or CREATEROLE and CREATEDB with the right to grant the group roles)."""
    names = [login.name for login in plan.logins]
    with engine.connect() as connection:
        before = _existing(connection, names)
    with engine.begin() as connection:
        # Through the DB-API cursor: '%' in format() must not be taken for a parameter.
        cursor = connection.connection.cursor()
        try:
            cursor.execute(group_roles_statement())
            for login in plan.logins:
                stored = (
                    encrypt_password(login.password, login.name, cursor, "scram-sha-256")
                    if login.password is not None
                    else None
                )
                cursor.execute(_login_statement(login, stored))
        finally:
            cursor.close()
    database_created = _create_database(engine, plan)
    warnings = _warnings(engine, plan, before)
    outcome = {
        login.name: "created"
        if login.name not in before
        else ("unchanged" if login.generated or login.password is None else "password set")
        for login in plan.logins
    }
    return RolesResult(outcome, database_created, warnings)


def _create_database(engine: Engine, plan: RolesPlan) -> bool:
    """Create the database owned by the owner if missing (outside a transaction)."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        exists = connection.execute(
            text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": plan.database}
        ).first()
        if not exists:
            connection.execute(
                text(f"CREATE DATABASE {_ident(plan.database)} OWNER {_ident(plan.owner.name)}")
            )
        connection.execute(text(connect_grants_statement(plan)))
    return not exists


def _warnings(engine: Engine, plan: RolesPlan, before: dict[str, bool]) -> list[str]:
    """What the admin must know: a login that is a superuser, a database owned by someone
    else."""
    warnings = []
    with engine.connect() as connection:
        superusers = [name for name, is_super in _existing(connection, before).items() if is_super]
        db_owner = connection.execute(
            text("SELECT pg_get_userbyid(d.datdba) FROM pg_database d WHERE d.datname = :name"),
            {"name": plan.database},
        ).scalar_one()
    for name in superusers:
        warnings.append(
            f"{name} is a superuser: a least-privilege deployment needs ordinary logins "
            f"(ALTER ROLE {name} NOSUPERUSER)"
        )
    if db_owner != plan.owner.name:
        warnings.append(
            f"database {plan.database} is owned by {db_owner}, not {plan.owner.name}: the "
            f"owner must own it (or its schema) to migrate; if it holds no joblife schema "
            f"yet: ALTER DATABASE {plan.database} OWNER TO {plan.owner.name}"
        )
    return warnings


def login_url(admin_url: str, database: str, user: str, password: str | None) -> str:
    """The URL of ``user`` on ``database`` at the admin URL's host and port; without a
    password if ``password`` is None (the role kept the one it had)."""
    url = make_url(admin_url).set(drivername="postgresql", username=user, database=database)
    # URL.set(password=None) means "unchanged"; URL is a named tuple.
    url = url._replace(password=password)
    return url.render_as_string(hide_password=False)
