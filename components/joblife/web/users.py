"""The dashboard's users: a file of ``name:role:hash`` lines (argon2id hashes), like an
htpasswd file, managed with ``joblife web-users`` and read again when it changes.

Two roles: a *viewer* reads every page; an *operator* also acts on jobs (retry, cancel,
acknowledge, republish). A user listed with an empty hash cannot log in with a password;
it can only be named by a trusted reverse proxy (``web_trusted_user_header``).
"""

from __future__ import annotations

import enum
import os
import re
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from joblife.config import Settings
from joblife.errors import ConfigurationError

#: The file's name under the data directory when ``web_users_file`` is unset.
USERS_FILE = "web-users"
#: User names: what a login form, a proxy header and the history can all carry safely.
USER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
#: Compared against when the user does not exist, so that a wrong name costs as much
#: time as a wrong password (no user enumeration by timing).
_HASHER = PasswordHasher()
_DUMMY_HASH = _HASHER.hash(secrets.token_hex(16))


class Role(enum.IntEnum):
    """What a user may do; a higher role may do everything a lower one may."""

    VIEWER = 1
    OPERATOR = 2

    @property
    def label(self) -> str:
        """The role's name in the users file and on the page."""
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> Role:
        """The role named ``text`` (viewer, operator); ValueError otherwise."""
        try:
            return cls[text.strip().upper()]
        except KeyError:
            raise ValueError(f"unknown role {text!r}: viewer or operator") from None


@dataclass(frozen=True, slots=True)
class User:
    """A dashboard user: the name recorded in the history of what they do, and their role."""

    name: str
    role: Role

    def may(self, role: Role) -> bool:
        """Whether this user has ``role`` or a higher one."""
        return self.role >= role


def users_file(settings: Settings) -> Path:
    """The users file in use."""
    return settings.web_users_file or settings.data_dir / USERS_FILE


def check_user_name(name: str) -> str:
    """``name`` if it is a valid user name; ValueError otherwise."""
    if not USER_NAME.fullmatch(name):
        raise ValueError(
            f"invalid user name {name!r}: 1-64 letters, digits, '.', '_', '@' or '-', "
            "starting with a letter or digit"
        )
    return name


class UserStore:
    """The users of one file. Reads are cached until the file's modification time changes,
    so users added with ``joblife web-users`` take effect without a restart."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._entries: dict[str, tuple[Role, str]] = {}

    # -- reading ---------------------------------------------------------------------------
    def _load(self) -> dict[str, tuple[Role, str]]:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return {}
        stamp = (stat.st_mtime_ns, stat.st_size)
        with self._lock:
            if stamp != self._stamp:
                self._entries = _parse(self.path)
                self._stamp = stamp
            return self._entries

    def users(self) -> list[User]:
        """Every user, by name."""
        return [User(name, role) for name, (role, _) in sorted(self._load().items())]

    def get(self, name: str) -> User | None:
        """The user called ``name``, if listed."""
        entry = self._load().get(name)
        return User(name, entry[0]) if entry else None

    def authenticate(self, name: str, password: str) -> User | None:
        """The user if ``password`` is theirs; None otherwise (unknown name, wrong password,
        or a user without a password). Always costs one hash verification."""
        entry = self._load().get(name)
        stored = entry[1] if entry and entry[1] else _DUMMY_HASH
        try:
            _HASHER.verify(stored, password)
        except (VerificationError, InvalidHashError):
            return None
        if entry is None or not entry[1]:
            return None
        return User(name, entry[0])

    # -- writing (joblife web-users) ----------------------------------------------------------
    def set(self, name: str, role: Role, password: str | None) -> None:
        """Add or replace ``name`` with ``role`` and ``password`` (None: no password, for a
        user only a trusted reverse proxy names)."""
        check_user_name(name)
        entries = dict(_parse(self.path)) if self.path.exists() else {}
        entries[name] = (role, _HASHER.hash(password) if password else "")
        self._write(entries)

    def remove(self, name: str) -> bool:
        """Remove ``name``; False if it was not listed."""
        entries = dict(_parse(self.path)) if self.path.exists() else {}
        if entries.pop(name, None) is None:
            return False
        self._write(entries)
        return True

    def _write(self, entries: dict[str, tuple[Role, str]]) -> None:
        """Replace the file atomically, private to its owner (it holds password hashes)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f"{self.path.name}.tmp{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write("# joblife dashboard users: name:role:argon2 hash (joblife web-users)\n")
            for name, (role, hashed) in sorted(entries.items()):
                file.write(f"{name}:{role.label}:{hashed}\n")
        os.replace(tmp, self.path)


def _parse(path: Path) -> dict[str, tuple[Role, str]]:
    """The entries of a users file; ConfigurationError naming the line of a bad one."""
    entries: dict[str, tuple[Role, str]] = {}
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            name, role, hashed = line.split(":", 2)
            entries[check_user_name(name)] = (Role.parse(role), hashed)
        except ValueError as error:
            raise ConfigurationError(f"{path}, line {number}: {error}") from None
    return entries


def create_first_user(store: UserStore) -> str | None:
    """With no user at all, add the operator ``admin`` with a random password and return
    the password (to be shown once); None when the file lists users already."""
    if store.users():
        return None
    password = secrets.token_urlsafe(12)
    store.set("admin", Role.OPERATOR, password)
    return password
