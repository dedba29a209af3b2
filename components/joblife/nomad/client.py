"""The python-nomad client as joblife uses it: one HTTP session (kept-alive connections)
shared by every endpoint, connect/read timeouts, bounded retries with backoff (urllib3's
``Retry``), TLS verification on, and the ACL token, namespace and region of the settings.
"""

from __future__ import annotations

import requests
from nomad.api.exceptions import BaseNomadException
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

import nomad
from joblife.config import Settings
from joblife.errors import ConfigurationError

#: Answers worth retrying: Nomad's own 500 (e.g. no cluster leader during an election)
#: and a proxy's 502/503/504.
RETRY_STATUSES = frozenset({500, 502, 503, 504})
#: Answers meaning that Nomad itself cannot be reached (a proxy answered for it), or that
#: it will serve none of joblife's requests until an operator acts: 401/403, a missing,
#: expired or insufficient ACL token. Counted as refusals, they would fail the attempt of
#: every job dispatched meanwhile; as an outage, the jobs wait with the reason.
UNREACHABLE_STATUSES = frozenset({401, 403, 502, 503, 504})
#: What Nomad's own 500 says when the cluster cannot serve any request right now (no
#: leader during an election, Raft not ready or shutting down, a region out of reach).
#: Every other 500 is a refusal of the request itself: Nomad answers a dispatch it rejects
#: (unknown or stopped parent job, missing or unpermitted meta, payload) with a 500 too.
UNAVAILABLE_MESSAGES = (
    "No cluster leader",
    "Not ready to serve consistent reads",
    "No path to region",
    "node is not the leader",
    "leadership lost while committing log",
    "leadership transfer in progress",
    "timed out enqueuing operation",
    "raft is already shutdown",
)


def nomad_client(settings: Settings, pool_size: int = 16) -> nomad.Nomad:
    """A python-nomad client on ``settings.nomad_addr``."""
    if not settings.nomad_addr:
        raise ConfigurationError("JOBLIFE_NOMAD_ADDR is not set: no Nomad to talk to")
    retry = Retry(
        total=settings.nomad_retries,
        connect=settings.nomad_retries,
        read=settings.nomad_retries,
        status=settings.nomad_retries,
        status_forcelist=RETRY_STATUSES,
        allowed_methods=None,  # POST too: dispatch is idempotent through its token
        backoff_factor=settings.nomad_retry_backoff_seconds,
        raise_on_status=False,  # the last answer reaches python-nomad, which raises
        respect_retry_after_header=False,
    )
    session = requests.Session()
    adapter = HTTPAdapter(max_retries=retry, pool_connections=2, pool_maxsize=pool_size)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    token = settings.nomad_token.get_secret_value() if settings.nomad_token else None
    return nomad.Nomad(
        address=settings.nomad_addr.rstrip("/"),
        token=token,
        namespace=settings.nomad_namespace,
        region=settings.nomad_region,
        timeout=(settings.nomad_connect_timeout_seconds, settings.nomad_read_timeout_seconds),
        # python-nomad's default is not to verify certificates: joblife always does.
        verify=str(settings.nomad_tls_ca_cert) if settings.nomad_tls_ca_cert else True,
        session=session,
    )


def http_status(error: BaseNomadException) -> int | None:
    """The HTTP status of Nomad's answer, None when there was no answer."""
    response = getattr(error, "nomad_resp", None)
    return response.status_code if isinstance(response, requests.Response) else None


def is_unreachable(error: BaseException) -> bool:
    """Whether ``error`` means Nomad cannot serve the request now: no answer (refused,
    reset, timed out), a proxy in front of it that could not reach it (502/503/504), an
    ACL token it does not accept (401/403), or Nomad's own 500 saying the cluster is
    unavailable (:data:`UNAVAILABLE_MESSAGES`), as opposed to Nomad refusing the request
    (another 4xx, or a 500 with the reason)."""
    if isinstance(error, requests.RequestException):
        return True
    if isinstance(error, BaseNomadException):
        status = http_status(error)
        if status is None or status in UNREACHABLE_STATUSES:
            return True
        if status == 500:
            body = error.nomad_resp.text  # type: ignore[attr-defined]
            return any(message in body for message in UNAVAILABLE_MESSAGES)
    return False


def describe(error: BaseException) -> str:
    """One line saying what went wrong with a Nomad request."""
    if isinstance(error, BaseNomadException):
        response = getattr(error, "nomad_resp", None)
        if isinstance(response, requests.Response):
            body = " ".join(response.text.split())[:300] or response.reason
            return f"HTTP {response.status_code}: {body}"
        error = response if isinstance(response, BaseException) else error
    # requests wraps urllib3's MaxRetryError, which names the socket error in its text.
    text = str(error)
    if "Connection refused" in text:
        return "connection refused"
    if "timed out" in text.lower():
        return "no answer in time (timed out)"
    if "RemoteDisconnected" in text or "Connection aborted" in text:
        return "connection closed without an answer"
    return " ".join(text.split())[:300]
