"""The new user's path (issue 7): from an empty directory, install joblife (not editable)
into a fresh virtual environment and run ``joblife demo``; every demo job must end done.
Slow (the install fetches every dependency): marked ``slow``, still run in CI."""

from __future__ import annotations

import os
import subprocess
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_fresh_install_runs_the_demo_to_done(tmp_path: Path):
    home = tmp_path / "new-user"
    home.mkdir()
    assert list(home.iterdir()) == []
    venv.EnvBuilder(with_pip=True).create(home / "venv")
    bin_dir = home / "venv" / "bin"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JOBLIFE_", "VIRTUAL_ENV"))}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env["HOME"] = str(home)  # the user's own data and config dirs: nothing of ours
    env.pop("PYTHONPATH", None)

    install = subprocess.run(
        [str(bin_dir / "pip"), "install", "--quiet", str(REPO)],
        cwd=home,
        env=env,
        capture_output=True,
        text=True,
        timeout=1000,
        check=False,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    data_dir = home / "demo-data"
    try:
        demo = subprocess.run(
            [str(bin_dir / "joblife"), "demo", "--data-dir", str(data_dir)],
            cwd=home,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        assert demo.returncode == 0, demo.stdout + demo.stderr
        assert "every demo job is done" in demo.stdout
        # The installed package runs from the venv, not from this checkout.
        where = subprocess.run(
            [str(bin_dir / "python"), "-c", "import joblife; print(joblife.__file__)"],
            cwd=home,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert where.stdout.startswith(str(home / "venv")), where.stdout
    finally:
        subprocess.run(
            [str(bin_dir / "joblife"), "db", "stop"],
            cwd=home,
            env={**env, "JOBLIFE_DATA_DIR": str(data_dir)},
            capture_output=True,
            timeout=60,
            check=False,
        )
