"""The four ways to start a per-tenant walredo child, behind one interface.

- ``template``: our fork server (``forkserver.TemplateClient``): the parent only does socket I/O;
- ``fresh``: a fresh interpreter per tenant, ``asyncio.create_subprocess_exec`` of the same worker;
- ``mp-forkserver``: the stdlib ``multiprocessing`` forkserver context with the worker preloaded;
  ``Process.start()`` is a blocking call on the loop thread (as a user would write it);
- ``os.fork``: ``os.fork()`` from the asyncio parent itself, on the loop thread.

Each returns a :class:`SpawnedChild`: pid, the parent's non-blocking end of the child socket, and how to
wait for its exit without blocking the loop. "Ready" is decided by the caller with a ping.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import socket
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from benchmarks import baseline_worker
from benchmarks.framed_client import ping_once
from benchmarks.runner import REPO_ROOT
from forkserver import TemplateClient
from forkserver.client import DEFAULT_WORKER
from walredo_template import protocol

if TYPE_CHECKING:
    from forkserver import WalRedoManager

PING = protocol.encode_ping()
WORKER = DEFAULT_WORKER


@dataclass
class SpawnedChild:
    """One started child as the parent sees it."""

    pid: int
    sock: socket.socket
    _wait_exit: Callable[[], Awaitable[object]] = field(repr=False)
    _closed: bool = field(default=False, repr=False)

    async def ping(self) -> None:
        """One ping round trip; raises ``ConnectionError`` if the child is gone, ``RuntimeError`` if it
        answers something other than a pong."""
        payload = await ping_once(self.sock, PING)
        if b"pong" not in payload:
            raise RuntimeError(f"child {self.pid} answered {payload[:40]!r} to a ping")

    async def close(self) -> None:
        """Close the parent's end (the worker exits on EOF) and wait for the child's exit. Idempotent."""
        if not self._closed:
            self._closed = True
            self.sock.close()
        await self._wait_exit()


async def _wait_pidfd(pid: int) -> int:
    """Wait for our own child ``pid`` to exit through a pidfd (readable at exit), then reap it."""
    loop = asyncio.get_running_loop()
    pidfd = os.pidfd_open(pid)
    try:
        ready = loop.create_future()
        loop.add_reader(pidfd, lambda: ready.done() or ready.set_result(None))
        try:
            await ready
        finally:
            loop.remove_reader(pidfd)
        _, status = os.waitpid(pid, 0)  # readable pidfd: the child has exited, this does not block
        return os.waitstatus_to_exitcode(status)
    finally:
        os.close(pidfd)


class SpawnMethod:
    """Start children for tenants. ``start()`` once, ``spawn()`` per tenant, ``aclose()`` at the end."""

    name = "?"

    async def start(self) -> None:
        """Set up what the method needs once (a template, a forkserver); before the parent's heap grows."""

    async def spawn(self, tenant: str) -> SpawnedChild:
        raise NotImplementedError

    async def aclose(self) -> None:
        """Stop what :meth:`start` started. Children must have been closed by the caller."""


class TemplateSpawn(SpawnMethod):
    """Our template fork server, launched by the library (off the loop)."""

    name = "template"

    def __init__(self, worker: str = WORKER) -> None:
        self.worker = worker
        self.client: TemplateClient | None = None

    async def start(self) -> None:
        self.client = await TemplateClient.launch(worker=self.worker)

    async def spawn(self, tenant: str) -> SpawnedChild:
        handle = await self.client.spawn(tenant)
        return SpawnedChild(handle.pid, handle.socket, handle.wait)

    async def aclose(self) -> None:
        if self.client is not None:
            await self.client.aclose()
            self.client = None


async def exec_baseline_worker(mode: str, *args: str) -> tuple[asyncio.subprocess.Process, socket.socket]:
    """``python -m benchmarks.baseline_worker MODE FD ARGS...`` in a fresh interpreter, FD being the child's
    end of a new socketpair; returns the process and the parent's end. Raises ``OSError``; closes both
    ends of the pair if the exec fails."""
    parent, child = socket.socketpair()
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "benchmarks.baseline_worker", mode, str(child.fileno()), *args,
            pass_fds=(child.fileno(),), cwd=REPO_ROOT, stdin=asyncio.subprocess.DEVNULL,
        )
    except BaseException:
        parent.close()
        raise
    finally:
        child.close()
    return proc, parent


