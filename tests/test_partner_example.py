"""The partner guide's worked example, ``examples/joblife-ndvi``, is a real partner package:
pip-installed next to joblife, registered by its entry points alone, migrated by
``joblife db upgrade``, run end to end by ``joblife run --once`` with its science step as a
process; and the guide shows its files exactly as they are."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from joblife.model import JobStatus
from sqlalchemy import Engine, text

S = JobStatus
REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "joblife-ndvi"
GUIDE = REPO / "docs" / "partner-guide.md"
JOBLIFE = [sys.executable, "-m", "joblife.cli.main"]
PIP_INSTALL = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
FINAL = {S.DONE, S.INTERNAL_ERROR, S.CANCELLED}
#: The files of the example, as the guide shows them (`<!-- example: PATH -->` before each).
EXAMPLE_FILES = [
    "pyproject.toml",
    "src/joblife_ndvi/jobs.py",
    "src/joblife_ndvi/science.py",
    "src/joblife_ndvi/migrations/n001_ndvi_jobs.py",
    "Containerfile",
]


def test_the_guide_shows_the_example_files_as_they_are():
    guide = GUIDE.read_text()
    shown = dict(
        re.findall(r"<!-- example: (\S+) -->\n```[a-z]*\n(.*?)```\n", guide, flags=re.DOTALL)
    )
    assert sorted(shown) == sorted(EXAMPLE_FILES)
    for path, block in shown.items():
        assert block == (EXAMPLE / path).read_text(), f"the guide's {path} differs from the file"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example package pip-installed (without dependencies: joblife and numpy are
    this environment's) into a directory of its own, as on a partner's machine."""
    target = tmp_path_factory.mktemp("ndvi-site")
    result = subprocess.run(
        [*PIP_INSTALL, "--no-deps", "--target", str(target), str(EXAMPLE)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return target


def _environment(db_url: str, data_dir: Path, site: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JOBLIFE_", "NDVI_"))}
    # The suite's own test type stays plugged in (this database was migrated with it);
    # the ndvi type comes only from the installed package's entry points.
    for name in ("JOBLIFE_JOB_TYPE_MODULES", "JOBLIFE_MIGRATION_LOCATIONS"):
        env[name] = os.environ[name]
    env.update(
        {
            "JOBLIFE_DATABASE_URL": db_url,
            "JOBLIFE_DATA_DIR": str(data_dir),
            "JOBLIFE_CONFIG": str(data_dir / "no-config.toml"),
            "JOBLIFE_STORAGE_URL": (data_dir / "storage").as_uri(),
            "JOBLIFE_PUBLICATION_SPOOL": str(data_dir / "spool"),
            "JOBLIFE_RETRY_BACKOFF_SECONDS": "0",
            "PYTHONPATH": os.pathsep.join([str(site), str(REPO)]),
        }
    )
    return env


def _joblife(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [*JOBLIFE, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"joblife {' '.join(args)}:\n{result.stdout}{result.stderr}"
    return result.stdout


def _write_product(storage: Path, product_id: str, red: np.ndarray, nir: np.ndarray) -> None:
    folder = storage / "ndvi" / "inputs" / product_id
    folder.mkdir(parents=True)
    published = datetime.now(UTC) - timedelta(minutes=10)
    metadata = {"tile_id": "31TCJ", "published_at": published.isoformat()}
    (folder / "metadata.json").write_text(json.dumps(metadata))
    np.save(folder / "red.npy", red)
    np.save(folder / "nir.npy", nir)


def _jobs(engine: Engine) -> dict[str, tuple[S, str | None]]:
    """product id → (status, last history message) of the ndvi jobs."""
    with engine.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT j.input_product_id, j.status,"
                " (SELECT c.message FROM job_status_changes c WHERE c.job_id = j.id"
                "   ORDER BY c.id DESC LIMIT 1)"
                " FROM jobs j WHERE j.job_type = 'ndvi'"
            )
        )
        return {product: (S(status), message) for product, status, message in rows}


def test_the_example_package_runs_end_to_end(
    site: Path, db_url: str, engine: Engine, tmp_path: Path
):
    env = _environment(db_url, tmp_path, site)
    _joblife(env, "db", "upgrade")
    with engine.connect() as connection:
        assert connection.scalar(text("SELECT to_regclass('ndvi_jobs') IS NOT NULL"))

    storage = tmp_path / "storage"
    red = np.array([[10, 50], [0, 30]], dtype=np.uint16)
    nir = np.array([[90, 50], [0, 10]], dtype=np.uint16)
    _write_product(storage, "GREEN", red, nir)
    _write_product(storage, "EMPTY", np.zeros((2, 2)), np.zeros((2, 2)))  # no valid pixel
    _write_product(storage, "BROKEN", np.zeros((2, 2)), np.zeros((3, 3)))  # shapes differ

    deadline = time.monotonic() + 90
    while True:
        _joblife(env, "run", "--once")
        jobs = _jobs(engine)
        if len(jobs) == 3 and all(status in FINAL for status, _ in jobs.values()):
            break
        assert time.monotonic() < deadline, f"ndvi jobs not final: {jobs}"
        time.sleep(0.3)

    assert jobs["GREEN"][0] is S.DONE, jobs
    assert jobs["EMPTY"][0] is S.DONE and "no product" in jobs["EMPTY"][1], jobs
    assert jobs["BROKEN"][0] is S.INTERNAL_ERROR

    index = np.load(storage / "ndvi" / "GREEN" / "ndvi.npy")
    expected = np.array([[0.8, 0.0], [np.nan, -0.5]], dtype=np.float32)
    np.testing.assert_allclose(index, expected, rtol=1e-6)
    assert not (storage / "ndvi" / "EMPTY").exists()

    spool = tmp_path / "spool" / "publications.jsonl"
    messages = [json.loads(line) for line in spool.read_text().splitlines()]
    assert [(m["routing_key"], m["body"]["input_product_id"]) for m in messages] == [
        ("ndvi.ndvi", "GREEN")
    ]
