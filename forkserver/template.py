"""The template process: a single-threaded selector loop handing each spawn request a preloaded forked child.

Runs only in the template (started by ``walredo-template`` or by ``TemplateClient.launch``). No threads (forking
a threaded process is unsafe) and no asyncio loop: one ``selectors`` loop over

- the listening control socket (filesystem path in a 0700 directory, socket mode 0600),
- each accepted control connection (``SO_PEERCRED`` uid check, then the HMAC handshake of
  :mod:`forkserver.control`, then spawn / stats requests; a connection still unauthenticated after 10 s is
  dropped, and at most 1024 are open at once),
- a signal wake-up pipe (``signal.set_wakeup_fd``): SIGCHLD → reap with ``waitpid(-1, WNOHANG)`` in a loop
  and send ``exited`` to the connection that asked for the child; SIGTERM/SIGINT → clean exit,
- optionally the *parent pipe* (library launch): EOF means the launching parent is gone.

Spawns are served from a small pool of *pre-forked* children (``pool_size``, default 1; the environment
variable ``WALREDO_TEMPLATE_POOL`` sets the default, 0 forks on request only). A pool child is forked (and its
pidfd opened, before anything can reap it) on a wake-up that served no spawn — at most ~2 ms after the last
one, so the fork does not compete with the parent's first round trip to the child it just got — does all the
hygiene that needs no tenant (:func:`forkserver.child.run_idle`) and waits on a private ``SOCK_SEQPACKET``
channel. A spawn request then costs one ``sendmsg`` to that channel (tenant id + the child's socket) and the
``spawned`` reply: the fork, the interpreter's after-fork hooks and the hygiene — most of a spawn's CPU, largely
copy-on-write faults — are off the request path. With the pool empty (a burst) the template forks on request
as before. Pool children are not counted as ``live`` in stats (``idle`` counts them), get no ``exited`` event,
are replaced if they die, and are killed and reaped when the template stops.

Every child enters the template's sandbox policy (:mod:`forkserver.sandbox`; the launcher's default, off with
``--no-sandbox``) before its worker serves: the filter is compiled once here, and a pool child loads it
during its idle phase, after the worker's ``prepare()``. The control key is a :class:`~forkserver.secret.Key`
(a page that fork wipes), shared by reference with every connection: no child inherits a copy.

On SIGTERM/SIGINT the template removes its socket (and key file if it wrote one) and exits; children keep
serving their parent. When the parent pipe reports the parent's death the children are useless (their sockets
hit EOF and they exit); the template reaps them for a short grace period, SIGKILLs any straggler, removes its
socket directory if empty (the parent's private directory), then exits, so nothing is left behind.
"""

from __future__ import annotations

import dataclasses
import enum
import gc
import os
import selectors
import signal
import socket
import stat
import sys
import threading
import time
from dataclasses import dataclass, field
from types import FrameType
from typing import TextIO

from forkserver import child, control, fdpass, sandbox
from forkserver.control import BadRequest, ControlConnection, Message, Role, Spawn, StatsRequest
from forkserver.errors import ControlProtocolError, InvalidTenantId
from forkserver.secret import Key
from forkserver.sender import FrameSender

__all__ = ["Template", "TemplateState", "prepare_socket_dir"]

_RECV_SIZE = 64 * 1024
_MAX_OUTPUT = 1 << 20  # bytes queued to a peer that does not read; beyond this we drop it
_AUTH_DEADLINE = 10.0  # seconds an unauthenticated connection may idle before we drop it
_ORPHAN_GRACE = 0.5  # seconds children get to exit on their own after the parent died


_MAX_CONNECTIONS = 1024  # beyond this new connections are closed at once (a same-uid peer flooding us)
_IDLE_CHECK_EVERY = 1.0  # seconds between sweeps for unauthenticated connections past their deadline
_DEFAULT_POOL = "1"  # pre-forked children kept ready (WALREDO_TEMPLATE_POOL overrides; 0 = fork on request)
_REFILL_BACKOFF = 1.0  # seconds before retrying a pre-fork that failed (e.g. EAGAIN)
_REFILL_WAIT = 0.002  # select timeout while the pool is short: refill this soon after the last spawn at most

# The wake-up fd carries signal numbers as bytes; plain ints keep the per-signal check off IntEnum code.
_SIGCHLD, _SIGTERM, _SIGINT = int(signal.SIGCHLD), int(signal.SIGTERM), int(signal.SIGINT)


