"""Parent side: one authenticated control connection to one template process (asyncio, loop thread only).

:func:`open_session` connects, checks the peer's uid (``SO_PEERCRED``) and runs the handshake of
:mod:`forkserver.control`; a :class:`Session` then carries spawn and stats requests, turns ``spawned``
replies into :class:`~forkserver.handle.ChildHandle` objects and delivers ``exited`` events to them. It only
does non-blocking socket I/O (``add_reader`` / ``add_writer``; sending through
:class:`~forkserver.sender.FrameSender`). When the connection goes, :meth:`Session.fail` fails every waiter
and tells its owner (:class:`~forkserver.client.TemplateClient`, which restarts the template or reconnects).

Spawns wait their turn. :meth:`Session.request_spawn` queues a spawn; the socketpair and the ``spawn`` frame
of at most :attr:`Session.spawns_per_iteration` queued spawns are made per loop iteration, in request order
(:meth:`Session._drain`), so a storm of hundreds of cold tenants requested at once does not run hundreds of
``socketpair`` + ``sendmsg`` in one callback and stall the loop; one spawn on an idle session is sent at
once, with no extra iteration. A readable callback likewise reads at most ``spawns_per_iteration`` chunks
(each ``spawned`` reply arrives in its own ``recvmsg``, since its pidfd ends the read), leaving the rest in
the socket for the next iteration. A queued spawn is in flight on its session: it fails with the session.

Out of descriptors: when a ``spawned`` reply's pidfd cannot be received (EMFILE/ENFILE in the parent, see
:class:`~forkserver.fdpass.FdsTruncated`), the bytes are intact; a spare descriptor the session keeps for
this stands in for the lost pidfd, so the control protocol still decodes the reply, and that one spawn fails
with ``OSError(EMFILE)`` (its socket closed: the child sees EOF and exits). The session, and the healthy
template behind it, stay.
"""

from __future__ import annotations

import _socket
import asyncio
import errno
import itertools
import logging
import os
import socket
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from forkserver import control, fdpass
from forkserver.control import ControlConnection, Role
from forkserver.errors import ControlProtocolError, SpawnRefused, TemplateUnavailable
from forkserver.handle import ChildHandle
from forkserver.sender import FrameSender

__all__ = ["PendingSpawn", "Session", "open_session"]

log = logging.getLogger("forkserver.client")  # the client's logger, where its warnings have always gone
_child_log = logging.getLogger("forkserver.child")  # what children wrote to their stderr

_RECV_SIZE = 256 * 1024
# Spawns sent, and control chunks read, per loop iteration at most (module docstring): each costs the loop
# some 20-40 us, so a full batch stays under a millisecond while the template forks far fewer per
# millisecond than that.
SPAWNS_PER_ITERATION = 16


@dataclass(eq=False)
class PendingSpawn:
    """One spawn request: queued until :meth:`Session._drain` sends it, then waiting for its reply."""

    future: asyncio.Future[ChildHandle]
    tenant: str
    options: control.Options
    parent_end: socket.socket | None = None  # made when it is sent; None while it waits its turn
    request_id: int = 0  # assigned when it is sent
    sent_at: float = 0.0  # loop time it was sent at

    @property
    def sent(self) -> bool:
        return self.parent_end is not None


