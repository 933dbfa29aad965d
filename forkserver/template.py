"""The template process: a single-threaded selector loop handing each spawn request a preloaded forked child.

Runs only in the template (started by ``walredo-template`` or by ``TemplateClient.launch``). No threads (forking
a threaded process is unsafe) and no asyncio loop: one ``selectors`` loop over

- the listening control socket (filesystem path in a 0700 directory, socket mode 0600),
- each accepted control connection (``SO_PEERCRED`` uid check here, then :mod:`forkserver.connection`: the
  HMAC handshake of :mod:`forkserver.control`, then spawn / stats requests; a connection still
  unauthenticated after 10 s is dropped, and at most 1024 are open at once),
- a signal wake-up pipe (``signal.set_wakeup_fd``): SIGCHLD → reap with ``waitpid(-1, WNOHANG)`` in a loop
  and send ``exited`` to the connection that asked for the child; SIGTERM/SIGINT → clean exit (their
  handler also sets a flag, so that no refill starts once a stop was asked for),
- optionally the *parent pipe* (library launch): EOF means the launching parent is gone,
- optionally the ``/metrics`` endpoint (:mod:`forkserver.metrics_http`, ``metrics_port``): the counters of
  :meth:`Template.counters` in Prometheus' text format, rendered by :mod:`forkserver.metrics` (so
  prometheus_client is imported only when the endpoint is on).

Each selector key's data is the bound method that handles its events.

A spawn's fd must be a connected ``AF_UNIX`` stream socket (:func:`forkserver.fdpass.check_stream_socket`):
anything else gets a ``bad-fds`` refusal before any fork (a worker given a UDP socket would block forever).
The listen backlog is the connection cap, so a flood of connects is refused by the cap, not by the kernel.

Logging is stdlib ``logging`` (logger per module; the launcher configures it): every line about a child
names its tenant and pid, and a spawn's line is written after its reply went out.

Spawns are served from a small pool of *pre-forked* children (:mod:`forkserver.pool`; ``pool_size``, default
4, enough for a burst of cold tenants; the environment variable ``WALREDO_TEMPLATE_POOL`` sets the default, 0
forks on request only). The pool decides when to refill (in batches, like Android's USAP pool) and the loop
forks one pool child per iteration, only after ~2 ms without an event, checking for requests and signals
between two forks: a fork never delays a spawn request, a SIGTERM or the parent's first round trip to the
child it just got. After each refill fork the pool runs the spawn path on stand-ins, so that the
copy-on-write faults the fork caused are taken off the request path. A spawn request then costs one ``sendmsg`` to
the pool child's channel and the ``spawned`` reply: the fork, the interpreter's after-fork hooks and the
hygiene — most of a spawn's CPU, largely copy-on-write faults — are off the request path. With the pool empty
(a burst) the template forks on request. Pool children are not counted as ``live`` in stats (``idle`` counts
them), get no ``exited`` event, are replaced if they die, and are killed and reaped when the template stops.

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
import itertools
import logging
import os
import selectors
import signal
import socket
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any, NoReturn

from forkserver import child, control, fdpass, sandbox
from forkserver.childlog import ChildStderr
from forkserver.connection import Connection
from forkserver.control import BadRequest, Message, Spawn, StatsRequest
from forkserver.errors import InvalidTenantId
from forkserver.listener import listen, prepare_socket_dir, unlink_if_ours
from forkserver.metrics_http import MetricsEndpoint
from forkserver.pool import MAX_POOL_SIZE, Pool
from forkserver.secret import Key

__all__ = ["Template", "TemplateState", "prepare_socket_dir", "pool_size_from_env", "default_pool_size", "POOL_ENV"]

log = logging.getLogger(__name__)
_pool_log = logging.getLogger("forkserver.pool")  # what the pool reports (it is given a callable)

_AUTH_DEADLINE = 10.0  # seconds an unauthenticated connection may idle before we drop it
_ORPHAN_GRACE = 0.5  # seconds children get to exit on their own after the parent died


_MAX_CONNECTIONS = 1024  # beyond this new connections are closed at once (a same-uid peer flooding us)
_IDLE_CHECK_EVERY = 1.0  # seconds between sweeps for unauthenticated connections past their deadline
_DEFAULT_POOL = "4"  # pre-forked children kept ready (WALREDO_TEMPLATE_POOL overrides; 0 = fork on request)
POOL_ENV = "WALREDO_TEMPLATE_POOL"

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


def default_pool_size() -> int:
    """Pre-forked children kept ready when neither ``pool_size`` nor ``$WALREDO_TEMPLATE_POOL`` says."""
    return int(_DEFAULT_POOL)


def pool_size_from_env() -> int:
    """The pool size ``$WALREDO_TEMPLATE_POOL`` asks for (:func:`default_pool_size` when unset).

    Errors: ``ValueError`` naming the variable, for anything but an integer from 0 to ``MAX_POOL_SIZE``."""
    raw = os.environ.get(POOL_ENV, _DEFAULT_POOL)
    try:
        size = int(raw)
    except ValueError:
        size = -1
    if not 0 <= size <= MAX_POOL_SIZE:
        raise ValueError(f"{POOL_ENV} must be an integer from 0 to {MAX_POOL_SIZE}, got {raw!r}")
    return size


def _exit_is_normal(status: int) -> bool:
    # 0: the worker saw EOF; SIGKILL/SIGTERM: its parent stopped it (idle quiesce, shutdown).
    return status in (0, -signal.SIGKILL, -signal.SIGTERM)


class Template:
    """The template's server loop. Construct, then :meth:`serve` (blocks until SIGTERM/SIGINT or parent
    death; returns the process exit code).

    ``key`` is a :class:`~forkserver.secret.Key` (kept in memory children do not inherit) or 32 bytes (copied
    into one; the caller's bytes are the caller's business). ``key_file`` is removed on exit (the caller
    wrote it); ``parent_fd`` is a pipe read end whose EOF means the launching parent is gone. ``policy``:
    the sandbox every child enters before it serves (:mod:`forkserver.sandbox`); ``None`` (the class default,
    for tests of the loop itself): children run unconfined. The launcher passes a policy unless told
    ``--no-sandbox``. ``pool_size``: pre-forked children (None: :func:`pool_size_from_env`).
    ``metrics_port`` (None: off; 0: any free port) and ``metrics_host``: where :meth:`bind` opens the
    ``/metrics`` endpoint. ``notify`` is called with ``"STOPPING=1"`` when the shutdown begins (the
    launcher passes :func:`forkserver.service.notify`).

    Errors: ``ValueError`` (key size, pool size), :class:`~forkserver.sandbox.SandboxError` (the filter does
    not compile: no libseccomp).

    Its parts live in their own modules (the listening socket in :mod:`forkserver.listener`, each control
    connection in :mod:`forkserver.connection`, the pre-forked pool in :mod:`forkserver.pool`); what stays
    here (~510 lines, a third of them docstrings and comments) is the loop's own state and the decisions
    that order its work — when the pool is refilled relative to a spawn, who hears of an exit, what a
    shutdown reaps, which counters move — which read best together (each would need the loop's state
    passed back in).
    """

    def __init__(self, socket_path: str, worker: child.Worker, key: bytes | Key, *, key_file: str | None = None,
                 parent_fd: int | None = None, pool_size: int | None = None,
                 policy: sandbox.Policy | None = None, metrics_port: int | None = None,
                 metrics_host: str = "127.0.0.1", notify: Callable[[str], object] | None = None):
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
        self.metrics_port = metrics_port
        self.metrics_host = metrics_host
        self._notify = notify
        self.started = time.time()
        # Counters (stats(), /metrics): spawns answered with a child; forks that failed, on request or while
        # pre-forking; children pre-forked; spawns a pool child served / forked on request with the pool on.
        self.spawns = 0
        self.fork_failures = 0
        self.pool_refills = 0
        self.pool_hits = 0
        self.pool_misses = 0
        if pool_size is None:
            pool_size = pool_size_from_env()
        # Its children are also in _children (owner None) until a spawn takes them.
        self._pool = Pool(pool_size, self._run_idle, self._pool_problem)
        self._children: dict[int, Connection | None] = {}  # live (unreaped) child pid -> connection that asked
        # Tenant children only (no pool child): pid -> (tenant, Unix time its spawn was answered), oldest first.
        self._tenants: dict[int, tuple[str, float]] = {}
        self._unlogged: list[tuple[str, int]] = []  # pool spawns whose line waits until their reply went out
        self._stop_requested = False  # set by the SIGTERM/SIGINT handler (the loop reads the wake-up fd later)
        self._metrics: MetricsEndpoint | None = None
        self._conns: dict[int, Connection] = {}
        self._sel = selectors.DefaultSelector()
        self._stderr = ChildStderr(self._sel, self._send_stderr)
        self._pool.stderr = self._stderr
        self._listener: socket.socket | None = None
        self._socket_ino: tuple[int, int] | None = None
        self._wake_r = self._wake_w = -1
        self._idle_check_at = 0.0
        self.state = TemplateState.NEW

    @property
    def pool_size(self) -> int:
        """Pre-forked children kept ready."""
        return self._pool.size

    # ------------------------------------------------------------------ setup

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        """``(host, port)`` the ``/metrics`` endpoint listens on once bound (None: off)."""
        return None if self._metrics is None else (self.metrics_host, self._metrics.port)

    def bind(self) -> None:
        """Create the listening socket (mode 0600) at ``socket_path``; replaces a stale socket file (logged).
        Opens the ``/metrics`` endpoint too when ``metrics_port`` is set.

        Errors: ``FileExistsError`` when the path is not a socket (left untouched) or a live server answers
        on it; ``PermissionError`` for an unsafe directory; ``OSError`` when the metrics port is taken (then
        nothing stays bound)."""
        metrics = None
        if self.metrics_port is not None:
            from forkserver import metrics as template_metrics  # prometheus_client only when the endpoint is on

            metrics = MetricsEndpoint(self._sel, self.metrics_port, template_metrics.renderer(self.counters),
                                      host=self.metrics_host)
        try:
            # The backlog is the connection cap: beyond it connections are refused by _on_accept, in order.
            self._listener, self._socket_ino = listen(self.socket_path, _MAX_CONNECTIONS)
        except BaseException:
            if metrics is not None:
                metrics.close()
            raise
        self._metrics = metrics

    def close(self) -> None:
        """Undo :meth:`bind` for a template that will not serve (its set-up failed later): close the
        sockets and remove the socket file if it is still ours. Idempotent; :meth:`serve` cleans up itself."""
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            unlink_if_ours(self.socket_path, self._socket_ino)

    def _install_signals(self) -> None:
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, _noop_handler)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_stop_signal)
        child.plan_signal_reset()
        # The launcher blocks these while it sets up (a stop then must not leave the socket behind); one that
        # arrived meanwhile is delivered now, to the handlers above.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT))

    def _on_stop_signal(self, signum: int, frame: FrameType | None) -> None:
        # Only a flag: the wake-up fd carries the signal to the loop. The flag stops refills that would start
        # before the loop reads it (the pool may be forking when the signal arrives).
        self._stop_requested = True

    # ------------------------------------------------------------------ loop

    def serve(self, on_ready: Callable[[], object] | None = None) -> int:
        """Run until stopped; clean up; return the exit code (0). ``on_ready()`` is called once the signal
        handlers are in place and the listener is registered, before the pool is first filled (a spawn that
        comes early is forked on request)."""
        if self.state is not TemplateState.NEW:
            raise RuntimeError(f"serve() on a template that is {self.state.value}")
        if self._listener is None:
            self.bind()
        assert self._listener is not None  # bind() set it
        self.state = TemplateState.SERVING
        self._install_signals()
        # Each key's data is the bound method its events go to (a connection's: its Connection's handler).
        self._sel.register(self._listener, selectors.EVENT_READ, self._on_accept)
        self._sel.register(self._wake_r, selectors.EVENT_READ, self._on_signals)
        if self.parent_fd is not None:
            self._sel.register(self.parent_fd, selectors.EVENT_READ, self._on_parent)
        # Everything imported so far (worker module included) is shared copy-on-write with the children;
        # keep the collector from touching (and thereby copying) those pages.
        gc.collect()
        gc.freeze()
        if self.policy is not None and self.policy.seccomp:
            # Measured once here: every child maps what the template maps at its fork (plus a little).
            self.policy = dataclasses.replace(self.policy, mapped_hint=sandbox.mapped_bytes())
        if threading.active_count() > 1:
            # fork() copies only the calling thread; locks held by the others stay locked in every child.
            log.warning("%d threads at serve time; forking them is unsafe", threading.active_count())
        log.info("serving %s (pool %d, sandbox %s%s)", self.socket_path, self._pool.size,
                 "on" if self.policy is not None and self.policy.seccomp else "off",
                 "" if self._metrics is None else f", metrics on {self.metrics_host}:{self._metrics.port}")
        if on_ready is not None:
            on_ready()
        self._refill()
        # Every page the loop writes after a fork is a copy-on-write fault (several µs each on a VM) while the
        # child shares it, so the per-request path stays lean: the deadline sweep runs about once a second,
        # not once per wake-up.
        select, monotonic, pool = self._sel.select, time.monotonic, self._pool
        self._idle_check_at = monotonic() + _IDLE_CHECK_EVERY
        try:
            while self.state is TemplateState.SERVING:
                # A refill fork happens only on a wake-up with nothing to do, after REFILL_WAIT of quiet (the
                # pool decides: forkserver.pool), one child per iteration: a spawn request, a SIGTERM or the
                # parent's first round trip with its new child (2 vCPUs) never waits behind a batch of forks.
                refill_in = pool.refill_timeout(monotonic())
                ready = select(timeout=_IDLE_CHECK_EVERY if refill_in is None else min(refill_in, _IDLE_CHECK_EVERY))
                if ready:
                    for key, events in ready:
                        key.data(events)
                        if self.state is not TemplateState.SERVING:
                            break
                    pool.busy(monotonic())
                elif refill_in is not None and refill_in <= _IDLE_CHECK_EVERY:
                    self._refill()
                if monotonic() >= self._idle_check_at:
                    self._drop_idle_unauthenticated()
                    if self._metrics is not None:
                        self._metrics.sweep()
                    self._idle_check_at = monotonic() + _IDLE_CHECK_EVERY
        finally:
            self._shutdown()
        return 0

    def _on_parent(self, events: int) -> None:
        assert self.parent_fd is not None  # registered only when there is one
        try:
            data = os.read(self.parent_fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.state = TemplateState.PARENT_GONE

    def _on_signals(self, events: int) -> None:
        try:
            data = os.read(self._wake_r, 4096)
        except BlockingIOError:
            return
        # SIGCHLD may coalesce; reaping always loops until nothing is left, so one byte is enough.
        if _SIGCHLD in data:
            self._reap()
        if _SIGTERM in data or _SIGINT in data:
            self.state = TemplateState.STOPPING

    def _on_accept(self, events: int) -> None:
        listener = self._listener
        assert listener is not None  # registered by serve() once bound
        while True:
            try:
                sock, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.warning("accept failed: %s", e)
                return
            sock.setblocking(False)
            try:
                peer_pid, uid, _ = fdpass.peer_credentials(sock)
            except OSError:
                peer_pid, uid = 0, -1
            if uid != os.getuid():
                # Dropped before anything is read from it; it never sees the challenge.
                log.warning("refused a peer (pid %d) with uid %d", peer_pid, uid)
                sock.close()
                continue
            if len(self._conns) >= _MAX_CONNECTIONS:
                log.warning("refused a connection from pid %d: %d open already", peer_pid, _MAX_CONNECTIONS)
                sock.close()
                continue
            conn = Connection(sock, self._key, self._sel, self._handle, self._forget_conn, peer_pid=peer_pid)
            self._conns[sock.fileno()] = conn
            conn.start()

    def _handle(self, conn: Connection, event: Message | BadRequest) -> None:
        if isinstance(event, Spawn):
            self._spawn(conn, event)
        elif isinstance(event, StatsRequest):
            conn.proto.send(control.StatsReply(event.request_id, self.stats()))
        elif isinstance(event, BadRequest):
            conn.proto.send(control.ErrorReply(event.request_id, event.code, event.message))
        else:  # pragma: no cover - the protocol only returns the types above to the template
            raise AssertionError(event)

    def counters(self) -> dict[str, int | float | bool]:
        """The template's counters and gauges (the ``stats-reply`` fields of :mod:`forkserver.control` but
        the children list; what ``/metrics`` exports)."""
        return {"spawns": self.spawns, "live": len(self._children) - len(self._pool), "idle": len(self._pool),
                "pool_size": self._pool.size, "connections": len(self._conns), "pid": os.getpid(),
                "sandbox": self.policy is not None and self.policy.seccomp, "started": self.started,
                "fork_failures": self.fork_failures, "pool_refills": self.pool_refills,
                "pool_hits": self.pool_hits, "pool_misses": self.pool_misses}

    def stats(self) -> dict[str, Any]:
        """:meth:`counters` and the live tenant children (``children``: ``[tenant, pid, started]`` each,
        oldest first, at most ``MAX_LISTED_CHILDREN``; ``children_omitted``: how many more)."""
        stats: dict[str, Any] = self.counters()
        listed = list(itertools.islice(self._tenants.items(), control.MAX_LISTED_CHILDREN))
        stats["children"] = [[tenant, pid, started] for pid, (tenant, started) in listed]
        stats["children_omitted"] = len(self._tenants) - len(listed)
        return stats

    def _spawn(self, conn: Connection, req: Spawn) -> None:
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
        problem = fdpass.check_stream_socket(req.fd)
        if problem is not None:
            # A worker on anything but a connected stream socket would block forever, never seeing EOF.
            fdpass.close_fds([req.fd])
            conn.proto.send(control.ErrorReply(req.request_id, "bad-fds",
                                               f"the spawn's fd is {problem}: want a connected AF_UNIX "
                                               "SOCK_STREAM socket"))
            log.warning("tenant %s: refused a spawn from pid %d: its fd is %s", req.tenant, conn.peer_pid, problem)
            return
        if self._pool and self._assign_idle(conn, req):
            self._log_pool_spawns()
            return
        err = self._stderr.before_fork()
        try:
            pid = os.fork()
        except OSError as e:
            self._stderr.after_fork(None)
            self.fork_failures += 1
            fdpass.close_fds([req.fd])
            conn.proto.send(control.ErrorReply(req.request_id, "fork-failed", str(e)))
            log.error("tenant %s: fork failed: %s", req.tenant, e)
            return
        if pid == 0:
            ChildStderr.in_child(err)
            child.run_child(req.fd, req.tenant, self.worker, forget=self._python_sockets(), policy=self.policy)
        self._stderr.after_fork(pid)
        self.spawns += 1
        if self._pool.size:
            self.pool_misses += 1
        self._children[pid] = conn
        try:
            try:
                # Opened before this loop can reap the child (reaping only happens in _reap), so the pidfd
                # always names this child, never a recycled pid.
                pidfd = os.pidfd_open(pid)
            except OSError as e:
                os.kill(pid, signal.SIGKILL)  # unreaped, so the pid is still ours
                self.fork_failures += 1
                conn.proto.send(control.ErrorReply(req.request_id, "fork-failed", f"pidfd_open: {e}"))
                log.error("tenant %s pid %d: pidfd_open failed, killed it: %s", req.tenant, pid, e)
                return
            self._tenants[pid] = (req.tenant, time.time())
            self._stderr.bind(pid, req.tenant, conn)
            conn.owned_fds.add(pidfd)
            conn.proto.send(control.Spawned(req.request_id, pid, pidfd))
            if not conn.sender:
                # The parent is waiting for this reply: send it now, not after the rest of this read's batch.
                conn.queue_output()
        finally:
            os.close(req.fd)  # our copy of the child's socket (closing it is not urgent, so it comes last)
        log.info("tenant %s pid %d: spawned (forked on request) for pid %d", req.tenant, pid, conn.peer_pid)

    def _spawned_from_pool(self, pid: int, tenant: str) -> None:
        # Bookkeeping of a pool hit, before its reply; its log line comes after (_log_pool_spawns).
        self.spawns += 1
        self.pool_hits += 1
        self._tenants[pid] = (tenant, time.time())
        self._unlogged.append((tenant, pid))

    def _log_pool_spawns(self) -> None:
        for tenant, pid in self._unlogged:
            log.info("tenant %s pid %d: spawned (from the pool)", tenant, pid)
        self._unlogged.clear()

    # ------------------------------------------------------------------ pre-forked pool

    def _assign_idle(self, conn: Connection, req: Spawn) -> bool:
        """Hand ``req`` to a pre-forked child, then send the ``spawned`` reply with the pidfd opened at its
        fork. False (``req.fd`` still ours) if no pool child could take it."""
        got = self._pool.assign(req.tenant, req.fd)
        if got is None:
            return False
        pid, pidfd = got
        self._spawned_from_pool(pid, req.tenant)
        self._stderr.bind(pid, req.tenant, conn)
        self._children[pid] = conn
        conn.owned_fds.add(pidfd)
        conn.proto.send(control.Spawned(req.request_id, pid, pidfd))
        if not conn.sender:
            conn.queue_output()
        return True

    def _refill_pool(self) -> None:
        # One child per call (the loop checks for requests and signals between two), then the warm-up: the fork
        # shared our pages with the child again, and the next spawn would copy every one it writes.
        pid = self._pool.refill_one()
        if pid is not None:
            self._children[pid] = None  # unreaped from its fork on; reaped silently if it dies unassigned
            self._pool.warm()

    def _refill(self) -> None:
        # The loop's one way to refill: counts what the pool forked, and starts nothing once a stop was asked.
        if self._stop_requested:
            return
        before = len(self._children)  # a refill only adds to it
        self._refill_pool()
        self.pool_refills += len(self._children) - before

    def _pool_problem(self, message: str) -> None:
        # What the pool reports: a failed pre-fork (it retries after a back-off) or a pool child that died.
        if message.startswith("cannot pre-fork"):
            self.fork_failures += 1
        _pool_log.warning("%s", message)

    def _run_idle(self, chan_fd: int) -> NoReturn:
        # In a freshly forked pool child (Pool.refill): wait for a tenant on the channel, then serve.
        child.run_idle(chan_fd, self.worker, forget=self._python_sockets(), policy=self.policy)

    def _python_sockets(self) -> list[socket.socket]:
        socks = [c.sock for c in self._conns.values()]
        socks.extend(self._pool.channels())
        if self._listener is not None:
            socks.append(self._listener)
        if self._metrics is not None:
            socks.extend(self._metrics.sockets())
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
            self._pool.reaped(pid, status)  # a pre-forked child may die before it got a tenant
            conn = self._children.pop(pid, None)
            self._stderr.reaped(pid)  # its last lines go out before its `exited`
            code = os.waitstatus_to_exitcode(status)
            if conn is not None and not conn.closed:
                conn.proto.send(control.Exited(pid, code))
                conn.queue_output()
            self._log_exit(pid, code)

    def _log_exit(self, pid: int, code: int) -> None:
        entry = self._tenants.pop(pid, None)
        if entry is None:
            return  # a pool child (the pool reports its own) or one whose spawn failed
        tenant, started = entry
        if code >= 0:
            how = f"exited with status {code}"
        else:
            try:
                how = f"killed by {signal.Signals(-code).name}"
            except ValueError:
                how = f"killed by signal {-code}"
        log.log(logging.INFO if _exit_is_normal(code) else logging.WARNING, "tenant %s pid %d: %s after %.1f s",
                tenant, pid, how, time.time() - started)

    # ------------------------------------------------------------------ output

    def _send_stderr(self, owner: object, pid: int, tenant: str, line: str) -> bool:
        # ChildStderr's way out: one line to the connection that spawned the child, if it is still there.
        if not isinstance(owner, Connection) or owner.closed:
            return False
        owner.proto.send(control.Stderr(pid, tenant, line))
        owner.queue_output()
        return True

    def _forget_conn(self, conn: Connection) -> None:
        self._stderr.unbind(conn)
        self._conns.pop(conn.sock.fileno(), None)
        # Its children live on (they talk to their parent directly); we still reap them, silently.
        for pid, owner in self._children.items():
            if owner is conn:
                self._children[pid] = None

    def _drop_idle_unauthenticated(self) -> None:
        now = time.monotonic()
        for conn in list(self._conns.values()):
            if not conn.proto.authenticated and now - conn.created > _AUTH_DEADLINE:
                conn.close()

    # ------------------------------------------------------------------ shutdown

    def _shutdown(self) -> None:
        if self._notify is not None:
            self._notify("STOPPING=1")
        log.info("stopping (%s): %d tenant children %s", self.state.value, len(self._tenants),
                 "keep serving their parent" if self.state is TemplateState.STOPPING else "are stopped")
        for pid in self._pool.drain():
            self._children.pop(pid, None)
        if self._metrics is not None:
            self._metrics.close()
        if self._listener is not None:
            try:
                self._sel.unregister(self._listener)
            except (KeyError, ValueError):
                pass
            self._listener.close()
            unlink_if_ours(self.socket_path, self._socket_ino)
        if self.key_file:
            try:
                os.unlink(self.key_file)
            except FileNotFoundError:
                pass
        for conn in list(self._conns.values()):
            conn.close()
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
        self._stderr.close()
        log.info("exiting (%s)", self.state.value)
        self.state = TemplateState.STOPPED

    def _reap_orphans(self) -> None:
        deadline = time.monotonic() + _ORPHAN_GRACE
        self._reap()
        while self._children and time.monotonic() < deadline:
            ready = self._sel.select(timeout=max(0.0, deadline - time.monotonic()))
            for key, _ in ready:
                if key.fd == self._wake_r:
                    try:
                        os.read(self._wake_r, 4096)
                    except BlockingIOError:
                        pass
            self._reap()
        for pid in list(self._children):
            tenant = self._tenants.get(pid, ("-", 0.0))[0]
            log.warning("tenant %s pid %d: still running after the parent died; killing it", tenant, pid)
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
            self._tenants.pop(pid, None)
