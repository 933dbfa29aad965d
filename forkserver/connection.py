"""One control connection as the template serves it: read, decode, answer, close (template process only).

The template (:mod:`forkserver.template`) accepts a peer, checks its uid and makes a :class:`Connection`;
from then on the connection's :meth:`~Connection.on_events` is the selector key's data for its socket. It
reads with :func:`forkserver.fdpass.recv`, feeds the sans-IO :class:`~forkserver.control.ControlConnection`,
hands each request to the template (``on_request``) and sends whatever the protocol queued through a
:class:`~forkserver.sender.FrameSender`, watching for writability only while something waits. A peer that
breaks the protocol, goes away, or does not read its replies (more than 4 MiB queued) is dropped; a bug of
ours costs that one connection, never the template. Why a connection was dropped is logged (WARNING) with
the peer's pid.
"""

from __future__ import annotations

import logging
import selectors
import socket
import time
from collections.abc import Callable

from forkserver import fdpass
from forkserver.control import BadRequest, ControlConnection, Message, Role
from forkserver.errors import ControlProtocolError
from forkserver.secret import Key
from forkserver.sender import FrameSender

__all__ = ["Connection"]

log = logging.getLogger(__name__)

_RECV_SIZE = 64 * 1024
# Bytes queued to a peer that does not read; beyond this we drop it. Room for a few thousand stats replies
# (each lists the children) from a peer that pipelines requests and reads late.
_MAX_OUTPUT = 4 << 20


class Connection:
    """One accepted control connection. ``on_request(conn, event)`` answers a request (through
    ``conn.proto.send``); ``on_close(conn)`` is told once, when the connection closes (before its socket
    does). ``peer_pid`` (from ``SO_PEERCRED``) names the peer in log lines."""

    def __init__(self, sock: socket.socket, key: Key, sel: selectors.BaseSelector,
                 on_request: Callable[[Connection, Message | BadRequest], None],
                 on_close: Callable[[Connection], None], *, peer_pid: int = 0):
        self.sock = sock
        self.peer_pid = peer_pid
        self.proto = ControlConnection(Role.TEMPLATE, key)
        self.created = time.monotonic()
        self.sender = FrameSender(sock)
        self.closed = False
        # pidfds we opened and queued in a `spawned` reply: ours to close once the frame carrying them went out.
        self.owned_fds: set[int] = set()
        # Whether the selector also watches for writability; re-registering only when this changes saves an
        # epoll_ctl (and the selector's Python bookkeeping) on every reply.
        self._writing = False
        self._sel = sel
        self._on_request = on_request
        self._on_close = on_close

    def start(self) -> None:
        """Register with the selector and send the challenge."""
        self.proto.start()
        self._sel.register(self.sock, selectors.EVENT_READ, self.on_events)
        self.queue_output()

    def on_events(self, events: int) -> None:
        """The selector's callback for this socket."""
        try:
            if events & selectors.EVENT_WRITE:
                self.flush()
            if events & selectors.EVENT_READ and not self.closed:
                self._read()
        except Exception as e:  # a bug of ours must cost one connection, never the template
            log.error("internal error on the connection from pid %d, dropping it: %s: %s", self.peer_pid,
                      type(e).__name__, e, exc_info=True)
            self.close()

    def _read(self) -> None:
        try:
            data, fds = fdpass.recv(self.sock, _RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except ControlProtocolError as e:  # bad ancillary data; fdpass closed the fds
            log.warning("dropping the connection from pid %d: %s", self.peer_pid, e)
            self.close()
            return
        except OSError:
            self.close()
            return
        if not data:
            fdpass.close_fds(fds)
            self.close()
            return
        try:
            for event in self.proto.receive_events(data, fds):
                self._on_request(self, event)
        except ControlProtocolError as e:
            log.warning("dropping the connection from pid %d: %s", self.peer_pid, e)
            self.queue_output()  # the error frame the protocol queued, best effort
            self.close()
            return
        self.queue_output()

    def queue_output(self) -> None:
        """Send (or queue) every frame the protocol has ready; drop the peer if too much waits."""
        for frame, fds in self.proto.data_to_send():
            mine = []
            if fds:
                mine = [fd for fd in fds if fd in self.owned_fds]
                self.owned_fds.difference_update(mine)
            if self.closed:
                fdpass.close_fds(mine)
                continue
            try:
                self.sender.send(frame, fds, mine)
            except OSError:
                self.close()
        if self.closed:
            fdpass.close_fds(self.owned_fds)
            self.owned_fds.clear()
            return
        if self.sender.queued > _MAX_OUTPUT:
            log.warning("dropping the connection from pid %d: it does not read its replies (%d bytes queued)",
                        self.peer_pid, self.sender.queued)
            self.close()
            return
        self.flush()

    def flush(self) -> None:
        if self.closed:
            return
        try:
            self.sender.flush()
        except OSError:
            self.close()
            return
        if self._writing != bool(self.sender):
            self._writing = bool(self.sender)
            self._sel.modify(self.sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if self._writing else 0),
                             self.on_events)

    def close(self) -> None:
        """Drop the connection and everything it holds. Idempotent."""
        if self.closed:
            return
        self.sender.send_head_best_effort()  # a pending error frame explaining the hang-up
        self.closed = True
        self.sender.close()
        fdpass.close_fds(self.owned_fds)
        self.owned_fds.clear()
        self.proto.close()
        try:
            self._sel.unregister(self.sock)
        except (KeyError, ValueError):
            pass
        self._on_close(self)
        self.sock.close()
