"""The rendered Nomad specs (issue 4): they parse as HCL2 (python-hcl2), carry what joblife
relies on (restart and reschedule 0, meta_required, the flavor's constraint and
resources), hold no secret of the settings, give each task only the secrets of the
Nomad variable its part needs, the dashboard is a checked Nomad service whose own settings
no variable overrides, and the examples in ``nomad/`` are what ``joblife nomad render``
writes today."""

from __future__ import annotations

from pathlib import Path

import pytest
from joblife.config import Settings
from joblife.errors import ConfigurationError
from joblife.model import load_job_types
from joblife.model.flavors import flavor_catalogue
from joblife.model.registry import ENTRY_POINT_GROUP
from joblife.nomad.specs import WEB_VARIABLES_PATH, render_specs

from tests.nomad_double.jobspec import parse_document, parse_hcl
from tests.nomad_double.template import render_template, template_environment

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Settings:
    """The default settings (no JOBLIFE_NOMAD_* of the environment)."""
    import os

    for name in list(os.environ):
        if name.startswith("JOBLIFE_NOMAD") or name == "JOBLIFE_WORKER_FLAVORS":
            monkeypatch.delenv(name)
    monkeypatch.setenv("JOBLIFE_CONFIG", str(tmp_path / "none.toml"))
    return Settings()


def _entry_point_types(settings: Settings) -> dict:
    from importlib.metadata import entry_points

    names = {e.name for e in entry_points(group=ENTRY_POINT_GROUP)}
    return {k: v for k, v in load_job_types(settings).items() if k in names}


def test_processing_specs_carry_what_joblife_relies_on(settings: Settings):
    types = load_job_types(settings)
    catalogue = flavor_catalogue(settings)
    processing = [s for s in render_specs(settings, types) if s.kind == "processing"]
    assert {s.job_id for s in processing} == {cls.NOMAD_JOB_NAME for cls in types.values()}
    for spec in processing:
        [cls] = [c for c in types.values() if spec.job_id == c.NOMAD_JOB_NAME]
        flavor = catalogue[cls.WORKER_FLAVOR_NAME]
        [job] = parse_document(spec.text)["job"]
        body = job[spec.job_id]
        assert body["type"] == "batch"
        [parameterized] = body["parameterized"]
        assert parameterized["meta_required"] == ["job_id", "attempt"]
        assert parameterized["meta_optional"] == ["attempt_secret"]  # the worker doors
        [group] = body["group"]
        group = group["worker"]
        [restart] = group["restart"]
        assert (restart["attempts"], restart["mode"]) == (0, "fail")
        [reschedule] = group["reschedule"]
        assert (reschedule["attempts"], reschedule["unlimited"]) == (0, False)
        [constraint] = group["constraint"]
        assert constraint["attribute"] == "${node.class}"
        assert constraint["value"] == flavor.name
        assert group["ephemeral_disk"][0]["size"] == flavor.disk_gib * 1024
        [task] = group["task"]
        task = task["worker"]
        [resources] = task["resources"]
        assert (resources["cores"], resources["memory"]) == (flavor.vcpus, flavor.memory_mib)
        [config] = task["config"]
        assert config["args"] == [
            "worker",
            "run",
            "${NOMAD_META_job_id}",
            "--attempt",
            "${NOMAD_META_attempt}",
        ]
        # Secrets come from a Nomad variable through a template, never from the spec
        # (test_no_secret_of_the_settings_in_any_rendered_file), and a change of the
        # variable does not kill a running attempt (restart attempts 0).
        [template] = task["template"]
        assert "nomadVar" in template["data"] and template["env"] is True
        assert template["change_mode"] == "noop"


#: Values no rendered file may hold: the secrets of ``secret_settings``.
SECRETS = {
    "nomad_token": "3f1c0d9e-nomad-acl-token",
    "database password": "db-Pa55word-1234",
    "amqp password": "amqp-Pa55word-5678",
    "s3 secret": "s3-secret-key-9012",
}


