"""The partner API (issue 17, item 8): ``joblife.storage`` and ``joblife.discovery`` are
documented and typed, their reference is generated from the docstrings
(scripts/reference-docs.sh), and the guarantees their docstrings state hold: UTC-aware
dates, whole-key patterns, whole S3 listings past one page, aware ``start`` / ``end``."""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
import typing
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType

import joblife.discovery
import joblife.storage
import pytest
from joblife.config import Settings, get_settings
from joblife.jobtypes.h5repack import H5RepackJob
from joblife.lifecycle.common import ServiceContext
from joblife.lifecycle.creation import create_jobs
from joblife.storage import open_storage
from joblife.storage.s3 import S3Storage
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from tests.support.s3 import S3Bucket, S3Requests

REPO = Path(__file__).resolve().parents[1]
MODULES = (joblife.storage, joblife.discovery)
PUBLIC = [(module, name) for module in MODULES for name in module.__all__]
#: Headings of the guarantees each module's docstring states (and its reference page shows).
GUARANTEES = {
    joblife.storage: [
        "Key normalisation",
        "Listings are whole and sorted",
        "Patterns match whole keys",
        "Dates are timezone-aware, in UTC",
    ],
    joblife.discovery: ["Time zones", "Locations and keys", "Patterns", "Large listings"],
}


def _ids(value: object) -> str:
    return value.__name__ if isinstance(value, ModuleType) else str(value)


# -- documented and typed --------------------------------------------------------------------
def _unannotated(function: Callable[..., object]) -> list[str]:
    """The parameters (and ``return``) of ``function`` without a type hint; each hint must
    also resolve (``typing.get_type_hints``)."""
    hints = typing.get_type_hints(function)
    signature = inspect.signature(function)
    missing = [
        name for name in signature.parameters if name not in ("self", "cls") and name not in hints
    ]
    return [*missing, *([] if "return" in hints else ["return"])]


def _own_methods(cls: type) -> dict[str, Callable[..., object]]:
    """The public methods ``cls`` defines itself (and its ``__init__``)."""
    methods = {}
    for name, member in vars(cls).items():
        if name.startswith("_") and name != "__init__":
            continue
        function = member.__func__ if isinstance(member, classmethod | staticmethod) else member
        if inspect.isfunction(function):
            methods[name] = function
    return methods


@pytest.mark.parametrize(("module", "name"), PUBLIC, ids=_ids)
def test_every_public_name_exists_is_documented_and_typed(module: ModuleType, name: str):
    import pdoc.doc

    assert hasattr(module, name), f"{module.__name__}.__all__ names {name}, which is missing"
    value = getattr(module, name)
    # The docstring the reference shows (a constant's is the one after its assignment).
    documented = pdoc.doc.Module(module).get(name)
    assert documented is not None and documented.docstring.strip(), f"{name}: no docstring"
    if inspect.isfunction(inspect.unwrap(value)):  # get_settings is functools.cache's
        missing = _unannotated(inspect.unwrap(value))
        assert not missing, f"{name}: no type hint on {missing}"
    elif inspect.isclass(value):
        for method_name, method in _own_methods(value).items():
            # (A dataclass's __init__ is generated: its fields are documented.)
            assert method_name == "__init__" or inspect.getdoc(method), f"{name}.{method_name}"
            missing = _unannotated(method)
            assert not missing, f"{name}.{method_name}: no type hint on {missing}"
        if inspect.isfunction(value.__init__):  # its own or inherited from joblife's errors
            assert not _unannotated(value.__init__), f"{name}.__init__"
    else:  # a constant: typed where it is defined
        annotations = inspect.get_annotations(module)
        assert name in annotations, f"{name}: no type annotation"


