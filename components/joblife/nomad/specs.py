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

Secrets never appear in a spec, nor in dispatch meta but the attempt's own secret
(``attempt_secret``, which admits its worker to that attempt only): every task reads them
from a Nomad variable (``nomad_variables_path``) through a template rendered into its
environment, and each task gets only the secret keys its part needs (:data:`SECRETS_OF`):
a processing task the worker role's database URL (key ``worker_database_url``) and the
storage keys, never the Nomad token, the broker URL, the services' database URL or the
attempt secret key; the Nomad token and that key go only to the services that dispatch and
monitor. The variable's other keys (non-secret settings)
reach every task.

The operator dashboard (``joblife web``) is a **service job** of its own (:func:`web_job`):
behind a Nomad service with an HTTP check on ``/healthz``, it gets the services' database
URL from that variable and its cookie key (``web_secret_key``) and users file
(``web_users``) from its own variable (:data:`WEB_VARIABLES_PATH`), which Nomad lets that
job read without a policy and which no other joblife task reads. It is rendered next to
the services but not registered by ``joblife nomad deploy``: a dashboard is opt-in.
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

#: The dispatch meta every processing child carries.
META_REQUIRED = ("job_id", "attempt")
#: The attempt's secret (joblife.db.worker_doors), the one secret in dispatch meta: it
#: admits the worker to its own attempt only, and whoever may read the Nomad job sees it.
#: Optional to Nomad so that a dispatch by hand is accepted (its worker can write nothing).
META_OPTIONAL = ("attempt_secret",)
PROCESSING_GROUP = "worker"
PROCESSING_TASK = "worker"
#: The services run as periodic jobs, with the command each runs (one cycle per run).
SERVICES_JOB = "joblife-services"
SERVICE_REPLICAS = 2
SERVICE_CPU_MHZ = 500
SERVICE_MEMORY_MIB = 512
DOCKER_SOCKET = "/var/run/docker.sock"

#: The keys of the Nomad variable that hold secrets, and the setting each becomes
#: (``JOBLIFE_<SETTING>``): the workers' database URL (the ``joblife_worker`` role's login)
#: is their ``database_url``.
SECRET_KEYS = {
    "database_url": "database_url",
    "worker_database_url": "database_url",
    "amqp_url": "amqp_url",
    "nomad_token": "nomad_token",
    "attempt_secret_key": "attempt_secret_key",
    "s3_access_key_id": "s3_access_key_id",
    "s3_secret_access_key": "s3_secret_access_key",
}
_STORAGE = ("s3_access_key_id", "s3_secret_access_key")
#: The secret keys each task gets: the processing task ("worker"), each service, and the
#: long-running ``joblife run`` ("run", every service). Any other secret key is withheld.
SECRETS_OF: dict[str, tuple[str, ...]] = {
    "worker": ("worker_database_url", *_STORAGE),
    "create": ("database_url", *_STORAGE),  # discovery lists the storage
    "configure": ("database_url", *_STORAGE),  # a type's hooks may look at the storage
    "dispatch": ("database_url", "nomad_token", "attempt_secret_key"),
    "monitor": ("database_url", "nomad_token", "attempt_secret_key"),  # it re-dispatches
    "publish": ("database_url", "amqp_url"),
    "run": ("database_url", "amqp_url", "nomad_token", "attempt_secret_key", *_STORAGE),
    # The dashboard reads the jobs; its cookie key comes from its own variable (web_job).
    "web": ("database_url",),
}

#: The dashboard: its job, its own Nomad variable (``nomad/jobs/<job id>``: readable by that
#: job's tasks without an ACL policy, by no other joblife job), the key of that variable
#: holding the users file (``joblife web-users``, rendered into a file, never into the
#: environment) and the port ``joblife web`` listens on inside its container.
WEB_JOB = "joblife-web"
WEB_VARIABLES_PATH = f"nomad/jobs/{WEB_JOB}"
WEB_USERS_KEY = "web_users"
WEB_USERS_FILE = "${NOMAD_SECRETS_DIR}/web-users"
WEB_CONTAINER_PORT = 8080
WEB_REPLICAS = 1
#: The dashboard's Nomad service check (``/healthz`` answers without a login).
WEB_CHECK = {"type": "http", "path": "/healthz", "interval": "10s", "timeout": "2s"}

HEADER = (
    "Rendered by `joblife nomad render` from joblife's settings, job types and flavor",
    "catalogue. Change those and render again rather than editing this file.",
)

Kind = Literal["processing", "service", "web", "client"]


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
    text = render([web_job(settings)], HEADER)
    specs.append(RenderedSpec(f"services/{WEB_JOB}.nomad.hcl", text, "web", WEB_JOB))
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
    ).attr("meta_optional", list(META_OPTIONAL))
    group = job.block("group", PROCESSING_GROUP).attr("count", 1)
    group.block("constraint").attr("attribute", "${node.class}").attr("value", flavor.name)
    _no_retries(group)
    group.block("ephemeral_disk").attr("size", flavor.disk_gib * 1024)
    args = ["worker", "run", "${NOMAD_META_job_id}", "--attempt", "${NOMAD_META_attempt}"]
    task = _task(group, PROCESSING_TASK, args, settings, "worker", docker_socket=True)
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
    task = _task(group, service, ["run", "--once", "--services", service], settings, service)
    if service == "publish":
        _no_default_spool(task)
    _service_resources(task)
    return job


