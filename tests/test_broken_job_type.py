"""One job type that cannot load does not take the others down (issue 14, item 11): an entry
point and a ``job_type_modules`` entry that raise at import sit next to the working types;
``create`` and ``run --once`` still create jobs of the good type, ``db upgrade`` still
migrates, ``health`` exits 1 naming the broken ones and the metric shows them."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from joblife.cli.main import app
from joblife.config import get_settings
from joblife.jobtypes.test_job import write_test_product
from joblife.model import registry
from joblife.model.registry import job_type_load_errors, load_job_types
from joblife.ops.metrics import build_registry
from prometheus_client import generate_latest
from sqlalchemy import Engine, text
from typer.testing import CliRunner, Result

BROKEN_MODULE = "jl_broken_type_module"
BROKEN_ENTRY_POINT = "broken_ep"


def run(*args: str) -> Result:
    """Invoke ``joblife ARGS`` in-process."""
    return CliRunner().invoke(app, list(args))


@pytest.fixture
def broken_types(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A plug-in distribution whose entry point fails to import and a job_type_modules
    entry that raises, next to the installed types and tests.support.example_type; the
    registry's once-per-process state is reset and restored. Yields the products dir of
    the ``test`` type."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / f"{BROKEN_MODULE}.py").write_text(
        'raise RuntimeError("boom: the science library is missing")\n'
    )
    (plugins / "jl_broken_ep_module.py").write_text("import jl_no_such_dependency  # noqa\n")
    dist = plugins / "jl_broken_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: jl-broken-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        f"[joblife.job_types]\n{BROKEN_ENTRY_POINT} = jl_broken_ep_module:BrokenJob\n"
    )
    monkeypatch.syspath_prepend(str(plugins))
    monkeypatch.setenv(
        "JOBLIFE_JOB_TYPE_MODULES", json.dumps(["tests.support.example_type", BROKEN_MODULE])
    )
    monkeypatch.setenv("JOBLIFE_DATA_DIR", str(tmp_path / "data"))
    products = tmp_path / "products"
    monkeypatch.setenv("JOBLIFE_TEST_PRODUCTS_DIR", str(products))
    monkeypatch.setattr(registry, "_entry_points_loaded", False)
    monkeypatch.setattr(registry, "_entry_point_errors", {})
    monkeypatch.setattr(registry, "_module_errors", {})
    get_settings.cache_clear()
    yield products
    get_settings.cache_clear()


def test_each_type_loads_on_its_own_and_a_broken_one_is_recorded_and_logged_once(
    broken_types: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="joblife.registry")
    types = load_job_types()
    assert {"test", "example", "h5repack"} <= set(types)
    errors = job_type_load_errors()
    assert set(errors) == {BROKEN_ENTRY_POINT, BROKEN_MODULE}
    assert "boom: the science library is missing" in errors[BROKEN_MODULE]
    assert "jl_no_such_dependency" in errors[BROKEN_ENTRY_POINT]
    assert all("\n" not in error for error in errors.values())
    load_job_types()
    job_type_load_errors()
    logged = [r.getMessage() for r in caplog.records if r.name == "joblife.registry"]
    assert len(logged) == 2, logged  # once per broken type, however often they are loaded
    assert any(BROKEN_MODULE in line for line in logged)


def _test_jobs(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                text("SELECT input_product_id FROM jobs WHERE job_type = 'test' ORDER BY 1")
            ).scalars()
        )


def test_create_and_run_once_still_create_jobs_of_the_good_type(
    broken_types: Path, joblife_env: str, engine: Engine
) -> None:
    now = datetime.now(UTC)
    write_test_product(broken_types, "good-1", now - timedelta(hours=2))
    created = run("create", "--json")
    assert created.exit_code == 0, created.output
    assert _test_jobs(engine) == ["good-1"]

    write_test_product(broken_types, "good-2", now - timedelta(hours=1))
    once = run("run", "--once", "--services", "create", "--json")
    assert once.exit_code == 0, once.output
    assert _test_jobs(engine) == ["good-1", "good-2"]

    upgraded = run("db", "upgrade")  # the migrations are revision files: nothing to import
    assert upgraded.exit_code == 0, upgraded.output


def test_health_exits_1_naming_the_broken_types(broken_types: Path) -> None:
    result = run("health", "--check", "job_types")
    assert result.exit_code == 1, result.output
    [line] = result.stdout.splitlines()
    assert line.startswith("FAIL") and "job_types" in line
    assert BROKEN_MODULE in line and BROKEN_ENTRY_POINT in line and "loaded:" in line
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("error: job_types unhealthy: ")
    assert BROKEN_MODULE in errors[0] and "Traceback" not in result.output


def test_health_of_the_job_types_is_ok_when_all_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOBLIFE_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    result = run("health", "--check", "job_types")
    get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("ok") and "example" in result.stdout


def test_the_metric_shows_each_broken_type(broken_types: Path, engine: Engine) -> None:
    exposition = generate_latest(build_registry(engine)).decode()
    for name in (BROKEN_MODULE, BROKEN_ENTRY_POINT):
        assert f'joblife_job_type_load_errors{{job_type="{name}"}} 1.0' in exposition
    assert 'joblife_job_type_load_errors{job_type="test"}' not in exposition


def test_a_job_of_the_broken_type_fails_as_one_of_an_unknown_type(
    broken_types: Path, joblife_env: str, engine: Engine
) -> None:
    """The worker loads the other types and fails this job (internal_error), as it does
    for a type it does not know, instead of refusing to start."""
    from joblife.db.status import set_job_status
    from joblife.db.worker_doors import issue_attempt_secret
    from joblife.model import JobStatus
    from joblife.worker.runner import EXIT_DO_NOT_RELAUNCH, run_worker
    from sqlalchemy.orm import Session

    settings = get_settings()
    with Session(engine) as session:
        job_id = session.execute(
            text(
                "INSERT INTO jobs (job_type, input_product_id, worker_flavor) "
                f"VALUES ('{BROKEN_ENTRY_POINT}', 'p-1', 'small') RETURNING id"
            )
        ).scalar_one()
        for status in (JobStatus.READY, JobStatus.QUEUED):
            set_job_status(session, job_id, status)
        session.execute(text("UPDATE jobs SET attempt = 1 WHERE id = :id"), {"id": job_id})
        issue_attempt_secret(session, settings, job_id)
        session.commit()
    assert run_worker(job_id, 1, settings) == EXIT_DO_NOT_RELAUNCH
    with engine.connect() as conn:
        status, message = conn.execute(
            text(
                "SELECT j.status, c.message FROM jobs j JOIN job_status_changes c "
                "ON c.job_id = j.id WHERE j.id = :id ORDER BY c.id DESC LIMIT 1"
            ),
            {"id": job_id},
        ).one()
    assert JobStatus(status) is JobStatus.INTERNAL_ERROR, message
    # Today's wording for a type the worker does not know (worker/runner.py's own).
    assert f"polymorphic_identity '{BROKEN_ENTRY_POINT}'" in message, message
