"""The Nomad job specs and client configurations joblife runs on, generated from the
registered job types, the flavor catalogue and the settings (``joblife nomad render``).

- one **parameterized batch job** per job type (its ``NOMAD_JOB_NAME``): every processing
  attempt is one dispatched child with meta ``job_id`` and ``attempt``, running
  ``joblife worker run ${NOMAD_META_job_id} --attempt ${NOMAD_META_attempt}`` on a client
  of the type's flavor (``${node.class}``), with the flavor's cores, memory and disk;
  ``restart`` and ``reschedule`` are 0 because joblife owns retries;
- the **services** as periodic batch jobs (``prohibit_overlap``), one per service, and a
  long-running variant (``joblife run``, several replicas are safe);
- a **client configuration** per flavor (node class, driver plugin).

Secrets never appear in a spec or in dispatch meta: every task reads them from a Nomad
variable (``nomad_variables_path``) through a template rendered into its environment.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from joblife.config import Settings
from joblife.errors import ConfigurationError
from joblife.lifecycle.orchestrator import SERVICES
from joblife.model.flavors import WorkerFlavor, flavor_catalogue
from joblife.model.template import JobTemplate
from joblife.nomad.hcl import Block, render

#: The dispatch meta every processing child carries (and nothing else: no secret).
META_REQUIRED = ("job_id", "attempt")
PROCESSING_GROUP = "worker"
PROCESSING_TASK = "worker"
#: The services run as periodic jobs, with the command each runs (one cycle per run).
SERVICES_JOB = "joblife-services"
SERVICE_REPLICAS = 2
SERVICE_CPU_MHZ = 500
SERVICE_MEMORY_MIB = 512
DOCKER_SOCKET = "/var/run/docker.sock"

HEADER = (
    "Rendered by `joblife nomad render` from joblife's settings, job types and flavor",
    "catalogue. Change those and render again rather than editing this file.",
)

Kind = Literal["processing", "service", "client"]


@dataclass(frozen=True)
class RenderedSpec:
    """One rendered file: its path under the output directory, its HCL, what it is and,
    for a job spec, the Nomad job id it registers."""

    path: str
    text: str
    kind: Kind
    job_id: str | None = None


def render_specs(
    settings: Settings, job_types: Mapping[str, type[JobTemplate]]
) -> list[RenderedSpec]:
    """Every spec and client configuration, in a stable order."""
    catalogue = flavor_catalogue(settings)
    specs: list[RenderedSpec] = []
    owners: dict[str, str] = {}
    for job_type, cls in sorted(job_types.items()):
        name = str(cls.NOMAD_JOB_NAME)
        if name in owners:
            raise ConfigurationError(
                f"job types {owners[name]!r} and {job_type!r} both name the Nomad job "
                f"{name!r}: each type needs its own parameterized job"
            )
        owners[name] = job_type
        flavor = catalogue[str(cls.WORKER_FLAVOR_NAME)]
        block = processing_job(name, job_type, flavor, settings)
        specs.append(
            RenderedSpec(f"jobs/{name}.nomad.hcl", render([block], HEADER), "processing", name)
        )
    for service in SERVICES:
        block = periodic_service_job(service, settings)
        job_id = block.labels[0]
        specs.append(
            RenderedSpec(f"services/{job_id}.nomad.hcl", render([block], HEADER), "service", job_id)
        )
    block = long_running_services_job(settings)
    specs.append(
        RenderedSpec(
            f"services/{SERVICES_JOB}.nomad.hcl", render([block], HEADER), "service", SERVICES_JOB
        )
    )
    for flavor in sorted(catalogue.values(), key=lambda f: (f.vcpus, f.memory_mib, f.name)):
        text = render(client_config(flavor, settings), HEADER)
        specs.append(RenderedSpec(f"clients/{flavor.name}.hcl", text, "client"))
    return specs


def processing_job(name: str, job_type: str, flavor: WorkerFlavor, settings: Settings) -> Block:
    """The parameterized batch job running one job type's attempts."""
    job = _job(name, "batch", settings)
    job.attr("node_pool", settings.nomad_node_pool)
    job.block("meta").attr("joblife_job_type", job_type).attr("joblife_flavor", flavor.name)
    job.block("parameterized").attr("payload", "forbidden").attr(
        "meta_required", list(META_REQUIRED)
    )
    group = job.block("group", PROCESSING_GROUP).attr("count", 1)
    group.block("constraint").attr("attribute", "${node.class}").attr("value", flavor.name)
    _no_retries(group)
    group.block("ephemeral_disk").attr("size", flavor.disk_gib * 1024)
    args = ["worker", "run", "${NOMAD_META_job_id}", "--attempt", "${NOMAD_META_attempt}"]
    task = _task(group, PROCESSING_TASK, args, settings, docker_socket=True)
    task.block("env").attr("JOBLIFE_DATA_DIR", "${NOMAD_ALLOC_DIR}/joblife")
    task.block("resources").attr("cores", flavor.vcpus).attr("memory", flavor.memory_mib)
    task.attr("kill_timeout", "30s")
    return job


