"""The double's cluster: jobs, dispatched children, allocations, and one client that runs
each placed child's task as a local process.

Behaviour follows Nomad's (``nomad/job_endpoint.go``, ``command/agent/job_endpoint.go``):

- dispatch checks, in Nomad's order: the parent exists (``parameterized job not found``),
  is parameterized, is not stopped, the payload constraint and its 16 KiB limit, no meta
  key outside ``meta_required`` and ``meta_optional``, every required key present; the
  idempotency token (query string only) returns the existing child of that parent while
  it is not garbage-collected, in an answer without an evaluation (``EvalID`` empty);
  Nomad bounds the length of neither the token nor ``IdPrefixTemplate`` (no check in
  ``validateDispatchRequest``), nor does the double; the child id is
  ``<parent>/dispatch-<unix>-<8 hex>``, or
  ``<parent>/dispatch-<IdPrefixTemplate>-<unix>-<8 hex>``; meta is merged into the child;
- a child is ``pending`` until its allocation runs, ``running``, then ``dead``; the client
  runs at most ``slots`` allocations at once, the others wait unplaced (as behind a
  blocked evaluation);
- allocations have Nomad's list-stub shape: ``ClientStatus`` pending/running/complete/
  failed/lost, ``TaskStates[task]`` with ``State`` pending/running/dead, ``Failed`` and the
  last 10 ``Events``; the ``Terminated`` event carries ``Details["exit_code"]``;
- ``DELETE /v1/job/<id>`` marks the job stopped and kills its task (SIGTERM, then SIGKILL
  after ``kill_timeout``); ``?purge=true`` removes it at once.

Not modelled: evaluations beyond their ids, deployments, several clients or regions,
blocking queries, templates (the test gives the process the environment the secrets
template would render, through ``extra_env``).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import re
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Nomad's DispatchPayloadSizeLimit.
PAYLOAD_LIMIT = 16 * 1024
MAX_EVENTS = 10
NODE_ID = "5f3c7b1e-0000-4000-8000-00000000d0b1"
NODE_NAME = "double-client-1"
_INTERPOLATION = re.compile(r"\$\{([^}]+)\}")


class ApiError(Exception):
    """An error answer: HTTP status and Nomad's plain-text message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Allocation:
    id: str
    job_id: str
    group: str
    task: str
    create_index: int
    modify_index: int
    create_time: int
    client_status: str = "pending"
    desired_status: str = "run"
    client_description: str = ""
    task_state: str = "pending"
    failed: bool = False
    started_at: str | None = None
    finished_at: str | None = None
    events: deque = field(default_factory=lambda: deque(maxlen=MAX_EVENTS))
    process: subprocess.Popen | None = None
    lost: bool = False

    def event(self, type_: str, message: str = "", **details: str) -> None:
        self.events.append(
            {
                "Type": type_,
                "Time": time.time_ns(),
                "Message": message,
                "DisplayMessage": message or type_,
                "Details": details,
                "ExitCode": int(details.get("exit_code", 0)),
                "Signal": int(details.get("signal", 0)),
                "FailsTask": type_ in ("Driver Failure", "Not Restarting"),
            }
        )

    def stub(self, namespace: str) -> dict[str, Any]:
        return {
            "ID": self.id,
            "EvalID": str(uuid.uuid5(uuid.NAMESPACE_URL, self.id)),
            "Name": f"{self.job_id}.{self.group}[0]",
            "Namespace": namespace,
            "NodeID": NODE_ID,
            "NodeName": NODE_NAME,
            "JobID": self.job_id,
            "JobType": "batch",
            "JobVersion": 0,
            "TaskGroup": self.group,
            "DesiredStatus": self.desired_status,
            "DesiredDescription": "",
            "ClientStatus": self.client_status,
            "ClientDescription": self.client_description,
            "TaskStates": {
                self.task: {
                    "State": self.task_state,
                    "Failed": self.failed,
                    "Restarts": 0,
                    "LastRestart": None,
                    "StartedAt": self.started_at,
                    "FinishedAt": self.finished_at,
                    "Events": list(self.events),
                }
            },
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
            "CreateTime": self.create_time,
            "ModifyTime": time.time_ns(),
        }