@pytest.fixture
def secret_settings(settings: Settings) -> Settings:
    """Settings holding every secret joblife knows of (the token, the database and broker
    passwords, the S3 keys), as the machine that renders and deploys has them."""
    return Settings(
        nomad_addr="https://nomad.example:4646",
        nomad_token=SECRETS["nomad_token"],
        database_url=f"postgresql://joblife:{SECRETS['database password']}@db.example/joblife",
        amqp_url=f"amqp://joblife:{SECRETS['amqp password']}@rabbit.example:5672/%2F",
        s3_access_key_id="AKIAJOBLIFEEXAMPLE",
        s3_secret_access_key=SECRETS["s3 secret"],
    )


def test_no_secret_of_the_settings_in_any_rendered_file(secret_settings: Settings):
    specs = render_specs(secret_settings, load_job_types(secret_settings))
    assert {s.kind for s in specs} == {"processing", "service", "web", "client"}
    for spec in specs:
        for what, secret in {**SECRETS, "S3 key id": "AKIAJOBLIFEEXAMPLE"}.items():
            assert secret not in spec.text, f"{spec.path} holds the {what}"


def _template_environment(task: dict, variables: dict[str, dict[str, str]]) -> dict[str, str]:
    """What a task's ``env = true`` templates put in its environment, a later template's
    keys winning as in Nomad."""
    environment: dict[str, str] = {}
    for template in task["Templates"]:
        if template["Envvars"]:
            environment.update(template_environment(template["EmbeddedTmpl"], variables))
    return environment


def _task_environments(
    settings: Settings, variable: dict[str, str], web_variable: dict[str, str] | None = None
) -> dict[str, dict]:
    """What the templates of each rendered task put in its environment, by task name
    (the processing tasks as "worker:<job>"), given the items of the Nomad variable and
    of the dashboard's own variable."""
    variables = {settings.nomad_variables_path: variable, WEB_VARIABLES_PATH: web_variable or {}}
    environments = {}
    for spec in render_specs(settings, load_job_types(settings)):
        if spec.kind == "client":
            continue
        for group in parse_hcl(spec.text)["TaskGroups"]:
            [task] = group["Tasks"]
            env_templates = [t for t in task["Templates"] if t["Envvars"]]
            assert env_templates, task["Name"]
            [change_mode] = {t["ChangeMode"] for t in env_templates}
            name = f"worker:{spec.job_id}" if spec.kind == "processing" else task["Name"]
            environments[name] = {
                "env": _template_environment(task, variables),
                "change_mode": change_mode,
            }
    return environments


#: The periodic services (one task each); the other tasks are long-running.
PERIODIC = {"create", "configure", "dispatch", "monitor", "publish"}


