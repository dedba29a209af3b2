"""Random keys kept in files of the data directory when none is configured (the attempt
secret key, the dashboard's cookie key): made on first use, private (0600), and never
replaced once one process has made one."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def read_key_file(path: Path, *, create: bool = True) -> bytes | None:
    """The key in ``path`` (hex text); made when missing and ``create``, else None."""
    try:
        return bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        if not create:
            return None
    return _create_key_file(path)


def _create_key_file(path: Path) -> bytes:
    """A new random key in ``path`` (0600); the first writer wins a race."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(secrets.token_hex(32))
    try:
        os.link(tmp, path)  # never replaces a key another process made meanwhile
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return bytes.fromhex(path.read_text().strip())
