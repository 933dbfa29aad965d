"""The template's ``/metrics`` endpoint (``walredo-template --metrics-port N``), served from its own loop.

Runs in the template. prometheus_client's own HTTP server runs in a thread, and a process that forks must not
have threads (a child could inherit a lock some other thread held at the fork): so this is a small
non-blocking HTTP/1.0 responder driven by the template's selector. Every connection gets one response and is
closed: ``GET /metrics`` (or ``/``) → the text exposition format rendered by ``render()``, anything else →
404. A request must arrive within :data:`REQUEST_DEADLINE` seconds and fit in :data:`MAX_REQUEST` bytes; at
most :data:`MAX_CONNECTIONS` are served at once (more are closed at accept). The listener is loopback-only by
default. prometheus_client is imported by the caller, and only when the endpoint is on.
"""

from __future__ import annotations

import errno
import selectors
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["MetricsEndpoint", "REQUEST_DEADLINE", "MAX_REQUEST", "MAX_CONNECTIONS"]

REQUEST_DEADLINE = 5.0
MAX_REQUEST = 8192
MAX_CONNECTIONS = 16
_CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"

Handler = Callable[[int], None]  # selector key data: called with the ready events


@dataclass
class _Http:
    sock: socket.socket
    accepted_at: float
    request: bytearray = field(default_factory=bytearray)
    reply: memoryview | None = None


class MetricsEndpoint:
    """A loopback HTTP listener on ``port`` registered in ``selector``; each key's data is a :data:`Handler`.

    Errors of the constructor: ``OSError`` (the port is taken, ...)."""

    def __init__(self, selector: selectors.BaseSelector, port: int, render: Callable[[], bytes],
                 host: str = "127.0.0.1") -> None:
        self._sel = selector
        self._render = render
        self._conns: dict[int, _Http] = {}
        self._listener = socket.create_server((host, port), backlog=MAX_CONNECTIONS)
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        selector.register(self._listener, selectors.EVENT_READ, self._on_accept)

    def sockets(self) -> list[socket.socket]:
        """Every socket this endpoint holds (a forked child closes them)."""
        return [self._listener, *(c.sock for c in self._conns.values())]

    def sweep(self, now: float | None = None) -> None:
        """Close connections that did not finish within the deadline (call it now and then)."""
        now = time.monotonic() if now is None else now
        for conn in [c for c in self._conns.values() if now - c.accepted_at > REQUEST_DEADLINE]:
            self._close(conn)

    def close(self) -> None:
        """Stop listening and drop every connection. Idempotent."""
        for conn in list(self._conns.values()):
            self._close(conn)
        if self._listener.fileno() >= 0:
            self._sel.unregister(self._listener)
            self._listener.close()

    def _on_accept(self, events: int) -> None:
        for _ in range(MAX_CONNECTIONS):
            try:
                sock, _addr = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # EMFILE and friends: try again on the next readiness
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    return
                raise
            if len(self._conns) >= MAX_CONNECTIONS:
                sock.close()
                continue
            sock.setblocking(False)
            conn = _Http(sock, time.monotonic())
            self._conns[sock.fileno()] = conn
            self._sel.register(sock, selectors.EVENT_READ, lambda ev, c=conn: self._on_conn(c, ev))

    def _on_conn(self, conn: _Http, events: int) -> None:
        try:
            if conn.reply is None:
                data = conn.sock.recv(MAX_REQUEST)
                if not data:
                    self._close(conn)
                    return
                conn.request += data
                if b"\r\n\r\n" not in conn.request and b"\n\n" not in conn.request:
                    if len(conn.request) >= MAX_REQUEST:
                        self._close(conn)
                    return
                conn.reply = memoryview(self._response(bytes(conn.request)))
                self._sel.modify(conn.sock, selectors.EVENT_WRITE, lambda ev, c=conn: self._on_conn(c, ev))
            sent = conn.sock.send(conn.reply)
            conn.reply = conn.reply[sent:]
            if not conn.reply:
                self._close(conn)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self._close(conn)

    def _response(self, request: bytes) -> bytes:
        line = request.split(b"\n", 1)[0].split()
        if len(line) >= 2 and line[0] == b"GET" and line[1].split(b"?")[0] in (b"/metrics", b"/"):
            body, status, ctype = self._render(), b"200 OK", _CONTENT_TYPE
        else:
            body, status, ctype = b"not found: try /metrics\n", b"404 Not Found", b"text/plain"
        head = b"HTTP/1.0 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % (
            status, ctype, len(body))
        return head + body

    def _close(self, conn: _Http) -> None:
        self._conns.pop(conn.sock.fileno(), None)
        try:
            self._sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()
