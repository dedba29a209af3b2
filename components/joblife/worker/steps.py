"""The default worker steps of :class:`~joblife.model.template.JobTemplate`: what every job
type gets for free, driven by its class attributes (``SCIENCE_IMAGE``, ``SCIENCE_COMMAND``,
``EXTERNAL_DEPENDENCIES``, the return-code classes...; see docs/partner-guide.md).

- :func:`pre_processing`: a clean work dir ``<work root>/<unique_id>/{input,output,aux,logs}``;
  if every output already exists (the manifest written last by an earlier attempt), the
  science step is skipped; otherwise the input product and the external dependencies are
  downloaded and checked.
- :func:`processing`: the science step through the type's runner.
- :func:`post_processing`: the return code's class decides; outputs are uploaded under the
  job's ``output_path`` with a manifest last (each file's size and SHA-256); the logs are
  uploaded; the work dir removed. A failed science step's message quotes its last log line
  (:func:`last_log_line`).

The outputs uploaded (or found uploaded by an earlier attempt) are recorded on the job for
its product message (:mod:`joblife.worker.outputs`).

A full disk (ENOSPC, EDQUOT) anywhere in these steps is an external error saying so
(:meth:`WorkerContext.disk_full_is_external`); a science step that fails on a (nearly) full
disk keeps the class of its return code, and its message names the disk.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
import re
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from sqlalchemy import inspect

from joblife.errors import ExternalJobError, InternalJobError
from joblife.lifecycle.common import utc_now
from joblife.model.flavors import get_flavor
from joblife.runners import RunSpec
from joblife.storage import (
    ObjectNotFound,
    Storage,
    StorageError,
    StoredObject,
    Transfer,
    child_key,
    join_key,
)
from joblife.storage.keys import UnsafeKey, check_key, check_location, escape
from joblife.worker.context import WorkerContext
from joblife.worker.outputs import OutputFile, ProductOutputs, record_outputs
from joblife.worker.workfiles import UnsafeWorkFile, WorkFile, WorkTree

if TYPE_CHECKING:
    from joblife.model.template import JobTemplate

#: Written under the output path after every output: its presence means "all uploaded".
MANIFEST = "_joblife_manifest.json"
#: Where a container sees the work dir.
MOUNT_POINT = "/work"
#: Most characters of the science step's last log line quoted in a failure message.
FAILURE_LINE_MAX_CHARS = 300


# -- pre-processing ------------------------------------------------------------------------------
def pre_processing(job: JobTemplate, context: WorkerContext) -> None:
    """Work dir, skip check, inputs and external dependencies (see the module docstring)."""
    with context.disk_full_is_external("pre-processing"):
        cls = type(job)
        context.make_work_dir()
        if not job.output_path:
            job.output_path = job.default_output_path()
        fields = job_fields(job, context, inside=False)
        context.logs_location = cls.LOGS_LOCATION.format_map(fields)
        previous = previous_outputs(job, context) if cls.SKIP_IF_OUTPUT_EXISTS else None
        if previous is not None:
            context.skip_science = True
            record_outputs(job, previous)
            context.figures["skipped"] = f"every output already exists at {previous.url}"
            return
        if not job.input_path:
            raise InternalJobError(f"job {job.id} has no input_path: nothing to process")
        downloaded = fetch(
            context,
            job.input_path,
            context.input_dir,
            job.input_pattern(),
            "input",
            listing=job.input_listing,
        )
        for name, template in cls.EXTERNAL_DEPENDENCIES.items():
            location = template.format_map(fields)
            downloaded += fetch(
                context, location, context.aux_dir / name, None, f"dependency {name}"
            )
        for path in downloaded:
            job.check_input(path)


def fetch(
    context: WorkerContext,
    location: str,
    directory: Path,
    pattern: str | None,
    what: str,
    listing: Mapping[str, int] | None = None,
) -> list[Path]:
    """Download ``location`` into ``directory``: one object (kept under its base name), or
    with a trailing ``/`` or a ``pattern`` every object under that prefix whose relative
    key fully matches the pattern (kept under its relative path). With a ``listing``
    (relative key -> size, what the job's creation found), exactly the listed objects,
    each with its listed size: one missing or changed is an ExternalJobError naming it.
    An object whose relative key is unsafe (:func:`check_key`) is refused. Returns the
    files."""
    storage, key = context.storage_for(location)
    if location.endswith("/") or pattern is not None:
        # A prefix names a folder: keys relative to it never start with "/", and a
        # sibling sharing its first letters ("P1" and "P10") is not under it.
        key = f"{key.rstrip('/')}/" if key.strip("/") else ""
        objects = storage.find(key, pattern)
        if listing is not None:
            objects = _listed(objects, key, listing, storage.url(key), what)
        if not objects:
            matching = f" matching {pattern!r}" if pattern else ""
            raise ObjectNotFound(f"{what}: nothing under {storage.url(key)}{matching}", location)
        transfers = [Transfer(o.key, _inside(directory, o.key[len(key) :], what)) for o in objects]
        sizes = {t.path: o.size for t, o in zip(transfers, objects, strict=True)}
    else:
        name = posixpath.basename(location.rstrip("/")) or "input"
        transfers, sizes = [Transfer(key, _inside(directory, name, what))], {}
    try:
        with context.measure("download") as figures:
            figures.bytes += storage.download_many(transfers)
            figures.files += len(transfers)
    except ObjectNotFound as exc:
        raise ObjectNotFound(f"{what} {exc}", exc.location) from exc
    for path, size in sizes.items():
        if path.stat().st_size != size:
            raise StorageError(
                f"{what}: {path.name} arrived with {path.stat().st_size} of its {size} bytes"
            )
    return [t.path for t in transfers]


#: How many names a message lists before "and N more".
_NAMED = 10


def _listed(
    objects: list[StoredObject], prefix: str, listing: Mapping[str, int], url: str, what: str
) -> list[StoredObject]:
    """The objects the job's creation listed (keys relative to ``prefix``), each found with
    its listed size; objects that appeared since are left out. A missing or resized one
    is an ExternalJobError naming them: a missing part is not a product."""
    if not isinstance(listing, Mapping):
        raise InternalJobError(f"{what}: the job's input listing is not a map of sizes")
    found = {o.key[len(prefix) :]: o for o in objects}
    missing = [escape(name) for name in sorted(listing) if name not in found]
    resized = [
        f"{escape(name)} ({found[name].size} bytes, listed with {size})"
        for name, size in sorted(listing.items())
        if name in found and found[name].size != size
    ]
    problems = [
        f"{label} {_names(names)}"
        for label, names in (("missing", missing), ("changed size", resized))
        if names
    ]
    if problems:
        raise ExternalJobError(
            f"{what}: not every object listed at the job's creation is under {url}: "
            + "; ".join(problems)
        )
    return [found[name] for name in sorted(listing)]


def _names(names: list[str]) -> str:
    """``names`` joined for a message, the first :data:`_NAMED` of them."""
    more = len(names) - _NAMED
    return ", ".join(names[:_NAMED]) + (f" and {more} more" if more > 0 else "")


def _inside(directory: Path, relative: str, what: str) -> Path:
    """``directory / relative`` for the key ``relative`` of a fetched object; a key that
    :func:`check_key` refuses (``..``, an empty segment, a leading ``/``, a control
    character, an undecodable byte) is an InternalJobError naming it."""
    try:
        check_key(relative)
    except UnsafeKey as exc:
        raise InternalJobError(f"{what}: refused to fetch the object {exc}") from None
    return directory.joinpath(*relative.split("/"))


def output_prefix(job: JobTemplate, context: WorkerContext) -> tuple[Storage, str]:
    """The storage and key prefix of the job's ``output_path``, which must be a safe
    location (:func:`check_location`): ``out/P1/../P2`` would name another job's folder."""
    assert job.output_path
    try:
        check_location(job.output_path, prefix=True)
    except UnsafeKey as exc:
        raise InternalJobError(f"job {job.id}: refused the output_path: {exc}") from None
    return context.storage_for(job.output_path)


def previous_outputs(job: JobTemplate, context: WorkerContext) -> ProductOutputs | None:
    """The outputs an earlier attempt uploaded, if it uploaded every one: the manifest
    exists and each file it lists is there with its size (their SHA-256 as the manifest
    lists them; None from a manifest of a joblife that wrote none). None otherwise, and for
    a manifest that cannot be read or names a file by an unsafe key (the step runs again)."""
    storage, key = output_prefix(job, context)
    manifest_path = context.logs_dir / ".previous-manifest.json"
    try:
        storage.download(join_key(key, MANIFEST), manifest_path)
        manifest = json.loads(manifest_path.read_text())
        expected: dict[str, int] = manifest["files"]
        checksums: dict[str, str] = manifest.get("sha256") or {}
        files = tuple(
            OutputFile(name, size, _sha256(checksums.get(name)), storage.url(child_key(key, name)))
            for name, size in sorted(expected.items())
        )
    except ObjectNotFound:
        return None
    except (ValueError, KeyError, TypeError, AttributeError, UnsafeKey):
        context.log.warning("job %s: unreadable output manifest: re-running", job.id)
        return None
    finally:
        manifest_path.unlink(missing_ok=True)
    objects = storage.list(f"{key}/" if key else "")
    present = {o.key[len(key) :].lstrip("/"): o.size for o in objects}
    if not all(present.get(f.name) == f.size for f in files):
        return None
    return ProductOutputs(storage.url(key), files)


_SHA256 = re.compile(r"[0-9a-f]{64}")


def _sha256(value: object) -> str | None:
    """``value`` if it is a SHA-256 as joblife writes it (lowercase hex), else None."""
    return value if isinstance(value, str) and _SHA256.fullmatch(value) else None


# -- processing ----------------------------------------------------------------------------------
def processing(job: JobTemplate, context: WorkerContext) -> int:
    """Run the science step (or skip it); return its return code."""
    with context.disk_full_is_external("processing"):
        cls = type(job)
        if context.skip_science:
            context.figures["processing"] = {"skipped": True, "seconds": 0.0}
            return min(cls.PRODUCT_RETURN_CODES)
        return run_science_spec(job, context, cls.SCIENCE_RUNNER, science_spec(job, context))


def run_science_spec(job: JobTemplate, context: WorkerContext, kind: str, spec: RunSpec) -> int:
    """Run ``spec`` with the ``kind`` runner and record it (figures, the image run, the log
    tail of a failure); return its return code. A timeout is an ExternalJobError."""
    cls = type(job)
    result = context.runner(kind).run(spec)
    context.figures["processing"] = result.summary
    if result.image:
        job.science_image = result.image
    expected = cls.PRODUCT_RETURN_CODES | cls.NO_PRODUCT_RETURN_CODES
    if result.timed_out or result.return_code not in expected:
        context.log_tail = result.log_tail
    if result.timed_out:
        raise ExternalJobError(
            f"science step killed at its timeout ({spec.timeout:g} s)" + _said(result.log_tail)
        )
    return result.return_code


def science_spec(job: JobTemplate, context: WorkerContext) -> RunSpec:
    """What the runner runs: the type's image and command, the job's fields in the
    command and environment templates, the flavor's limits, the container's user (the
    worker's uid:gid unless ``SCIENCE_USER``; a root worker's root becomes the
    unprivileged user in the runner) and the isolation the type relaxes."""
    cls = type(job)
    container = cls.SCIENCE_RUNNER == "docker"
    if container and not cls.SCIENCE_IMAGE:
        raise InternalJobError(
            f"job type {cls.JOB_NAME} runs in a container but has no SCIENCE_IMAGE"
        )
    if not container and not cls.SCIENCE_COMMAND:
        raise InternalJobError(f"job type {cls.JOB_NAME} has no SCIENCE_COMMAND")
    fields = job_fields(job, context, inside=container)
    try:
        command = [part.format_map(fields) for part in cls.SCIENCE_COMMAND or ()]
        environment = {k: v.format_map(fields) for k, v in cls.SCIENCE_ENVIRONMENT.items()}
    except (KeyError, ValueError, AttributeError) as exc:
        raise InternalJobError(f"job type {cls.JOB_NAME}: bad command template: {exc!r}") from exc
    environment.update(
        JOBLIFE_JOB_ID=str(job.id),
        JOBLIFE_UNIQUE_ID=str(job.unique_id),
        JOBLIFE_ATTEMPT=str(context.attempt),
        JOBLIFE_WORK_DIR=fields["work_dir"],
        JOBLIFE_INPUT_DIR=fields["input_dir"],
        JOBLIFE_OUTPUT_DIR=fields["output_dir"],
        JOBLIFE_AUX_DIR=fields["aux_dir"],
    )
    flavor = get_flavor(job.worker_flavor, context.settings)
    timeout = cls.SCIENCE_TIMEOUT.total_seconds() if cls.SCIENCE_TIMEOUT else None
    return RunSpec(
        command=command,
        work_dir=context.work_dir,
        log_path=context.logs_dir / "science.log",
        timeout=timeout or context.settings.science_timeout_seconds,
        image=cls.SCIENCE_IMAGE,
        environment=environment,
        mount_point=MOUNT_POINT,
        user=cls.SCIENCE_USER or f"{os.getuid()}:{os.getgid()}",
        network_mode=cls.SCIENCE_NETWORK,
        cpus=flavor.vcpus,
        memory_mib=flavor.memory_mib,
        labels={"io.joblife.job_id": str(job.id), "io.joblife.attempt": str(context.attempt)},
        log_tail_lines=context.settings.science_log_tail_lines,
        isolation=cls.SCIENCE_ISOLATION,
    )


def job_fields(job: JobTemplate, context: WorkerContext, inside: bool) -> dict[str, Any]:
    """The values a command, environment or location template may name: every column of
    the job (``{input_product_id}``, ``{tile_id}``, ``{input_publication_date:%Y%m%d}``...),
    ``{attempt}``, ``{job_type}`` and the work dir's paths (as the science code sees them:
    inside the container when ``inside``)."""
    values: dict[str, Any] = {
        attr.key: getattr(job, attr.key) for attr in inspect(job).mapper.column_attrs
    }
    root = PurePosixPath(MOUNT_POINT) if inside else context.work_dir
    values.update(
        attempt=context.attempt,
        work_dir=str(root),
        input_dir=str(root / "input"),
        output_dir=str(root / "output"),
        aux_dir=str(root / "aux"),
        logs_dir=str(root / "logs"),
    )
    return values


# -- post-processing -----------------------------------------------------------------------------
def post_processing(job: JobTemplate, context: WorkerContext, return_code: int) -> None:
    """Classify the return code, upload the outputs and logs, remove the work dir."""
    with context.disk_full_is_external("post-processing"):
        cls = type(job)
        if context.skip_science:
            context.close()
            return
        if return_code in cls.PRODUCT_RETURN_CODES:
            upload_outputs(job, context)
        elif return_code in cls.NO_PRODUCT_RETURN_CODES:
            context.figures["product"] = False
        elif return_code in cls.RETRYABLE_RETURN_CODES:
            raise ExternalJobError(
                f"science step returned {return_code}, a retryable code for job type "
                f"{cls.JOB_NAME}" + _said(context.log_tail) + context.disk_full_note()
            )
        else:
            # The science code's return code decides the class, even on a full disk: the
            # worker cannot tell whether the disk made the step fail, and outputs too big
            # for the flavor's disk would fail every retry; the message says so, though.
            raise InternalJobError(
                f"science step failed with return code {return_code}"
                + _said(context.log_tail)
                + context.disk_full_note()
            )
        context.close()


#: Terminal control sequences a log line may carry: CSI (colours, cursor moves) and OSC
#: (window titles, links), ended by BEL or ST.
_TERMINAL_SEQUENCE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?")
#: Control characters, and the invisible ones that reorder or hide text on a page or a
#: terminal (zero-width marks, bidirectional overrides and isolates).
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069]+")


