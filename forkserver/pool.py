"""The template's pool of pre-forked children, each waiting for a tenant (template process only).

A pool child is forked (and its pidfd opened, before anything can reap it) ahead of any request, does all
the hygiene that needs no tenant (:func:`forkserver.child.run_idle`) and waits on a private
``SOCK_SEQPACKET`` channel. A spawn then costs one ``sendmsg`` to that channel (the tenant id with the
child's socket attached): the fork, the interpreter's after-fork hooks and the hygiene are off the request
path.

When to refill is decided here (:meth:`Pool.refill_timeout`, no I/O) and done by the template's loop, one
child per loop iteration (:meth:`Pool.refill_one`), only after the loop was quiet for a moment:

- the pool refills *in batches*, like Android's USAP pool: once it falls below ``low`` (half its size,
  rounded up) it is refilled to ``size``; a pool short by less than that is topped up :data:`TOPUP_AFTER`
  after it became short (so sporadic spawns do not pay a fork each, and a pool child that died is still
  replaced);
- a fork starts only when the loop saw no event for :data:`REFILL_WAIT` (a spawn request, its reply, the
  parent's first round trip with the new child all go first), and the loop checks for ready connections
  and signals between two forks, so neither a spawn request nor a SIGTERM waits behind a batch.

Every refill fork shares the template's pages with the new child again, so whatever the next spawn
writes would be copied on its path (a few µs per page on a VM, ~170 pages). :meth:`Pool.warm` runs the
template's spawn path on stand-ins right after the fork (an in-memory control connection decoding a spawn
and encoding its reply, the channel ``sendmsg``, the reply's ``sendmsg`` with an fd), so those
copy-on-write faults happen off the request path.

The pool does not reap: the template's loop does (``waitpid(-1)``) and tells the pool which of its pids
exited (:meth:`Pool.reaped`). Every pid the pool forks is reported back to the caller, which keeps the
table of unreaped children.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

from forkserver import control, fdpass
from forkserver.childlog import ChildStderr
from forkserver.sender import FrameSender

__all__ = ["Pool", "MAX_POOL_SIZE", "DEFAULT_POOL_SIZE", "DIED_BACKOFF", "REFILL_BACKOFF", "REFILL_WAIT",
           "TOPUP_AFTER"]

MAX_POOL_SIZE = 256  # each waiting child holds ~1.5 MiB of its own: the bound keeps a typo from forking thousands
# A burst of cold tenants (a restart, a batch job touching several) is served from the pool up to this many;
# measured with scripts/bench_cold_spawn (see the README's Performance section).
DEFAULT_POOL_SIZE = 4
REFILL_BACKOFF = 1.0  # seconds before retrying a pre-fork that failed (e.g. EAGAIN)
REFILL_WAIT = 0.002  # seconds the loop must be quiet before a refill fork (the spawn's round trips go first)
TOPUP_AFTER = 0.1  # seconds after a pool became short by less than a batch before it is topped up
DIED_BACKOFF = 0.1  # seconds before replacing a pool child that died while idle (at most ~10 forks/s)


@dataclass
class _Idle:
    """A pre-forked child waiting in the pool for its tenant."""

    pid: int
    pidfd: int  # opened right after the fork, before anything could reap it; goes out in the `spawned` reply
    chan: socket.socket  # our end of its SOCK_SEQPACKET assignment channel (non-blocking)


class Pool:
    """Up to ``size`` pre-forked children, oldest first.

    ``run_idle(chan_fd)`` is what a freshly forked pool child runs (it never returns): the seam through which
    the template gives it the worker, the policy and the Python sockets to forget. ``log`` reports problems.
    ``low``: below this many waiting children the pool refills to ``size`` (default: half, rounded up).
    The truth value and ``len()`` count the children waiting.

    Errors: ``ValueError`` for a ``size`` outside 0..:data:`MAX_POOL_SIZE` or a ``low`` outside 1..``size``."""

    def __init__(self, size: int, run_idle: Callable[[int], NoReturn], log: Callable[[str], None], *,
                 low: int | None = None):
        if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= MAX_POOL_SIZE:
            raise ValueError(f"pool_size must be between 0 and {MAX_POOL_SIZE}, got {size!r}")
        if low is None:
            low = (size + 1) // 2
        elif size and not 1 <= low <= size:
            raise ValueError(f"the pool's refill threshold must be between 1 and {size}, got {low}")
        self.size = size
        self.low = low
        self._run_idle = run_idle
        self._log = log
        self._idle: dict[int, _Idle] = {}  # pid -> pre-forked child, oldest first
        self._refill_at = 0.0  # after a failed pre-fork, not before this (monotonic)
        self._busy_at = 0.0  # the loop's last event (monotonic): refill forks wait for REFILL_WAIT of quiet
        self._batch = size > 0  # refilling to `size` (set below `low`, cleared when full); the first fill is one
        self._short_since: float | None = None  # when the pool was first seen short (monotonic; None: full)
        self._warmup: _Warmup | None = None  # built at the first warm(), so that a pool of 0 makes no sockets
        self.stderr: ChildStderr | None = None  # the template's capture of each child's stderr, if any

    def __len__(self) -> int:
        return len(self._idle)

    def busy(self, now: float) -> None:
        """The loop handled an event at ``now`` (monotonic): the next refill fork waits for quiet."""
        self._busy_at = now

    def refill_timeout(self, now: float) -> float | None:
        """How long the loop may wait for events before it should call :meth:`refill_one` (0: at once, if
        nothing is ready); ``None`` when no refill is due (the pool is full). Decides only, no I/O."""
        n = len(self._idle)
        if n >= self.size:
            self._batch = False
            self._short_since = None
            return None
        if self._short_since is None:
            self._short_since = now
        if n < self.low or now >= self._short_since + TOPUP_AFTER:
            self._batch = True
        # Not "after TOPUP_AFTER of quiet": a steady trickle of events (stats polls, exits) would starve it.
        start = now if self._batch else self._short_since + TOPUP_AFTER
        # Even when empty: a pool child forked in the middle of a burst is no faster to serve than one forked
        # on request (it runs prepare() first), and its fork competes with the burst's first round trips
        # (bench_cold_spawn, pool 2, bursts of 4: last ready p50 23 ms refilling at once, 10-11 ms waiting).
        return max(0.0, start - now, self._busy_at + REFILL_WAIT - now, self._refill_at - now)

    def channels(self) -> list[socket.socket]:
        """The Python socket objects a forked child must forget: our ends of the assignment channels and the
        warm-up's stand-ins."""
        socks = [idle.chan for idle in self._idle.values()]
        if self._warmup is not None:
            socks += self._warmup.sockets
        return socks

    def assign(self, tenant: str, fd: int) -> tuple[int, int] | None:
        """Hand ``tenant`` and its child socket ``fd`` to the oldest pre-forked child and return its
        ``(pid, pidfd)``; ``fd`` (our copy) is closed and the pidfd is the caller's. ``None`` (``fd`` still
        the caller's) if no pool child could take it."""
        while self._idle:
            pid = next(iter(self._idle))
            idle = self._idle.pop(pid)
            try:
                fdpass.send(idle.chan, tenant.encode("ascii"), [fd])
            except OSError:
                # It died (or is dying) while idle: its exit is reaped silently like any ownerless child.
                idle.chan.close()
                fdpass.close_fds([idle.pidfd])
                continue
            # Closed at once: the assignment stays readable on the child's end after our end is gone.
            idle.chan.close()
            os.close(fd)
            return pid, idle.pidfd
        return None

    def refill_one(self) -> int | None:
        """Pre-fork one child if the pool is short and no back-off is pending; return its pid (unreaped, the
        caller's to reap), or ``None`` if none was forked (a failure is logged and retried after
        :data:`REFILL_BACKOFF`)."""
        if len(self._idle) >= self.size or time.monotonic() < self._refill_at:
            return None
        try:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        except OSError as e:
            self._failed(str(e))
            return None
        err = self.stderr.before_fork() if self.stderr is not None else None
        try:
            pid = os.fork()
        except OSError as e:
            if self.stderr is not None:
                self.stderr.after_fork(None)
            ours.close()
            theirs.close()
            self._failed(str(e))
            return None
        if pid == 0:
            ChildStderr.in_child(err)
            ours.detach()  # closed by the child's fd hygiene; the object must not close a reused number
            self._run_idle(theirs.detach())
        if self.stderr is not None:
            self.stderr.after_fork(pid)
        theirs.close()
        try:
            pidfd = os.pidfd_open(pid)  # before the loop can reap: names this child, never a recycled pid
        except OSError as e:
            ours.close()  # EOF: the child exits; reaped silently
            self._failed(f"pidfd_open: {e}")
            return pid
        ours.setblocking(False)  # one small message into an empty buffer; never wait on it anyway
        self._idle[pid] = _Idle(pid, pidfd, ours)
        return pid

    def refill(self) -> list[int]:
        """Pre-fork children until the pool is full or a fork fails (no yielding in between: for tests and
        callers without a loop); return the pids forked, every one unreaped and the caller's to reap."""
        forked: list[int] = []
        while len(self._idle) < self.size and (pid := self.refill_one()) is not None:
            forked.append(pid)
        return forked

    def warm(self) -> None:
        """Run the template's spawn path on stand-ins (see the module docstring): after a refill fork, this
        takes the copy-on-write faults a spawn would otherwise take. A failure only logs and turns it off."""
        try:
            if self._warmup is None:
                self._warmup = _Warmup()
            self._warmup.run()
        except Exception as e:  # a stand-in broke: the pool works without it, a spawn just pays the faults
            self._log(f"request-path warm-up failed, turned off: {type(e).__name__}: {e}")
            self._warmup = _Warmup.OFF

    def _failed(self, why: str) -> None:
        self._log(f"cannot pre-fork a child: {why}")
        self._refill_at = time.monotonic() + REFILL_BACKOFF

    def reaped(self, pid: int, status: int) -> None:
        """The loop reaped ``pid``: if it was waiting in the pool, forget it (the loop replaces it)."""
        idle = self._idle.pop(pid, None)
        if idle is not None:
            self._log(f"pre-forked child {pid} exited while idle (status {os.waitstatus_to_exitcode(status)})")
            idle.chan.close()
            fdpass.close_fds([idle.pidfd])
            # Replaced, but not at once: a child that cannot start (a sandbox it cannot enter, a broken
            # prepare()) would otherwise be re-forked as fast as it dies.
            self._refill_at = max(self._refill_at, time.monotonic() + DIED_BACKOFF)

    def drain(self) -> list[int]:
        """Stop and reap every pre-forked child (they have no tenant; nothing is lost); return their pids."""
        if self._warmup is not None:
            self._warmup.close()
        drained: list[int] = []
        for idle in self._idle.values():
            idle.chan.close()  # EOF ends it where it waits ...
            try:
                signal.pidfd_send_signal(idle.pidfd, signal.SIGKILL)  # ... and this wherever it is
            except OSError:
                pass
        while self._idle:
            # Killed all first, reaped after: a large pool dies in parallel instead of one by one.
            _, idle = self._idle.popitem()
            fdpass.close_fds([idle.pidfd])
            try:
                os.waitpid(idle.pid, 0)  # SIGKILLed: returns at once
            except ChildProcessError:
                pass
            drained.append(idle.pid)
        return drained