class Session:
    """One authenticated control connection to one template process (loop thread only)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, key: bytes,
                 on_lost: Callable[[Session], None]):
        self.loop = loop
        self.sock = sock
        self.proto = ControlConnection(Role.PARENT, key)
        self.out = FrameSender(sock)
        self._ids = itertools.count(1)
        # request id -> a spawn's waiter, or a stats request's future
        self.pending: dict[int, PendingSpawn | asyncio.Future[dict[str, Any]]] = {}
        # Spawns waiting their turn, in request order; a cancelled one stays until the drain skips it.
        self.spawn_queue: deque[PendingSpawn] = deque()
        self.spawns_per_iteration = SPAWNS_PER_ITERATION
        # Whether a _drain is scheduled (call_soon). While one is, nothing else sends a spawn: that is what
        # bounds the spawns sent per loop iteration (see _drain).
        self._drain_scheduled = False
        self.children: dict[int, ChildHandle] = {}
        self.ready: asyncio.Future[None] = loop.create_future()
        self.lost = False
        self.error: BaseException | None = None  # why it was lost (what fail() got)
        self._on_lost = on_lost
        self._writing = False
        # When the template was last heard from (loop time): a waiting spawn probes only a quiet template.
        self.last_heard = loop.time()
        self.reads = 0  # chunks received so far: a probe that sees this move knows the template is alive
        self.probe: asyncio.Task[bool] | None = None  # the liveness probe in flight (TemplateClient's)
        # The spare descriptor that stands in for a pidfd we could not receive (module docstring), and the
        # number it has while the protocol holds it for a reply.
        self._spare: int | None = _open_spare()
        self._standin: int | None = None
        loop.add_reader(sock.fileno(), self._on_readable)

    @property
    def template_pid(self) -> int | None:
        return self.proto.peer_pid

    def next_id(self) -> int:
        return next(self._ids)

    def send(self, msg: control.Message, owned: Sequence[int] = ()) -> None:
        """Queue ``msg``; ``owned`` (fd numbers) are ours to close once its frame went out (closing them
        earlier could let a number be reused and sent in its place); they are closed on every path."""
        try:
            self.proto.send(msg)
        except BaseException:
            fdpass.close_fds(owned)
            raise
        self._queue(owned)

    def request_spawn(self, tenant: str, options: control.Options) -> PendingSpawn:
        """Queue a spawn of ``tenant``; :meth:`_drain` sends it (at once when nothing waits ahead of it).
        Its future gets the :class:`ChildHandle`, or the error: ``OSError`` when its socketpair cannot be
        made (out of descriptors), :class:`SpawnRefused`, :class:`TemplateUnavailable` when the session goes.
        A caller that gives up calls :meth:`forget_spawn`. Errors: ``TemplateUnavailable`` if already lost."""
        if self.lost:
            raise TemplateUnavailable(str(self.error) if self.error is not None else "the connection was lost")
        entry = PendingSpawn(self.loop.create_future(), tenant, options)
        self.spawn_queue.append(entry)
        if not self._drain_scheduled:
            self._drain()  # nothing was sent in this iteration (see _drain): this one goes now
        return entry

    def forget_spawn(self, entry: PendingSpawn) -> None:
        """The caller of ``entry`` gave up (cancelled, timed out, or it failed): leave nothing behind. Queued:
        the drain skips it. Sent: its parent end is closed, so a child the template forks anyway sees EOF
        and exits (its pidfd is dropped when the reply comes). Answered already: the child is ended."""
        fut = entry.future
        if entry.parent_end is None:
            fut.cancel()
            return
        self.pending.pop(entry.request_id, None)
        if fut.done() and not fut.cancelled() and fut.exception() is None:
            fut.result().close()  # too late to forget it: end it (its exit event still comes)
        else:
            fut.cancel()
            entry.parent_end.close()

    def _drain(self) -> None:
        """Send up to ``spawns_per_iteration`` queued spawns, oldest first.

        Runs inline from :meth:`request_spawn` when no drain is scheduled, else as the scheduled callback.
        A drain that sent anything schedules the next one, so until that one has run (next iteration)
        every new spawn queues: at most one drain sends per loop iteration, hence at most
        ``spawns_per_iteration`` spawns per iteration, whatever the callers do."""
        self._drain_scheduled = False
        queue = self.spawn_queue
        sent = 0
        while queue and sent < self.spawns_per_iteration and not self.lost:
            entry = queue.popleft()
            if entry.future.done():
                continue  # its caller gave up while it waited
            self._send_spawn(entry)
            sent += 1
        if sent and not self.lost:
            self._drain_scheduled = True
            self.loop.call_soon(self._drain)

    def _send_spawn(self, entry: PendingSpawn) -> None:
        fut = entry.future
        try:
            # _socket.socketpair: socket.socketpair re-wraps both ends, and each wrap asks getsockname.
            a, b = _socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        except OSError as e:
            fut.set_exception(e)  # out of descriptors: this spawn fails alone
            return
        parent_fd, child_fd = a.detach(), b.detach()
        try:
            parent_end = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0, parent_fd)
        except Exception as e:
            fdpass.close_fds([parent_fd, child_fd])
            fut.set_exception(e)
            return
        rid = next(self._ids)
        entry.parent_end, entry.request_id, entry.sent_at = parent_end, rid, self.loop.time()
        self.pending[rid] = entry
        try:
            # From here the sender owns child_fd: it closes it once the frame went out.
            self.send(control.Spawn(rid, entry.tenant, entry.options, child_fd), owned=[child_fd])
        except Exception as e:  # not the connection breaking (send fails the session for that): a bug
            self.pending.pop(rid, None)
            parent_end.close()
            if not fut.done():
                fut.set_exception(e)

    def _queue(self, owned: Sequence[int] = ()) -> None:
        # From here the sender owns them: it closes them once their frame went out.
        owned_fds = list(owned)
        try:
            for frame, fds in self.proto.data_to_send():
                if self.lost:
                    break
                mine: list[int] = []
                if fds:
                    mine, owned_fds = owned_fds, []
                self.out.send(frame, fds, mine)
        except OSError as e:
            self.fail(TemplateUnavailable(f"control connection broke: {e}"))
            return
        finally:
            fdpass.close_fds(owned_fds)
        self._flush()

    def _flush(self) -> None:
        if self.lost:
            return
        try:
            self.out.flush()
        except OSError as e:
            self.fail(TemplateUnavailable(f"control connection broke: {e}"))
            return
        if self.out and not self._writing:
            self.loop.add_writer(self.sock.fileno(), self._flush)
            self._writing = True
        elif not self.out and self._writing:
            self.loop.remove_writer(self.sock.fileno())
            self._writing = False

    def _on_readable(self) -> None:
        # Up to spawns_per_iteration chunks per callback. A chunk that came with fds may have ended early
        # (the pidfd ends a recvmsg), so more may be waiting: read again. One without fds took all there was.
        # What is left waits in the socket: the next iteration's poll reports it readable again.
        for _ in range(self.spawns_per_iteration):
            if not self._read_once() or self.lost:
                return

    def _read_once(self) -> bool:
        """One ``recvmsg`` and its events; True if it came with fds (more may be waiting)."""
        try:
            data, fds = fdpass.recv(self.sock, _RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return False
        except fdpass.FdsTruncated as e:
            if self._spare is None or not e.data:
                self.fail(TemplateUnavailable(f"control connection broke: {e} (no spare descriptor)"))
                return False
            log.warning("out of file descriptors: a pidfd from template pid %s was lost; failing that spawn",
                        self.template_pid)
            data, fds = e.data, [self._spare]
            self._standin, self._spare = self._spare, None
        except ControlProtocolError as e:
            self.fail(e)
            return False
        except OSError as e:
            self.fail(TemplateUnavailable(f"control connection broke: {e}"))
            return False
        if not data:
            fdpass.close_fds(fds)
            self.fail(TemplateUnavailable("the template closed the control connection"))
            return False
        self.last_heard = self.loop.time()
        self.reads += 1
        more = bool(fds)
        try:
            for event in self.proto.receive_events(data, fds):
                self._dispatch(event)
            if not self.lost:
                self._queue()
                if self.proto.authenticated and not self.ready.done():
                    self.ready.set_result(None)
        except ControlProtocolError as e:
            self.fail(e)
            return False
        return more

    def _dispatch(self, event: control.Message | control.BadRequest) -> None:
        if isinstance(event, control.Spawned):
            entry = self.pending.pop(event.request_id, None)
            if self._standin is not None and event.pidfd == self._standin:
                # The reply whose pidfd we could not receive: the spare comes back, the spawn fails alone.
                self._spare, self._standin = self._standin, None
                if isinstance(entry, PendingSpawn) and not entry.future.done():
                    assert entry.parent_end is not None  # it was sent: it has an id
                    entry.parent_end.close()  # the child (already forked) sees EOF and exits
                    entry.future.set_exception(OSError(
                        errno.EMFILE, f"out of file descriptors: the pidfd of child {event.pid} (tenant "
                        f"{entry.tenant}) could not be received; the child was ended"))
                return
            if not isinstance(entry, PendingSpawn) or entry.future.done():
                # Its caller gave up (cancelled / timed out) and closed the parent end: the child sees EOF
                # and exits; we only drop the pidfd. A reply to an unknown id is tolerated the same way.
                fdpass.close_fds([event.pidfd])
                return
            assert entry.parent_end is not None  # it was sent: it has an id
            entry.parent_end.setblocking(False)  # the one FIONBIO (WalRedoProcess sees it is non-blocking)
            handle = ChildHandle(event.pid, event.pidfd, entry.parent_end, entry.tenant, self.loop)
            # Registered synchronously, before the spawner resumes, so an early `exited` finds it.
            self.children[event.pid] = handle
            entry.future.set_result(handle)
        elif isinstance(event, control.ErrorReply):
            entry = self.pending.pop(event.request_id, None) if event.request_id is not None else None
            fut = entry.future if isinstance(entry, PendingSpawn) else entry
            if fut is None:
                log.warning("template error without a waiting request: %s %s", event.code, event.message)
            elif not fut.done():
                fut.set_exception(SpawnRefused(event.code, event.message))
        elif isinstance(event, control.Stderr):
            # The child's own words, captured by the template (forkserver.childlog): logged with its tenant.
            _child_log.warning("tenant %s pid %d: stderr: %s", event.tenant, event.pid, event.line)
        elif isinstance(event, control.Exited):
            exited = self.children.pop(event.pid, None)
            if exited is not None:
                exited._set_exited(event.status)
        elif isinstance(event, control.StatsReply):
            waiter = self.pending.pop(event.request_id, None)
            if isinstance(waiter, asyncio.Future) and not waiter.done():
                waiter.set_result(dict(event.stats))

    def fail(self, exc: BaseException, *, closing: bool = False) -> None:
        """The connection is gone: release everything, fail every waiter with ``exc``. Idempotent."""
        if self.lost:
            return
        self.lost = True
        self.error = exc
        self.loop.remove_reader(self.sock.fileno())
        if self._writing:
            self.loop.remove_writer(self.sock.fileno())
        self.out.close()
        self.proto.close()  # closes a stand-in it still held
        self.sock.close()
        if self._spare is not None:
            fdpass.close_fds([self._spare])
            self._spare = None
        if not self.ready.done():
            # The handshake failed: its waiter gets the precise error (e.g. ControlProtocolError auth-failed).
            self.ready.set_exception(exc)
            self.ready.exception()
        message = str(exc) if isinstance(exc, TemplateUnavailable) else f"control connection failed: {exc}"
        for entry in self.pending.values():
            fut = entry.future if isinstance(entry, PendingSpawn) else entry
            if not fut.done():
                # One instance per waiter: re-raising a shared one grows its traceback by every waiter's
                # frames and keeps them all alive.
                fut.set_exception(TemplateUnavailable(message))
        self.pending.clear()
        for entry in self.spawn_queue:  # never sent: nothing to close
            if not entry.future.done():
                entry.future.set_exception(TemplateUnavailable(message))
        self.spawn_queue.clear()
        why = "the client was closed" if closing else "the template connection was lost"
        for handle in self.children.values():
            # Keep the pidfd while the child runs so that kill() still works and wait() still observes the
            # exit (then raises); it is closed as soon as the child is gone.
            handle._set_unknown(why)
        self.children.clear()
        self._on_lost(self)


def _open_spare() -> int | None:
    try:
        return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None  # already out of descriptors: a lost pidfd will then cost the session


async def open_session(loop: asyncio.AbstractEventLoop, path: str, key: bytes,
                        on_lost: Callable[[Session], None], timeout: float) -> Session:
    """Connect, check the peer uid, and authenticate; cancel-safe (the socket is closed on any exit)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    session = None
    try:
        try:
            await loop.sock_connect(sock, path)
        except OSError as e:
            raise TemplateUnavailable(f"cannot connect to {path}: {e}") from None
        uid = fdpass.peer_credentials(sock).uid
        if uid != os.getuid():
            raise ControlProtocolError("peer-uid", f"{path} is served by uid {uid}, not ours ({os.getuid()})")
        session = Session(loop, sock, key, on_lost)
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(session.ready)
        except TimeoutError:
            raise TemplateUnavailable(f"no handshake from {path} within {timeout} s") from None
        return session
    except BaseException as e:
        if session is not None:
            session._on_lost = lambda s: None  # never installed: nothing to restart
            session.fail(e if isinstance(e, Exception) else TemplateUnavailable("cancelled"))
        else:
            sock.close()
        raise
