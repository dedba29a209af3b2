"""The rendered Nomad specs (issue 4): they parse as HCL2 (python-hcl2), carry what joblife
relies on (restart and reschedule 0, meta_required, the flavor's constraint and
resources), hold no secret of the settings, give each task only the secrets of the
Nomad variable its part needs, and the examples in ``nomad/`` are what ``joblife nomad
render`` writes today."""

from __future__ import annotations

from pathlib import Path

import pytest
from joblife.config import Settings
from joblife.model import load_job_types
from joblife.model.flavors import flavor_catalogue
from joblife.model.registry import ENTRY_POINT_GROUP
from joblife.nomad.specs import render_specs

from tests.nomad_double.jobspec import parse_document, parse_hcl
from tests.nomad_double.template import template_environment

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
    assert {s.kind for s in specs} == {"processing", "service", "client"}
    for spec in specs:
        for what, secret in {**SECRETS, "S3 key id": "AKIAJOBLIFEEXAMPLE"}.items():
            assert secret not in spec.text, f"{spec.path} holds the {what}"


def _task_environments(settings: Settings, variable: dict[str, str]) -> dict[str, dict]:
    """What the template of each rendered task puts in its environment, by task name
    (the processing tasks as "worker:<job>"), given the Nomad variable's items."""
    environments = {}
    for spec in render_specs(settings, load_job_types(settings)):
        if spec.kind == "client":
            continue
        for group in parse_hcl(spec.text)["TaskGroups"]:
            [task] = group["Tasks"]
            [template] = task["Templates"]
            assert template["Envvars"] is True
            name = f"worker:{spec.job_id}" if spec.kind == "processing" else task["Name"]
            environments[name] = {
                "env": template_environment(
                    template["EmbeddedTmpl"], {settings.nomad_variables_path: variable}
                ),
                "change_mode": template["ChangeMode"],
            }
    return environments


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
    environments = _task_environments(settings, variable)
    storage = {"JOBLIFE_S3_ACCESS_KEY_ID", "JOBLIFE_S3_SECRET_ACCESS_KEY"}
    common = {"JOBLIFE_DATABASE_URL", "JOBLIFE_NOMAD_ADDR", "JOBLIFE_STORAGE_URL"}
    expected = {
        "create": common | storage,
        "configure": common | storage,
        "dispatch": common | {"JOBLIFE_NOMAD_TOKEN"},
        "monitor": common | {"JOBLIFE_NOMAD_TOKEN"},
        "publish": common | {"JOBLIFE_AMQP_URL"},
        "run": common | storage | {"JOBLIFE_NOMAD_TOKEN", "JOBLIFE_AMQP_URL"},
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
        # One cycle per periodic run: noop; the long-running loop restarts on a change.
        assert rendered["change_mode"] == ("restart" if name == "run" else "noop"), name


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