def last_log_line(tail: Sequence[str]) -> str | None:
    """The last non-empty line of a science step's log tail (already redacted and bounded
    by the runner, :class:`~joblife.runners.base.LogTail`), made one line of plain text:
    terminal sequences removed, only what the last carriage return left (a progress bar's
    last state), other control characters and runs of blanks as one space, cut to
    :data:`FAILURE_LINE_MAX_CHARS`. None if no line has any text."""
    for line in reversed(tail):
        pieces = [p for p in _TERMINAL_SEQUENCE.sub("", line).split("\r") if p.strip()]
        text = " ".join(_CONTROL_CHARACTERS.sub(" ", pieces[-1]).split()) if pieces else ""
        if text:
            if len(text) > FAILURE_LINE_MAX_CHARS:
                text = text[: FAILURE_LINE_MAX_CHARS - 1].rstrip() + "\u2026"
            return text
    return None


def _said(tail: Sequence[str]) -> str:
    """What a failed science step said last, for its failure message: ``": <its last log
    line>"``, or that it wrote nothing."""
    line = last_log_line(tail)
    return f": {line}" if line is not None else " and wrote no log output"


def upload_outputs(job: JobTemplate, context: WorkerContext) -> None:
    """Upload every file of ``output/`` under the job's output path, then the manifest
    (each file's size and SHA-256); record the outputs on the job for its product message
    (:func:`~joblife.worker.outputs.record_outputs`).

    Only regular files that lie inside the work dir are read, from descriptors checked
    once opened (:class:`~joblife.worker.workfiles.WorkTree`); a link, a file that is not
    regular or has other names, or a name that is no safe key ends the attempt as an
    InternalJobError naming it, before anything is uploaded. Each file is read twice: once
    for its checksum (``checksum`` figures), once to upload it."""
    storage, prefix = output_prefix(job, context)
    tree = WorkTree(context.work_dir, "output")
    files = _output_files(tree)
    if not files:
        raise InternalJobError("the science step reported a product but wrote nothing in output/")
    keys = {f.name: _output_key(prefix, f.name) for f in files}
    checksums = _checksums(context, tree, files)
    produced_at = utc_now()
    manifest = {
        "job_id": job.id,
        "unique_id": str(job.unique_id),
        "attempt": context.attempt,
        "produced_at": produced_at.isoformat(),
        "science_image": job.science_image,
        "files": {f.name: f.size for f in files},
        "sha256": checksums,
    }
    data = json.dumps(manifest, indent=1).encode()
    _keep_in_logs(context, MANIFEST, data)
    names = {key: name for name, key in keys.items()}
    transfers = [Transfer(keys[f.name], context.output_dir / f.name) for f in files]
    with context.measure("upload") as figures:
        try:
            figures.bytes += storage.upload_many_opened(
                transfers, lambda transfer: tree.open(names[transfer.key])
            )
        except UnsafeWorkFile as exc:  # swapped for a link or a FIFO since the walk
            raise InternalJobError(f"refused to upload the output {exc}") from None
        figures.files += len(files)
        # Last, from memory: "all uploaded".
        storage.upload_file(io.BytesIO(data), _output_key(prefix, MANIFEST))
    context.figures["produced_at"] = produced_at.isoformat()
    context.figures["outputs"] = storage.url(prefix)
    record_outputs(
        job,
        ProductOutputs(
            storage.url(prefix),
            tuple(
                OutputFile(f.name, f.size, checksums[f.name], storage.url(keys[f.name]))
                for f in files
            ),
        ),
    )


