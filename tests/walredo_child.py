"""Test helper: run a worker function in a real forked child on a socketpair, without the template.

``ForkedChild`` has the duck type :class:`forkserver.process.WalRedoProcess` needs from a template
``ChildHandle``: ``pid``, ``socket`` (parent end), ``kill(sig)`` and ``async wait()``. It signals and
waits through a pidfd, as the real handle does, so a reaped pid is never signalled.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from collections.abc import Callable


class ForkedChild:
    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid = pid
        self.socket = sock
        self.pidfd = os.pidfd_open(pid)
        self.status: int | None = None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.status is not None:
            raise ProcessLookupError(self.pid)
        signal.pidfd_send_signal(self.pidfd, sig)

    def _reap(self) -> int | None:
        if self.status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid == 0:
                return None
            self.status = os.waitstatus_to_exitcode(status)
            os.close(self.pidfd)
        return self.status

    async def wait(self) -> int:
        """Exit code (negative signal number if killed), observed through the pidfd: never blocks."""
        if self.status is not None:
            return self.status
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        loop.add_reader(self.pidfd, lambda: fut.done() or fut.set_result(None))
        try:
            await fut
        finally:
            loop.remove_reader(self.pidfd)
        status = self._reap()
        assert status is not None
        return status

    def wait_blocking(self, timeout: float = 10.0) -> int:
        deadline = time.monotonic() + timeout
        while (status := self._reap()) is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"child {self.pid} did not exit")
            time.sleep(0.005)
        return status

    def cleanup(self) -> None:
        """Close our end, give the child a moment to see EOF, then SIGKILL; always reap."""
        self.socket.close()
        if self.status is None:
            try:
                self.wait_blocking(timeout=5.0)
            except TimeoutError:
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
                self.wait_blocking(timeout=10.0)


def fork_child(target: Callable[[socket.socket, str], None], tenant: str = "0" * 32) -> ForkedChild:
    """Fork a child that runs ``target(sock, tenant)`` and leaves with ``os._exit`` (status 0, or 70 if it
    raised). The parent end of the socketpair is returned blocking; make it non-blocking for asyncio."""
    parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 0
        try:
            parent_sock.close()
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            target(child_sock, tenant)
        except BaseException:
            import traceback

            traceback.print_exc()
            code = 70
        finally:
            os._exit(code)
    child_sock.close()
    return ForkedChild(pid, parent_sock)
