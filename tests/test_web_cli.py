"""``joblife web`` and ``joblife web-users`` as an operator runs them."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from joblife.cli.main import app
from joblife.web.users import Role, UserStore
from typer.testing import CliRunner

from tests.support.services import free_port
from tests.support.web import login_over_http, wait_until_serving


def test_web_users_add_list_remove(tmp_path: Path, monkeypatch) -> None:
    users = tmp_path / "users"
    monkeypatch.setenv("JOBLIFE_WEB_USERS_FILE", str(users))
    from joblife.config import get_settings

    get_settings.cache_clear()
    runner = CliRunner()
    added = runner.invoke(
        app, ["web-users", "add", "ann", "--role", "operator"], input="s3cret-pw\n"
    )
    assert added.exit_code == 0, added.output
    assert UserStore(users).authenticate("ann", "s3cret-pw").role is Role.OPERATOR
    short = runner.invoke(app, ["web-users", "add", "bob"], input="short\n")
    assert short.exit_code == 2 and "at least 8 characters" in short.output
    bad = runner.invoke(app, ["web-users", "add", "ann", "--role", "root"], input="s3cret-pw\n")
    assert bad.exit_code == 2 and "viewer or operator" in bad.output
    listed = runner.invoke(app, ["web-users", "list"])
    assert "ann" in listed.output and "operator" in listed.output
    assert runner.invoke(app, ["web-users", "remove", "ann"]).exit_code == 0
    assert runner.invoke(app, ["web-users", "remove", "ann"]).exit_code == 1
    get_settings.cache_clear()


def test_joblife_web_serves_and_creates_a_first_operator(joblife_env: str, tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "JOBLIFE_DATA_DIR": str(tmp_path / "data"),
        "JOBLIFE_WEB_PORT": str(port),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "joblife.cli.main", "web"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        created = process.stdout.readline()
        match = re.search(r"user 'admin' \(operator\) with password: (\S+)", created)
        assert match, created
        process.stdout.readline()  # where the users are kept
        listening = process.stdout.readline()
        assert f"http://127.0.0.1:{port}/" in listening
        base = f"http://127.0.0.1:{port}"

        response = wait_until_serving(process, base)
        assert response.text == "ok\n"
        _, landed = login_over_http(base, "admin", match.group(1))
        assert "admin <small>(operator)" in landed
    finally:
        process.terminate()
        process.wait(timeout=20)


def test_nomad_deploy_registers_the_dashboard_only_with_web(nomad_double, monkeypatch) -> None:
    from joblife.config import get_settings

    nomad_double.cluster.run_tasks = False
    monkeypatch.setenv("JOBLIFE_NOMAD_ADDR", nomad_double.address)
    monkeypatch.setenv("JOBLIFE_ATTEMPT_SECRET_KEY", "a-key-for-the-rendered-specs")
    get_settings.cache_clear()
    runner = CliRunner()
    try:
        plain = runner.invoke(app, ["nomad", "deploy", "--services", "none", "--json"])
        assert plain.exit_code == 0, plain.output
        assert "joblife-web" not in {d["job_id"] for d in json.loads(plain.output)}
        web = runner.invoke(app, ["nomad", "deploy", "--services", "none", "--web", "--json"])
        assert web.exit_code == 0, web.output
        assert {d["job_id"] for d in json.loads(web.output)} >= {"joblife-web", "joblife-test"}
    finally:
        get_settings.cache_clear()