class TemplateState(enum.Enum):
    NEW = "new"
    SERVING = "serving"
    STOPPING = "stopping on SIGTERM/SIGINT"  # children keep serving their parent
    PARENT_GONE = "stopping: the launching parent is gone"  # children are reaped (or killed) first
    STOPPED = "stopped"


def _noop_handler(signum: int, frame: FrameType | None) -> None:
    # The C-level handler already wrote the signal number to the wake-up fd; the loop does the work.
    pass


def prepare_socket_dir(path: str) -> None:
    """Create the socket's directory (mode 0700) if missing, and insist it is ours and private.

    Errors: ``PermissionError`` if it is not a directory owned by us with mode 0700 (group/other bits set)."""
    d = os.path.dirname(os.path.abspath(path))
    try:
        os.mkdir(d, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(d)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise PermissionError(f"socket directory {d} must be a directory owned by uid {os.getuid()} "
                              f"with mode 0700 (is {oct(stat.S_IMODE(st.st_mode))}, uid {st.st_uid})")


@dataclass
class _Idle:
    """A pre-forked child waiting in the pool for its tenant."""

    pid: int
    pidfd: int  # opened right after the fork, before anything could reap it; goes out in the `spawned` reply
    chan: socket.socket  # our end of its SOCK_SEQPACKET assignment channel (non-blocking)


@dataclass
class _Conn:
    sock: socket.socket
    proto: ControlConnection
    created: float
    sender: FrameSender
    closed: bool = False
    # pidfds we opened and queued in a `spawned` reply: ours to close once the frame carrying them went out.
    owned_fds: set[int] = field(default_factory=set)
    # Whether the selector also watches for writability; re-registering only when this changes saves an
    # epoll_ctl (and the selector's Python bookkeeping) on every reply.
    writing: bool = False


class Template:
    """The template's server loop. Construct, then :meth:`serve` (blocks until SIGTERM/SIGINT or parent
    death; returns the process exit code).

    ``key`` is a :class:`~forkserver.secret.Key` (kept in memory children do not inherit) or 32 bytes (copied
    into one; the caller's bytes are the caller's business). ``key_file`` is removed on exit (the caller
    wrote it); ``parent_fd`` is a pipe read end whose EOF means the launching parent is gone. ``policy``:
    the sandbox every child enters before it serves (:mod:`forkserver.sandbox`); ``None`` (the class default,
    for tests of the loop itself): children run unconfined. The launcher passes a policy unless told
    ``--no-sandbox``.

    Errors: ``ValueError`` (key size, pool size), :class:`~forkserver.sandbox.SandboxError` (the filter does
    not compile: no libseccomp)."""

    def __init__(self, socket_path: str, worker: child.Worker, key: bytes | Key, *, key_file: str | None = None,
                 parent_fd: int | None = None, log: TextIO | None = None, pool_size: int | None = None,
                 policy: sandbox.Policy | None = None):
        if len(key) != control.KEY_SIZE:
            raise ValueError("key must be 32 bytes")
        self.socket_path = os.path.abspath(socket_path)
        self.worker = worker
        self._key = key if isinstance(key, Key) else Key.from_bytes(key)
        self.policy = policy
        if policy is not None and policy.seccomp:
            sandbox.prepare()  # compiled once here; each child only loads it
        self.key_file = key_file
        self.parent_fd = parent_fd
        self._log_file = log if log is not None else sys.stderr
        self.spawns = 0
        if pool_size is None:
            pool_size = int(os.environ.get("WALREDO_TEMPLATE_POOL", _DEFAULT_POOL))
        if pool_size < 0:
            raise ValueError("pool_size must be >= 0")
        self.pool_size = pool_size
        self._idle: dict[int, _Idle] = {}  # pid -> pre-forked child, oldest first; also in _children (owner None)
        self._refill_at = 0.0  # after a failed pre-fork, not before this (monotonic)
        self._served = False  # this wake-up handed out a child (the pool is refilled on a later one)
        self._children: dict[int, _Conn | None] = {}  # live (unreaped) child pid -> connection that asked
        self._conns: dict[int, _Conn] = {}
        self._sel = selectors.DefaultSelector()
        self._listener: socket.socket | None = None
        self._socket_ino: tuple[int, int] | None = None
        self._wake_r = self._wake_w = -1
        self._idle_check_at = 0.0
        self.state = TemplateState.NEW

    # ------------------------------------------------------------------ setup

    def bind(self) -> None:
        """Create the listening socket (mode 0600) at ``socket_path``; replaces a stale socket file.

        Errors: ``FileExistsError`` when a live server answers on the path; ``PermissionError`` for an unsafe
        directory."""
        prepare_socket_dir(self.socket_path)
        if os.path.lexists(self.socket_path):
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(self.socket_path)
            except (ConnectionRefusedError, FileNotFoundError):
                os.unlink(self.socket_path)  # stale: a previous template died without cleaning up
            except OSError as e:
                raise FileExistsError(f"{self.socket_path} exists and is not a usable socket: {e}") from None
            else:
                raise FileExistsError(f"a server is already listening on {self.socket_path}")
            finally:
                probe.close()
        lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # the socket file is born 0600: no window where another user may connect
        try:
            lst.bind(self.socket_path)
        finally:
            os.umask(old)
        os.chmod(self.socket_path, 0o600)
        st = os.stat(self.socket_path)
        self._socket_ino = (st.st_dev, st.st_ino)
        lst.listen(128)
        lst.setblocking(False)
        self._listener = lst

    def _install_signals(self) -> None:
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, _noop_handler)
        child.plan_signal_reset()

    # ------------------------------------------------------------------ loop

    def serve(self) -> int:
        """Run until stopped; clean up; return the exit code (0)."""
        if self.state is not TemplateState.NEW:
            raise RuntimeError(f"serve() on a template that is {self.state.value}")
        if self._listener is None:
            self.bind()
        assert self._listener is not None  # bind() set it
        self.state = TemplateState.SERVING
        self._install_signals()
        self._sel.register(self._listener, selectors.EVENT_READ, "accept")
        self._sel.register(self._wake_r, selectors.EVENT_READ, "signal")
        if self.parent_fd is not None:
            self._sel.register(self.parent_fd, selectors.EVENT_READ, "parent")
        # Everything imported so far (worker module included) is shared copy-on-write with the children;
        # keep the collector from touching (and thereby copying) those pages.
        gc.collect()
        gc.freeze()
        if self.policy is not None and self.policy.seccomp:
            # Measured once here: every child maps what the template maps at its fork (plus a little).
            self.policy = dataclasses.replace(self.policy, mapped_hint=sandbox.mapped_bytes())
        self._refill_pool()
        if threading.active_count() > 1:
            # fork() copies only the calling thread; locks held by the others stay locked in every child.
            self._log(f"warning: {threading.active_count()} threads at serve time; forking them is unsafe")
        # Every page the loop writes after a fork is a copy-on-write fault (several µs each on a VM) while the
        # child shares it, so the per-request path stays lean: the deadline sweep runs about once a second,
        # not once per wake-up.
        select, dispatch, monotonic = self._sel.select, self._dispatch, time.monotonic
        self._idle_check_at = monotonic() + _IDLE_CHECK_EVERY
        try:
            while self.state is TemplateState.SERVING:
                short = len(self._idle) < self.pool_size
                timeout = max(_REFILL_WAIT, self._refill_at - monotonic()) if short else _IDLE_CHECK_EVERY
                self._served = False
                ready = select(timeout=timeout)
                # The pool is refilled on a wake-up that serves no spawn: right after a reply the parent and the
                # new child need the CPUs for their first round trip, and a fork plus its copy-on-write faults
                # would compete with it (2 vCPUs). When no control connection is ready (a timeout, SIGCHLD) it
                # is refilled first, so that the `exited` events go out after it and a spawn that follows
                # them does not queue behind the fork.
                if short and not any(isinstance(key.data, _Conn) for key, _ in ready):
                    self._refill_pool()
                    short = False
                for key, events in ready:
                    dispatch(key, events)
                    if self.state is not TemplateState.SERVING:
                        break
                else:
                    if short and not self._served:
                        self._refill_pool()
                if monotonic() >= self._idle_check_at:
                    self._drop_idle_unauthenticated()
                    self._idle_check_at = monotonic() + _IDLE_CHECK_EVERY
        finally:
            self._shutdown()
        return 0

    def _dispatch(self, key: selectors.SelectorKey, events: int) -> None:
        what = key.data
        if what == "accept":
            self._accept()
        elif what == "signal":
            self._on_signals()
        elif what == "parent":
            assert self.parent_fd is not None  # registered only when there is one
            try:
                data = os.read(self.parent_fd, 4096)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self.state = TemplateState.PARENT_GONE
        else:
            conn: _Conn = what
            try:
                if events & selectors.EVENT_WRITE:
                    self._flush(conn)
                if events & selectors.EVENT_READ and not conn.closed:
                    self._read(conn)
            except Exception as e:  # a bug of ours must cost one connection, never the template
                self._log(f"internal error on a connection, dropping it: {type(e).__name__}: {e}")
                self._close_conn(conn)

    def _on_signals(self) -> None:
        try:
            data = os.read(self._wake_r, 4096)
        except BlockingIOError:
            return
        # SIGCHLD may coalesce; reaping always loops until nothing is left, so one byte is enough.
        if _SIGCHLD in data:
            self._reap()
        if _SIGTERM in data or _SIGINT in data:
            self.state = TemplateState.STOPPING

    def _accept(self) -> None:
        listener = self._listener
        assert listener is not None  # registered by serve() once bound
        while True:
            try:
                sock, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                self._log(f"accept failed: {e}")
                return
            sock.setblocking(False)
            try:
                uid = fdpass.peer_credentials(sock).uid
            except OSError:
                uid = -1
            if uid != os.getuid():
                # Dropped before anything is read from it; it never sees the challenge.
                self._log(f"refused a peer with uid {uid}")
                sock.close()
                continue
            if len(self._conns) >= _MAX_CONNECTIONS:
                self._log("refused a connection: too many open")
                sock.close()
                continue
            conn = _Conn(sock, ControlConnection(Role.TEMPLATE, self._key), time.monotonic(), FrameSender(sock))
            conn.proto.start()
            self._conns[sock.fileno()] = conn
            self._sel.register(sock, selectors.EVENT_READ, conn)
            self._queue_output(conn)

    def _read(self, conn: _Conn) -> None:
        try:
            data, fds = fdpass.recv(conn.sock, _RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except ControlProtocolError as e:  # bad ancillary data; fdpass closed the fds
            self._log(f"dropping a connection: {e}")
            self._close_conn(conn)
            return
        except OSError:
            self._close_conn(conn)
            return
        if not data:
            fdpass.close_fds(fds)
            self._close_conn(conn)
            return
        try:
            conn.proto.receive_data(data, fds)
            while not conn.closed:
                event = conn.proto.next_event()
                if event is None:
                    break
                self._handle(conn, event)
        except ControlProtocolError as e:
            self._log(f"dropping a connection: {e}")
            self._queue_output(conn)  # the error frame the protocol queued, best effort
            self._close_conn(conn)
            return
        self._queue_output(conn)

    def _handle(self, conn: _Conn, event: Message | BadRequest) -> None:
        if isinstance(event, Spawn):
            self._spawn(conn, event)
        elif isinstance(event, StatsRequest):
            conn.proto.send(control.StatsReply(event.request_id, self.stats()))
        elif isinstance(event, BadRequest):
            conn.proto.send(control.ErrorReply(event.request_id, event.code, event.message))
        else:  # pragma: no cover - the protocol only returns the types above to the template
            raise AssertionError(event)

    def stats(self) -> dict[str, int | bool]:
        return {"spawns": self.spawns, "live": len(self._children) - len(self._idle), "idle": len(self._idle),
                "connections": len(self._conns), "pid": os.getpid(),
                "sandbox": self.policy is not None and self.policy.seccomp}

    def _spawn(self, conn: _Conn, req: Spawn) -> None:
        try:
            control.validate_tenant(req.tenant)
        except InvalidTenantId as e:
            fdpass.close_fds([req.fd])
            conn.proto.send(control.ErrorReply(req.request_id, "invalid-tenant", str(e)))
            return
        try:
            control.validate_options(req.options)
        except (TypeError, ValueError) as e:
            fdpass.close_fds([req.fd])
            conn.proto.send(control.ErrorReply(req.request_id, "invalid-options", str(e)))
            return
        self._served = True
        if self._idle and self._assign_idle(conn, req):
            return
        try:
            pid = os.fork()
        except OSError as e:
            fdpass.close_fds([req.fd])
            conn.proto.send(control.ErrorReply(req.request_id, "fork-failed", str(e)))
            return
        if pid == 0:
            child.run_child(req.fd, req.tenant, self.worker, forget=self._python_sockets(), policy=self.policy)
        self.spawns += 1
        self._children[pid] = conn
        try:
            try:
                # Opened before this loop can reap the child (reaping only happens in _reap), so the pidfd
                # always names this child, never a recycled pid.
                pidfd = os.pidfd_open(pid)
            except OSError as e:
                os.kill(pid, signal.SIGKILL)  # unreaped, so the pid is still ours
                conn.proto.send(control.ErrorReply(req.request_id, "fork-failed", f"pidfd_open: {e}"))
                return
            conn.owned_fds.add(pidfd)
            conn.proto.send(control.Spawned(req.request_id, pid, pidfd))
            if not conn.sender:
                # The parent is waiting for this reply: send it now, not after the rest of this read's batch.
                self._queue_output(conn)
        finally:
            os.close(req.fd)  # our copy of the child's socket (closing it is not urgent, so it comes last)

    # ------------------------------------------------------------------ pre-forked pool

    def _assign_idle(self, conn: _Conn, req: Spawn) -> bool:
        """Hand ``req`` to the oldest pre-forked child: the tenant id with the child's socket over its channel,
        then the ``spawned`` reply with the pidfd opened at its fork. False (``req.fd`` still ours) if no
        pool child could take it."""
        while self._idle:
            pid = next(iter(self._idle))
            idle = self._idle.pop(pid)
            try:
                fdpass.send(idle.chan, req.tenant.encode("ascii"), [req.fd])
            except OSError:
                # It died (or is dying) while idle: its exit is reaped silently like any ownerless child.
                idle.chan.close()
                fdpass.close_fds([idle.pidfd])
                continue
            # Closed at once: the assignment stays readable on the child's end after our end is gone.
            idle.chan.close()
            os.close(req.fd)
            self.spawns += 1
            self._children[pid] = conn
            conn.owned_fds.add(idle.pidfd)
            conn.proto.send(control.Spawned(req.request_id, pid, idle.pidfd))
            if not conn.sender:
                self._queue_output(conn)
            return True
        return False

    def _refill_pool(self) -> None:
        """Pre-fork children until the pool is full (a failed fork is retried after a back-off)."""
        while len(self._idle) < self.pool_size and self.state is TemplateState.SERVING:
            if time.monotonic() < self._refill_at:
                return
            try:
                ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            except OSError as e:
                self._log(f"cannot pre-fork a child: {e}")
                self._refill_at = time.monotonic() + _REFILL_BACKOFF
                return
            try:
                pid = os.fork()
            except OSError as e:
                ours.close()
                theirs.close()
                self._log(f"cannot pre-fork a child: {e}")
                self._refill_at = time.monotonic() + _REFILL_BACKOFF
                return
            if pid == 0:
                ours.detach()  # closed by the child's fd hygiene; the object must not close a reused number
                child.run_idle(theirs.detach(), self.worker, forget=self._python_sockets(), policy=self.policy)
            theirs.close()
            self._children[pid] = None
            try:
                pidfd = os.pidfd_open(pid)  # before _reap can run: names this child, never a recycled pid
            except OSError as e:
                ours.close()  # EOF: the child exits; reaped silently
                self._log(f"cannot pre-fork a child: pidfd_open: {e}")
                self._refill_at = time.monotonic() + _REFILL_BACKOFF
                return
            ours.setblocking(False)  # one small message into an empty buffer; never wait on it anyway
            self._idle[pid] = _Idle(pid, pidfd, ours)

    def _drain_pool(self) -> None:
        """Stop and reap every pre-forked child (they have no tenant; nothing is lost)."""
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
            self._children.pop(idle.pid, None)

    def _python_sockets(self) -> list[socket.socket]:
        socks = [c.sock for c in self._conns.values()]
        socks.extend(idle.chan for idle in self._idle.values())
        if self._listener is not None:
            socks.append(self._listener)
        return socks

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            except InterruptedError:
                continue
            if pid == 0:
                return
            idle = self._idle.pop(pid, None)
            if idle is not None:  # a pre-forked child died before it got a tenant; the loop replaces it
                self._log(f"pre-forked child {pid} exited while idle (status {os.waitstatus_to_exitcode(status)})")
                idle.chan.close()
                fdpass.close_fds([idle.pidfd])
            conn = self._children.pop(pid, None)
            if conn is not None and not conn.closed:
                conn.proto.send(control.Exited(pid, os.waitstatus_to_exitcode(status)))
                self._queue_output(conn)

    # ------------------------------------------------------------------ output

    def _queue_output(self, conn: _Conn) -> None:
        for frame, fds in conn.proto.data_to_send():
            mine = []
            if fds:
                mine = [fd for fd in fds if fd in conn.owned_fds]
                conn.owned_fds.difference_update(mine)
            if conn.closed:
                fdpass.close_fds(mine)
                continue
            try:
                conn.sender.send(frame, fds, mine)
            except OSError:
                self._close_conn(conn)
        if conn.closed:
            fdpass.close_fds(conn.owned_fds)
            conn.owned_fds.clear()
            return
        if conn.sender.queued > _MAX_OUTPUT:
            self._log("dropping a connection that does not read its replies")
            self._close_conn(conn)
            return
        self._flush(conn)

    def _flush(self, conn: _Conn) -> None:
        if conn.closed:
            return
        try:
            conn.sender.flush()
        except OSError:
            self._close_conn(conn)
            return
        if conn.writing != bool(conn.sender):
            conn.writing = bool(conn.sender)
            self._sel.modify(conn.sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.writing else 0),
                             conn)

    def _close_conn(self, conn: _Conn) -> None:
        if conn.closed:
            return
        conn.sender.send_head_best_effort()  # a pending error frame explaining the hang-up
        conn.closed = True
        conn.sender.close()
        fdpass.close_fds(conn.owned_fds)
        conn.owned_fds.clear()
        conn.proto.close()
        try:
            self._sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        self._conns.pop(conn.sock.fileno(), None)
        conn.sock.close()
        # Its children live on (they talk to their parent directly); we still reap them, silently.
        for pid, owner in self._children.items():
            if owner is conn:
                self._children[pid] = None

    def _drop_idle_unauthenticated(self) -> None:
        now = time.monotonic()
        for conn in list(self._conns.values()):
            if not conn.proto.authenticated and now - conn.created > _AUTH_DEADLINE:
                self._close_conn(conn)

    # ------------------------------------------------------------------ shutdown

    def _shutdown(self) -> None:
        self._drain_pool()
        if self._listener is not None:
            try:
                self._sel.unregister(self._listener)
            except (KeyError, ValueError):
                pass
            self._listener.close()
            self._unlink_own_socket()
        if self.key_file:
            try:
                os.unlink(self.key_file)
            except FileNotFoundError:
                pass
        for conn in list(self._conns.values()):
            self._close_conn(conn)
        if self.parent_fd is not None:
            # At EOF it is always readable: keep it out of the orphan-reaping select below.
            try:
                self._sel.unregister(self.parent_fd)
            except (KeyError, ValueError):
                pass
        if self.state is TemplateState.PARENT_GONE:
            self._reap_orphans()
            # A library launch puts the socket in a private mkdtemp directory that the (dead) parent would
            # have removed; rmdir only succeeds if it is empty, so nothing else is ever deleted.
            try:
                os.rmdir(os.path.dirname(self.socket_path))
            except OSError:
                pass
        self._log(f"exiting ({self.state.value})")
        self.state = TemplateState.STOPPED

    def _unlink_own_socket(self) -> None:
        # Only remove the path if it is still the socket we bound (a successor may have replaced it).
        try:
            st = os.stat(self.socket_path)
        except FileNotFoundError:
            return
        if (st.st_dev, st.st_ino) == self._socket_ino:
            os.unlink(self.socket_path)

    def _reap_orphans(self) -> None:
        deadline = time.monotonic() + _ORPHAN_GRACE
        self._reap()
        while self._children and time.monotonic() < deadline:
            ready = self._sel.select(timeout=max(0.0, deadline - time.monotonic()))
            for key, _ in ready:
                if key.data == "signal":
                    try:
                        os.read(self._wake_r, 4096)
                    except BlockingIOError:
                        pass
            self._reap()
        for pid in list(self._children):
            try:
                os.kill(pid, signal.SIGKILL)  # unreaped: the pid cannot have been recycled
            except ProcessLookupError:
                pass
        for pid in list(self._children):
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
            self._children.pop(pid, None)

    def _log(self, msg: str) -> None:
        try:
            print(f"walredo-template[{os.getpid()}]: {msg}", file=self._log_file, flush=True)
        except (OSError, ValueError):
            pass