def test_the_reference_docs_are_generated_from_the_docstrings(tmp_path: Path):
    import pdoc  # noqa: F401  (the test extra has it; the script runs it)

    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "reference-docs.sh"), str(tmp_path)],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Warn" not in result.stderr, result.stderr
    for module in MODULES:
        page = (tmp_path / (module.__name__.replace(".", "/") + ".html")).read_text()
        for name in module.__all__:
            assert f'id="{name}"' in page, f"{module.__name__}.{name} is not in the reference"
        for heading in GUARANTEES[module]:  # the docstring states them, the page shows them
            assert f"**{heading}" in (module.__doc__ or ""), heading
            assert f"<strong>{heading}" in page, heading
    s3_page = (tmp_path / "joblife" / "storage" / "s3.html").read_text()
    assert 'id="S3Storage.list"' in s3_page and "paginator" in s3_page


def test_the_partner_guide_lists_every_public_name():
    guide = (REPO / "docs" / "partner-guide.md").read_text()
    section = guide.partition("\n## Reference: joblife.storage and joblife.discovery\n")[2]
    assert section, "the partner guide has no reference section"
    assert "bash scripts/reference-docs.sh" in section
    for module in MODULES:
        table = section.partition(f"**`{module.__name__}`**")[2].partition("\n\n**")[0]
        rows = re.findall(r"^\| `(\w+)[(`]", table, flags=re.MULTILINE)
        assert sorted(rows) == sorted(module.__all__), module.__name__


# -- the guarantees ----------------------------------------------------------------------------
def _file(path: Path, data: bytes, modified: datetime) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (modified.timestamp(), modified.timestamp()))


@pytest.fixture
def file_settings(tmp_path: Path) -> Settings:
    """Settings whose storage is ``tmp_path/storage`` (file://)."""
    return Settings(data_dir=tmp_path, storage_url=(tmp_path / "storage").as_uri())


def test_find_on_file_storage_dates_objects_in_utc(tmp_path: Path, file_settings: Settings):
    written = datetime(2026, 3, 1, 10, 15, 30, 250000, tzinfo=UTC)
    _file(tmp_path / "storage" / "in" / "P1" / "metadata.json", b"{}", written)
    _file(tmp_path / "storage" / "in" / "P2" / "metadata.json", b"{}", written + timedelta(1))

    [first, second] = open_storage(settings=file_settings).find("in/", r"[^/]+/metadata\.json")
    assert first.modified.utcoffset() == timedelta(0) and first.modified.tzinfo is not None
    assert (first.modified, second.modified) == (written, written + timedelta(1))
    # The same dates through joblife.discovery, for a key location and a file:// URL.
    for location in ("in", (tmp_path / "storage" / "in").as_uri()):
        _, _, found = joblife.discovery.find(location, file_settings, r"P1/metadata\.json")
        assert [(o.key, o.modified, o.modified.utcoffset()) for o in found] == [
            ("P1/metadata.json", written, timedelta(0))
        ]


def test_a_pattern_matches_the_whole_key_relative_to_the_prefix(
    tmp_path: Path, file_settings: Settings
):
    now = datetime.now(UTC)
    for key in ("in/a.h5", "in/a.h5.tmp", "in/sub/b.h5", "in2/c.h5"):
        _file(tmp_path / "storage" / key, b"x", now)
    storage = open_storage(settings=file_settings)

    def keys(prefix: str, pattern: str | None) -> list[str]:
        return [o.key for o in storage.find(prefix, pattern)]

    assert keys("in/", r"a") == []  # a substring is not a match
    assert keys("in/", r"[^/]+\.h5") == ["in/a.h5"]  # nor a prefix (a.h5.tmp), nor sub/
    assert keys("in/", r"in/a\.h5") == []  # relative to the prefix, not to the root
    assert keys("in/", r".*\.h5") == ["in/a.h5", "in/sub/b.h5"]
    assert keys("in/", None) == ["in/a.h5", "in/a.h5.tmp", "in/sub/b.h5"]
    assert keys("in", None) == ["in/a.h5", "in/a.h5.tmp", "in/sub/b.h5", "in2/c.h5"]
    # joblife.discovery: the same match, keys relative to the location, which is a folder.
    storage, prefix, found = joblife.discovery.find("/in/", file_settings, r"[^/]+\.h5")
    assert (prefix, [o.key for o in found]) == ("in/", ["a.h5"])
    assert joblife.discovery.input_location("in", found[0].key) == "in/a.h5"
    assert storage.exists(joblife.discovery.join_key(prefix, found[0].key))