def test_each_task_gets_only_the_secrets_of_its_part(settings: Settings):
    variable = {
        "database_url": "postgresql://joblife_run:service-pw@db/joblife",
        "worker_database_url": "postgresql://joblife_worker_login:worker-pw@db/joblife",
        "amqp_url": "amqp://joblife:amqp-pw@rabbit/%2F",
        "nomad_token": "token-of-the-services",
        "nomad_addr": "http://nomad.service.consul:4646",
        "s3_access_key_id": "key-id",
        "s3_secret_access_key": "key-secret",
        "storage_url": "s3://products",
    }
    # The dashboard's own variable: its cookie key, its users (a file, never an
    # environment variable), a setting of its own, and a secret of the services put there
    # by mistake, which it must not get either.
    web_variable = {
        "web_secret_key": "cookie-key-of-the-dashboard",
        "web_users": "alice:operator:$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA\n",
        "web_nomad_ui_url": "https://nomad.example/ui",
        "nomad_token": "token-put-in-the-wrong-variable",
    }
    environments = _task_environments(settings, variable, web_variable)
    storage = {"JOBLIFE_S3_ACCESS_KEY_ID", "JOBLIFE_S3_SECRET_ACCESS_KEY"}
    common = {"JOBLIFE_DATABASE_URL", "JOBLIFE_NOMAD_ADDR", "JOBLIFE_STORAGE_URL"}
    expected = {
        "create": common | storage,
        "configure": common | storage,
        "dispatch": common | {"JOBLIFE_NOMAD_TOKEN"},
        "monitor": common | {"JOBLIFE_NOMAD_TOKEN"},
        "publish": common | {"JOBLIFE_AMQP_URL"},
        "run": common | storage | {"JOBLIFE_NOMAD_TOKEN", "JOBLIFE_AMQP_URL"},
        "web": common | {"JOBLIFE_WEB_SECRET_KEY", "JOBLIFE_WEB_NOMAD_UI_URL"},
    }
    workers = {n: e for n, e in environments.items() if n.startswith("worker:")}
    assert len(workers) == len(load_job_types(settings))
    for name, rendered in workers.items():
        env = rendered["env"]
        assert set(env) == common | storage, name
        # The worker role's login, never the services' URL, token or broker.
        assert env["JOBLIFE_DATABASE_URL"] == variable["worker_database_url"], name
        assert rendered["change_mode"] == "noop", name
    services = {n: e for n, e in environments.items() if not n.startswith("worker:")}
    assert {n: set(e["env"]) for n, e in services.items()} == expected
    for name, rendered in services.items():
        assert rendered["env"]["JOBLIFE_DATABASE_URL"] == variable["database_url"], name
        # One cycle per periodic run: noop; the long-running loops restart on a change.
        assert rendered["change_mode"] == ("noop" if name in PERIODIC else "restart"), name
    web = environments["web"]["env"]
    assert web["JOBLIFE_WEB_SECRET_KEY"] == web_variable["web_secret_key"]


#: A value an env file written as it is would cut or change (go-envparse: ``#`` starts a
#: comment, quotes quote, ``\`` escapes in double quotes, a line ends at a newline, spaces
#: at either end are trimmed), with what JSON escapes (``<>&``, U+2028, control
#: characters) and what it leaves as it is (``$``, DEL, non-ASCII). No NUL: no environment
#: variable can hold one.
HOSTILE = (
    '  p#ss"w\'rd\\ $HOME ${NOMAD_TOKEN} `id` \'single\' "double" \\" <b>&amp;'
    "\nexport X=1 # not a comment\r\n\t\x01\x1f\x7f é ☃ 🔥 \u2028\u2029 \\u0041 \\ "
)


def test_values_reach_every_task_exactly_whatever_they_hold(settings: Settings):
    """Nomad reads a template's environment with go-envparse: every value of both
    variables, hostile as :data:`HOSTILE`, reaches each task that gets it unchanged
    (checked through a port of envparse, tests/support/nomad_envfile.py)."""
    keys = ("database_url", "worker_database_url", "amqp_url", "nomad_token")
    keys += ("attempt_secret_key", "s3_access_key_id", "s3_secret_access_key", "storage_url")
    # Each key its own value, so a value that lands under another key shows.
    variable = {key: HOSTILE + key + HOSTILE for key in keys}
    web_variable = {"web_secret_key": HOSTILE + "web", "web_trusted_proxies": '["10.0.0.5"]'}
    expected = {f"JOBLIFE_{k.upper()}": v for k, v in {**variable, **web_variable}.items()}
    seen = set()
    for name, rendered in _task_environments(settings, variable, web_variable).items():
        for key, value in rendered["env"].items():
            if name.startswith("worker:") and key == "JOBLIFE_DATABASE_URL":
                key = "JOBLIFE_WORKER_DATABASE_URL"  # the worker role's login
            assert value == expected[key], (name, key)
            seen.add(key)
    assert seen == set(expected)  # every value was checked in some task


def test_service_specs_are_periodic_without_overlap(settings: Settings):
    services = [s for s in render_specs(settings, {}) if s.kind == "service"]
    periodic = [parse_hcl(s.text) for s in services if s.job_id != "joblife-services"]
    assert {j["ID"] for j in periodic} == {
        "joblife-create",
        "joblife-configure",
        "joblife-dispatch",
        "joblife-monitor",
        "joblife-publish",
    }
    for job in periodic:
        assert job["Periodic"]["ProhibitOverlap"] is True
        assert job["TaskGroups"][0]["RestartPolicy"]["Attempts"] == 0
        service = job["ID"].split("-", 1)[1]
        args = job["TaskGroups"][0]["Tasks"][0]["Config"]["args"]
        assert args == ["run", "--once", "--services", service]
    [long_running] = [parse_hcl(s.text) for s in services if s.job_id == "joblife-services"]
    assert long_running["Type"] == "service"
    assert long_running["TaskGroups"][0]["Count"] >= 2
    assert long_running["TaskGroups"][0]["Tasks"][0]["Config"]["args"] == ["run"]


