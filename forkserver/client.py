"""Parent side of the fork server: :class:`TemplateClient` (asyncio) and the :class:`ChildHandle` it returns.

Runs in the parent (the asyncio service). On the event-loop thread it only does non-blocking socket I/O
(``add_reader`` on the control socket and on pidfds); it never forks, ``Popen``s, ``waitpid``s or blocks.
Starting, stopping and reaping a template it launched happen in an executor thread.

    client = await TemplateClient.launch(worker="walredo_template.worker:main")   # owns the template
    async with TemplateClient.connect(socket_path, key=key_file) as client:      # template from the launcher
        child = await client.spawn(tenant_id, timeout=5.0)   # -> ChildHandle
    child.pid; child.socket                      # parent end, non-blocking, ready for asyncio streams
    await child.wait() -> int                    # exit status, observed through the pidfd
    child.kill(signal.SIGKILL)                   # pidfd_send_signal: never hits a reused pid
    await client.stats() -> dict                 # {"spawns": ..., "live": ..., ...} from the template
    await client.aclose()                        # stops a template it launched

Recovery. A launched client restarts a template that died (off the loop, with backoff); a connected client
reconnects, with backoff, when its template goes away (e.g. restarted by systemd), re-reading the key file on
every attempt when it was given one. Either way requests in flight on the lost connection fail with
:class:`TemplateUnavailable`; new requests wait for the new connection up to their deadline and then fail with
:class:`~forkserver.errors.SpawnTimeout` (a ``TemplateUnavailable``) — nothing hangs. Children forked by a
lost template keep serving (they talk to the parent directly), but their exit status can no longer be reported.

Liveness. A spawn that has waited ``liveness_timeout`` for its reply from a template that sent nothing for as
long sends a stats request as a probe. A template that neither answers it nor sends anything else within
``liveness_timeout`` is stuck (stopped, wedged): a launched one is SIGKILLed (the process we started and have
not reaped, so its pid is still its own) and restarted; a connected one's connection is dropped and
re-established. The spawns waiting on it fail with ``TemplateUnavailable``.

The client is split along its seams: :mod:`forkserver.handle` (the child handle), :mod:`forkserver.session`
(one control connection: handshake, requests, replies, events), :mod:`forkserver.launch` (starting and
stopping a template we own, in an executor); this module holds the client's lifecycle (connect, launch,
restart, reconnect, liveness, close) and its requests. ``ChildHandle``, ``ChildState`` and ``DEFAULT_WORKER``
are re-exported.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Coroutine, Generator
from typing import Any

from forkserver import control
from forkserver.child import DEFAULT_WORKER
from forkserver.errors import SpawnTimeout, TemplateUnavailable
from forkserver.handle import ChildHandle, ChildState
from forkserver.launch import LaunchSpec, launcher_args, read_key_file, remove_dir_later, start_template, stop_template
from forkserver.session import SPAWNS_PER_ITERATION, PendingSpawn, Session, open_session

__all__ = ["TemplateClient", "ClientOpening", "ChildHandle", "ClientState", "ChildState", "validate_tenant_id",
           "DEFAULT_WORKER"]

log = logging.getLogger(__name__)

_MAX_BACKOFF = 2.0  # seconds between restart / reconnect attempts, at most


def validate_tenant_id(tenant_id: object) -> str:
    """Return ``tenant_id`` if it is 32 lowercase hex chars, optionally ``-`` + 4 hex chars.

    Errors: :class:`~forkserver.errors.InvalidTenantId` (a ``ValueError``)."""
    return control.validate_tenant(tenant_id)


def _seconds(name: str, value: object, *, positive: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, got {type(value).__name__}")
    if math.isnan(value) or (positive and value <= 0):
        raise ValueError(f"{name} must be {'> 0' if positive else 'a number'}, got {value}")
    return float(value)


async def _wait_done(loop: asyncio.AbstractEventLoop, fut: asyncio.Future[Any], when: float) -> None:
    """Wait until ``fut`` is done or the loop's clock reaches ``when``, whichever is first; never cancels
    ``fut``. Cancel-safe (a cancelled wait leaves ``fut`` as it was)."""
    if fut.done():
        return
    waiter: asyncio.Future[None] = loop.create_future()

    def wake(_: object = None) -> None:
        if not waiter.done():
            waiter.set_result(None)

    fut.add_done_callback(wake)
    timer = loop.call_at(when, wake)
    try:
        await waiter
    finally:
        timer.cancel()
        fut.remove_done_callback(wake)


def _describe(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, TemplateUnavailable) else f"{type(exc).__name__}: {exc}"


class ClientOpening:
    """What :meth:`TemplateClient.launch` and :meth:`TemplateClient.connect` return: ``await`` it for the
    client, or use it as ``async with TemplateClient.connect(...) as client:`` (closed on exit). Nothing
    starts until it is awaited or entered; awaiting it twice starts two clients. Errors and cancellation
    are those of the call that made it: a cancelled await or ``__aenter__`` leaves nothing running."""

    def __init__(self, make: Callable[[], Coroutine[Any, Any, TemplateClient]]):
        self._make = make
        self._client: TemplateClient | None = None

    def __await__(self) -> Generator[Any, None, TemplateClient]:
        return self._make().__await__()

    async def __aenter__(self) -> TemplateClient:
        self._client = await self._make()
        return self._client

    async def __aexit__(self, *exc: object) -> None:
        if self._client is not None:
            await self._client.aclose()


class ClientState(enum.Enum):
    OPEN = "open"  # a session is (or is being re-)established
    CLOSED = "closed"


class TemplateClient:
    """Asyncio client of one template. Create with :meth:`launch` or :meth:`connect`; use on one loop.

    Attributes: ``socket_path``; ``spawn_timeout`` (a spawn's deadline at most); ``liveness_timeout`` (how
    long a spawn waits on a quiet template before probing it, and how long the probe waits); ``state``;
    ``restarts``: the templates restarted (launched) or the reconnections made (connected);
    ``spawns_per_iteration``: spawn requests sent per event-loop iteration at most (the rest wait their turn,
    in order: a storm of cold tenants never runs hundreds of spawns' socket work in one callback).

    Size: ~460 lines, nearly half docstrings. The public calls and the supervisor that restarts (launched)
    or reconnects (connected) the template share one piece of state — the current session, why the
    template is gone, the liveness verdict — and a spawn's deadline spans both (it waits for the restart);
    the connection itself is :mod:`forkserver.session`, starting a template :mod:`forkserver.launch`."""

    def __init__(self, *, _loop: asyncio.AbstractEventLoop, _key: bytes, _socket_path: str, spawn_timeout: float,
                 liveness_timeout: float | None = None, launched: LaunchSpec | None = None,
                 key_file: str | None = None, connect_timeout: float = 10.0):
        self._loop = _loop
        self._key = _key
        self.socket_path = _socket_path
        self.spawn_timeout = spawn_timeout
        self.liveness_timeout = spawn_timeout / 4 if liveness_timeout is None else liveness_timeout
        self.state = ClientState.OPEN
        self._session: Session | None = None
        self._session_up = asyncio.Event()
        # connected mode: the key file, re-read on every reconnect (a restarted template may have a new key)
        self._key_file = key_file
        self._connect_timeout = connect_timeout
        # launched mode only: how to (re)start the template we own
        self._launched = launched
        self._proc: subprocess.Popen[bytes] | None = None
        self._pipe_w: int | None = None
        # The restart (launched) or reconnect (connected) loop, while one runs.
        self._restart_task: asyncio.Task[None] | None = None
        # Why the template is not available, while it is not: a spawn that gives up says it.
        self._last_error: str | None = None
        # An executor start still running when its awaiter was cancelled: _shutdown collects and stops it.
        self._starting: asyncio.Future[tuple[subprocess.Popen[bytes], int]] | None = None
        self._close_task: asyncio.Task[None] | None = None
        self.restarts = 0
        self._spawns_per_iteration = SPAWNS_PER_ITERATION

    # -- construction

    @classmethod
    def launch(cls, worker: str = DEFAULT_WORKER, *, python: str | None = None,
               start_timeout: float = 30.0, spawn_timeout: float = 10.0, liveness_timeout: float | None = None,
               sandbox: bool = True, child_user: str | None = None, child_memory_limit: int | None = None,
               pool_size: int | None = None, pool: int | None = None) -> ClientOpening:
        """Start a template we own (from an executor thread) and connect to it.

        Returns a :class:`ClientOpening`: ``client = await TemplateClient.launch(...)``, or
        ``async with TemplateClient.launch(...) as client:`` (closed, template stopped, on exit).

        The template gets a fresh 32-byte key over an inherited pipe whose EOF later tells it we died (it
        keeps it in memory its children do not inherit); its socket lives in a private ``mkdtemp``
        directory. It is restarted (with backoff) if it dies, and killed and restarted if it is stuck
        (module docstring, Liveness: ``liveness_timeout``, default ``spawn_timeout / 4``).

        Every child enters the sandbox (:mod:`forkserver.sandbox`) before it serves unless ``sandbox`` is
        False (the template logs a warning); ``child_memory_limit``: each child's address-space limit in bytes
        (rounded down to MiB; default 256 MiB; 0: none); ``child_user``: children drop to this user and its
        group first (the template must run as root); ``pool_size``: children kept pre-forked (``--pool``;
        0 to :data:`forkserver.pool.MAX_POOL_SIZE`; default: the template's); ``pool`` is its older name.

        Errors, raised by this call before anything starts: ``ValueError`` / ``TypeError`` for bad
        arguments (``pool_size`` out of range, a negative memory limit, non-positive timeouts).
        When awaited: :class:`TemplateUnavailable` if it fails to start or to authenticate within
        ``start_timeout``; when the launcher exits first (e.g. the worker does not import) the message carries
        what it printed on stderr (``walredo-template: cannot load worker ...``). Cancel-safe: a cancelled
        launch stops and reaps the template (in the executor) before the cancellation propagates.
        """
        if pool is not None:
            if pool_size is not None:
                raise ValueError("pool is the older name of pool_size: give one of them")
            pool_size = pool
        extra = launcher_args(sandbox=sandbox, child_user=child_user, child_memory_limit=child_memory_limit,
                              pool=pool_size)
        start_timeout = _seconds("start_timeout", start_timeout)
        spawn_timeout = _seconds("spawn_timeout", spawn_timeout)
        if liveness_timeout is not None:
            liveness_timeout = _seconds("liveness_timeout", liveness_timeout)
        return ClientOpening(lambda: cls._launch(worker, python or sys.executable, start_timeout, spawn_timeout,
                                                 liveness_timeout, extra))

    @classmethod
    async def _launch(cls, worker: str, python: str, start_timeout: float, spawn_timeout: float,
                      liveness_timeout: float | None, extra: tuple[str, ...]) -> TemplateClient:
        loop = asyncio.get_running_loop()
        key = os.urandom(control.KEY_SIZE)
        mkdir = loop.run_in_executor(None, functools.partial(tempfile.mkdtemp, prefix="walredo-template-"))
        try:
            sockdir = await asyncio.shield(mkdir)
        except asyncio.CancelledError:
            mkdir.add_done_callback(remove_dir_later)
            raise
        self = cls(_loop=loop, _key=key, _socket_path=os.path.join(sockdir, "control.sock"),
                   spawn_timeout=spawn_timeout, liveness_timeout=liveness_timeout,
                   launched=LaunchSpec(worker=worker, python=python, dir=sockdir,
                                        start_timeout=start_timeout, args=extra))
        try:
            await self._start_and_connect()
        except BaseException:
            await asyncio.shield(self._shutdown())
            raise
        return self

    @classmethod
    def connect(cls, socket_path: str | os.PathLike[str], *, key: bytes | str | os.PathLike[str],
                timeout: float = 10.0, spawn_timeout: float = 10.0,
                liveness_timeout: float | None = None) -> ClientOpening:
        """Connect to a template started by ``walredo-template``.

        Returns a :class:`ClientOpening`: ``client = await TemplateClient.connect(...)``, or
        ``async with TemplateClient.connect(...) as client:`` (closed on exit).

        ``key`` is the raw 32-byte key, or the path of the key file the launcher wrote (hex). When the
        template goes away (restarted by systemd, stopped) or is stuck, the client reconnects in the
        background with backoff (up to 2 s between attempts, until :meth:`aclose`), re-reading a key file on
        every attempt; ``timeout`` bounds each attempt's handshake. Meanwhile spawns wait up to their deadline.

        Errors: raised by this call: ``ValueError`` for a raw key of the wrong size or a non-positive
        timeout. When awaited: ``FileNotFoundError`` / ``PermissionError`` / other ``OSError`` when the key
        file cannot be read (``filename`` is its path); ``ValueError`` naming the path when it does not
        hold a hex key of the right size; :class:`TemplateUnavailable` (cannot connect / no handshake in
        ``timeout``); :class:`ControlProtocolError` (``auth-failed``: wrong key; ``peer-uid``: served by
        another user). The first connection is not retried. Cancel-safe (nothing is left open).
        """
        path = os.fspath(socket_path)
        key_file: str | None = None
        raw = b""
        if isinstance(key, (str, os.PathLike)):
            key_file = os.fspath(key)
        else:
            raw = bytes(key)
            if len(raw) != control.KEY_SIZE:
                raise ValueError(f"key must be {control.KEY_SIZE} bytes")
        timeout = _seconds("timeout", timeout)
        spawn_timeout = _seconds("spawn_timeout", spawn_timeout)
        if liveness_timeout is not None:
            liveness_timeout = _seconds("liveness_timeout", liveness_timeout)
        return ClientOpening(lambda: cls._connect(path, raw, key_file, timeout, spawn_timeout, liveness_timeout))

    @classmethod
    async def _connect(cls, path: str, key: bytes, key_file: str | None, timeout: float, spawn_timeout: float,
                       liveness_timeout: float | None) -> TemplateClient:
        loop = asyncio.get_running_loop()
        if key_file is not None:
            key = await loop.run_in_executor(None, read_key_file, key_file)  # file I/O stays off the loop
        self = cls(_loop=loop, _key=key, _socket_path=path, spawn_timeout=spawn_timeout,
                   liveness_timeout=liveness_timeout, key_file=key_file, connect_timeout=timeout)
        session = await open_session(loop, self.socket_path, self._key, self._on_session_lost, timeout)
        self._install(session)
        return self

    # -- public API

    @property
    def template_pid(self) -> int | None:
        """The pid of the template we are talking to (``None`` while restarting / reconnecting)."""
        s = self._session
        return s.template_pid if s is not None and not s.lost else None

    @property
    def spawns_per_iteration(self) -> int:
        return self._spawns_per_iteration

    @spawns_per_iteration.setter
    def spawns_per_iteration(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"spawns_per_iteration must be an int >= 1, not {value!r}")
        self._spawns_per_iteration = value
        if self._session is not None:
            self._session.spawns_per_iteration = value

    async def spawn(self, tenant_id: str, options: control.Options | None = None, *,
                    timeout: float | None = None) -> ChildHandle:
        """Ask the template to fork a child for ``tenant_id``; return its :class:`ChildHandle`.

        ``options`` (a dict of at most 32 str keys to None/bool/int/float/str/bytes) travel to the template.
        ``timeout``: this call's deadline in seconds (e.g. what is left of a request's own deadline), counting
        the wait for a restarting or reconnecting template; the effective deadline is the smaller of
        ``timeout`` and the client's ``spawn_timeout``. Zero or less fails at once (before any I/O).

        Errors: :class:`InvalidTenantId` / ``ValueError`` / ``TypeError`` for bad arguments (before any I/O);
        :class:`SpawnRefused` (typed refusal, e.g. ``fork-failed``); :class:`SpawnTimeout` when the deadline
        passes (a :class:`TemplateUnavailable` and a ``TimeoutError``; its message says whether it waited for
        the reply or for the template to come back, and why it was gone); :class:`TemplateUnavailable` when
        the client is closed or the connection is lost while the request is in flight (the template died, or
        was found stuck); ``OSError`` (``EMFILE`` / ``ENFILE``) when this process is out of descriptors (the
        socketpair, or the pidfd of the reply: that child is ended, the connection stays).
        Cancel-safe: a cancelled spawn forgets its request and closes its end of the socketpair, so a child
        the template forks anyway sees EOF and exits; one still waiting its turn to be sent (at most
        ``Session.spawns_per_iteration`` go out per loop iteration, see :mod:`forkserver.session`) is dropped
        from the queue unsent; nothing leaks.
        """
        validate_tenant_id(tenant_id)
        # validated on a copy: the caller may not mutate what we send while it is queued
        options = {} if options is None else dict(control.validate_options(options))
        budget = self.spawn_timeout
        if timeout is not None:
            budget = min(budget, max(0.0, _seconds("timeout", timeout, positive=False)))
        which = "spawn_timeout" if budget == self.spawn_timeout else "the caller's timeout"
        if budget <= 0:
            raise SpawnTimeout(f"spawn for tenant {tenant_id}: no time left ({which})")
        loop = self._loop
        deadline = loop.time() + budget
        session = self._session
        if session is None or session.lost or self.state is ClientState.CLOSED:
            try:
                async with asyncio.timeout_at(deadline):
                    session = await self._wait_session()
            except TimeoutError:
                raise SpawnTimeout(f"spawn for tenant {tenant_id}: the template did not come back within "
                                   f"{budget:g} s ({which}): {self._last_error or 'restarting'}") from None
        # Queued on the session, sent in its turn (at once when nothing waits ahead: see forkserver.session).
        entry = session.request_spawn(tenant_id, options)
        try:
            handle = await self._await_reply(session, entry, deadline)
        except BaseException:
            session.forget_spawn(entry)
            raise
        if handle is None:
            session.forget_spawn(entry)
            if entry.sent and session.last_heard < entry.sent_at:
                # Nothing heard since we asked: probe it anyway, or a stuck template would never be noticed
                # by callers whose deadlines are all shorter than liveness_timeout.
                self._start_probe(session)
            raise SpawnTimeout(f"no spawn reply for tenant {tenant_id} within {budget:g} s ({which})")
        return handle

    async def stats(self) -> dict[str, Any]:
        """The template's counters: at least ``spawns`` (children forked) and ``live`` (not yet reaped).

        Errors: :class:`TemplateUnavailable` (closed, lost, or no reply within ``spawn_timeout``). Cancel-safe."""
        try:
            async with asyncio.timeout(self.spawn_timeout):
                session = await self._wait_session()
                rid = session.next_id()
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
        Pending requests fail with :class:`TemplateUnavailable`; a reconnect loop stops. Cancellation does not
        interrupt the shutdown (it is shielded and completes in the background)."""
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
            # A lost session is not "up" (the event may still be set if it was lost just now): wait for the
            # restart / reconnect to install a live one, or for aclose. The caller's timeout bounds this.
            self._session_up.clear()
            await self._session_up.wait()

    async def _await_reply(self, session: Session, entry: PendingSpawn, deadline: float) -> ChildHandle | None:
        """The reply to ``entry``, or None at ``deadline``. Never cancels ``entry.future`` (the caller forgets
        the request on its way out). Waits with timer handles, not ``asyncio.timeout`` / ``asyncio.wait``:
        each of those asks for the running loop, and on 3.11 that is a ``getpid`` syscall."""
        loop = self._loop
        fut = entry.future
        while True:
            if fut.done():
                return fut.result()
            now = loop.time()
            if now >= deadline:
                return None
            await _wait_done(loop, fut, min(deadline, now + self.liveness_timeout))
            if fut.done():
                continue
            if not entry.sent or loop.time() - session.last_heard < self.liveness_timeout:
                continue  # still waiting its turn, or the template is busy (it answers others), not stuck
            probe = self._start_probe(session)  # a stuck verdict fails the session, and with it fut
            if probe is not None:
                await _wait_done(loop, probe, deadline)
                if probe.done():
                    probe.result()

    def _start_probe(self, session: Session) -> asyncio.Task[bool] | None:
        # One probe per session at a time, shared by every spawn waiting on it.
        if session.lost or self.state is ClientState.CLOSED:
            return None
        if session.probe is None:
            session.probe = self._loop.create_task(self._probe(session), name="walredo-template-liveness")
        return session.probe

    async def _probe(self, session: Session) -> bool:
        """A stats round trip with a deadline: True if the template is alive. A template that neither
        answers nor sends anything else within ``liveness_timeout`` is declared stuck (:meth:`_stuck`)."""
        try:
            if session.lost:  # lost between the task's creation and its first step
                return False
            reads = session.reads
            rid = session.next_id()
            fut: asyncio.Future[dict[str, Any]] = self._loop.create_future()
            session.pending[rid] = fut
            try:
                session.send(control.StatsRequest(rid))
                await asyncio.wait([fut], timeout=self.liveness_timeout)
            finally:
                session.pending.pop(rid, None)
            if fut.done():
                if not fut.cancelled():
                    fut.exception()  # retrieved: a lost session's error is the spawns' to report
                return not session.lost
            if session.lost or session.reads != reads:
                return not session.lost
            self._stuck(session)
            return False
        finally:
            session.probe = None

    def _stuck(self, session: Session) -> None:
        if session.lost or session is not self._session or self.state is ClientState.CLOSED:
            return
        pid = session.template_pid
        quiet = self._loop.time() - session.last_heard
        proc = self._proc
        if proc is not None and proc.pid == pid and proc.returncode is None:
            # Our own child, not reaped (only the restart reaps it, after this): the pid is still its own.
            log.warning("template pid %s is stuck (nothing received for %.1f s, no answer to a stats request): "
                        "killing it (SIGKILL) and starting a new one", pid, quiet)
            try:
                proc.kill()
            except OSError as e:
                log.debug("template pid %s: kill: %r", pid, e)
            why = f"the template (pid {pid}) was stuck (no answer for {quiet:.1f} s): killed, restarting"
        else:
            log.warning("template pid %s at %s is stuck (nothing received for %.1f s, no answer to a stats "
                        "request): dropping the connection, reconnecting", pid, self.socket_path, quiet)
            why = (f"the template (pid {pid}) at {self.socket_path} was stuck (no answer for {quiet:.1f} s): "
                   "connection dropped, reconnecting")
        session.fail(TemplateUnavailable(why))

    def _install(self, session: Session) -> None:
        session.spawns_per_iteration = self._spawns_per_iteration
        self._session = session
        if not session.lost:  # it may have died between the handshake and now; _recover checks
            self._session_up.set()

    def _on_session_lost(self, session: Session) -> None:
        if session is not self._session:
            return
        self._session_up.clear()
        if self.state is not ClientState.OPEN or self._restart_task is not None:
            return
        self._last_error = _describe(session.error) if session.error is not None else "connection lost"
        if self._launched is None:
            log.warning("template pid %s at %s: connection lost (%s); reconnecting", session.template_pid,
                        self.socket_path, self._last_error)
        self._restart_task = self._loop.create_task(self._recover(), name="walredo-template-recover")

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
        proc, pipe_w = self._proc, self._pipe_w
        self._proc = self._pipe_w = None
        if proc is not None:
            await self._loop.run_in_executor(None, stop_template, proc, pipe_w, 2.0)
        await self._start_and_connect()

    async def _reconnect(self) -> None:
        if self._key_file is not None:
            # Re-read on every attempt: a restarted template may have written a new key.
            self._key = await self._loop.run_in_executor(None, read_key_file, self._key_file)
        session = await open_session(self._loop, self.socket_path, self._key, self._on_session_lost,
                                     self._connect_timeout)
        self._install(session)

    async def _recover(self) -> None:
        """Restart (launched) or reconnect (connected) with backoff until a session is up or the client closes."""
        delay = 0.05
        launched = self._launched is not None
        failures = 0
        try:
            while self.state is ClientState.OPEN:
                try:
                    await (self._restart() if launched else self._reconnect())
                    assert self._session is not None  # installed by _restart / _reconnect
                    if not self._session.lost:
                        self.restarts += 1
                        self._last_error = None
                        if launched:
                            log.warning("template restarted (pid %s)", self.template_pid)
                        else:
                            log.info("reconnected to the template at %s (pid %s)", self.socket_path,
                                     self.template_pid)
                        return
                    self._last_error = "the new connection went away at once"
                except Exception as e:
                    self._last_error = f"{'restart' if launched else 'reconnect'} failed: {_describe(e)}"
                failures += 1
                # A launched template failing to start is news every time; a connected one being down for a
                # while (systemd restarting it) is said once, then at debug level.
                level = logging.WARNING if launched or failures == 1 else logging.DEBUG
                log.log(level, "template at %s: %s; retrying in %.2f s", self.socket_path, self._last_error, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _MAX_BACKOFF)
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