def periodic_service_job(service: str, settings: Settings) -> Block:
    """One service as a periodic batch job: one cycle per period, never two at once."""
    job = _job(f"joblife-{service}", "batch", settings)
    periodic = job.block("periodic")
    periodic.attr("crons", [settings.nomad_service_cron]).attr("prohibit_overlap", True)
    periodic.attr("time_zone", "UTC")
    group = job.block("group", service).attr("count", 1)
    _no_retries(group)  # the next period is the retry
    # `run --once --services X`: one cycle of X, the same for every service (publish
    # included, whose own command loops).
    task = _task(group, service, ["run", "--once", "--services", service], settings)
    _service_resources(task)
    return job


def long_running_services_job(settings: Settings) -> Block:
    """The services in long-running ``joblife run`` loops; replicas share the work."""
    job = _job(SERVICES_JOB, "service", settings)
    group = job.block("group", "run").attr("count", SERVICE_REPLICAS)
    restart = group.block("restart")
    restart.attr("attempts", 10).attr("interval", "30m").attr("delay", "15s").attr("mode", "delay")
    task = _task(group, "run", ["run"], settings)
    task.attr("kill_signal", "SIGTERM").attr("kill_timeout", "30s")
    _service_resources(task)
    return job


def client_config(flavor: WorkerFlavor, settings: Settings) -> list[Block]:
    """The Nomad client agent configuration of a worker of ``flavor``."""
    client = Block("client").attr("enabled", True).attr("node_class", flavor.name)
    client.attr("node_pool", settings.nomad_node_pool)
    client.attr("meta", {"joblife_flavor": flavor.name})
    if settings.nomad_task_driver == "raw_exec":
        plugin = Block("plugin", ("raw_exec",))
        plugin.block("config").attr("enabled", True)
    else:
        plugin = Block("plugin", ("docker",))
        config = plugin.block("config")
        config.block("volumes").attr("enabled", True)  # the worker drives science containers
        config.block("gc").attr("image", True).attr("image_delay", "1h")
    return [client, plugin]


# -- shared parts ------------------------------------------------------------------------------
def _job(name: str, type_: str, settings: Settings) -> Block:
    job = Block("job", (name,)).attr("type", type_).attr("datacenters", settings.nomad_datacenters)
    job.attr("namespace", settings.nomad_namespace)
    job.attr("region", settings.nomad_region)
    return job


def _no_retries(group: Block) -> None:
    # Nomad's batch defaults (3 restarts in 24 h, 1 reschedule) would run an attempt again
    # behind joblife's back: joblife decides about retries.
    group.block("restart").attr("attempts", 0).attr("mode", "fail")
    group.block("reschedule").attr("attempts", 0).attr("unlimited", False)


def _task(
    group: Block, name: str, args: list[str], settings: Settings, docker_socket: bool = False
) -> Block:
    task = group.block("task", name)
    if settings.nomad_task_driver == "raw_exec":
        task.attr("driver", "raw_exec")
        task.block("config").attr("command", settings.nomad_joblife_command).attr("args", args)
    else:
        task.attr("driver", "docker")
        config = task.block("config").attr("image", settings.nomad_worker_image)
        config.attr("command", "joblife").attr("args", args)
        if docker_socket:
            config.attr("volumes", [f"{DOCKER_SOCKET}:{DOCKER_SOCKET}"])
    template = task.block("template")
    template.attr("data", _secrets_template(settings.nomad_variables_path))
    template.attr("destination", "${NOMAD_SECRETS_DIR}/joblife.env")
    template.attr("env", True).attr("change_mode", "restart")
    return task


def _service_resources(task: Block) -> None:
    task.block("resources").attr("cpu", SERVICE_CPU_MHZ).attr("memory", SERVICE_MEMORY_MIB)


def _secrets_template(path: str) -> str:
    # Every key of the variable becomes JOBLIFE_<KEY> (database_url, amqp_url, nomad_token,
    # s3_secret_access_key...), in the task's environment only.
    return (
        f'{{{{- with nomadVar "{path}" -}}}}\n'
        "{{- range $key, $value := . }}\n"
        "JOBLIFE_{{ $key | toUpper }}={{ $value }}\n"
        "{{- end }}\n"
        "{{- end }}\n"
    )
