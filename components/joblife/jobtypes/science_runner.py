"""The science runner of a reference job type, chosen by a setting: the same science command
line as a local process or in a container image.

A type with a ``<type>_runner`` setting (``process``, ``docker`` or ``auto``) and a
``<type>_image`` setting calls :func:`run_science` from ``job_processing``:

- ``process`` runs the type's ``SCIENCE_COMMAND`` (``sys.executable -m joblife.science...``)
  on the worker: the default step, :func:`joblife.worker.steps.processing`;
- ``docker`` runs its container command (``python -m joblife.science...``, paths as the
  container sees the work dir, mounted at ``/work``) in the image, with the worker's uid
  (the unprivileged ``container_unprivileged_user`` on a root worker), the type's
  ``SCIENCE_ISOLATION`` (by default a read-only root, no capabilities, no new privileges,
  a pids limit), no network and the flavor's limits
  (:class:`~joblife.runners.docker.DockerRunner`);
- ``auto`` takes ``docker`` when the container engine answers and already has the image
  (:func:`image_available` never pulls), else ``process``.

The choice is recorded as ``runner`` in the status details of ``processed``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

from joblife.config import Settings
from joblife.errors import ExternalJobError, InternalJobError

if TYPE_CHECKING:
    from joblife.model.template import JobTemplate
    from joblife.runners import RunSpec
    from joblife.worker.context import WorkerContext

#: The work-dir variables of the science environment (``JOBLIFE_INPUT_DIR``...).
_DIRS = ("work_dir", "input_dir", "output_dir", "aux_dir")


def choose_runner(mode: str, image: str, settings: Settings) -> Literal["docker", "process"]:
    """``docker`` or ``process`` for a runner setting ``mode`` (``auto``: docker when the
    engine answers and has ``image``)."""
    if mode == "docker" or mode == "process":
        return mode
    if mode != "auto":
        raise ValueError(f"unknown runner {mode!r} (auto, docker or process)")
    return "docker" if image_available(image, settings) else "process"


def image_available(image: str, settings: Settings) -> bool:
    """Whether the container engine (``container_engine_url``) answers and has ``image``
    (it is never pulled)."""
    try:
        import docker.errors
        import requests

        from joblife.runners.docker import DockerRunner
    except ImportError:  # pragma: no cover - docker is a dependency
        return False
    runner = DockerRunner(settings.container_engine_url, pull_missing=False, api_timeout=5)
    try:
        client = runner.client()
    except ExternalJobError:
        return False
    try:
        client.images.get(image)
        return True
    except (docker.errors.DockerException, requests.RequestException):
        return False
    finally:
        client.close()


def run_science(
    job: JobTemplate,
    context: WorkerContext,
    mode: str,
    image: str,
    container_command: Sequence[str],
) -> int:
    """Run the science step of ``job`` with the runner ``mode`` chooses (see the module
    docstring); return its return code. ``container_command`` is a template like
    ``SCIENCE_COMMAND``, filled in with the paths inside the container."""
    from joblife.worker.steps import processing, run_science_spec

    if context.skip_science:
        return processing(job, context)
    runner = choose_runner(mode, image, context.settings)
    context.figures["runner"] = runner
    if runner == "process":
        return processing(job, context)
    with context.disk_full_is_external("processing"):
        spec = container_spec(job, context, container_command, image)
        return run_science_spec(job, context, "docker", spec)


def container_spec(
    job: JobTemplate, context: WorkerContext, command: Sequence[str], image: str
) -> RunSpec:
    """The type's run spec (:func:`~joblife.worker.steps.science_spec`: limits, user,
    labels, environment) for ``image``, with ``command`` and the work-dir variables as the
    container sees them."""
    from joblife.worker.steps import job_fields, science_spec

    inside = job_fields(job, context, inside=True)
    try:
        filled = [part.format_map(inside) for part in command]
    except (KeyError, ValueError, AttributeError) as exc:
        raise InternalJobError(
            f"job type {type(job).JOB_NAME}: bad container command template: {exc!r}"
        ) from exc
    return in_container(job, context, science_spec(job, context), filled, image)


def in_container(
    job: JobTemplate, context: WorkerContext, spec: RunSpec, command: list[str], image: str
) -> RunSpec:
    """``spec`` running ``command`` in ``image``, its work-dir variables
    (``JOBLIFE_INPUT_DIR``...) as the container sees them."""
    from joblife.worker.steps import job_fields

    inside = job_fields(job, context, inside=True)
    environment = {**spec.environment, **{f"JOBLIFE_{d.upper()}": inside[d] for d in _DIRS}}
    return dataclasses.replace(spec, command=command, image=image, environment=environment)
