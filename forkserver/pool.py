"""The template's pool of pre-forked children, each waiting for a tenant (template process only).

A pool child is forked (and its pidfd opened, before anything can reap it) ahead of any request, does all
the hygiene that needs no tenant (:func:`forkserver.child.run_idle`) and waits on a private
``SOCK_SEQPACKET`` channel. A spawn then costs one ``sendmsg`` to that channel (the tenant id with the
child's socket attached): the fork, the interpreter's after-fork hooks and the hygiene are off the request
path. When to refill is the template loop's decision (:mod:`forkserver.template`); this module forks,
assigns, notices deaths and drains.

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

from forkserver import fdpass

__all__ = ["Pool", "MAX_POOL_SIZE", "REFILL_BACKOFF", "REFILL_WAIT"]

MAX_POOL_SIZE = 256  # each waiting child holds ~1.5 MiB of its own: the bound keeps a typo from forking thousands
REFILL_BACKOFF = 1.0  # seconds before retrying a pre-fork that failed (e.g. EAGAIN)
REFILL_WAIT = 0.002  # select timeout while the pool is short: refill this soon after the last spawn at most


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
    The truth value and ``len()`` count the children waiting."""

    def __init__(self, size: int, run_idle: Callable[[int], NoReturn], log: Callable[[str], None]):
        if not 0 <= size <= MAX_POOL_SIZE:
            raise ValueError(f"pool_size must be between 0 and {MAX_POOL_SIZE}, got {size}")
        self.size = size
        self._run_idle = run_idle
        self._log = log
        self._idle: dict[int, _Idle] = {}  # pid -> pre-forked child, oldest first
        self._refill_at = 0.0  # after a failed pre-fork, not before this (monotonic)

    def __len__(self) -> int:
        return len(self._idle)

    @property
    def short(self) -> bool:
        """Whether fewer children wait than ``size``."""
        return len(self._idle) < self.size

    def refill_wait(self, now: float) -> float:
        """How long the loop may sleep before it should :meth:`refill` a short pool."""
        return max(REFILL_WAIT, self._refill_at - now)

    def channels(self) -> list[socket.socket]:
        """Our ends of the assignment channels (Python socket objects a forked child must forget)."""
        return [idle.chan for idle in self._idle.values()]

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

    def refill(self) -> list[int]:
        """Pre-fork children until the pool is full (a failed fork is retried after a back-off); return
        the pids forked, every one of them unreaped and the caller's to reap."""
        forked: list[int] = []
        while len(self._idle) < self.size:
            if time.monotonic() < self._refill_at:
                break
            try:
                ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            except OSError as e:
                self._failed(str(e))
                break
            try:
                pid = os.fork()
            except OSError as e:
                ours.close()
                theirs.close()
                self._failed(str(e))
                break
            if pid == 0:
                ours.detach()  # closed by the child's fd hygiene; the object must not close a reused number
                self._run_idle(theirs.detach())
            theirs.close()
            forked.append(pid)
            try:
                pidfd = os.pidfd_open(pid)  # before the loop can reap: names this child, never a recycled pid
            except OSError as e:
                ours.close()  # EOF: the child exits; reaped silently
                self._failed(f"pidfd_open: {e}")
                break
            ours.setblocking(False)  # one small message into an empty buffer; never wait on it anyway
            self._idle[pid] = _Idle(pid, pidfd, ours)
        return forked

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

    def drain(self) -> list[int]:
        """Stop and reap every pre-forked child (they have no tenant; nothing is lost); return their pids."""
        drained: list[int] = []
        while self._idle:
            _, idle = self._idle.popitem()
            idle.chan.close()  # EOF ends it where it waits ...
            try:
                signal.pidfd_send_signal(idle.pidfd, signal.SIGKILL)  # ... and this wherever it is
            except OSError:
                pass
            fdpass.close_fds([idle.pidfd])
            try:
                os.waitpid(idle.pid, 0)  # SIGKILLed: returns at once
            except ChildProcessError:
                pass
            drained.append(idle.pid)
        return drained
