"""The one validator of storage keys from untrusted sources (joblife.storage.keys)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from joblife.storage.keys import UnsafeKey, check_key, check_location, escape, key_under

# A file name whose bytes are not UTF-8, as os.listdir returns it (surrogate-escaped).
NOT_UTF8 = os.fsdecode(b"in/caf\xe9.h5")


@pytest.mark.parametrize(
    "key", ["in/a.h5", "a", "in/2026/12/05/S2A_MSIL1C.SAFE/x.jp2", "é/ü.h5", "a b/c-d_e.f"]
)
def test_safe_keys_pass_unchanged(key: str) -> None:
    assert check_key(key) == key


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("in/x/../good.h5", "'..' path segment"),
        ("..", "'..' path segment"),
        ("in/./a.h5", "'.' path segment"),
        ("in//abs.h5", "empty path segment"),
        ("in/", "empty path segment"),
        ("/etc/passwd", "starts with '/'"),
        ("", "empty key"),
        ("in/a\x00b.h5", "control character '\\x00'"),
        ("in/a\nb.h5", "control character '\\n'"),
        ("in/a\x7f.h5", "control character"),
        ("in/a\x85.h5", "control character"),
        (NOT_UTF8, "not valid UTF-8"),
        ("a" * 1025, "longer than 1024 bytes"),
    ],
)
def test_unsafe_keys_are_refused_with_the_reason(key: str, reason: str) -> None:
    with pytest.raises(UnsafeKey) as info:
        check_key(key)
    assert reason in info.value.reason
    assert info.value.key == key
    # The message is printable: no raw control character or undecodable byte in it.
    str(info.value).encode("utf-8")
    assert "\x00" not in str(info.value) and "\n" not in str(info.value)


def test_escape_shows_control_characters_and_bad_bytes() -> None:
    assert escape("in/a.h5") == "'in/a.h5'"
    assert escape("in/a\x00b") == "'in/a\\x00b'"
    assert "\\udce9" in escape(NOT_UTF8)


@pytest.mark.parametrize(
    "location",
    [
        "s3://bucket/in/a.h5",
        "s3://bucket",
        "file:///data/in/a.h5",
        "https://host/path/a.tif?X-Amz-Signature=abc",
        "demo/inputs/a.h5",
    ],
)
def test_safe_locations(location: str) -> None:
    assert check_location(location) == location


@pytest.mark.parametrize(
    "location",
    [
        "s3://bucket/in//a.h5",
        "file:///data/../etc/shadow",
        "https://host/a%2F..%2Fb",
        "s3://bucket/in/a\x00.h5",
        "demo//a.h5",
    ],
)
def test_unsafe_locations(location: str) -> None:
    with pytest.raises(UnsafeKey):
        check_location(location)


def test_a_prefix_location_may_end_with_a_slash() -> None:
    assert check_location("demo/stacks/s1/", prefix=True) == "demo/stacks/s1/"
    assert check_location("s3://bucket/stacks/", prefix=True) == "s3://bucket/stacks/"
    with pytest.raises(UnsafeKey):
        check_location("demo/stacks/s1/")
    with pytest.raises(UnsafeKey):
        check_location("demo/stacks//", prefix=True)


def test_key_under_a_folder_prefix() -> None:
    assert key_under("out/job-1/a.h5", "out/job-1")
    assert key_under("out/job-1/a.h5", "out/job-1/")
    assert not key_under("out/job-10/a.h5", "out/job-1")
    assert not key_under("out/a.h5", "out/job-1")
    assert key_under("a.h5", "")
    with pytest.raises(UnsafeKey):
        key_under("out/job-1/../job-2/a.h5", "out/job-1")


@pytest.mark.parametrize(
    "location",
    [
        "s3://bucket//abs.h5",
        "file:////etc/passwd",
        "s3://bucket///in/a.h5",
        "s3://bucket/%2Fabs.h5",
        "https://host//a.tif?X-Amz-Signature=abc",
        "s3://[bucket/a.h5",
    ],
)
def test_a_url_path_loses_only_the_slash_after_its_authority(location: str) -> None:
    # s3://bucket//abs.h5 names the key "/abs.h5": a storage that stripped the slashes
    # would make it abs.h5, so it is refused, fast path or not.
    for prefix in (False, True):
        with pytest.raises(UnsafeKey):
            check_location(location, prefix=prefix)
    assert check_location("file:///data/x") == "file:///data/x"
    assert check_location("s3://bucket/", prefix=True) == "s3://bucket/"


#: What random locations are built from: separators, dot segments, schemes, escapes and
#: characters the checks refuse.
_TOKENS = ["a", "b.h5", ".", "..", "/", "//", "://", "s3://", "file:///", "https://h"]
_TOKENS += ["%2F", "%2e", "%", "?", "#", ":", "@", "[", "]", " ", "\x00", "\n", "\x85"]
_TOKENS += ["é", "\uff0f", "\udcff", "S3://"]


def _verdict(location: str, prefix: bool) -> str | None:
    """``None`` if ``check_location`` accepts ``location``, else the reason it gives."""
    try:
        check_location(location, prefix=prefix)
    except UnsafeKey as exc:
        return exc.reason
    return None


def test_the_fast_path_agrees_with_the_detailed_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    import random

    import joblife.storage.keys as keys

    rng = random.Random(13)
    cases = ["".join(rng.choices(_TOKENS, k=rng.randint(1, 8))) for _ in range(20_000)]
    cases += ["s3://bucket/in/a.h5", "file:///data/x", "s3://bucket//abs.h5", "in/a/"]
    fast = {(c, p): _verdict(c, p) is None for c in cases for p in (False, True)}
    monkeypatch.setattr(keys, "_PLAIN_MAX_CHARS", -1)
    slow = {(c, p): _verdict(c, p) is None for c in cases for p in (False, True)}
    assert [case for case in fast if fast[case] != slow[case]] == []
    assert sum(fast.values()) > 1_000  # the cases reach both answers


def test_s3_storage_refuses_a_prefix_or_key_it_would_have_to_rewrite(tmp_path: Path) -> None:
    from joblife.config import Settings
    from joblife.storage import KeyRefused, open_storage
    from joblife.storage.s3 import S3Storage

    # A product's URL becomes a storage whose prefix is the URL's path: "//abs.h5" is not
    # "abs.h5". Only the "/" after the bucket and a folder's trailing "/" go.
    settings = Settings(data_dir=tmp_path)
    for url in ("s3://bucket//abs.h5", "s3://bucket/in//a.h5", "s3://bucket/in/../a.h5"):
        with pytest.raises(KeyRefused):
            open_storage(url, settings)
    assert open_storage("s3://bucket/in/", settings).prefix == "in"  # type: ignore[attr-defined]
    assert open_storage("s3://bucket", settings).prefix == ""  # type: ignore[attr-defined]
    storage = S3Storage("bucket", "/in/")
    assert storage._key("a.h5") == "in/a.h5"
    assert storage._key("sub/", prefix=True) == "in/sub"
    assert storage._key("") == "in"
    for key in ("/abs.h5", "x//y", "x/"):
        with pytest.raises(KeyRefused):
            storage._key(key)