class FreshInterpreterSpawn(SpawnMethod):
    """A fresh ``python -m benchmarks.baseline_worker worker FD`` per tenant (``create_subprocess_exec``)."""

    name = "fresh interpreter"

    async def spawn(self, tenant: str) -> SpawnedChild:
        proc, parent = await exec_baseline_worker("worker", tenant)
        parent.setblocking(False)
        return SpawnedChild(proc.pid, parent, proc.wait)


class MultiprocessingForkserverSpawn(SpawnMethod):
    """The stdlib ``multiprocessing`` forkserver with the worker (and this benchmark's main) preloaded."""

    name = "mp forkserver"

    def __init__(self) -> None:
        self.ctx = multiprocessing.get_context("forkserver")
        self.processes: dict[int, multiprocessing.process.BaseProcess] = {}

    async def start(self) -> None:
        # Each multiprocessing child re-runs the parent's main module by name (runpy). Preloading every
        # benchmarks module the parent has imported, except that main one, makes that re-run cost only its
        # top-level statements with every import cached: the fair set-up. (Preloading the main module
        # itself would make runpy warn in every child.)
        main_spec = getattr(sys.modules["__main__"], "__spec__", None)
        main_name = main_spec.name if main_spec is not None else "__main__"
        preload = ["benchmarks.baseline_worker"] + sorted(
            name for name in sys.modules
            if name.startswith("benchmarks.") and name != main_name and name != "benchmarks.baseline_worker"
        )
        self.ctx.set_forkserver_preload(preload)
        from multiprocessing import forkserver

        # Start the forkserver now (blocking, once): not counted in any spawn.
        await asyncio.get_running_loop().run_in_executor(None, forkserver.ensure_running)

    async def spawn(self, tenant: str) -> SpawnedChild:
        parent, child = socket.socketpair()
        try:
            proc = self.ctx.Process(target=baseline_worker.mp_target, args=(child, tenant), daemon=True)
            proc.start()  # blocking: connect to the forkserver, send the pickle and fds, read the pid
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        parent.setblocking(False)
        self.processes[proc.pid] = proc

        async def wait_exit() -> int | None:
            loop = asyncio.get_running_loop()
            ready = loop.create_future()
            loop.add_reader(proc.sentinel, lambda: ready.done() or ready.set_result(None))
            try:
                await ready
            finally:
                loop.remove_reader(proc.sentinel)
            proc.join()  # the sentinel is readable: the exit status is there, this does not block
            self.processes.pop(proc.pid, None)
            code = proc.exitcode
            proc.close()
            return code

        return SpawnedChild(proc.pid, parent, wait_exit)

    async def aclose(self) -> None:
        for proc in list(self.processes.values()):
            if proc.is_alive():
                proc.kill()
            proc.join()
        self.processes.clear()


class OsForkSpawn(SpawnMethod):
    """``os.fork()`` of the benchmark parent itself, on the loop thread; the child runs the worker."""

    name = "os.fork"

    async def spawn(self, tenant: str) -> SpawnedChild:
        parent, child = socket.socketpair()
        try:
            pid = os.fork()
        except BaseException:
            parent.close()
            child.close()
            raise
        if pid == 0:  # the child: never returns
            baseline_worker.run_forked_child(child, tenant)
        child.close()
        parent.setblocking(False)
        return SpawnedChild(pid, parent, lambda: _wait_pidfd(pid))


def all_methods(include_template: bool = True) -> list[SpawnMethod]:
    methods: list[SpawnMethod] = [FreshInterpreterSpawn(), MultiprocessingForkserverSpawn(), OsForkSpawn()]
    if include_template:
        methods.insert(0, TemplateSpawn())
    return methods


def template_client_class() -> type[TemplateClient]:
    """``forkserver.TemplateClient`` (the benchmarks that take the class from here)."""
    return TemplateClient


def template_available() -> bool:
    """Always true: the template is part of the tree (kept for the benchmarks that still ask)."""
    return True


def manager_class() -> type[WalRedoManager]:
    """``forkserver.WalRedoManager``, imported on first use (prometheus_client comes with it)."""
    from forkserver import WalRedoManager

    return WalRedoManager
