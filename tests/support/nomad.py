"""Pytest fixtures for the nomad service used by the tests (registered in conftest.py).

No Nomad binary can run here: the tests talk to :class:`tests.nomad_double.NomadDouble`,
an API-faithful double on loopback, through the product's own python-nomad code path.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from joblife.config import Settings, get_settings
from joblife.executors.nomad import NomadExecutor
from joblife.model import load_job_types
from joblife.nomad.client import nomad_client
from joblife.nomad.deploy import deploy_specs
from joblife.nomad.specs import render_specs
from sqlalchemy import Engine

from tests.nomad_double import NomadDouble
from tests.support.lifecycle import FAST_SERVICES, Lifecycle

REPO = Path(__file__).resolve().parents[2]
#: What the worker image's ``joblife`` is on the double's client: this checkout's joblife.
JOBLIFE_COMMAND = [sys.executable, "-m", "joblife.cli.main"]


def nomad_test_settings(address: str, **overrides: Any) -> Settings:
    """Settings on the double with short timeouts, retries and pauses."""
    values: dict[str, Any] = {
        "nomad_addr": address,
        "nomad_dispatch_rate": 0,
        "nomad_retries": 1,
        "nomad_retry_backoff_seconds": 0.01,
        "nomad_connect_timeout_seconds": 1.0,
        "nomad_read_timeout_seconds": 2.0,
        "nomad_unavailable_retry_seconds": 0.3,
        # Required with Nomad: one key for every allocation (see NomadExecutor.from_settings).
        "attempt_secret_key": "test-attempt-secret-key-shared-by-every-allocation",
        **overrides,
    }
    return Settings(**values)


@pytest.fixture
def nomad_double(tmp_path: Path) -> Iterator[NomadDouble]:
    """A started double whose client runs tasks with no database (tests of the API)."""
    double = NomadDouble(
        tmp_path / "nomad", command_map={"joblife": JOBLIFE_COMMAND}, slots=8
    ).start()
    try:
        yield double
    finally:
        double.close()


@dataclass
class NomadWorld:
    """A life-cycle world on the double: the services in-process, workers as processes
    the double's client starts (``joblife worker run`` from the rendered spec)."""

    double: NomadDouble
    settings: Settings
    executor: NomadExecutor
    lifecycle: Lifecycle

    def deploy(self) -> None:
        """Register the rendered processing specs, as ``joblife nomad deploy`` does."""
        specs = [
            s
            for s in render_specs(self.settings, load_job_types(self.settings))
            if s.kind == "processing"
        ]
        deploy_specs(nomad_client(self.settings), specs)


@pytest.fixture
def make_nomad_world(
    engine: Engine, joblife_env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., NomadWorld]]:
    """Build a :class:`NomadWorld` on this test's database; the double's tasks get the
    environment the spec's secrets template would give them (the database URL)."""
    data_dir = tmp_path / "data"
    monkeypatch.setenv("JOBLIFE_DATA_DIR", str(data_dir))
    get_settings.cache_clear()
    made: list[NomadDouble] = []

    def make(slots: int = 8, **overrides: Any) -> NomadWorld:
        """A world whose double runs ``slots`` tasks at once (0: none is ever placed),
        with the test settings and ``overrides``."""
        task_env = {
            "JOBLIFE_DATABASE_URL": joblife_env,
            "JOBLIFE_HEARTBEAT_INTERVAL_SECONDS": "0.5",
            "JOBLIFE_CONFIG": str(tmp_path / "no-config.toml"),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        }
        double = NomadDouble(
            tmp_path / f"nomad{len(made)}",
            command_map={"joblife": JOBLIFE_COMMAND},
            extra_env=task_env,
            slots=slots,
        ).start()
        made.append(double)
        values: dict[str, Any] = {
            "database_url": joblife_env,
            "data_dir": data_dir,
            **FAST_SERVICES,
            "heartbeat_interval_seconds": 0.5,
        }
        settings = nomad_test_settings(double.address, **{**values, **overrides})
        executor = NomadExecutor.from_settings(settings)
        world = NomadWorld(double, settings, executor, Lifecycle(engine, settings, executor))  # type: ignore[arg-type]
        world.deploy()
        return world

    try:
        yield make
    finally:
        for double in made:
            double.close()
