"""Text from untrusted sources (science output, input product names and metadata) on its
way into the database.

PostgreSQL stores no NUL character (in ``text`` or in ``jsonb``) and only valid UTF-8;
Python strings may hold both: a NUL read from a science step's output, and the surrogate
escapes (``\\udc80``-``\\udcff``) that stand for the undecodable bytes of a file name
(``os.listdir``) or of a stream decoded with ``surrogateescape``. One such character makes
the whole statement fail, and with it everything else the statement carried.

Two policies, one per door:

- the status door (:mod:`joblife.db.status`) *repairs*: :func:`storable_text` and
  :func:`storable_details` replace those characters with U+FFFD and cap each text, so that
  a status change with text from science output is always recorded;
- creation *refuses*: :func:`why_unstorable` names what a discovered product's value
  holds that cannot be stored, and creation records the product as rejected instead of
  repairing its identity (two names would otherwise become one).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

#: What :func:`why_unstorable` says of a NUL, and of an undecodable byte.
NUL_TEXT = "a NUL character"
NOT_UTF8_TEXT = "a byte that is not valid UTF-8"
#: NUL and every surrogate code point (a lone surrogate cannot be encoded as UTF-8).
_UNSTORABLE = re.compile(r"[\x00\ud800-\udfff]")
REPLACEMENT = "\ufffd"
#: A status message: one line or a short paragraph (an error's class and message).
MESSAGE_MAX_BYTES = 4 * 1024
#: Each string in status details: as large as the worker's whole log tail (64 KiB), so
#: the tail is never cut twice; a history row stays small enough to list and show.
DETAILS_TEXT_MAX_BYTES = 64 * 1024
#: Each key of status details (names chosen by code, or output file names).
DETAILS_KEY_MAX_BYTES = 1024


def storable_text(text: str | bytes, max_bytes: int | None = None) -> str:
    """``text`` as PostgreSQL can store it: bytes decoded as UTF-8, NUL and surrogates
    (undecodable bytes) replaced with U+FFFD, and at most ``max_bytes`` bytes of UTF-8
    (cut at a character boundary, with a note of what was cut)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    text = _UNSTORABLE.sub(REPLACEMENT, text)
    return text if max_bytes is None else _capped(text, max_bytes)


def _capped(text: str, max_bytes: int) -> str:
    if len(text) * 4 <= max_bytes:  # UTF-8 takes at most 4 bytes a character
        return text
    data = text.encode()
    if len(data) <= max_bytes:
        return text
    note = f"… [cut: {len(data)} bytes, stored {max_bytes}]"
    kept = max(0, max_bytes - len(note.encode()))
    return data[:kept].decode("utf-8", "ignore") + note


def storable_details(
    value: Any,
    max_bytes: int = DETAILS_TEXT_MAX_BYTES,
    key_max_bytes: int = DETAILS_KEY_MAX_BYTES,
) -> Any:
    """A JSON-like ``value`` (dicts, lists, tuples, scalars) with every string in it, keys
    included and at any depth, made storable by :func:`storable_text`; bytes become text
    and non-finite floats (which JSON cannot hold) their name. Other values are kept."""
    if isinstance(value, str | bytes):
        return storable_text(value, max_bytes)
    if isinstance(value, Mapping):
        return {
            (
                storable_text(key, key_max_bytes) if isinstance(key, str | bytes) else key
            ): storable_details(item, max_bytes, key_max_bytes)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [storable_details(item, max_bytes, key_max_bytes) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def why_unstorable(value: Any) -> str | None:
    """Why ``value`` (a column's value: a string, or JSON made of dicts and lists) cannot
    be stored as it is, or None if it can: :data:`NUL_TEXT` or :data:`NOT_UTF8_TEXT`.
    Strings are checked at any depth, dict keys included."""
    if isinstance(value, str):
        match = _UNSTORABLE.search(value)
        if match is None:
            return None
        return NUL_TEXT if match.group() == "\x00" else NOT_UTF8_TEXT
    if isinstance(value, Mapping):
        for key, item in value.items():
            reason = why_unstorable(key) or why_unstorable(item)
            if reason:
                return reason
    elif isinstance(value, list | tuple):
        for item in value:
            reason = why_unstorable(item)
            if reason:
                return reason
    return None
