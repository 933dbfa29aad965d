"""Parent side: :class:`ChildHandle`, one tenant child the template forked for us, and its exit.

Runs in the parent, on its event-loop thread. The handle holds the parent's end of the child's socket and a
pidfd for the child: the exit is observed through the pidfd (readable on exit, ``add_reader``), its status
comes from the template's ``exited`` event (delivered by :mod:`forkserver.session`), and :meth:`ChildHandle.kill`
signals through the pidfd, so it never reaches a recycled pid.
"""

from __future__ import annotations

import asyncio
import enum
import signal
import socket

from forkserver import fdpass
from forkserver.errors import TemplateUnavailable

__all__ = ["ChildHandle", "ChildState"]


class ChildState(enum.Enum):
    RUNNING = "running"  # no exit reported yet
    EXITED = "exited"  # the template reported the exit status; pidfd closed
    UNKNOWN = "unknown"  # the template (or our client) went away before reporting; pidfd closed once seen


class ChildHandle:
    """One tenant child forked by the template.

    Attributes: ``pid``, ``tenant``, ``socket`` (the parent's end of the child's socketpair, non-blocking; the
    child exits when it reaches EOF, so closing it ends the child), ``state``, ``returncode`` (``None`` until
    the exit status is known; ``os.waitstatus_to_exitcode`` convention: ``-N`` for signal N).

    The handle holds a pidfd for the child until the exit is known; :meth:`kill` signals through it.
    """

    def __init__(self, pid: int, pidfd: int, sock: socket.socket, tenant: str,
                 loop: asyncio.AbstractEventLoop):
        self.pid = pid
        self.tenant = tenant
        self.socket = sock
        self.state = ChildState.RUNNING
        self.returncode: int | None = None
        self._pidfd: int | None = pidfd
        self._loop = loop
        self._status: asyncio.Future[int] = loop.create_future()
        self._pidfd_ready: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        return f"<ChildHandle pid={self.pid} tenant={self.tenant} {self.state.value}>"

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` through the pidfd (never reaches a recycled pid). A no-op once the child is known to
        have exited. Errors: ``OSError`` other than "no such process" (e.g. ``ValueError`` for a bad signal)."""
        if self._pidfd is None:
            return
        try:
            signal.pidfd_send_signal(self._pidfd, sig)
        except ProcessLookupError:
            pass  # it exited already; the exit event will follow

    async def wait(self) -> int:
        """Wait until the child exited and return its status (exit code, or ``-signal``).

        Exit is observed through the pidfd becoming readable; the status comes from the template's ``exited``
        event. Errors: :class:`TemplateUnavailable` if the template or client went away before reporting the
        status (the child has exited when this is raised, unless the client was closed).
        Cancel-safe: cancelling a wait changes nothing; other waiters are unaffected.
        """
        if self._pidfd is not None:  # not known to have exited yet (RUNNING, or UNKNOWN and maybe running)
            if self._pidfd_ready is None:
                self._pidfd_ready = self._loop.create_future()
                self._loop.add_reader(self._pidfd, self._on_pidfd_readable)
            await asyncio.shield(self._pidfd_ready)
        return await asyncio.shield(self._status)

    def close(self) -> None:
        """Close the parent's end of the socket (the child sees EOF and exits). Idempotent; ``wait`` still
        works afterwards."""
        self.socket.close()

    # -- driven by the session that spawned it (forkserver.session, on the loop thread)

    def _on_pidfd_readable(self) -> None:
        self._drop_reader()
        if self._pidfd_ready is not None and not self._pidfd_ready.done():
            self._pidfd_ready.set_result(None)
        if self.state is ChildState.UNKNOWN:
            self._close_pidfd()

    def _drop_reader(self) -> None:
        if self._pidfd is not None and self._pidfd_ready is not None:
            self._loop.remove_reader(self._pidfd)

    def _close_pidfd(self) -> None:
        if self._pidfd is not None:
            self._drop_reader()
            fdpass.close_fds([self._pidfd])
            self._pidfd = None
        if self._pidfd_ready is not None and not self._pidfd_ready.done():
            self._pidfd_ready.set_result(None)

    def _set_exited(self, status: int) -> None:
        if self.state is not ChildState.RUNNING:
            return
        self.state = ChildState.EXITED
        self.returncode = status
        self._status.set_result(status)
        self._close_pidfd()

    def _set_unknown(self, why: str) -> None:
        if self.state is not ChildState.RUNNING:
            return
        self.state = ChildState.UNKNOWN
        self._status.set_exception(TemplateUnavailable(f"exit status of child {self.pid} unknown: {why}"))
        self._status.exception()  # retrieved: no "never retrieved" warning if nobody waits
        if self._pidfd is not None and self._pidfd_ready is None:
            # Nobody will report its exit any more: watch the pidfd ourselves so that it is closed (and
            # kill() stops) as soon as the child is gone, whether or not anyone waits.
            self._pidfd_ready = self._loop.create_future()
            self._loop.add_reader(self._pidfd, self._on_pidfd_readable)