class _Warmup:
    """Stand-ins for a spawn's I/O, so the template's spawn path can run without a parent or a child.

    A template-side :class:`~forkserver.control.ControlConnection` authenticated in memory (a throwaway key:
    after the handshake no frame is signed, so the request path does not depend on it), a spawn frame
    encoded once, a connected stream pair standing in for the child's socket, a ``SOCK_SEQPACKET`` pair for
    the assignment channel and a stream pair for the control connection (a :class:`FrameSender` writes the
    reply, fd attached, and the far end is drained). Six fds, held until :meth:`close`."""

    OFF: _Warmup  # a stand-in that does nothing (after a failure)

    def __init__(self, *, off: bool = False) -> None:
        self._socks: list[socket.socket] = []
        if off:
            return
        try:
            key = os.urandom(control.KEY_SIZE)
            self._proto = control.ControlConnection(control.Role.TEMPLATE, key)
            parent = control.ControlConnection(control.Role.PARENT, key)
            self._proto.start()
            for _ in range(2):  # challenge -> auth, auth -> welcome
                for frame, fds in self._proto.data_to_send():
                    parent.receive_data(frame, fds)
                    parent.next_event()
                for frame, fds in parent.data_to_send():
                    self._proto.receive_data(frame, fds)
                    self._proto.next_event()
            if not self._proto.authenticated:
                raise RuntimeError("in-memory handshake did not complete")
            self._child_sock, peer = self._pair(socket.SOCK_STREAM)
            self._chan, self._chan_peer = self._pair(socket.SOCK_SEQPACKET)
            conn, self._conn_peer = self._pair(socket.SOCK_STREAM)
            for s in (self._chan, conn, self._chan_peer, self._conn_peer):
                s.setblocking(False)
            self._sender = FrameSender(conn)
            self._tenant = "0" * 32  # a valid tenant id no parent sends: nothing but this stand-in sees it
            parent.send(control.Spawn(1, self._tenant, {}, self._child_sock.fileno()))
            [(self._spawn_frame, _)] = parent.data_to_send()
            del peer
        except BaseException:
            self.close()
            raise

    @property
    def sockets(self) -> list[socket.socket]:
        return list(self._socks)

    def _pair(self, kind: int) -> tuple[socket.socket, socket.socket]:
        a, b = socket.socketpair(socket.AF_UNIX, kind)
        self._socks += (a, b)
        return a, b

    def run(self) -> None:
        if not self._socks:
            return
        fd = os.dup(self._child_sock.fileno())
        for req in self._proto.receive_events(self._spawn_frame, [fd]):
            if not isinstance(req, control.Spawn):
                raise RuntimeError(f"decoded {type(req).__name__}, not the spawn")
            try:
                control.validate_tenant(req.tenant)
                control.validate_options(req.options)
                if fdpass.check_stream_socket(req.fd) is not None:
                    raise RuntimeError("the stand-in child socket is not a connected stream socket")
                fdpass.send(self._chan, req.tenant.encode("ascii"), [req.fd])
            finally:
                os.close(req.fd)
            _, got = fdpass.recv(self._chan_peer, 256, maxfds=1)
            fdpass.close_fds(got)
            self._proto.send(control.Spawned(req.request_id, os.getpid(), self._child_sock.fileno()))
        for frame, fds in self._proto.data_to_send():
            self._sender.send(frame, fds)
        while True:  # drain the stand-in parent's end (and close the fds that arrived there)
            try:
                data, got = fdpass.recv(self._conn_peer, 4096)
            except BlockingIOError:
                break
            fdpass.close_fds(got)
            if not data:
                break

    def close(self) -> None:
        for s in self._socks:
            s.close()
        self._socks = []


_Warmup.OFF = _Warmup(off=True)
