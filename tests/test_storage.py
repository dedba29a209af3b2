"""Storage: one contract, two backends (local files, S3 through moto's real HTTP server)."""

from __future__ import annotations

import logging
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from joblife.config import Settings
from joblife.errors import ConfigurationError, ExternalJobError
from joblife.storage import (
    FileStorage,
    KeyRefused,
    ObjectNotFound,
    Storage,
    StorageError,
    Transfer,
    open_storage,
)
from joblife.storage.s3 import S3Storage

from tests.support.s3 import TEST_CREDENTIALS, S3Bucket, S3Requests

MIB = 1024 * 1024


@pytest.fixture(params=["file", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    """The same tests run on both backends, each under a prefix of its own."""
    if request.param == "file":
        return open_storage((tmp_path / "store").as_uri(), Settings(data_dir=tmp_path))
    bucket: S3Bucket = request.getfixturevalue("s3_bucket")
    settings = Settings(data_dir=tmp_path, s3_endpoint_url=bucket.endpoint)
    return open_storage(bucket.url("root/prefix"), settings)


def _file(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_upload_exists_list_download_delete(storage: Storage, tmp_path: Path):
    source = _file(tmp_path / "src" / "a.bin", b"alpha")
    assert not storage.exists("in/a.bin")
    assert storage.upload(source, "in/a.bin") == 5
    storage.upload(_file(tmp_path / "src" / "b.txt", b"bravo!"), "in/sub/b.txt")
    storage.upload(_file(tmp_path / "src" / "c.txt", b"c"), "other/c.txt")
    assert storage.exists("in/a.bin")
    assert [(o.key, o.size) for o in storage.list("in/")] == [
        ("in/a.bin", 5),
        ("in/sub/b.txt", 6),
    ]
    assert [o.key for o in storage.list()] == ["in/a.bin", "in/sub/b.txt", "other/c.txt"]
    assert [o.key for o in storage.find("in/", r"sub/.*\.txt")] == ["in/sub/b.txt"]
    assert storage.find("in/", r"a") == []  # the pattern must match the whole relative key
    target = tmp_path / "dst" / "deep" / "a.bin"
    assert storage.download("in/a.bin", target) == 5
    assert target.read_bytes() == b"alpha"
    storage.delete("in/a.bin")
    storage.delete("in/a.bin")  # deleting what is gone is no error
    assert not storage.exists("in/a.bin")
    assert storage.url("in/x").endswith("/in/x")


def test_listings_and_modified_at_tell_when_an_object_was_written(storage: Storage, tmp_path: Path):
    """Discovery dates products by when their objects were written: from the listing (no
    request per object) or for one object, the same instant either way."""
    before = datetime.now(UTC) - timedelta(seconds=2)  # S3 and mtimes have 1 s granularity
    source = tmp_path / "dated.bin"
    source.write_bytes(b"dated")
    storage.upload(source, "dated/one.bin")
    after = datetime.now(UTC) + timedelta(seconds=2)
    [listed] = storage.list("dated/")
    assert listed.modified.tzinfo is not None and before <= listed.modified <= after
    assert storage.modified_at("dated/one.bin") == listed.modified


def test_missing_object_is_an_external_not_found_error(storage: Storage, tmp_path: Path):
    with pytest.raises(ObjectNotFound, match="does not exist") as caught:
        storage.download("nope/missing.bin", tmp_path / "x")
    assert isinstance(caught.value, ExternalJobError)  # retried, as a dependency failure
    assert caught.value.location.endswith("nope/missing.bin")


def test_many_files_move_concurrently_and_whole(storage: Storage, tmp_path: Path):
    files = [_file(tmp_path / "up" / f"f{i}.bin", os.urandom(100_000 + i)) for i in range(9)]
    moved = storage.upload_many([Transfer(f"many/{p.name}", p) for p in files])
    assert moved == sum(p.stat().st_size for p in files)
    back = [Transfer(o.key, tmp_path / "down" / Path(o.key).name) for o in storage.list("many/")]
    assert storage.download_many(back) == moved
    for path in files:
        assert (tmp_path / "down" / path.name).read_bytes() == path.read_bytes()


def _s3(bucket: S3Bucket, tmp_path: Path, **settings: object) -> S3Storage:
    """joblife's S3 storage of ``bucket`` (under ``root/``), opened from its settings."""
    config = Settings(data_dir=tmp_path, s3_endpoint_url=bucket.endpoint, **settings)
    storage = open_storage(bucket.url("root"), config)
    assert isinstance(storage, S3Storage)
    return storage


@pytest.mark.parametrize("concurrency", [4, 1])
def test_s3_transfers_of_many_files_overlap_in_time(
    s3_bucket: S3Bucket, tmp_path: Path, concurrency: int
):
    """Each request is slowed down by 0.3 s: with ``storage_transfer_concurrency`` files
    at a time, that many are in flight at once, up and down (1: one after the other)."""
    storage = _s3(s3_bucket, tmp_path, storage_transfer_concurrency=concurrency)
    files = [_file(tmp_path / "up" / f"f{i}.bin", os.urandom(1000 + i)) for i in range(8)]
    for operation, transfer in (
        ("PutObject", lambda: storage.upload_many([Transfer(p.name, p) for p in files])),
        (
            "GetObject",
            lambda: storage.download_many(
                [Transfer(p.name, tmp_path / "down" / p.name) for p in files]
            ),
        ),
    ):
        requests = S3Requests(storage.client, (operation,), delay=0.3)
        start = time.monotonic()
        transfer()
        elapsed = time.monotonic() - start
        assert len(requests.intervals) == 8, operation
        assert requests.max_overlap() == concurrency, operation
        assert elapsed >= 8 / concurrency * 0.3
        if concurrency > 1:
            assert elapsed < 8 * 0.3 * 0.75, operation  # well below one after the other
    for path in files:
        assert (tmp_path / "down" / path.name).read_bytes() == path.read_bytes()


def test_s3_transient_failures_are_retried(s3_bucket: S3Bucket, tmp_path: Path):
    """A 503 answer to the first attempt of each upload: retried, every file arrives."""
    storage = _s3(s3_bucket, tmp_path, s3_max_attempts=3)
    requests = S3Requests(storage.client, ("PutObject",), fail_first=1)
    files = [_file(tmp_path / f"f{i}.bin", b"x" * (i + 1)) for i in range(3)]
    assert storage.upload_many([Transfer(p.name, p) for p in files]) == 6
    assert sorted(requests.attempts.values()) == [2, 2, 2]
    assert s3_bucket.list_keys("root/") == [f"root/{p.name}" for p in files]


def test_s3_gives_up_after_s3_max_attempts_with_a_clear_error(s3_bucket: S3Bucket, tmp_path: Path):
    storage = _s3(s3_bucket, tmp_path, s3_max_attempts=3)
    s3_bucket.put("root/there.bin", b"there")
    requests = S3Requests(storage.client, ("PutObject", "GetObject"), fail_first=99)
    with pytest.raises(StorageError) as upload:
        storage.upload(_file(tmp_path / "a.bin", b"a"), "a.bin")
    with pytest.raises(StorageError) as download:
        storage.download("there.bin", tmp_path / "back.bin")
    assert requests.attempts == {
        f"/{s3_bucket.name}/root/a.bin": 3,
        f"/{s3_bucket.name}/root/there.bin": 3,
    }
    for caught, action, key in (
        (upload, "upload to", "a.bin"),
        (download, "download", "there.bin"),
    ):
        message = str(caught.value)
        assert f"{action} s3://{s3_bucket.name}/root/{key} at {s3_bucket.endpoint}" in message
        assert message.endswith(" after 3 attempts: ServiceUnavailable injected by the test")
    assert not s3_bucket.list_keys("root/a.bin")


def test_s3_multipart_upload_and_download(s3_bucket: S3Bucket, tmp_path: Path):
    storage = S3Storage(
        s3_bucket.name,
        "mp",
        endpoint_url=s3_bucket.endpoint,
        multipart_threshold=5 * MIB,
        multipart_chunksize=5 * MIB,
        part_concurrency=4,
    )
    data = os.urandom(12 * MIB + 7)
    storage.upload(_file(tmp_path / "big.bin", data), "big.bin")
    head = s3_bucket.client.head_object(Bucket=s3_bucket.name, Key="mp/big.bin")
    assert head["ETag"].strip('"').endswith("-3")  # three parts: a multipart upload
    storage.download("big.bin", tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == data


def test_s3_errors_say_what_failed_and_never_show_the_secret(
    s3_bucket: S3Bucket, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.DEBUG)
    secret = TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"]
    settings = Settings(
        data_dir=tmp_path,
        s3_endpoint_url=s3_bucket.endpoint,
        s3_secret_access_key=secret,
        s3_access_key_id="joblife-test-key",
        s3_max_attempts=2,
    )
    storage = open_storage("s3://joblife-no-such-bucket/x", settings)
    with pytest.raises(StorageError, match="NoSuchBucket") as caught:
        storage.upload(_file(tmp_path / "a", b"a"), "a")
    assert "s3://joblife-no-such-bucket/x/a" in str(caught.value)
    down = open_storage(
        "s3://b/x", settings.model_copy(update={"s3_endpoint_url": "http://127.0.0.1:9"})
    )
    with pytest.raises(StorageError, match="could not check"):
        down.exists("a")
    for text in (str(caught.value), repr(storage.__dict__), repr(settings), caplog.text):
        assert secret not in text


def test_file_storage_refuses_keys_outside_its_root(tmp_path: Path):
    storage = FileStorage(tmp_path / "root")
    with pytest.raises(KeyRefused, match=r"'\.\.' path segment"):
        storage.upload(_file(tmp_path / "a", b"a"), "../escape")
    # A safe key that meets a link out of the root is refused too.
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "out").symlink_to(tmp_path)
    with pytest.raises(StorageError, match="leaves the storage root"):
        storage.upload(_file(tmp_path / "b", b"b"), "out/escape")
    assert not (tmp_path / "escape").exists()


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("ftp://host/x", "unsupported scheme"),
        ("s3:///prefix", "names no bucket"),
        ("file://host/x", "take no host"),
    ],
)
def test_bad_storage_urls_are_configuration_errors(url: str, problem: str, tmp_path: Path):
    with pytest.raises(ConfigurationError, match=problem):
        open_storage(url, Settings(data_dir=tmp_path))


def test_default_storage_is_local_under_the_data_dir(tmp_path: Path):
    storage = open_storage(settings=Settings(data_dir=tmp_path))
    assert isinstance(storage, FileStorage)
    assert storage.root == (tmp_path / "storage").resolve()
