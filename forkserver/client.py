"""Parent side of the fork server: :class:`TemplateClient` (asyncio) and the :class:`ChildHandle` it returns.

Runs in the parent (the asyncio service). On the event-loop thread it only does non-blocking socket I/O
(``add_reader`` on the control socket and on pidfds); it never forks, ``Popen``s, ``waitpid``s or blocks.
Starting, stopping and reaping a template it launched happen in an executor thread.

    client = await TemplateClient.launch(worker="walredo_template.worker:main")   # owns the template
    client = await TemplateClient.connect(socket_path, key=...)                   # template from the launcher
    child = await client.spawn(tenant_id)        # -> ChildHandle
    child.pid; child.socket                      # parent end, non-blocking, ready for asyncio streams
    await child.wait() -> int                    # exit status, observed through the pidfd
    child.kill(signal.SIGKILL)                   # pidfd_send_signal: never hits a reused pid
    await client.stats() -> dict                 # {"spawns": ..., "live": ..., ...} from the template
    await client.aclose()                        # stops a template it launched

A launched client restarts a template that died (off the loop, with backoff). Requests in flight on the dead
connection fail with :class:`TemplateUnavailable`; new requests wait for the restart up to ``spawn_timeout``
and then fail with :class:`TemplateUnavailable` — nothing hangs. Children forked by a dead template keep
serving (they talk to the parent directly), but their exit status can no longer be reported.

The client is split along its seams: :mod:`forkserver.handle` (the child handle), :mod:`forkserver.session`
(one control connection: handshake, requests, replies, events), :mod:`forkserver.launch` (starting and
stopping a template we own, in an executor); this module holds the client's lifecycle (connect, launch,
restart, close) and its requests. ``ChildHandle``, ``ChildState`` and ``DEFAULT_WORKER`` are re-exported.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import itertools
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from typing import Any

from forkserver import control
from forkserver.child import DEFAULT_WORKER
from forkserver.errors import TemplateUnavailable
from forkserver.handle import ChildHandle, ChildState
from forkserver.launch import LaunchSpec, launcher_args, read_key_file, remove_dir_later, start_template, stop_template
from forkserver.session import PendingSpawn, Session, open_session

__all__ = ["TemplateClient", "ChildHandle", "ClientState", "ChildState", "validate_tenant_id", "DEFAULT_WORKER"]

log = logging.getLogger(__name__)


def validate_tenant_id(tenant_id: object) -> str:
    """Return ``tenant_id`` if it is 32 lowercase hex chars, optionally ``-`` + 4 hex chars.

    Errors: :class:`~forkserver.errors.InvalidTenantId` (a ``ValueError``)."""
    return control.validate_tenant(tenant_id)


class ClientState(enum.Enum):
    OPEN = "open"  # a session is (or is being re-)established
    CLOSED = "closed"


class TemplateClient:
    """Asyncio client of one template. Create with :meth:`launch` or :meth:`connect`; use on one loop."""

    def __init__(self, *, _loop: asyncio.AbstractEventLoop, _key: bytes, _socket_path: str, spawn_timeout: float,
                 launched: LaunchSpec | None = None):
        self._loop = _loop
        self._key = _key
        self.socket_path = _socket_path
        self.spawn_timeout = spawn_timeout
        self.state = ClientState.OPEN
        self._session: Session | None = None
        self._session_up = asyncio.Event()
        self._ids = itertools.count(1)
        # launched mode only: how to (re)start the template we own
        self._launched = launched
        self._proc: subprocess.Popen[bytes] | None = None
        self._pipe_w: int | None = None
        self._restart_task: asyncio.Task[None] | None = None
        # An executor start still running when its awaiter was cancelled: _shutdown collects and stops it.
        self._starting: asyncio.Future[tuple[subprocess.Popen[bytes], int]] | None = None
        self._close_task: asyncio.Task[None] | None = None
        self.restarts = 0

    # -- construction

    @classmethod
    async def launch(cls, worker: str = DEFAULT_WORKER, *, python: str | None = None,
                     start_timeout: float = 30.0, spawn_timeout: float = 10.0, sandbox: bool = True,
                     child_user: str | None = None, child_memory_limit: int | None = None,
                     pool: int | None = None) -> TemplateClient:
        """Start a template we own (from an executor thread) and connect to it.

        The template gets a fresh 32-byte key over an inherited pipe whose EOF later tells it we died (it
        keeps it in memory its children do not inherit); its socket lives in a private ``mkdtemp``
        directory. It is restarted (with backoff) if it dies.

        Every child enters the sandbox (:mod:`forkserver.sandbox`) before it serves unless ``sandbox`` is
        False (the template logs a warning); ``child_memory_limit``: each child's address-space limit in bytes
        (rounded down to MiB; default 256 MiB; 0: none); ``child_user``: children drop to this user and its
        group first (the template must run as root); ``pool``: pre-forked children (default: the template's).

        Errors: :class:`TemplateUnavailable` if it fails to start (e.g. the worker does not import) or to
        authenticate within ``start_timeout``. Cancel-safe: a cancelled launch stops and reaps the template
        (in the executor) before the cancellation propagates.
        """
        extra = launcher_args(sandbox=sandbox, child_user=child_user, child_memory_limit=child_memory_limit,
                              pool=pool)
        loop = asyncio.get_running_loop()
        key = os.urandom(control.KEY_SIZE)
        mkdir = loop.run_in_executor(None, functools.partial(tempfile.mkdtemp, prefix="walredo-template-"))
        try:
            sockdir = await asyncio.shield(mkdir)
        except asyncio.CancelledError:
            mkdir.add_done_callback(remove_dir_later)
            raise
        self = cls(_loop=loop, _key=key, _socket_path=os.path.join(sockdir, "control.sock"),
                   spawn_timeout=spawn_timeout,
                   launched=LaunchSpec(worker=worker, python=python or sys.executable, dir=sockdir,
                                        start_timeout=start_timeout, args=extra))
        try:
            await self._start_and_connect()
        except BaseException:
            await asyncio.shield(self._shutdown())
            raise
        return self

    @classmethod
    async def connect(cls, socket_path: str | os.PathLike[str], *, key: bytes | str | os.PathLike[str],
                      timeout: float = 10.0, spawn_timeout: float = 10.0) -> TemplateClient:
        """Connect to a template started by ``walredo-template``.

        ``key`` is the raw 32-byte key, or the path of the key file the launcher wrote (hex). No restart:
        if the template goes away, requests fail with :class:`TemplateUnavailable`.

        Errors: :class:`TemplateUnavailable` (cannot connect / no handshake in ``timeout``),
        :class:`ControlProtocolError` (``auth-failed``: wrong key; ``peer-uid``: served by another user),
        ``ValueError`` for a malformed key. Cancel-safe (nothing is left open).
        """
        loop = asyncio.get_running_loop()
        if isinstance(key, (str, os.PathLike)):
            key = await loop.run_in_executor(None, read_key_file, key)  # file I/O stays off the loop
        if len(key) != control.KEY_SIZE:
            raise ValueError(f"key must be {control.KEY_SIZE} bytes")
        self = cls(_loop=loop, _key=bytes(key), _socket_path=os.fspath(socket_path), spawn_timeout=spawn_timeout)
        session = await open_session(loop, self.socket_path, self._key, self._on_session_lost, timeout)
        self._install(session)
        return self

    # -- public API

    @property
    def template_pid(self) -> int | None:
        """The pid of the template we are talking to (``None`` while reconnecting)."""
        s = self._session
        return s.template_pid if s is not None and not s.lost else None

    async def spawn(self, tenant_id: str, options: control.Options | None = None) -> ChildHandle:
        """Ask the template to fork a child for ``tenant_id``; return its :class:`ChildHandle`.

        ``options`` (a dict of at most 32 str keys to None/bool/int/float/str/bytes) travel to the template.

        Errors: :class:`InvalidTenantId` / ``ValueError`` / ``TypeError`` for bad arguments (before any I/O);
        :class:`SpawnRefused` (typed refusal, e.g. ``fork-failed``); :class:`TemplateUnavailable` (client
        closed, template gone and not back within ``spawn_timeout``, or no reply within ``spawn_timeout``).
        Cancel-safe: a cancelled spawn forgets its request and closes its end of the socketpair, so a child
        the template forks anyway sees EOF and exits at once; nothing leaks.
        """
        validate_tenant_id(tenant_id)
        # validated on a copy: the caller may not mutate what we send while it is queued
        options = dict(control.validate_options({} if options is None else options))
        try:
            async with asyncio.timeout(self.spawn_timeout):
                session = await self._wait_session()
                parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
                rid = next(self._ids)
                fut: asyncio.Future[ChildHandle] = self._loop.create_future()
                session.pending[rid] = PendingSpawn(fut, parent_end, tenant_id)
                try:
                    # From here the session owns child_end: it closes it once the frame went out (closing it
                    # earlier could let its fd number be reused and sent in its place).
                    session.send(control.Spawn(rid, tenant_id, options, child_end.fileno()), owned=[child_end])
                except BaseException:
                    session.pending.pop(rid, None)
                    child_end.close()
                    parent_end.close()
                    raise
                try:
                    return await asyncio.shield(fut)
                except BaseException:
                    session.pending.pop(rid, None)
                    if fut.done() and not fut.cancelled() and fut.exception() is None:
                        fut.result().close()  # too late to forget it: end it (its exit event still comes)
                    else:
                        fut.cancel()
                        parent_end.close()  # a child forked anyway sees EOF and exits
                    raise
        except TimeoutError:
            raise TemplateUnavailable(f"no spawn reply within {self.spawn_timeout} s") from None

    async def stats(self) -> dict[str, Any]:
        """The template's counters: at least ``spawns`` (children forked) and ``live`` (not yet reaped).

        Errors: :class:`TemplateUnavailable` as for :meth:`spawn`. Cancel-safe."""
        try:
            async with asyncio.timeout(self.spawn_timeout):
                session = await self._wait_session()
                rid = next(self._ids)
                fut: asyncio.Future[dict[str, Any]] = self._loop.create_future()
                session.pending[rid] = fut
                try:
                    session.send(control.StatsRequest(rid))
                    return await asyncio.shield(fut)
                finally:
                    session.pending.pop(rid, None)
        except TimeoutError:
            raise TemplateUnavailable(f"no stats reply within {self.spawn_timeout} s") from None

    async def aclose(self) -> None:
        """Close the connection and, if we launched the template, stop it (SIGTERM, reaped in an executor)
        and remove its directory. Children keep running until their socket is closed; their handles still
        ``kill()``, and ``wait()`` observes the exit but raises :class:`TemplateUnavailable` (no status). Idempotent.
        Pending requests fail with :class:`TemplateUnavailable`. Cancellation does not interrupt the
        shutdown (it is shielded and completes in the background)."""
        if self._close_task is None:
            self._close_task = self._loop.create_task(self._shutdown())
        await asyncio.shield(self._close_task)

    async def __aenter__(self) -> TemplateClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- internals

    async def _wait_session(self) -> Session:
        while True:
            if self.state is ClientState.CLOSED:
                raise TemplateUnavailable("the client is closed")
            s = self._session
            if s is not None and not s.lost:
                return s
            if self._launched is None:
                raise TemplateUnavailable("the template connection was lost")
            # A lost session is not "up" (the event may still be set if it was lost just now): wait for the
            # restart to install a live one, or for aclose. The caller's timeout bounds this.
            self._session_up.clear()
            await self._session_up.wait()

    def _install(self, session: Session) -> None:
        self._session = session
        if not session.lost:  # it may have died between the handshake and now; _restart checks
            self._session_up.set()

    def _on_session_lost(self, session: Session) -> None:
        if session is not self._session:
            return
        self._session_up.clear()
        if self.state is ClientState.OPEN and self._launched is not None and self._restart_task is None:
            self._restart_task = self._loop.create_task(self._restart())

    async def _start_and_connect(self) -> None:
        opts = self._launched
        assert opts is not None  # only a launched client starts its template
        loop = self._loop
        self._starting = loop.run_in_executor(
            None, start_template, opts.python, opts.worker, self.socket_path, self._key,
            opts.start_timeout, opts.args)
        try:
            proc, pipe_w = await asyncio.shield(self._starting)
        except asyncio.CancelledError:
            raise  # the thread still runs: _shutdown collects its template and stops it
        except (OSError, subprocess.SubprocessError) as e:
            self._starting = None
            raise TemplateUnavailable(f"cannot start the template: {type(e).__name__}: {e}") from e
        except BaseException:
            self._starting = None
            raise
        self._starting = None
        self._proc, self._pipe_w = proc, pipe_w
        session = await open_session(loop, self.socket_path, self._key, self._on_session_lost,
                                      opts.start_timeout)
        self._install(session)

    async def _restart(self) -> None:
        delay = 0.05
        try:
            while self.state is ClientState.OPEN:
                proc, pipe_w = self._proc, self._pipe_w
                self._proc = self._pipe_w = None
                if proc is not None:
                    await self._loop.run_in_executor(None, stop_template, proc, pipe_w, 2.0)
                try:
                    await self._start_and_connect()
                    assert self._session is not None  # installed by _start_and_connect
                    if not self._session.lost:
                        self.restarts += 1
                        log.warning("template restarted (pid %s)", self.template_pid)
                        return
                    log.warning("restarted template went away at once; retrying in %.2f s", delay)
                except Exception as e:
                    log.warning("template restart failed: %s; retrying in %.2f s", e, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
        finally:
            self._restart_task = None

    async def _shutdown(self) -> None:
        self.state = ClientState.CLOSED
        self._session_up.set()  # wake _wait_session waiters so they see CLOSED
        if self._restart_task is not None:
            self._restart_task.cancel()
            try:
                await self._restart_task
            except BaseException:
                pass
        if self._session is not None:
            self._session.fail(TemplateUnavailable("the client was closed"), closing=True)
        if self._launched is not None:
            if self._starting is not None:
                try:
                    self._proc, self._pipe_w = await self._starting
                except Exception:
                    pass  # it failed to start; start_template cleaned up after itself
                self._starting = None
            proc, pipe_w = self._proc, self._pipe_w
            self._proc = self._pipe_w = None
            if proc is not None:
                await self._loop.run_in_executor(None, stop_template, proc, pipe_w, 5.0)
            await self._loop.run_in_executor(
                None, functools.partial(shutil.rmtree, self._launched.dir, ignore_errors=True))