def _checksums(context: WorkerContext, tree: WorkTree, files: list[WorkFile]) -> dict[str, str]:
    """The SHA-256 of each of ``files`` (by name), read from checked descriptors before
    the upload, which opens them again (the manifest, with these sums, is written to the
    work dir first: a full disk there stops the attempt before anything is uploaded);
    timed as the ``checksum`` figures."""
    checksums: dict[str, str] = {}
    with context.measure("checksum") as figures:
        for file in files:
            try:
                with tree.open(file.name) as opened:
                    checksums[file.name] = hashlib.file_digest(opened, "sha256").hexdigest()
            except UnsafeWorkFile as exc:  # swapped for a link or a FIFO since the walk
                raise InternalJobError(f"refused to read the output {exc}") from None
            figures.files += 1
            figures.bytes += file.size
    return checksums


def _output_files(tree: WorkTree) -> list[WorkFile]:
    """The regular files of ``output/``; anything else there is an InternalJobError
    naming what (a science step that leaves a link may be trying to publish a host file)."""
    try:
        files, refused = tree.scan()
    except UnsafeWorkFile as exc:
        raise InternalJobError(f"refused to upload the outputs: {exc}") from None
    if refused:
        raise InternalJobError(
            f"refused to upload the outputs: the science step left {len(refused)} entries "
            f"that are not regular files of the work dir in output/: "
            + _names([str(r) for r in refused])
        )
    return files


def _output_key(prefix: str, name: str) -> str:
    """The key of the output ``name`` (relative to ``output/``) under the job's output
    ``prefix``; an unsafe name, or a key that would leave the prefix, is an
    InternalJobError naming it."""
    try:
        return child_key(prefix, name)
    except UnsafeKey as exc:
        raise InternalJobError(
            f"refused to upload the output {escape('output/' + name)}: its name is not a "
            f"safe storage key ({exc.reason})"
        ) from None


def _keep_in_logs(context: WorkerContext, name: str, data: bytes) -> None:
    """A copy of ``data`` in ``logs/`` (uploaded with the logs), written without
    following a link the science step may have left there; best effort."""
    try:
        WorkTree(context.work_dir, "logs").write_new(name, data)
    except (UnsafeWorkFile, FileNotFoundError) as exc:
        context.log.warning("job %s: no copy of %s in the logs: %s", context.job_id, name, exc)
