"""``DockerRunner``: the science step in a container, through the docker SDK (a Docker
daemon, or podman's Docker-compatible API).

The work dir is bind-mounted read-write at ``spec.mount_point``; the container gets the
spec's environment, user, network mode and the flavor's CPU and memory limits; its output is
streamed to the job's log file; it is killed at the timeout and always removed.

The result's ``duration`` runs from ``container.start()`` to the end of the wait (the step
itself, as the engine ran it); ``details`` add ``create_seconds`` and ``remove_seconds``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Any

import docker
import requests
from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from docker.models.containers import Container
from docker.models.images import Image

from joblife.errors import ExternalJobError
from joblife.runners.base import TIMEOUT_RETURN_CODE, LogTail, Runner, RunResult, RunSpec

log = logging.getLogger(__name__)

#: Label on every container joblife starts (lets operators and tests find leftovers).
MANAGED_LABEL = "io.joblife.managed"


class DockerRunner(Runner):
    """Runs science steps in containers of the engine at ``base_url`` (None: ``DOCKER_HOST``
    or the default socket). ``pull_missing``: pull an image the engine does not have."""

    kind = "docker"

    def __init__(
        self,
        base_url: str | None = None,
        *,
        pull_missing: bool = True,
        resource_limits: bool = True,
        api_timeout: float = 60.0,
    ) -> None:
        self.base_url = base_url
        self.pull_missing = pull_missing
        self.resource_limits = resource_limits
        self.api_timeout = api_timeout

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
            container = self._create(client, image, spec)
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

    def _create(self, client: docker.DockerClient, image: Image, spec: RunSpec) -> Container:
        options: dict[str, Any] = {
            "command": list(spec.command),
            "volumes": {str(spec.work_dir): {"bind": spec.mount_point, "mode": "rw"}},
            "working_dir": spec.mount_point,
            "environment": dict(spec.environment),
            "network_mode": spec.network_mode,
            "labels": {MANAGED_LABEL: "true", **spec.labels},
            "detach": True,
        }
        if spec.user:
            options["user"] = spec.user
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

    def _run(self, container: Container, spec: RunSpec, ran: str) -> RunResult:
        tail = LogTail(spec.log_path, spec.log_tail_lines)
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
