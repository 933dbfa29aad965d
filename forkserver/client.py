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
"""

from __future__ import annotations

import asyncio
import enum
import functools
import itertools
import logging
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from forkserver import control, fdpass
from forkserver.child import DEFAULT_WORKER
from forkserver.control import ControlConnection, Role
from forkserver.errors import ControlProtocolError, SpawnRefused, TemplateUnavailable
from forkserver.sender import FrameSender

__all__ = ["TemplateClient", "ChildHandle", "ClientState", "ChildState", "validate_tenant_id", "DEFAULT_WORKER"]

log = logging.getLogger(__name__)

_RECV_SIZE = 256 * 1024


def validate_tenant_id(tenant_id: object) -> str:
    """Return ``tenant_id`` if it is 32 lowercase hex chars, optionally ``-`` + 4 hex chars.

    Errors: :class:`~forkserver.errors.InvalidTenantId` (a ``ValueError``)."""
    return control.validate_tenant(tenant_id)


# ----------------------------------------------------------------------------------------------- child


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

    # -- driven by the client (on the loop thread)

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


# ---------------------------------------------------------------------------------------------- session


@dataclass
class _PendingSpawn:
    future: asyncio.Future[ChildHandle]
    parent_end: socket.socket
    tenant: str


class _Session:
    """One authenticated control connection to one template process (loop thread only)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, key: bytes,
                 on_lost: Callable[[_Session], None]):
        self.loop = loop
        self.sock = sock
        self.proto = ControlConnection(Role.PARENT, key)
        self.out = FrameSender(sock)
        # request id -> a spawn's waiter, or a stats request's future
        self.pending: dict[int, _PendingSpawn | asyncio.Future[dict[str, Any]]] = {}
        self.children: dict[int, ChildHandle] = {}
        self.ready: asyncio.Future[None] = loop.create_future()
        self.lost = False
        self._on_lost = on_lost
        self._writing = False
        loop.add_reader(sock.fileno(), self._on_readable)

    @property
    def template_pid(self) -> int | None:
        return self.proto.peer_pid

    def send(self, msg: control.Message, owned: Sequence[socket.socket] = ()) -> None:
        self.proto.send(msg)
        self._queue(owned)

    def _queue(self, owned: Sequence[socket.socket] = ()) -> None:
        # From here the sender owns them (as fd numbers): it closes them once their frame went out.
        owned_fds = [s.detach() for s in owned]
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
        try:
            data, fds = fdpass.recv(self.sock, _RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except ControlProtocolError as e:
            self.fail(e)
            return
        except OSError as e:
            self.fail(TemplateUnavailable(f"control connection broke: {e}"))
            return
        if not data:
            fdpass.close_fds(fds)
            self.fail(TemplateUnavailable("the template closed the control connection"))
            return
        try:
            self.proto.receive_data(data, fds)
            while not self.lost:
                event = self.proto.next_event()
                if event is None:
                    break
                self._dispatch(event)
            if not self.lost:
                self._queue()
                if self.proto.authenticated and not self.ready.done():
                    self.ready.set_result(None)
        except ControlProtocolError as e:
            self.fail(e)

    def _dispatch(self, event: control.Message | control.BadRequest) -> None:
        if isinstance(event, control.Spawned):
            entry = self.pending.pop(event.request_id, None)
            if not isinstance(entry, _PendingSpawn) or entry.future.done():
                # Its caller gave up (cancelled / timed out) and closed the parent end: the child sees EOF
                # and exits; we only drop the pidfd. A reply to an unknown id is tolerated the same way.
                fdpass.close_fds([event.pidfd])
                return
            entry.parent_end.setblocking(False)
            handle = ChildHandle(event.pid, event.pidfd, entry.parent_end, entry.tenant, self.loop)
            # Registered synchronously, before the spawner resumes, so an early `exited` finds it.
            self.children[event.pid] = handle
            entry.future.set_result(handle)
        elif isinstance(event, control.ErrorReply):
            entry = self.pending.pop(event.request_id, None) if event.request_id is not None else None
            fut = entry.future if isinstance(entry, _PendingSpawn) else entry
            if fut is None:
                log.warning("template error without a waiting request: %s %s", event.code, event.message)
            elif not fut.done():
                fut.set_exception(SpawnRefused(event.code, event.message))
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
        self.loop.remove_reader(self.sock.fileno())
        if self._writing:
            self.loop.remove_writer(self.sock.fileno())
        self.out.close()
        self.proto.close()
        self.sock.close()
        if not self.ready.done():
            # The handshake failed: its waiter gets the precise error (e.g. ControlProtocolError auth-failed).
            self.ready.set_exception(exc)
            self.ready.exception()
        message = str(exc) if isinstance(exc, TemplateUnavailable) else f"control connection failed: {exc}"
        for entry in self.pending.values():
            fut = entry.future if isinstance(entry, _PendingSpawn) else entry
            if not fut.done():
                # One instance per waiter: re-raising a shared one grows its traceback by every waiter's
                # frames and keeps them all alive.
                fut.set_exception(TemplateUnavailable(message))
        self.pending.clear()
        why = "the client was closed" if closing else "the template connection was lost"
        for handle in self.children.values():
            # Keep the pidfd while the child runs so that kill() still works and wait() still observes the
            # exit (then raises); it is closed as soon as the child is gone.
            handle._set_unknown(why)
        self.children.clear()
        self._on_lost(self)


async def _open_session(loop: asyncio.AbstractEventLoop, path: str, key: bytes,
                        on_lost: Callable[[_Session], None], timeout: float) -> _Session:
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
        session = _Session(loop, sock, key, on_lost)
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


# ------------------------------------------------------------------------------------- template process


def _remove_dir_later(fut: asyncio.Future[str]) -> None:
    # A launch cancelled while its directory was being made: remove it once made (still off the loop).
    if not fut.cancelled() and fut.exception() is None:
        asyncio.get_running_loop().run_in_executor(
            None, functools.partial(shutil.rmtree, fut.result(), ignore_errors=True))


def _read_key_file(path: str | os.PathLike[str]) -> bytes:
    with open(path) as f:
        return bytes.fromhex(f.read().strip())


def _template_env() -> dict[str, str]:
    # The template must import what we can (the worker module may live beside the caller's code, e.g.
    # tests/): hand it our sys.path.
    env = dict(os.environ)
    paths = [os.path.abspath(p) if p else os.getcwd() for p in sys.path]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


def _start_template(python: str, worker: str, socket_path: str, key: bytes, timeout: float,
                    extra_args: tuple[str, ...] = ()) -> tuple[subprocess.Popen[bytes], int]:
    """Blocking (executor thread): start the template, wait for its readiness line.

    Returns ``(Popen, parent_pipe_w)``. Errors: :class:`TemplateUnavailable` (the process is gone)."""
    r, w = os.pipe()
    try:
        os.write(w, key)
        proc = subprocess.Popen(
            [python, "-m", "forkserver.launcher", "--socket", socket_path, "--worker", worker,
             "--parent-fd", str(r), *extra_args],
            pass_fds=(r,), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, env=_template_env(),
            process_group=0,  # its own group: a Ctrl-C aimed at us must not kill it behind our back
        )
    except BaseException:
        os.close(w)
        raise
    finally:
        os.close(r)
    stdout = proc.stdout
    assert stdout is not None  # stdout=PIPE
    try:
        line = b""
        with selectors.DefaultSelector() as sel:
            sel.register(stdout, selectors.EVENT_READ)
            loop_deadline = time.monotonic() + timeout
            while not line.endswith(b"\n"):
                remaining = loop_deadline - time.monotonic()
                if remaining <= 0 or not sel.select(remaining):
                    raise TemplateUnavailable(f"template did not become ready within {timeout} s")
                chunk = os.read(stdout.fileno(), 4096)
                if not chunk:
                    break
                line += chunk
        if not line.startswith(b"walredo-template ready "):
            proc.wait(timeout=timeout)
            raise TemplateUnavailable(f"template failed to start (exit status {proc.returncode})")
    except BaseException:
        _stop_template(proc, w, timeout)
        raise
    finally:
        stdout.close()
    return proc, w


def _stop_template(proc: subprocess.Popen[bytes], pipe_w: int | None, timeout: float = 5.0) -> None:
    """Blocking (executor thread): SIGTERM (children keep serving), escalate to SIGKILL, reap; then close the
    parent pipe. Closing the pipe first would mean "parent died" and the template would kill its children."""
    try:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    finally:
        if pipe_w is not None:
            fdpass.close_fds([pipe_w])


# ----------------------------------------------------------------------------------------------- client


@dataclass(frozen=True)
class _LaunchSpec:
    """How a launched client (re)starts the template it owns."""

    worker: str
    python: str
    dir: str  # the private mkdtemp directory of the socket, removed on close
    start_timeout: float
    args: tuple[str, ...]  # extra launcher flags (sandbox, child user, memory limit, pool)


class ClientState(enum.Enum):
    OPEN = "open"  # a session is (or is being re-)established
    CLOSED = "closed"


class TemplateClient:
    """Asyncio client of one template. Create with :meth:`launch` or :meth:`connect`; use on one loop."""

    def __init__(self, *, _loop: asyncio.AbstractEventLoop, _key: bytes, _socket_path: str, spawn_timeout: float,
                 launched: _LaunchSpec | None = None):
        self._loop = _loop
        self._key = _key
        self.socket_path = _socket_path
        self.spawn_timeout = spawn_timeout
        self.state = ClientState.OPEN
        self._session: _Session | None = None
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
        extra: list[str] = []
        if not sandbox:
            extra.append("--no-sandbox")
        if child_user is not None:
            extra += ["--child-user", str(child_user)]
        if child_memory_limit is not None:
            if child_memory_limit < 0:
                raise ValueError("child_memory_limit must be >= 0")
            extra += ["--child-memory-limit", str(max(1, child_memory_limit >> 20) if child_memory_limit else 0)]
        if pool is not None:
            extra += ["--pool", str(int(pool))]
        loop = asyncio.get_running_loop()
        key = os.urandom(control.KEY_SIZE)
        mkdir = loop.run_in_executor(None, functools.partial(tempfile.mkdtemp, prefix="walredo-template-"))
        try:
            sockdir = await asyncio.shield(mkdir)
        except asyncio.CancelledError:
            mkdir.add_done_callback(_remove_dir_later)
            raise
        self = cls(_loop=loop, _key=key, _socket_path=os.path.join(sockdir, "control.sock"),
                   spawn_timeout=spawn_timeout,
                   launched=_LaunchSpec(worker=worker, python=python or sys.executable, dir=sockdir,
                                        start_timeout=start_timeout, args=tuple(extra)))
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
            key = await loop.run_in_executor(None, _read_key_file, key)  # file I/O stays off the loop
        if len(key) != control.KEY_SIZE:
            raise ValueError(f"key must be {control.KEY_SIZE} bytes")
        self = cls(_loop=loop, _key=bytes(key), _socket_path=os.fspath(socket_path), spawn_timeout=spawn_timeout)
        session = await _open_session(loop, self.socket_path, self._key, self._on_session_lost, timeout)
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
                session.pending[rid] = _PendingSpawn(fut, parent_end, tenant_id)
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

    async def _wait_session(self) -> _Session:
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

    def _install(self, session: _Session) -> None:
        self._session = session
        if not session.lost:  # it may have died between the handshake and now; _restart checks
            self._session_up.set()

    def _on_session_lost(self, session: _Session) -> None:
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
            None, _start_template, opts.python, opts.worker, self.socket_path, self._key,
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
        session = await _open_session(loop, self.socket_path, self._key, self._on_session_lost,
                                      opts.start_timeout)
        self._install(session)

    async def _restart(self) -> None:
        delay = 0.05
        try:
            while self.state is ClientState.OPEN:
                proc, pipe_w = self._proc, self._pipe_w
                self._proc = self._pipe_w = None
                if proc is not None:
                    await self._loop.run_in_executor(None, _stop_template, proc, pipe_w, 2.0)
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
                    pass  # it failed to start; _start_template cleaned up after itself
                self._starting = None
            proc, pipe_w = self._proc, self._pipe_w
            self._proc = self._pipe_w = None
            if proc is not None:
                await self._loop.run_in_executor(None, _stop_template, proc, pipe_w, 5.0)
            await self._loop.run_in_executor(
                None, functools.partial(shutil.rmtree, self._launched.dir, ignore_errors=True))