def test_client_configs_name_the_flavor_node_class(settings: Settings):
    clients = [s for s in render_specs(settings, {}) if s.kind == "client"]
    assert {Path(s.path).stem for s in clients} == set(flavor_catalogue(settings))
    for spec in clients:
        [client] = parse_document(spec.text)["client"]
        assert client["node_class"] == Path(spec.path).stem
        assert "docker" in parse_document(spec.text)["plugin"][0]


def test_raw_exec_variant(settings: Settings):
    raw = Settings(nomad_task_driver="raw_exec", nomad_joblife_command="/opt/joblife/bin/joblife")
    [spec] = [s for s in render_specs(raw, load_job_types(raw)) if s.job_id == "joblife-test"]
    task = parse_hcl(spec.text)["TaskGroups"][0]["Tasks"][0]
    assert task["Driver"] == "raw_exec"
    assert task["Config"]["command"] == "/opt/joblife/bin/joblife"


def test_checked_in_examples_match_the_renderer(settings: Settings):
    """nomad/ holds what `joblife nomad render --out nomad` writes for the job types
    shipped with joblife: run it again after changing a type, a flavor or the specs."""
    rendered = {s.path: s.text for s in render_specs(settings, _entry_point_types(settings))}
    root = REPO / "nomad"
    on_disk = {str(p.relative_to(root)): p.read_text() for p in root.rglob("*.hcl") if p.is_file()}
    assert sorted(on_disk) == sorted(rendered), "run: joblife nomad render --out nomad"
    for path, text in rendered.items():
        assert on_disk[path] == text, f"nomad/{path} drifted: run joblife nomad render --out nomad"


# -- the dashboard -------------------------------------------------------------------------------
def _web(settings: Settings) -> tuple[dict, dict]:
    """The dashboard's spec as the API job (the double's parser) and as HCL (for the blocks
    the double does not translate: network, service)."""
    [spec] = [s for s in render_specs(settings, {}) if s.kind == "web"]
    assert (spec.path, spec.job_id) == ("services/joblife-web.nomad.hcl", "joblife-web")
    [job] = parse_document(spec.text)["job"]
    return parse_hcl(spec.text), job["joblife-web"]


def _web_environment(task: dict, variables: dict[str, dict[str, str]]) -> dict[str, str]:
    """The dashboard's environment as Nomad builds it: the env block, then the templates'
    (which override it)."""
    return {**task["Env"], **_template_environment(task, variables)}


def test_web_spec_is_a_checked_service_on_its_port(settings: Settings):
    job, body = _web(settings)
    assert job["Type"] == "service"
    [group] = job["TaskGroups"]
    assert group["Count"] == 1
    assert group["RestartPolicy"]["Mode"] == "delay"  # a service restarts in place
    [group_hcl] = body["group"]
    [network] = group_hcl["web"]["network"]
    [port] = network["port"]
    assert port["http"]["to"] == 8080
    [service] = group_hcl["web"]["service"]
    assert (service["provider"], service["name"], service["port"]) == (
        "nomad",
        "joblife-web",
        "http",
    )
    [check] = service["check"]
    assert (check["type"], check["path"]) == ("http", "/healthz")
    assert check["interval"] and check["timeout"]
    [task] = group["Tasks"]
    assert task["Driver"] == "docker"
    assert task["Config"]["args"] == ["web"]
    assert task["Config"]["ports"] == ["http"]
    assert "volumes" not in task["Config"]  # no docker socket for the dashboard
    assert task["KillSignal"] == "SIGTERM"
    env = task["Env"]
    # Listens on every address of its container, on the port mapped from the host's.
    assert (env["JOBLIFE_WEB_ADDRESS"], env["JOBLIFE_WEB_PORT"]) == ("0.0.0.0", "8080")
    assert env["JOBLIFE_WEB_COOKIE_SECURE"] == "true"  # behind HTTPS in production
    assert env["JOBLIFE_WEB_USERS_FILE"] == "${NOMAD_SECRETS_DIR}/web-users"