def test_a_listing_of_more_than_one_s3_page_returns_every_object(
    s3_bucket: S3Bucket, tmp_path: Path
):
    """S3 lists at most 1,000 keys a page: 1,005 objects take two pages, and find (the
    storage's and joblife.discovery's) returns all of them, in order."""
    keys = [f"root/in/P{i:04d}/metadata.json" for i in range(1005)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda key: s3_bucket.put(key, b"{}"), keys))
    settings = Settings(data_dir=tmp_path, s3_endpoint_url=s3_bucket.endpoint)
    storage = open_storage(s3_bucket.url("root"), settings)
    assert isinstance(storage, S3Storage)
    pages = S3Requests(storage.client, ("ListObjectsV2",))

    found = storage.find("in/", r"P\d+/metadata\.json")

    assert sum(pages.attempts.values()) >= 2  # more than one page was asked for
    assert [o.key for o in found] == [key.removeprefix("root/") for key in keys]
    assert all(o.size == 2 and o.modified.utcoffset() == timedelta(0) for o in found)
    location = s3_bucket.url("root/in")
    _, prefix, relative = joblife.discovery.find(location, settings, r"P\d+/metadata\.json")
    assert prefix == "" and len(relative) == 1005 and relative[-1].key == "P1004/metadata.json"


# -- start and end -----------------------------------------------------------------------------
@pytest.fixture
def h5_context(
    engine: Engine, joblife_env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ServiceContext]:
    """Creation of h5repack jobs from ``tmp_path/storage/in/h5``."""
    monkeypatch.setenv("JOBLIFE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("JOBLIFE_STORAGE_URL", (tmp_path / "storage").as_uri())
    monkeypatch.setenv("JOBLIFE_H5REPACK_INPUT_PREFIX", "in/h5")
    monkeypatch.setenv("JOBLIFE_DISCOVERY_OVERLAP_SECONDS", "0")
    get_settings.cache_clear()
    yield ServiceContext(engine, get_settings())
    get_settings.cache_clear()


def test_start_and_end_are_timezone_aware_whatever_the_database_time_zone(
    h5_context: ServiceContext,
    engine: Engine,
    admin_engine: Engine,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
):
    windows: list[tuple[datetime, datetime]] = []
    discover = H5RepackJob.get_jobs_to_create.__func__  # type: ignore[attr-defined]

    def spy(cls: type[H5RepackJob], start: datetime, end: datetime) -> object:
        windows.append((start, end))
        return discover(cls, start, end)

    monkeypatch.setattr(H5RepackJob, "get_jobs_to_create", classmethod(spy))
    now = datetime.now(UTC).replace(microsecond=0)
    written = now - timedelta(hours=1)
    _file(tmp_path / "storage" / "in" / "h5" / "a.h5", b"not read", written)

    create_jobs(h5_context, now)  # no job yet: the lookback
    # The cursor as a server in another time zone gives it back.
    database = make_url(engine.url).database
    with admin_engine.connect() as connection:
        connection.execute(text(f"ALTER DATABASE \"{database}\" SET timezone = 'Asia/Tokyo'"))
    engine.dispose()
    create_jobs(h5_context, now + timedelta(minutes=1))  # from the cursor: a.h5's date

    (start_1, end_1), (start_2, end_2) = windows
    for moment in (start_1, end_1, start_2, end_2):
        assert moment.utcoffset() is not None, windows
    assert (end_1.utcoffset(), end_2.utcoffset()) == (timedelta(0), timedelta(0))
    assert start_1 == now - timedelta(hours=get_settings().discovery_lookback_hours)
    assert start_2 == written  # the same instant, compared as aware datetimes
