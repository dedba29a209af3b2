"""The double's HTTP API on loopback: the endpoints joblife uses, with Nomad's routing
(``/v1/job/<id>`` where ``<id>`` may contain slashes, the action taken from the path's
suffix), status codes and bodies (JSON, or the error as plain text), the
``X-Nomad-Index`` header, and kept-alive HTTP/1.1 connections."""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from tests.nomad_double.cluster import ApiError, Cluster
from tests.nomad_double.jobspec import JobspecError, parse_document, parse_hcl

LEADER = "127.0.0.1:4647"


class NomadDouble:
    """A Nomad HTTP API on ``127.0.0.1``; see :mod:`tests.nomad_double.cluster`."""

    def __init__(self, work_dir: Path, **cluster_options: Any) -> None:
        self.cluster = Cluster(work_dir, **cluster_options)
        self.requests: Counter[str] = Counter()
        #: With ACLs on (a token set), a request without that X-Nomad-Token is answered
        #: 403 "Permission denied", as Nomad does.
        self.acl_token: str | None = None
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def faults(self):
        return self.cluster.faults

    def start(self) -> NomadDouble:
        """Listen (on the same port again after :meth:`stop_listening`)."""
        # python-hcl2 builds its parser on first use (about 4 s with no cache file, in a
        # new virtual environment): before listening, not within a client's read timeout.
        parse_document("")
        server = _Server(("127.0.0.1", self.port), _Handler)
        server.daemon_threads = True
        server.double = self  # type: ignore[attr-defined]
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop_listening(self) -> None:
        """Nomad unreachable: the open (kept-alive) connections are closed and new ones
        refused until :meth:`start` again."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server.close_connections()
            self._server = None

    def close(self) -> None:
        self.stop_listening()
        self.cluster.close()

    # -- one request ------------------------------------------------------------------------------
    def handle(
        self, method: str, raw_path: str, body: bytes, token: str | None = None
    ) -> tuple[int, Any]:
        url = urlsplit(raw_path)
        path = unquote(url.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        self.requests[f"{method} {_route_name(path)}"] += 1
        acl = self.acl_token is not None and not path.startswith("/_double/")
        if acl and path != "/v1/status/leader" and token != self.acl_token:
            return 403, "Permission denied"
        faults = self.cluster.faults
        if faults.delay_seconds:
            time.sleep(faults.delay_seconds)
        with self.cluster.lock:
            if faults.fail_next > 0:
                faults.fail_next -= 1
                return faults.fail_status, faults.fail_message
        try:
            return 200, self._route(method, path, query, body)
        except ApiError as exc:
            return exc.status, exc.message

    def _route(self, method: str, path: str, query: dict[str, str], body: bytes) -> Any:
        cluster = self.cluster
        if path.startswith("/_double/"):  # the double's own controls, for other processes
            return self._control(path, body)
        if path == "/v1/status/leader" and method == "GET":
            return LEADER
        if path == "/v1/jobs":
            if method == "GET":
                return cluster.list(query.get("prefix", ""))
            if method in ("PUT", "POST"):
                return cluster.register(_json(body).get("Job") or _missing("Job must be specified"))
            raise ApiError(405, "Invalid method")
        if path == "/v1/jobs/parse" and method in ("PUT", "POST"):
            request = _json(body)
            if not request.get("JobHCL"):
                raise ApiError(400, "Job spec is empty")
            try:
                return parse_hcl(request["JobHCL"])
            except JobspecError as exc:
                raise ApiError(400, str(exc)) from exc
        if not path.startswith("/v1/job/"):
            raise ApiError(404, "Invalid URL")
        rest = path[len("/v1/job/") :]
        if rest.endswith("/allocations"):
            _only(method, "GET")
            return cluster.allocations_of(rest[: -len("/allocations")])
        if rest.endswith("/dispatch"):
            _only(method, "PUT", "POST")
            # The token is read from the query string only, as Nomad does.
            return cluster.dispatch(
                rest[: -len("/dispatch")], _json(body), query.get("idempotency_token")
            )
        if method == "GET":
            return cluster.get(rest)
        if method in ("PUT", "POST"):
            return cluster.register(
                _json(body).get("Job") or _missing("Job must be specified"), rest
            )
        if method == "DELETE":
            purge = query.get("purge", "false").lower() in ("1", "true")
            return cluster.stop(rest, purge=purge)
        raise ApiError(405, "Invalid method")

    def _control(self, path: str, body: bytes) -> Any:
        if path == "/_double/requests":
            return dict(self.requests)
        if path == "/_double/finish":
            request = _json(body)
            for job_id in request["JobIDs"]:
                self.cluster.finish(job_id, int(request.get("ExitCode", 0)))
            return {}
        raise ApiError(404, "Invalid URL")


class _Server(ThreadingHTTPServer):
    """The HTTP server: keeps track of its open connections (to close them when Nomad
    goes away), quiet about clients that went away mid-answer."""

    #: What a client that gave up (its read timed out: the fault mode of slow answers)
    #: leaves the server writing to: the expected outcome, not an error worth a traceback.
    CLIENT_GONE = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(address, handler)
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Close every open connection (their handlers then see the end of the stream)."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Swallow :data:`CLIENT_GONE` errors; anything else is printed as usual."""
        if isinstance(sys.exc_info()[1], self.CLIENT_GONE):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the client reuses its connections
    # Headers and body are two writes: without TCP_NODELAY, Nagle and the client's delayed
    # ACK hold every kept-alive answer ~40 ms.
    disable_nagle_algorithm = True

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        double: NomadDouble = self.server.double  # type: ignore[attr-defined]
        token = self.headers.get("X-Nomad-Token")
        status, payload = double.handle(self.command, self.path, body, token)
        if isinstance(payload, str) and status != 200:
            data, content_type = payload.encode(), "text/plain; charset=utf-8"
        else:
            data, content_type = json.dumps(payload).encode(), "application/json"
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Nomad-Index", str(double.cluster.index))
        self.send_header("X-Nomad-KnownLeader", "true")
        self.send_header("X-Nomad-LastContact", "0")
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the tests read the counters instead."""


def _json(body: bytes) -> dict[str, Any]:
    if not body:
        return {}
    try:
        value = json.loads(body)
    except ValueError as exc:
        raise ApiError(400, f"Request decode failed: {exc}") from exc
    if not isinstance(value, dict):
        raise ApiError(400, "Request decode failed: not an object")
    return value


def _missing(message: str) -> Any:
    raise ApiError(400, message)


def _only(method: str, *allowed: str) -> None:
    if method not in allowed:
        raise ApiError(405, "Invalid method")


def _route_name(path: str) -> str:
    """The endpoint a path hits, ids left out (for the request counters)."""
    if path.startswith("/v1/job/"):
        for suffix in ("/allocations", "/dispatch"):
            if path.endswith(suffix):
                return f"/v1/job/:id{suffix}"
        return "/v1/job/:id"
    return path