def test_web_users_file_comes_from_the_dashboard_variable(settings: Settings):
    job, body = _web(settings)
    [task] = job["TaskGroups"][0]["Tasks"]
    [users] = [
        t for t in task["Templates"] if t["DestPath"] == task["Env"]["JOBLIFE_WEB_USERS_FILE"]
    ]
    assert users["Envvars"] is False
    assert users["ChangeMode"] == "noop"  # the dashboard reads the file again itself
    [users_hcl] = [
        t for t in body["group"][0]["web"]["task"][0]["web"]["template"] if not t.get("env")
    ]
    assert users_hcl["perms"] == "0600"
    lines = "alice:operator:$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA\nbob:viewer:\n"
    web_variable = {"web_users": lines, "web_secret_key": "k"}
    text = render_template(users["EmbeddedTmpl"], {WEB_VARIABLES_PATH: web_variable})
    assert text.strip("\n") == lines.strip("\n")
    # The shared variable's keys do not reach the file; without the key, it is empty.
    shared = {settings.nomad_variables_path: {"web_users": "mallory:operator:x"}}
    assert render_template(users["EmbeddedTmpl"], shared).strip() == ""


def test_web_spec_settings_win_over_the_variables(settings: Settings):
    """A template's environment overrides the env block in Nomad: a variable's web_port,
    web_cookie_secure... must not move the dashboard off its port or make its cookie
    plain."""
    job, _ = _web(settings)
    [task] = job["TaskGroups"][0]["Tasks"]
    overrides = {
        "web_address": "127.0.0.1",
        "web_port": "1",
        "web_cookie_secure": "false",
        "web_users_file": "/tmp/users",
        "data_dir": "/tmp",
    }
    variables = {
        settings.nomad_variables_path: {"database_url": "postgresql://db/j", **overrides},
        WEB_VARIABLES_PATH: {"web_secret_key": "k", **overrides},
    }
    env = _web_environment(task, variables)
    assert env == {
        **task["Env"],
        "JOBLIFE_DATABASE_URL": "postgresql://db/j",
        "JOBLIFE_WEB_SECRET_KEY": "k",
    }


def test_web_cookie_plain_only_when_the_settings_say_so(settings: Settings):
    for value, expected in ((None, "true"), (True, "true"), (False, "false")):
        job, _ = _web(settings.model_copy(update={"web_cookie_secure": value}))
        env = job["TaskGroups"][0]["Tasks"][0]["Env"]
        assert env["JOBLIFE_WEB_COOKIE_SECURE"] == expected, value


def test_web_raw_exec_variant(settings: Settings):
    raw = Settings(nomad_task_driver="raw_exec", nomad_joblife_command="/opt/joblife/bin/joblife")
    job, body = _web(raw)
    [task] = job["TaskGroups"][0]["Tasks"]
    assert task["Driver"] == "raw_exec"
    assert task["Config"] == {"command": "/opt/joblife/bin/joblife", "args": ["web"]}
    # The host's dynamic port, on the allocation's address only.
    [port] = body["group"][0]["web"]["network"][0]["port"]
    assert "to" not in port["http"]
    assert task["Env"]["JOBLIFE_WEB_PORT"] == "${NOMAD_PORT_http}"
    assert task["Env"]["JOBLIFE_WEB_ADDRESS"] == "${NOMAD_IP_http}"


def test_web_variable_cannot_be_the_shared_one(settings: Settings):
    shared = settings.model_copy(update={"nomad_variables_path": WEB_VARIABLES_PATH})
    with pytest.raises(ConfigurationError, match="dashboard's own variable"):
        render_specs(shared, {})
