"""``POST /v1/jobs/parse`` for the double: HCL2 job specs (parsed with python-hcl2) to the
API's JSON job, for the blocks and attributes joblife's specs use. Anything else is
refused with a 400, as Nomad refuses what it cannot parse."""

from __future__ import annotations

import re
from typing import Any

import hcl2
from hcl2.utils import SerializationOptions

OPTIONS = SerializationOptions(
    with_comments=False, strip_string_quotes=True, preserve_heredocs=False
)
_DURATION = re.compile(r"^(\d+)(ns|us|ms|s|m|h)$")
_NANOS = {"ns": 1, "us": 10**3, "ms": 10**6, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}


class JobspecError(ValueError):
    """The HCL is not a job spec the double understands."""


def parse_hcl(text: str) -> dict[str, Any]:
    """The API JSON job of ``text`` (one ``job`` block)."""
    try:
        document = hcl2.loads(text, serialization_options=OPTIONS)
    except Exception as exc:
        raise JobspecError(f"Failed to parse job: {exc}") from exc
    jobs = document.get("job") or []
    if len(jobs) != 1:
        raise JobspecError("Failed to parse job: expected exactly one job block")
    ((name, body),) = _labelled(jobs[0])
    return job_json(name, body)


def parse_document(text: str) -> dict[str, Any]:
    """Any HCL document as python-hcl2 gives it (quotes stripped, heredocs as strings)."""
    return hcl2.loads(text, serialization_options=OPTIONS)


def job_json(name: str, body: dict[str, Any]) -> dict[str, Any]:
    job: dict[str, Any] = {
        "ID": name,
        "Name": name,
        "Type": body.get("type", "service"),
        "Datacenters": body.get("datacenters", ["*"]),
        "Namespace": body.get("namespace", "default"),
        "Region": body.get("region", "global"),
        "NodePool": body.get("node_pool", "default"),
        "Priority": body.get("priority", 50),
        "Meta": _first(body, "meta") or None,
        "Constraints": [_constraint(c) for c in _blocks(body, "constraint")] or None,
        "ParameterizedJob": None,
        "Periodic": None,
        "TaskGroups": [_group(n, b) for n, b in _labelled_blocks(body, "group")],
    }
    parameterized = _first(body, "parameterized")
    if parameterized is not None:
        job["ParameterizedJob"] = {
            "Payload": parameterized.get("payload", "optional"),
            "MetaRequired": parameterized.get("meta_required"),
            "MetaOptional": parameterized.get("meta_optional"),
        }
    periodic = _first(body, "periodic")
    if periodic is not None:
        crons = periodic.get("crons") or [periodic.get("cron")]
        job["Periodic"] = {
            "Enabled": periodic.get("enabled", True),
            "Spec": crons[0],
            "Specs": crons,
            "SpecType": "cron",
            "ProhibitOverlap": periodic.get("prohibit_overlap", False),
            "TimeZone": periodic.get("time_zone", "UTC"),
        }
    return job


def _group(name: str, body: dict[str, Any]) -> dict[str, Any]:
    restart = _first(body, "restart") or {}
    reschedule = _first(body, "reschedule") or {}
    disk = _first(body, "ephemeral_disk") or {}
    return {
        "Name": name,
        "Count": body.get("count", 1),
        "Constraints": [_constraint(c) for c in _blocks(body, "constraint")] or None,
        "RestartPolicy": {
            "Attempts": restart.get("attempts", 3),
            "Interval": _duration(restart.get("interval", "24h")),
            "Delay": _duration(restart.get("delay", "15s")),
            "Mode": restart.get("mode", "fail"),
        },
        "ReschedulePolicy": {
            "Attempts": reschedule.get("attempts", 1),
            "Unlimited": reschedule.get("unlimited", False),
        },
        "EphemeralDisk": {"SizeMB": disk.get("size", 300)},
        "Tasks": [_task(n, b) for n, b in _labelled_blocks(body, "task")],
    }


def _task(name: str, body: dict[str, Any]) -> dict[str, Any]:
    resources = _first(body, "resources") or {}
    return {
        "Name": name,
        "Driver": body.get("driver"),
        "Config": _first(body, "config") or {},
        "Env": _first(body, "env") or None,
        "Templates": [
            {
                # python-hcl2 turns a heredoc into a quoted string, escaping its quotes;
                # Nomad keeps a heredoc's text as it is.
                "EmbeddedTmpl": _heredoc(t.get("data")),
                "DestPath": t.get("destination"),
                "Envvars": t.get("env", False),
                "ChangeMode": t.get("change_mode", "restart"),
            }
            for t in _blocks(body, "template")
        ]
        or None,
        "Resources": {
            "CPU": resources.get("cpu", 100 if "cores" not in resources else 0),
            "Cores": resources.get("cores", 0),
            "MemoryMB": resources.get("memory", 300),
        },
        "KillTimeout": _duration(body.get("kill_timeout", "5s")),
        "KillSignal": body.get("kill_signal", ""),
    }


def _constraint(body: dict[str, Any]) -> dict[str, Any]:
    return {
        "LTarget": body.get("attribute", ""),
        "RTarget": body.get("value", ""),
        "Operand": body.get("operator", "="),
    }


def _duration(value: Any) -> int:
    match = _DURATION.match(str(value))
    if not match:
        raise JobspecError(f"Failed to parse job: invalid duration {value!r}")
    return int(match.group(1)) * _NANOS[match.group(2)]


# -- python-hcl2's shapes -----------------------------------------------------------------------
def _clean(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if not k.startswith("__")}


def _blocks(body: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [_clean(b) for b in body.get(name) or []]


def _first(body: dict[str, Any], name: str) -> dict[str, Any] | None:
    blocks = _blocks(body, name)
    return blocks[0] if blocks else None


def _labelled(block: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(label, _clean(inner)) for label, inner in _clean(block).items()]


def _labelled_blocks(body: dict[str, Any], name: str) -> list[tuple[str, dict[str, Any]]]:
    return [pair for block in body.get(name) or [] for pair in _labelled(block)]


def _heredoc(value: Any) -> Any:
    """A heredoc's text as written (python-hcl2 gives it with its quotes escaped)."""
    return value.replace('\\"', '"') if isinstance(value, str) else value