@dataclass
class Faults:
    """What the double does wrong on purpose, set by the tests."""

    #: The next N requests (any path) get ``fail_status`` with ``fail_message`` (e.g. 500
    #: "No cluster leader", what Nomad answers during a leader election).
    fail_next: int = 0
    fail_status: int = 500
    fail_message: str = "fault injected"
    #: Every answer waits this long first (slow answers; timeouts when above the client's).
    delay_seconds: float = 0.0
    #: Children (and their allocations) are garbage-collected as soon as they end.
    gc_after_end: bool = False


class Cluster:
    """The state behind the HTTP API; every method is thread-safe."""

    def __init__(
        self,
        work_dir: Path,
        *,
        run_tasks: bool = True,
        slots: int = 4,
        command_map: Mapping[str, list[str]] | None = None,
        extra_env: Mapping[str, str] | None = None,
        node_class: str = "extra_small",
    ) -> None:
        self.work_dir = Path(work_dir)
        self.run_tasks = run_tasks
        self.slots = slots
        self.command_map = dict(command_map or {})
        self.extra_env = dict(extra_env or {})
        self.node_class = node_class
        self.faults = Faults()
        self.lock = threading.RLock()
        self.index = 10
        self.jobs: dict[str, dict[str, Any]] = {}
        self.allocations: dict[str, list[Allocation]] = {}
        self.tokens: dict[tuple[str, str], str] = {}
        self.unplaced: deque[str] = deque()
        #: How many times each child's task process was started.
        self.task_runs: Counter[str] = Counter()
        #: Dispatch calls per parent, and children created per parent.
        self.dispatch_calls: Counter[str] = Counter()
        self.stop_requests: list[str] = []

    # -- jobs ------------------------------------------------------------------------------------
    def _next_index(self) -> int:
        self.index += 1
        return self.index

    def register(self, job: Mapping[str, Any], url_id: str | None = None) -> dict[str, Any]:
        job_id = job.get("ID")
        if not job_id:
            raise ApiError(400, "Job ID hasn't been provided")
        if url_id is not None and job_id != url_id:
            raise ApiError(400, "Job ID does not match name")
        _validate(job)
        with self.lock:
            index = self._next_index()
            existing = self.jobs.get(job_id)
            record = dict(job)
            record.update(
                Stop=False,
                ParentID=record.get("ParentID") or "",
                Dispatched=False,
                Status="running" if _is_template(record) else "pending",
                StatusDescription="",
                CreateIndex=existing["CreateIndex"] if existing else index,
                ModifyIndex=index,
                JobModifyIndex=index,
                SubmitTime=time.time_ns(),
                Version=(existing["Version"] + 1) if existing else 0,
                Namespace=record.get("Namespace") or "default",
            )
            self.jobs[job_id] = record
        return {
            "EvalID": "" if _is_template(record) else str(uuid.uuid4()),
            "EvalCreateIndex": 0 if _is_template(record) else index,
            "JobModifyIndex": index,
            "Warnings": "",
            "Index": index,
        }

    def get(self, job_id: str) -> dict[str, Any]:
        with self.lock:
            job = self.jobs.get(job_id)
            if job is None:
                raise ApiError(404, "job not found")
            return dict(job)

    def list(self, prefix: str = "") -> list[dict[str, Any]]:
        with self.lock:
            return [self._stub(j) for i, j in sorted(self.jobs.items()) if i.startswith(prefix)]

    def stop(self, job_id: str, purge: bool = False) -> dict[str, Any]:
        with self.lock:
            self.stop_requests.append(job_id)
            job = self.jobs.get(job_id)
            if job is None:
                raise ApiError(404, "job not found")
            index = self._next_index()
            job.update(Stop=True, ModifyIndex=index, JobModifyIndex=index)
            if job_id in self.unplaced:
                self.unplaced.remove(job_id)
            running = [a for a in self.allocations.get(job_id, []) if a.process is not None]
            for allocation in self.allocations.get(job_id, []):
                allocation.desired_status = "stop"
            if not running and job.get("ParentID"):
                job["Status"] = "dead"
            if purge:
                self._forget(job_id)
        for allocation in running:  # the answer does not wait for the task to die
            threading.Thread(
                target=self._kill, args=(allocation, _kill_timeout(job)), daemon=True
            ).start()
        return {"EvalID": str(uuid.uuid4()), "EvalCreateIndex": index, "JobModifyIndex": index}

    def allocations_of(self, job_id: str) -> list[dict[str, Any]]:
        """The job's allocations in Nomad's order: by allocation ID (the state store's
        index order), not by creation: the newest is anywhere in the list."""
        with self.lock:
            namespace = self.jobs.get(job_id, {}).get("Namespace", "default")
            allocations = sorted(self.allocations.get(job_id, []), key=lambda a: a.id)
            return [a.stub(namespace) for a in allocations]

    # -- dispatch --------------------------------------------------------------------------------
    def dispatch(
        self, parent_id: str, body: Mapping[str, Any], token: str | None
    ) -> dict[str, Any]:
        if body.get("JobID") and body["JobID"] != parent_id:
            raise ApiError(400, "Job ID does not match")
        meta = body.get("Meta") or {}
        if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
            raise ApiError(400, "json: cannot unmarshal Meta: values must be strings")
        try:
            payload = base64.b64decode(body.get("Payload") or "", validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ApiError(400, f"illegal base64 data in Payload: {exc}") from exc
        with self.lock:
            self.dispatch_calls[parent_id] += 1
            parent = self.jobs.get(parent_id)
            if parent is None:
                raise ApiError(500, "parameterized job not found")
            constructor = parent.get("ParameterizedJob")
            if not constructor:
                raise ApiError(500, f'Specified job "{parent_id}" is not a parameterized job')
            if parent.get("Stop"):
                raise ApiError(500, f'Specified job "{parent_id}" is stopped')
            _validate_dispatch(constructor, meta, payload)
            if token:
                existing = self.tokens.get((parent_id, token))
                if existing is not None and existing in self.jobs:
                    child = self.jobs[existing]
                    return {
                        "Index": child["ModifyIndex"],
                        "JobCreateIndex": child["CreateIndex"],
                        "DispatchedJobID": existing,
                        "EvalID": "",
                        "EvalCreateIndex": 0,
                    }
            prefix = body.get("IdPrefixTemplate") or ""
            suffix = f"{int(time.time())}-{uuid.uuid4().hex[:8]}"
            child_id = f"{parent_id}/dispatch-{prefix + '-' if prefix else ''}{suffix}"
            index = self._next_index()
            child = {
                **parent,
                "ID": child_id,
                "Name": child_id,
                "ParentID": parent_id,
                "Dispatched": True,
                "DispatchIdempotencyToken": token or "",
                "ParameterizedJob": constructor,
                "Meta": {**(parent.get("Meta") or {}), **meta},
                "Payload": base64.b64encode(payload).decode() if payload else None,
                "Status": "pending",
                "Stop": False,
                "CreateIndex": index,
                "ModifyIndex": index,
                "JobModifyIndex": index,
                "SubmitTime": time.time_ns(),
            }
            self.jobs[child_id] = child
            if token:
                self.tokens[(parent_id, token)] = child_id
            if self.run_tasks:
                self.unplaced.append(child_id)
        self._place()
        return {
            "Index": index,
            "JobCreateIndex": index,
            "EvalCreateIndex": index,
            "EvalID": str(uuid.uuid4()),
            "DispatchedJobID": child_id,
        }

    # -- test controls -----------------------------------------------------------------------------
    def children(self, parent_id: str | None = None) -> list[str]:
        with self.lock:
            return [
                i
                for i, j in self.jobs.items()
                if j.get("ParentID") and (parent_id is None or j["ParentID"] == parent_id)
            ]

    def lose(self, child_id: str) -> None:
        """The child's node is gone: its allocation becomes lost and its process dies."""
        with self.lock:
            allocation = self.allocations[child_id][-1]
            allocation.lost = True
        if allocation.process is not None:
            _signal_group(allocation.process, signal.SIGKILL)
        with self.lock:
            allocation.client_status = "lost"
            allocation.desired_status = "stop"
            allocation.client_description = "alloc is lost since its node is down"
            allocation.task_state = "dead"
            allocation.failed = True
            allocation.modify_index = self._next_index()
            self.jobs[child_id]["Status"] = "dead"

    def finish(self, child_id: str, exit_code: int, allocation_id: str | None = None) -> None:
        """Record a new ended allocation for a child without running anything (benchmarks;
        ``allocation_id`` chooses its ID, hence its place in :meth:`allocations_of`)."""
        with self.lock:
            allocation = self._allocate(child_id, allocation_id)
            allocation.event("Started", "Task started by client")
            self._terminated(allocation, exit_code)

    def gc(self, child_id: str) -> None:
        with self.lock:
            self._forget(child_id)

    def close(self) -> None:
        """Kill every task still running."""
        with self.lock:
            allocations = [a for allocs in self.allocations.values() for a in allocs]
            self.unplaced.clear()
        for allocation in allocations:
            if allocation.process is not None and allocation.process.poll() is None:
                _signal_group(allocation.process, signal.SIGKILL)
                allocation.process.wait(timeout=10)

    # -- the client ------------------------------------------------------------------------------
    def _place(self) -> None:
        started = []
        with self.lock:
            running = sum(
                1
                for allocs in self.allocations.values()
                for a in allocs
                if a.client_status in ("pending", "running")
            )
            while self.unplaced and running < self.slots:
                child_id = self.unplaced.popleft()
                if child_id not in self.jobs:
                    continue
                started.append(self._allocate(child_id))
                running += 1
        for allocation in started:
            threading.Thread(target=self._run, args=(allocation,), daemon=True).start()

    def _allocate(self, child_id: str, allocation_id: str | None = None) -> Allocation:
        job = self.jobs[child_id]
        group = job["TaskGroups"][0]
        index = self._next_index()
        allocation = Allocation(
            id=allocation_id or str(uuid.uuid4()),
            job_id=child_id,
            group=group["Name"],
            task=group["Tasks"][0]["Name"],
            create_index=index,
            modify_index=index,
            create_time=time.time_ns(),
        )
        allocation.event("Received", "Task received by client")
        self.allocations.setdefault(child_id, []).append(allocation)
        return allocation

    def _run(self, allocation: Allocation) -> None:
        with self.lock:
            job = self.jobs.get(allocation.job_id)
            if job is None or job.get("Stop"):
                return
            task = job["TaskGroups"][0]["Tasks"][0]
            alloc_dir = self.work_dir / "allocs" / allocation.id
            env = self._environment(job, task, allocation, alloc_dir)
            config = task.get("Config") or {}
            command = [
                *self.command_map.get(config.get("command", ""), [config.get("command", "")]),
                *(_interpolate(a, env, self.node_class) for a in config.get("args") or []),
            ]
            allocation.event("Task Setup", "Building Task Directory")
        for directory in ("alloc", "local", "secrets"):
            (alloc_dir / directory).mkdir(parents=True, exist_ok=True)
        log = (alloc_dir / f"{allocation.task}.log").open("ab")
        try:
            process = subprocess.Popen(
                command,
                env=env,
                cwd=alloc_dir / "local",
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            with self.lock:
                allocation.event("Driver Failure", f"failed to launch command: {exc}")
                allocation.client_status = "failed"
                allocation.task_state = "dead"
                allocation.failed = True
                self._ended(allocation)
            return
        finally:
            log.close()
        with self.lock:
            self.task_runs[allocation.job_id] += 1
            allocation.process = process
            allocation.client_status = "running"
            allocation.task_state = "running"
            allocation.started_at = _now()
            allocation.modify_index = self._next_index()
            allocation.event("Started", "Task started by client")
            if allocation.job_id in self.jobs:
                self.jobs[allocation.job_id]["Status"] = "running"
        code = process.wait()
        with self.lock:
            if allocation.lost:
                return
            if code < 0:
                self._terminated(allocation, 128 - code, signal_number=-code)
            else:
                self._terminated(allocation, code)
        self._place()

    def _terminated(self, allocation: Allocation, exit_code: int, signal_number: int = 0) -> None:
        allocation.event(
            "Terminated",
            f"Exit Code: {exit_code}" + (f", Signal: {signal_number}" if signal_number else ""),
            exit_code=str(exit_code),
            signal=str(signal_number),
            oom_killed="false",
        )
        stopped = allocation.desired_status == "stop"
        if stopped:
            allocation.event("Killed", "Task successfully killed")
        if exit_code != 0 and not stopped:
            allocation.event(
                "Not Restarting",
                'Exceeded allowed attempts 0 in interval 24h0m0s and mode is "fail"',
            )
        allocation.failed = exit_code != 0 and not stopped
        allocation.client_status = "failed" if allocation.failed else "complete"
        allocation.task_state = "dead"
        allocation.finished_at = _now()
        self._ended(allocation)

    def _ended(self, allocation: Allocation) -> None:
        allocation.modify_index = self._next_index()
        job = self.jobs.get(allocation.job_id)
        if job is not None:
            job["Status"] = "dead"
            job["ModifyIndex"] = allocation.modify_index
        if self.faults.gc_after_end:
            self._forget(allocation.job_id)

    def _kill(self, allocation: Allocation, timeout: float) -> None:
        process = allocation.process
        if process is None or process.poll() is not None:
            return
        with self.lock:
            allocation.event("Killing", "Sent interrupt. Waiting 5s before force killing")
        _signal_group(process, signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _signal_group(process, signal.SIGKILL)

    def _forget(self, job_id: str) -> None:
        job = self.jobs.pop(job_id, None)
        self.allocations.pop(job_id, None)
        if job is not None and job.get("DispatchIdempotencyToken"):
            self.tokens.pop((job["ParentID"], job["DispatchIdempotencyToken"]), None)

    def _environment(
        self, job: dict[str, Any], task: dict[str, Any], allocation: Allocation, alloc_dir: Path
    ) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.extra_env)
        env.update(
            {
                "NOMAD_JOB_ID": job["ID"],
                "NOMAD_JOB_NAME": job["Name"],
                "NOMAD_JOB_PARENT_ID": job.get("ParentID") or "",
                "NOMAD_ALLOC_ID": allocation.id,
                "NOMAD_ALLOC_DIR": str(alloc_dir / "alloc"),
                "NOMAD_TASK_DIR": str(alloc_dir / "local"),
                "NOMAD_SECRETS_DIR": str(alloc_dir / "secrets"),
                "NOMAD_TASK_NAME": allocation.task,
                "NOMAD_GROUP_NAME": allocation.group,
                "NOMAD_NAMESPACE": job.get("Namespace", "default"),
            }
        )
        for key, value in (job.get("Meta") or {}).items():
            env[f"NOMAD_META_{key}"] = value
            env[f"NOMAD_META_{key.upper()}"] = value
        for key, value in (task.get("Env") or {}).items():
            env[key] = _interpolate(str(value), env, self.node_class)
        return env

    def _stub(self, job: dict[str, Any]) -> dict[str, Any]:
        job_id = job["ID"]
        summary = Counter()
        allocations = self.allocations.get(job_id, [])
        if not allocations and job.get("ParentID") and job["Status"] == "pending":
            summary["Queued"] = 1
        for allocation in allocations:
            key = {
                "pending": "Starting",
                "running": "Running",
                "complete": "Complete",
                "failed": "Failed",
                "lost": "Lost",
            }.get(allocation.client_status, "Unknown")
            summary[key] += 1
        group = job["TaskGroups"][0]["Name"] if job.get("TaskGroups") else "group"
        counts = {
            k: summary.get(k, 0)
            for k in ("Queued", "Complete", "Failed", "Running", "Starting", "Lost", "Unknown")
        }
        return {
            "ID": job_id,
            "ParentID": job.get("ParentID") or "",
            "Name": job["Name"],
            "Namespace": job.get("Namespace", "default"),
            "Datacenters": job.get("Datacenters"),
            "NodePool": job.get("NodePool", "default"),
            "Type": job.get("Type"),
            "Priority": job.get("Priority", 50),
            "Periodic": bool(job.get("Periodic")),
            "ParameterizedJob": bool(job.get("ParameterizedJob")) and not job.get("Dispatched"),
            "Stop": job.get("Stop", False),
            "Status": job["Status"],
            "StatusDescription": "",
            "JobSummary": {
                "JobID": job_id,
                "Namespace": job.get("Namespace", "default"),
                "Summary": {group: counts},
                "Children": self._children_counts(job) if _is_template(job) else None,
                "CreateIndex": job["CreateIndex"],
                "ModifyIndex": job["ModifyIndex"],
            },
            "CreateIndex": job["CreateIndex"],
            "ModifyIndex": job["ModifyIndex"],
            "JobModifyIndex": job["JobModifyIndex"],
            "SubmitTime": job["SubmitTime"],
        }

    def _children_counts(self, parent: dict[str, Any]) -> dict[str, int]:
        statuses = Counter(
            j["Status"] for j in self.jobs.values() if j.get("ParentID") == parent["ID"]
        )
        return {
            "Pending": statuses["pending"],
            "Running": statuses["running"],
            "Dead": statuses["dead"],
        }


# -- validation ---------------------------------------------------------------------------------
def _is_template(job: Mapping[str, Any]) -> bool:
    """A periodic or parameterized parent: it never runs itself."""
    return bool(job.get("Periodic") or job.get("ParameterizedJob")) and not job.get("Dispatched")


def _validate(job: Mapping[str, Any]) -> None:
    errors = []
    if " " in str(job["ID"]):
        errors.append("Job ID contains a space")
    job_type = job.get("Type")
    if job_type not in ("service", "batch", "system", "sysbatch"):
        errors.append(f"Invalid job type: {job_type!r}")
    if not job.get("Datacenters"):
        errors.append("Missing job datacenters")
    groups = job.get("TaskGroups") or []
    if not groups:
        errors.append("Missing job task groups")
    for group in groups:
        if not group.get("Tasks"):
            errors.append(f"Task group {group.get('Name')} has no tasks")
        for task in group.get("Tasks") or []:
            if not task.get("Driver"):
                errors.append(f"Task {task.get('Name')} missing driver")
    if job.get("ParameterizedJob") and job_type not in ("batch", "sysbatch"):
        errors.append('Parameterized job can only be used with "batch" or "sysbatch" scheduler')
    if job.get("Periodic") and job_type != "batch":
        errors.append('Periodic can only be used with "batch" scheduler')
    if errors:
        raise ApiError(400, f"{len(errors)} error(s) occurred:\n\n* " + "\n* ".join(errors))


def _validate_dispatch(
    constructor: Mapping[str, Any], meta: Mapping[str, str], payload: bytes
) -> None:
    mode = constructor.get("Payload") or "optional"
    if mode == "required" and not payload:
        raise ApiError(500, "Payload is not provided but required by parameterized job")
    if mode == "forbidden" and payload:
        raise ApiError(500, "Payload provided but forbidden by parameterized job")
    if len(payload) > PAYLOAD_LIMIT:
        raise ApiError(500, f"Payload exceeds maximum size; {len(payload)} > {PAYLOAD_LIMIT}")
    required = set(constructor.get("MetaRequired") or [])
    optional = set(constructor.get("MetaOptional") or [])
    unpermitted = sorted(set(meta) - required - optional)
    if unpermitted:
        raise ApiError(
            500, f"Dispatch request included unpermitted metadata keys: {_go(unpermitted)}"
        )
    missing = sorted(required - set(meta))
    if missing:
        raise ApiError(500, f"Dispatch did not provide required meta keys: {_go(missing)}")


# -- helpers ---------------------------------------------------------------------------------------
def _go(items: list[str]) -> str:
    """A list of strings as Go's %v prints it."""
    return "[" + " ".join(items) + "]"


def _interpolate(value: str, env: Mapping[str, str], node_class: str) -> str:
    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name == "node.class":
            return node_class
        return env.get(name, match.group(0))

    return _INTERPOLATION.sub(replace, value)


def _kill_timeout(job: Mapping[str, Any]) -> float:
    try:
        return job["TaskGroups"][0]["Tasks"][0].get("KillTimeout", 5 * 10**9) / 10**9
    except (KeyError, IndexError, TypeError):
        return 5.0


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
