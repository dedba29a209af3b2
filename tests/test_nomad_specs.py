"""The rendered Nomad specs (issue 4): they parse as HCL2 (python-hcl2), carry what joblife
relies on (restart and reschedule 0, meta_required, the flavor's constraint and
resources, no secret), and the examples in ``nomad/`` are what ``joblife nomad render``
writes today."""

from __future__ import annotations

from pathlib import Path

import pytest
from joblife.config import Settings
from joblife.model import load_job_types
from joblife.model.flavors import flavor_catalogue
from joblife.model.registry import ENTRY_POINT_GROUP
from joblife.nomad.specs import render_specs

from tests.nomad_double.jobspec import parse_document, parse_hcl

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
        assert "meta_optional" not in parameterized
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
        # Secrets come from a Nomad variable through a template, never from the spec.
        [template] = task["template"]
        assert "nomadVar" in template["data"] and template["env"] is True
        assert "password" not in spec.text.lower() and "secret_access" not in spec.text


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
