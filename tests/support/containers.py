"""Pytest fixtures for the container engine used by the tests (registered in conftest.py).

:func:`container_engine` (session): a docker client of the engine at ``DOCKER_HOST``
(podman's Docker API here and in CI: ``scripts/container-engine.sh`` starts it), and a
busybox image built once from ``/usr/bin/busybox`` and imported locally, since no registry
can be reached. After the session, no container of that image may be left.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.support.services import unavailable

BUSYBOX = "/usr/bin/busybox"
#: The applets the test images link (busybox picks its applet from argv[0]).
APPLETS = (
    "sh",
    "cat",
    "echo",
    "sleep",
    "ls",
    "cp",
    "ln",
    "mkdir",
    "true",
    "false",
    "dd",
    "id",
    "env",
)


@dataclass
class ContainerEngine:
    """The engine the tests use and the image they run."""

    base_url: str
    client: object  # docker.DockerClient
    image: str

    def leftovers(self) -> list[str]:
        """Containers of the test image that still exist (any state)."""
        containers = self.client.containers.list(  # type: ignore[attr-defined]
            all=True, filters={"ancestor": self.image}
        )
        return [c.id for c in containers]


def _busybox_rootfs() -> bytes:
    """A tar of a minimal root filesystem: /bin/busybox and a link per applet, /tmp."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name in ("bin", "tmp"):
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if name == "tmp" else 0o755
            tar.addfile(info)
        tar.add(BUSYBOX, arcname="bin/busybox")
        for applet in APPLETS:
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type, info.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(info)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def container_engine() -> Iterator[ContainerEngine]:
    """The engine at DOCKER_HOST with the busybox test image (removed at the end)."""
    import docker
    from docker.errors import DockerException

    base_url = os.environ.get("DOCKER_HOST")
    if not base_url:
        unavailable("no container engine: DOCKER_HOST is not set (eval scripts/services.sh)")
    if not os.path.exists(BUSYBOX) or shutil.which("busybox") is None:
        unavailable(f"no {BUSYBOX} to build the test image from (apt-get install busybox-static)")
    try:
        client = docker.DockerClient(base_url=base_url, timeout=60)
        client.ping()
    except DockerException as exc:
        unavailable(f"the container engine at {base_url} does not answer: {exc}")
    # A name of this session's own: sessions of several engineers share the engine.
    repository = f"localhost/joblife-test-busybox-{uuid.uuid4().hex[:12]}"
    image = f"{repository}:latest"
    reply = client.api.import_image_from_data(
        _busybox_rootfs(), repository=repository, tag="latest", changes=["ENV PATH=/bin"]
    )
    # podman's compatible import ignores the tag: tag the imported id explicitly.
    image_id = json.loads(reply.splitlines()[-1])["id"] if reply.strip() else None
    if image_id:
        client.images.get(image_id).tag(repository, "latest")
    engine = ContainerEngine(base_url, client, image)
    try:
        yield engine
        left = engine.leftovers()
    finally:
        for container_id in engine.leftovers():
            client.containers.get(container_id).remove(force=True)
        client.images.remove(image, force=True)
        client.close()
    assert not left, f"containers left behind by the tests: {left}"