def long_running_services_job(settings: Settings) -> Block:
    """The services in long-running ``joblife run`` loops; replicas share the work."""
    job = _job(SERVICES_JOB, "service", settings)
    group = job.block("group", "run").attr("count", SERVICE_REPLICAS)
    _restart_in_place(group)
    task = _task(group, "run", ["run"], settings, "run", change_mode="restart")
    _no_default_spool(task)
    task.attr("kill_signal", "SIGTERM").attr("kill_timeout", "30s")
    _service_resources(task)
    return job


def _no_default_spool(task: Block) -> None:
    """Without a broker, a relay on the embedded defaults appends the messages to a spool
    in its data dir: in an allocation that file is gone with it, so the rendered relays
    keep them in the outbox instead (``publication_spool = none``) until ``amqp_url`` or a
    ``publication_spool`` on shared storage is set in the variable (its template's values
    win over the ``env`` block)."""
    task.block("env").attr("JOBLIFE_PUBLICATION_SPOOL", "none")


def web_job(settings: Settings) -> Block:
    """The operator dashboard (``joblife web``) as a service job: one allocation by default
    (more need the same ``web_secret_key``, which the dashboard's variable gives them all),
    a port ``http`` behind the Nomad service :data:`WEB_JOB` checked on ``/healthz``.

    What the spec sets itself (listen address and port, secure cookies, the users file, the
    data directory) cannot be overridden by a variable's key: Nomad lets a template's
    environment override the ``env`` block, so both templates withhold those keys. The
    cookie is secure (HTTPS only) unless the settings rendering the spec say
    ``web_cookie_secure = false``: in production the dashboard sits behind HTTPS."""
    if settings.nomad_variables_path.strip("/") == WEB_VARIABLES_PATH:
        raise ConfigurationError(
            f"nomad_variables_path {settings.nomad_variables_path!r} is the dashboard's own "
            "variable: every joblife task would read the dashboard's cookie key and users"
        )
    raw = settings.nomad_task_driver == "raw_exec"
    job = _job(WEB_JOB, "service", settings)
    group = job.block("group", "web").attr("count", WEB_REPLICAS)
    # docker: a dynamic host port mapped to the container's port; raw_exec: the task
    # listens on the host port itself, on the allocation's address only.
    port = group.block("network").block("port", "http")
    port.attr("to", None if raw else WEB_CONTAINER_PORT)
    service = group.block("service").attr("provider", "nomad").attr("name", WEB_JOB)
    service.attr("port", "http")
    check = service.block("check")
    for name, value in WEB_CHECK.items():
        check.attr(name, value)
    _restart_in_place(group)
    env = {
        "JOBLIFE_WEB_ADDRESS": "${NOMAD_IP_http}" if raw else "0.0.0.0",
        "JOBLIFE_WEB_PORT": "${NOMAD_PORT_http}" if raw else str(WEB_CONTAINER_PORT),
        "JOBLIFE_WEB_COOKIE_SECURE": "false" if settings.web_cookie_secure is False else "true",
        "JOBLIFE_WEB_USERS_FILE": WEB_USERS_FILE,
        # Only for a cookie key made on first use when web_secret_key is missing: kept
        # across restarts of the task, not across allocations.
        "JOBLIFE_DATA_DIR": "${NOMAD_ALLOC_DIR}/joblife",
    }
    own = tuple(name.removeprefix("JOBLIFE_").lower() for name in env)
    withheld = (WEB_USERS_KEY, *own)
    task = _task(
        group,
        "web",
        ["web"],
        settings,
        "web",
        change_mode="restart",  # stateless: sessions live in signed cookies
        withheld=withheld,
        ports=None if raw else ["http"],
    )
    # Its own variable after the shared one (a later template's keys win in Nomad), with
    # every secret key of the shared variable withheld: web_secret_key and the dashboard's
    # settings (web_trusted_user_header, web_nomad_ui_url...) only.
    own_vars = task.block("template")
    own_vars.attr("data", secrets_template(WEB_VARIABLES_PATH, (), withheld))
    own_vars.attr("destination", "${NOMAD_SECRETS_DIR}/joblife-web.env")
    own_vars.attr("env", True).attr("change_mode", "restart")
    # The users file: read again by the dashboard when it changes, so no restart.
    users = task.block("template")
    users.attr("data", file_template(WEB_VARIABLES_PATH, WEB_USERS_KEY))
    users.attr("destination", WEB_USERS_FILE)
    users.attr("perms", "0600").attr("change_mode", "noop")
    block = task.block("env")
    for name, value in env.items():
        block.attr(name, value)
    task.attr("kill_signal", "SIGTERM").attr("kill_timeout", "10s")
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


