"""Storage keys from untrusted sources (input product names, science output names): the one
place that says which keys joblife accepts.

A key is a ``/``-separated path relative to a storage root. One that could name something
else than it seems is refused, never repaired: a ``..`` or ``.`` segment, an empty segment
(``a//b``, a leading or trailing ``/``), a NUL or another control character, or a name that
was not valid UTF-8 (Python's surrogate escapes, ``\\udc80``-``\\udcff``). Repairing would
make two names one (``in/x/../good.h5`` and ``in/good.h5``), and one product could then
overwrite another's outputs or make skip-if-outputs-exist skip it.

- :func:`check_key` validates a key and returns it unchanged, or raises :class:`UnsafeKey`;
- :func:`check_location` does the same for a location (a key, or a URL whose path is one);
- :func:`key_under` checks that a key lies under a prefix (an upload under the job's own
  output path).
"""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit

#: Control characters (C0, DEL, C1) and the surrogates that stand for undecodable bytes.
_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
#: The longest key accepted (S3's limit is 1,024 bytes of UTF-8).
MAX_KEY_BYTES = 1024
# The common case in one regular expression (creation checks every discovered product:
# 100,000 at a time): a key, or a URL with no query, fragment or escape, whose segments are
# plain names. Anything else, safe or not, takes the detailed checks below, which say why.
_PLAIN_SEGMENT = r"(?!\.\.?(?:/|\Z))[^/?#%\x00-\x1f\x7f-\x9f\ud800-\udfff]+"
# The authority is plain ASCII (no brackets, which urlsplit may refuse as a bad IPv6
# address, nor letters NFKC would turn into a separator), and exactly one "/" follows it:
# ``s3://bucket//abs.h5`` is the key ``/abs.h5``, refused below.
_PLAIN_LOCATION = re.compile(
    rf"(?:[a-z][a-z0-9+.\-]*://[A-Za-z0-9._~:@!$&'()*+,;=\-]*/)?"
    rf"{_PLAIN_SEGMENT}(?:/{_PLAIN_SEGMENT})*(?P<slash>/)?"
)
#: Characters of a location short enough for the fast path (4 bytes each at most).
_PLAIN_MAX_CHARS = MAX_KEY_BYTES // 4


class UnsafeKey(ValueError):
    """A key that joblife refuses; ``reason`` says why, ``key`` is the key as given."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"unsafe storage key {escape(key)}: {reason}")
        self.key = key
        self.reason = reason


def escape(name: str) -> str:
    """``name`` quoted for a message or a log line: control characters and undecodable
    bytes shown as escapes (``'in/\\x00x'``, ``'in/\\udcff'``), never raw."""
    return ascii(name) if _FORBIDDEN.search(name) else repr(name)


def check_key(key: str) -> str:
    """``key``, unchanged, if it is a safe relative key: not empty, at most
    ``MAX_KEY_BYTES`` (1,024) bytes of UTF-8, no control character nor undecodable byte, no
    leading ``/``, no empty, ``.`` or ``..`` segment (see the module docstring). Otherwise
    :class:`UnsafeKey` saying why: nothing is repaired, stripped or normalised."""
    if not isinstance(key, str):
        raise UnsafeKey(str(key), f"a key is text, not {type(key).__name__}")
    if not key:
        raise UnsafeKey(key, "empty key")
    match = _FORBIDDEN.search(key)
    if match is not None:
        char = match.group()
        what = (
            "a byte that is not valid UTF-8"
            if "\ud800" <= char <= "\udfff"
            else f"the control character {char!r}"
        )
        raise UnsafeKey(key, f"contains {what}")
    if len(key.encode()) > MAX_KEY_BYTES:
        raise UnsafeKey(key, f"longer than {MAX_KEY_BYTES} bytes")
    if key.startswith("/"):
        raise UnsafeKey(key, "starts with '/' (keys are relative)")
    for segment in key.split("/"):
        if segment == "":
            raise UnsafeKey(key, "has an empty path segment ('//' or a trailing '/')")
        if segment in (".", ".."):
            raise UnsafeKey(key, f"has a {segment!r} path segment")
    return key


def check_location(location: str, *, prefix: bool = False) -> str:
    """``location`` if it is safe: a key (:func:`check_key`), or a URL (``s3://bucket/key``,
    ``file:///path``, ``https://host/path?query``) whose path, decoded and without the
    one ``/`` that ends the authority, is one (``s3://bucket//abs.h5`` is not). With
    ``prefix``, one trailing ``/`` is allowed (a folder). Returns it unchanged; raises
    :class:`UnsafeKey`."""
    if len(location) <= _PLAIN_MAX_CHARS:
        plain = _PLAIN_LOCATION.fullmatch(location)
        if plain is not None and (prefix or plain["slash"] is None):
            return location
    if "://" in location:
        if _FORBIDDEN.search(location):
            check_key(location)  # raises, naming the character
        try:
            parts = urlsplit(location)
        except ValueError as exc:  # an unbalanced "[" in the host, say
            raise UnsafeKey(location, f"not a URL: {exc}") from None
        # Only the one "/" that ends the authority goes: more would be repaired away by
        # a storage, and ``s3://bucket//abs.h5`` would name ``abs.h5``.
        path = parts.path[1:] if parts.path.startswith("/") else parts.path
        path = unquote(path, errors="surrogateescape")
        if parts.scheme == "s3" and not path:
            return location  # a bucket's root
    else:
        path = location
    if prefix and path.endswith("/"):
        path = path[:-1]
    if path or not prefix:
        try:
            check_key(path)
        except UnsafeKey as exc:
            raise UnsafeKey(location, exc.reason) from None
    return location


def key_under(key: str, prefix: str) -> bool:
    """Whether the safe key ``key`` lies under ``prefix`` (a folder: ``out/a`` is under
    ``out``, ``out2/a`` is not). An empty prefix is the root: every key is under it."""
    check_key(key)
    prefix = prefix.strip("/")
    return not prefix or key.startswith(prefix + "/")
