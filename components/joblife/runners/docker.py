"""``DockerRunner``: the science step in a container, through the docker SDK (a Docker
daemon, or podman's Docker-compatible API).

The work dir is bind-mounted read-write at ``spec.mount_point``; the container gets the
spec's environment (and the worker's locale and time zone, nothing else of its
environment), user, network mode and the flavor's CPU and memory limits; its output is
streamed to the job's log file (redacted and capped, :class:`~joblife.runners.base.LogTail`);
it is killed at the timeout and always removed.

Isolation by default (``spec.isolation`` relaxes each; docs/partner-guide.md): never root
because the worker is root (a container that would run as uid 0 on a root worker runs as
``unprivileged_user``, and the work dir is handed to that user for the step), a read-only
root file system with a tmpfs at ``/tmp``, ``no-new-privileges``, every capability
dropped, a limit on its processes; the network is ``spec.network_mode`` (``none`` unless
the type says otherwise).

The result's ``duration`` runs from ``container.start()`` to the end of the wait (the step
itself, as the engine ran it); ``details`` add ``create_seconds`` and ``remove_seconds``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import time
from pathlib import Path
from typing import Any

import docker
import requests
from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from docker.models.containers import Container
from docker.models.images import Image

from joblife.errors import ExternalJobError
from joblife.runners.base import (
    CONTAINER_ENVIRONMENT,
    TIMEOUT_RETURN_CODE,
    Capture,
    LogTail,
    Runner,
    RunResult,
    RunSpec,
    science_environment,
)

log = logging.getLogger(__name__)

#: Label on every container joblife starts (lets operators and tests find leftovers).
MANAGED_LABEL = "io.joblife.managed"
#: The tmpfs a read-only container writes its temporary files to (charged to its memory).
TMPFS = {"/tmp": "rw,exec,nosuid,nodev,mode=1777"}
_NUMERIC_USER = re.compile(r"(?P<uid>\d+)(?::(?P<gid>\d+))?")


class DockerRunner(Runner):
    """Runs science steps in containers of the engine at ``base_url`` (None: ``DOCKER_HOST``
    or the default socket). ``pull_missing``: pull an image the engine does not have;
    ``capture``: redaction and size limits of the log; ``pids_limit``: the default limit
    of processes per container (-1: none); ``unprivileged_user``: the ``uid:gid`` that
    replaces root on a root worker."""

    kind = "docker"

    def __init__(
        self,
        base_url: str | None = None,
        *,
        pull_missing: bool = True,
        resource_limits: bool = True,
        api_timeout: float = 60.0,
        capture: Capture | None = None,
        pids_limit: int = 1024,
        unprivileged_user: str = "65534:65534",
    ) -> None:
        self.base_url = base_url
        self.pull_missing = pull_missing
        self.resource_limits = resource_limits
        self.api_timeout = api_timeout
        self.capture = capture or Capture()
        self.pids_limit = pids_limit
        self.unprivileged_user = unprivileged_user

    def user(self, spec: RunSpec) -> str | None:
        """The user the container runs as: ``spec.user``, except root (uid 0, or no user:
        the image's, often root) on a root worker, unless the type allows root."""
        if os.geteuid() == 0 and not spec.isolation.allow_root and _is_root(spec.user):
            return self.unprivileged_user
        return spec.user

    # -- the engine and the image ------------------------------------------------------------
    def client(self) -> docker.DockerClient:
        """A client of the engine, checked to answer; ExternalJobError if it does not."""
        where = self.base_url or "DOCKER_HOST / the default socket"
        try:
            if self.base_url:
                client = docker.DockerClient(base_url=self.base_url, timeout=self.api_timeout)
            else:
                client = docker.from_env(timeout=self.api_timeout)
            client.ping()
        except (DockerException, requests.RequestException) as exc:
            raise ExternalJobError(
                f"the container engine at {where} does not answer: {_short(exc)}"
            ) from exc
        return client

    def image(self, client: docker.DockerClient, name: str) -> Image:
        """The image ``name``, pulled if missing and allowed; ExternalJobError otherwise."""
        try:
            return client.images.get(name)
        except ImageNotFound:
            if not self.pull_missing:
                raise ExternalJobError(
                    f"science image {name!r} is not on this worker's container engine "
                    "(pulling is disabled: container_pull_missing=false)"
                ) from None
        except (APIError, requests.RequestException) as exc:
            raise ExternalJobError(f"cannot inspect science image {name!r}: {_short(exc)}") from exc
        try:
            log.info("pulling science image %s", name)
            return client.images.pull(name)
        except (APIError, requests.RequestException) as exc:
            raise ExternalJobError(
                f"science image {name!r} is not on this worker's container engine and "
                f"cannot be pulled: {_short(exc)}"
            ) from exc

    # -- running -----------------------------------------------------------------------------
    def run(self, spec: RunSpec) -> RunResult:
        if not spec.image:
            raise ValueError("DockerRunner needs RunSpec.image")
        client = self.client()
        try:
            image = self.image(client, spec.image)
            ran = f"{spec.image}@{image.id}"
            created = time.monotonic()
            user = self.user(spec)
            _hand_over(spec.work_dir, user)
            container = self._create(client, image, spec, user)
            started = time.monotonic()
            try:
                result = self._run(container, spec, ran)
            finally:
                stopped = time.monotonic()
                _remove(container)
            # duration runs from start to the end of the wait; create and remove apart.
            result.details.update(
                create_seconds=round(started - created, 3),
                remove_seconds=round(time.monotonic() - stopped, 3),
            )
            return result
        finally:
            client.close()

    def _create(
        self, client: docker.DockerClient, image: Image, spec: RunSpec, user: str | None
    ) -> Container:
        environment = science_environment(spec.environment, CONTAINER_ENVIRONMENT)
        options: dict[str, Any] = {
            "command": list(spec.command),
            "volumes": {str(spec.work_dir): {"bind": spec.mount_point, "mode": "rw"}},
            "working_dir": spec.mount_point,
            "environment": environment,
            "network_mode": spec.network_mode,
            "labels": {MANAGED_LABEL: "true", **spec.labels},
            "detach": True,
            **self._isolation(spec, environment),
        }
        if user:
            options["user"] = user
        if self.resource_limits and spec.cpus:
            options["nano_cpus"] = int(spec.cpus * 1e9)
        if self.resource_limits and spec.memory_mib:
            options["mem_limit"] = f"{spec.memory_mib}m"
        try:
            return client.containers.create(image.id, **options)
        except (APIError, requests.RequestException) as exc:
            raise ExternalJobError(
                f"the container engine cannot create a container of {spec.image!r}: {_short(exc)}"
            ) from exc

    def _isolation(self, spec: RunSpec, environment: dict[str, str]) -> dict[str, Any]:
        """The create options of ``spec.isolation`` (``environment`` gets a writable HOME
        when the root file system is read-only)."""
        isolation = spec.isolation
        options: dict[str, Any] = {"cap_drop": ["ALL"]}
        if isolation.capabilities:
            options["cap_add"] = sorted(isolation.capabilities)
        if isolation.no_new_privileges:
            options["security_opt"] = ["no-new-privileges"]
        if isolation.read_only_root:
            options.update(read_only=True, tmpfs=dict(TMPFS))
            environment.setdefault("HOME", "/tmp")
        pids = self.pids_limit if isolation.pids_limit is None else isolation.pids_limit
        if pids > 0:
            options["pids_limit"] = pids
        return options

    def _run(self, container: Container, spec: RunSpec, ran: str) -> RunResult:
        tail = LogTail(spec.log_path, spec.log_tail_lines, self.capture)
        start = time.monotonic()
        timed_out = False
        reader: threading.Thread | None = None
        try:
            container.start()
            reader = threading.Thread(target=_pump, args=(container, tail), daemon=True)
            reader.start()
            try:
                status = container.wait(timeout=spec.timeout)
                code = int(status.get("StatusCode", -1))
            except requests.RequestException:
                # The wait's read timeout is the step's timeout (podman reports it as a
                # ConnectionError, Docker as a ReadTimeout); before it, the engine failed.
                if time.monotonic() - start < spec.timeout * 0.99 or not _running(container):
                    raise
                timed_out, code = True, TIMEOUT_RETURN_CODE
                with contextlib.suppress(APIError, requests.RequestException):
                    container.kill()
        except (APIError, requests.RequestException) as exc:
            raise ExternalJobError(
                f"the container engine failed while running {spec.image!r}: {_short(exc)}"
            ) from exc
        finally:
            duration = time.monotonic() - start  # before draining the logs
            if reader is not None:
                reader.join(timeout=10)
            lines = tail.close()
        return RunResult(
            code, duration, lines, timed_out=timed_out, image=ran, details=tail.problem()
        )


def _pump(container: Container, tail: LogTail) -> None:
    """Copy the container's output to the log as it comes (until it ends or is removed)."""
    with contextlib.suppress(APIError, requests.RequestException, ValueError):
        for chunk in container.logs(stream=True, follow=True):
            tail.write(chunk)


def _is_root(user: str | None) -> bool:
    """Whether ``user`` (``uid[:gid]`` or ``name[:group]``; None: the image's) may be root."""
    return not user or user.split(":", 1)[0] in ("0", "root")


def _hand_over(work_dir: Path, user: str | None) -> None:
    """On a root worker, give the work dir to the numeric non-root ``user`` the container
    runs as, so that it can write its outputs and logs (the worker, root, still reads and
    removes them after the step). Links are changed, never followed."""
    match = _NUMERIC_USER.fullmatch(user or "")
    if os.geteuid() != 0 or match is None or int(match["uid"]) == 0:
        return
    uid, gid = int(match["uid"]), int(match["gid"]) if match["gid"] else -1
    try:
        os.chown(work_dir, uid, gid, follow_symlinks=False)
        for root, dirs, files in os.walk(work_dir):
            for name in dirs + files:
                os.chown(os.path.join(root, name), uid, gid, follow_symlinks=False)
    except OSError as exc:
        raise ExternalJobError(
            f"cannot hand the work dir {work_dir} to the container's user {user}: {exc}"
        ) from exc


def _running(container: Container) -> bool:
    try:
        container.reload()
    except (APIError, requests.RequestException):
        return False
    return container.status in ("running", "created", "paused")


def _remove(container: Container) -> None:
    """Remove the container whatever its state; a few tries, as the engine may be busy."""
    for attempt in range(3):
        try:
            container.remove(force=True)
            return
        except NotFound:
            return
        except (APIError, requests.RequestException) as exc:
            if attempt == 2:
                log.error("could not remove container %s: %s", container.id, _short(exc))
            time.sleep(0.5)


def _short(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) < 400 else text[:400] + "..."