def _restart_in_place(group: Block) -> None:
    # A long-running service restarts where it is, with a delay, rather than failing.
    restart = group.block("restart")
    restart.attr("attempts", 10).attr("interval", "30m").attr("delay", "15s").attr("mode", "delay")


def _task(
    group: Block,
    name: str,
    args: list[str],
    settings: Settings,
    part: str,
    docker_socket: bool = False,
    change_mode: str = "noop",
    withheld: tuple[str, ...] = (),
    ports: list[str] | None = None,
) -> Block:
    """A task running ``joblife <args>`` with the secrets of ``part`` (:data:`SECRETS_OF`),
    the variable's keys ``withheld`` left out, and the group's ``ports`` (docker).

    ``change_mode`` says what a change of the variable does to a running task. The
    processing tasks and the periodic services run once (restart attempts 0): ``restart``
    would kill the running attempt or cycle, and Nomad would not start it again; with
    ``noop`` it finishes with the values it started with and the next one reads the new
    values. The long-running ``joblife run`` restarts to pick them up (its loop is
    stateless and stops gracefully on SIGTERM)."""
    task = group.block("task", name)
    if settings.nomad_task_driver == "raw_exec":
        task.attr("driver", "raw_exec")
        task.block("config").attr("command", settings.nomad_joblife_command).attr("args", args)
    else:
        task.attr("driver", "docker")
        config = task.block("config").attr("image", settings.nomad_worker_image)
        config.attr("command", "joblife").attr("args", args).attr("ports", ports)
        if docker_socket:
            config.attr("volumes", [f"{DOCKER_SOCKET}:{DOCKER_SOCKET}"])
    template = task.block("template")
    data = secrets_template(settings.nomad_variables_path, SECRETS_OF[part], withheld)
    template.attr("data", data)
    template.attr("destination", "${NOMAD_SECRETS_DIR}/joblife.env")
    template.attr("env", True).attr("change_mode", change_mode)
    return task


def _service_resources(task: Block) -> None:
    task.block("resources").attr("cpu", SERVICE_CPU_MHZ).attr("memory", SERVICE_MEMORY_MIB)


#: How an env template writes a value. Nomad reads an ``env = true`` template with
#: go-envparse (``#`` comments, quotes, ``\`` escapes: a raw ``p#ss"w'rd\`` is mangled),
#: which decodes every escape of a JSON string: with ``toJSON`` any value arrives exactly.
#: ``.Value`` first: ``toJSON`` of the item itself uses its MarshalJSON, Go's ``%q``, whose
#: ``\x01``, ``\a``... are not JSON and fail the render.
ENV_VALUE = "{{ $value.Value | toJSON }}"


def secrets_template(path: str, secrets: tuple[str, ...], withheld: tuple[str, ...] = ()) -> str:
    """The template putting the Nomad variable at ``path`` into a task's environment:
    each of its keys becomes ``JOBLIFE_<KEY>``, except the secret keys (:data:`SECRET_KEYS`)
    not in ``secrets`` and the keys ``withheld``, which are left out, and a secret key that
    names another setting (``worker_database_url``), which becomes that setting's variable.
    Values are written as JSON strings (:data:`ENV_VALUE`), so Nomad reads them back as
    they are, whatever characters they hold."""
    left_out = sorted((set(SECRET_KEYS) - set(secrets)) | set(withheld))
    renamed = sorted(k for k in secrets if SECRET_KEYS[k] != k)
    lines = [f'{{{{- with nomadVar "{path}" -}}}}', "{{- range $key, $value := . }}"]
    for index, key in enumerate(renamed):
        lines.append(f'{{{{- {"else " if index else ""}if eq $key "{key}" }}}}')
        lines.append(f"JOBLIFE_{SECRET_KEYS[key].upper()}={ENV_VALUE}")
    keyword = "else if" if renamed else "if"
    if left_out:
        listed = " ".join(f'"{k}"' for k in left_out)
        lines.append(f"{{{{- {keyword} not (eq $key {listed}) }}}}")
    else:
        lines.append(f"{{{{- {keyword} true }}}}")
    lines += [
        "JOBLIFE_{{ $key | toUpper }}=" + ENV_VALUE,
        "{{- end }}",
        "{{- end }}",
        "{{- end }}",
    ]
    return "\n".join(lines) + "\n"


def file_template(path: str, key: str) -> str:
    """The template writing the value of ``key`` of the Nomad variable at ``path`` as it is
    (nothing when the variable or the key is missing)."""
    lines = [
        f'{{{{- with nomadVar "{path}" -}}}}',
        "{{- range $key, $value := . }}",
        f'{{{{- if eq $key "{key}" }}}}{{{{ $value }}}}{{{{ end }}}}',
        "{{- end }}",
        "{{- end }}",
    ]
    return "\n".join(lines) + "\n"
