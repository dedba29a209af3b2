"""A threaded TCP proxy for the tests that simulate an outage of a real service.

:class:`TcpProxy` listens on 127.0.0.1 (a free port) and forwards each connection to a
target (RabbitMQ, PostgreSQL). A test points the code under test at :meth:`TcpProxy.url`
or :attr:`TcpProxy.port`, then makes the service misbehave without touching it:

* :meth:`TcpProxy.cut`: the service goes away. Every proxied connection is closed (done
  when the call returns) and new ones are refused (accepted and closed at once).
* :meth:`TcpProxy.black_hole`: the service hangs. Connections stay open and new ones are
  accepted; what either side sends is read and dropped.
* :meth:`TcpProxy.restore`: the service is back. A connection whose stream lost bytes in
  a hole is closed then (as a middlebox that lost its state would); new ones are forwarded.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from urllib.parse import urlsplit, urlunsplit


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed by the other side
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


class TcpProxy:
    """A TCP forwarder on 127.0.0.1 in front of ``(target_host, target_port)``, that a
    test can :meth:`cut` or :meth:`black_hole` until :meth:`restore`.

    Events a test may wait on: :attr:`accepting` (clear while cut), :attr:`holing` (set
    while a black hole), :attr:`refused` (a connection was refused since the last cut),
    :attr:`swallowed` (the hole dropped bytes since the last :meth:`black_hole`).
    :attr:`connections` counts the connections forwarded to the target.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(0.1)  # the accept loop sees close() within this time
        self.port: int = self._server.getsockname()[1]
        self.accepting = threading.Event()
        self.accepting.set()
        self.holing = threading.Event()
        self.refused = threading.Event()
        self.swallowed = threading.Event()
        self.connections = 0
        self._sockets: set[socket.socket] = set()
        self._tainted: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._accept, name="tcp-proxy", daemon=True)
        self._thread.start()

    @property
    def address(self) -> tuple[str, int]:
        """Where the proxy listens."""
        return ("127.0.0.1", self.port)

    def url(self, url: str) -> str:
        """``url`` (``scheme://[user[:password]@]host[:port]/...``) pointed at this proxy."""
        parts = urlsplit(url)
        netloc = parts.netloc.rsplit("@", 1)
        host = f"127.0.0.1:{self.port}"
        return urlunsplit(
            parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host)
        )

    def cut(self) -> None:
        """Close every proxied connection (done when this returns) and refuse new ones
        until :meth:`restore`."""
        with self._lock:
            self.accepting.clear()
            self.refused.clear()
            sockets, self._sockets, self._tainted = self._sockets, set(), set()
        for sock in sockets:
            _close(sock)

    def black_hole(self) -> None:
        """Keep accepting and reading, forward nothing either way until :meth:`restore`."""
        self.swallowed.clear()
        self.holing.set()

    def restore(self) -> None:
        """Forward again; close the connections whose streams lost bytes in a hole."""
        with self._lock:
            self.holing.clear()
            self.accepting.set()
            tainted, self._tainted = self._tainted, set()
        for sock in tainted:
            _close(sock)

    def close(self) -> None:
        """Stop listening and close every connection."""
        self._closed = True
        self._thread.join(timeout=5)
        self.cut()
        self._server.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:  # the listener was closed
                return
            client.settimeout(None)
            if not self.accepting.is_set():
                _close(client)
                self.refused.set()
                continue
            with self._lock:
                if self.holing.is_set():  # nothing reaches the target: only read
                    self._sockets.add(client)
                    self._tainted.add(client)
                    self._start(client, None)
                    continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                _close(client)
                continue
            upstream.settimeout(None)
            with self._lock:
                if not self.accepting.is_set():  # cut while connecting: refuse it too
                    _close(client)
                    _close(upstream)
                    self.refused.set()
                    continue
                self._sockets |= {client, upstream}
                self.connections += 1
            self._start(client, upstream)
            self._start(upstream, client)

    def _start(self, source: socket.socket, sink: socket.socket | None) -> None:
        threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket | None) -> None:
        """Forward ``source`` to ``sink`` (``None``: read only), or drop while holing."""
        ends = [source] if sink is None else [source, sink]
        try:
            while data := source.recv(65536):
                with self._lock:
                    holing = self.holing.is_set()
                    if holing:
                        self._tainted.update(ends)
                if holing or sink is None:
                    self.swallowed.set()
                    continue
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in ends:
                _close(sock)
            with self._lock:
                self._sockets.difference_update(ends)
                self._tainted.difference_update(ends)
