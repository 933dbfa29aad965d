"""What runs in a tenant child right after the template forked it — all child hygiene lives here.

Two entry points, both never returning: :func:`run_child` (forked on request: hygiene, then the worker) and
:func:`run_idle` (pre-forked into the template's pool: the same hygiene while no tenant is waiting, then a
blocking wait for an *assignment* — the tenant id with the child's socket attached, one ``SOCK_SEQPACKET``
message from the template — then the title and the worker). A pre-forked child that reads EOF on its
assignment channel (template gone or shutting down) exits 0 without running the worker.

Order matters and each step says why:

1. forget the template's Python socket objects (``detach``), so that a late garbage collection of one of
   them can never close an fd number the worker has reused;
2. signal handlers back to the defaults (the template's no-op handlers and its wake-up fd are its own
   business; a child that kept them would swallow SIGTERM); SIGPIPE/SIGXFSZ stay ignored as in any Python
   process, and the signal mask is emptied;
3. a new process group, so a terminal's Ctrl-C or a ``killpg`` aimed at the template's group misses it;
4. ``atexit`` cleared: the template's exit hooks must never run in a child;
5. title ``walredo <tenant>`` (visible in ``ps``/psutil);
6. stdin/stdout pointed at /dev/null and every other fd closed except the child's socket and stderr, so no
   control socket, pidfd, wake-up pipe or other tenant's socket stays reachable from this tenant's code;
   ``sys.std*`` rebound to fds 0/1/2 if they wrapped something else;
7. the sandbox, when the template has a policy (:mod:`forkserver.sandbox`: optionally another uid, no new
   privileges, not dumpable, resource limits, the seccomp allowlist): last before the worker's first
   request, because everything above needs syscalls the allowlist refuses. A pool child enters it after the
   worker's ``prepare()`` and before it waits for its tenant, so the policy is off the spawn's path; a
   child forked on request enters it right before the worker runs. A failure to enter it ends the child
   (status 70): a child never serves unconfined when a policy was asked for;
8. run ``worker(sock, tenant)``; it returns when its socket reaches EOF;
9. leave only through ``os._exit``: never unwind into the template's selector loop.

The key of the template's control socket is not in a child's memory: it lives in a mapping that fork wipes
(:mod:`forkserver.secret`).
"""

from __future__ import annotations

# The C module behind `signal` (plain ints in and out, see _reset_plan); typeshed has no stub for it.
import _signal  # type: ignore[import-not-found]
import atexit
import fcntl
import os
import signal
import socket
import sys
import traceback
from collections.abc import Callable, Iterable
from typing import NoReturn

import setproctitle

from forkserver import fdpass, sandbox

__all__ = ["DEFAULT_WORKER", "Worker", "run_child", "run_idle", "plan_signal_reset"]

#: What a child runs: ``worker(sock, tenant)``, returning when its socket reaches EOF.
Worker = Callable[[socket.socket, str], object]
#: The worker (``MODULE:FUNCTION``) the launcher preloads, ``TemplateClient.launch`` and ``WalRedoManager``
#: ask for, unless told otherwise: the walredo child's request loop.
DEFAULT_WORKER = "walredo_template.worker:main"


def run_child(sock_fd: int, tenant: str, worker: Worker, forget: Iterable[socket.socket] = (),
              policy: sandbox.Policy | None = None) -> NoReturn:
    """Turn the freshly forked process into tenant ``tenant``'s worker on socket ``sock_fd``. Never returns.

    ``policy``: the sandbox to enter before the worker runs (``None``: none; see :mod:`forkserver.sandbox`).

    Exit status: 0 when the worker returns, the ``SystemExit`` code if it raises one, 1 on any other
    exception (traceback on stderr), 70 if the hygiene (or entering the sandbox) failed.
    """
    def body(status: _Status) -> None:
        _forget(forget)
        _default_signals()
        os.setpgid(0, 0)
        atexit._clear()
        setproctitle.setproctitle(f"walredo {tenant}")
        fd = _close_fds_except(sock_fd)
        _rebind_stdio()
        # Built before the sandbox: with the family given, the socket object asks the kernel nothing.
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0, fileno=fd)
        _confine(policy, held=4)
        status.code = 1
        _serve(worker, sock, tenant)
        status.code = 0

    _exit_after(body)


def run_idle(chan_fd: int, worker: Worker, forget: Iterable[socket.socket] = (),
             policy: sandbox.Policy | None = None) -> NoReturn:
    """Pre-forked child: do the tenant-independent hygiene now, run the worker's ``prepare()``, enter the
    sandbox (``policy``), then wait on ``chan_fd`` (a ``SOCK_SEQPACKET`` socket to the template) for one
    assignment — the tenant id (ASCII) with exactly one fd, the child's socket — then close the channel, set
    the title and run ``worker(sock, tenant)``. Never returns.

    Everything but the assignment happens while the child waits in the pool, off the spawn's path: the
    sandbox costs a spawn nothing. Titled ``walredo (idle)`` while it waits. Until the assignment only
    stderr, /dev/null on 0/1 and the channel are open; after it, stderr and the child's socket (the channel
    is closed before the worker runs). Exit status as for :func:`run_child`; 0 without running the worker on
    EOF or a malformed assignment (the template is gone or stopping).
    """
    def body(status: _Status) -> None:
        _forget(forget)
        _default_signals()
        os.setpgid(0, 0)
        atexit._clear()
        chan = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET, 0, fileno=_close_fds_except(chan_fd))
        _rebind_stdio()
        # Not the template's title it inherited: `ps` would show a second template.
        setproctitle.setproctitle("walredo (idle)")
        _prepare(worker)
        # One fd spare under RLIMIT_NOFILE: the assignment brings the child's socket.
        _confine(policy, held=4)
        assignment = _await_assignment(chan)
        if assignment is None:
            status.code = 0
            return
        sock, tenant = assignment
        setproctitle.setproctitle(f"walredo {tenant}")
        status.code = 1
        _serve(worker, sock, tenant)
        status.code = 0

    _exit_after(body)


class _Status:
    """The exit status a child leaves with; the body updates it as it gets further."""

    __slots__ = ("code",)

    def __init__(self) -> None:
        self.code = 70  # the hygiene itself failed


def _exit_after(body: Callable[[_Status], None]) -> NoReturn:
    """Run ``body`` and leave only through ``os._exit``: never back into the template's loop, no atexit
    handlers, no unwinding into code that belongs to the template. A ``SystemExit`` sets the status; any
    other exception is printed on stderr."""
    status = _Status()
    try:
        body(status)
    except SystemExit as e:
        status.code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        try:
            traceback.print_exc()
        except BaseException:
            pass
    finally:
        try:
            sys.stderr.flush()
        except BaseException:
            pass
        os._exit(status.code)


def _prepare(worker: Worker) -> None:
    """Run the worker's optional ``prepare()`` (an attribute of the worker function) before the assignment:
    work it does here, such as the copy-on-write faults of its first request, is off the spawn's path. A
    failing prepare is reported on stderr; the worker may still serve."""
    prepare = getattr(worker, "prepare", None)
    if callable(prepare):
        try:
            prepare()
        except Exception:
            traceback.print_exc()


def _forget(socks: Iterable[socket.socket]) -> None:
    for s in socks:
        try:
            s.detach()
        except OSError:
            pass


def _serve(worker: Worker, sock: socket.socket, tenant: str) -> None:
    try:
        worker(sock, tenant)
    finally:
        # Closed here, not left to the finalizer: an unclosed socket's ResourceWarning formats its repr,
        # which asks the kernel for both addresses (getsockname/getpeername), outside the allowlist.
        sock.close()


def _confine(policy: sandbox.Policy | None, held: int) -> None:
    """Enter the sandbox (``policy``), the child holding ``held`` fds (0-2 and its socket or channel)."""
    if policy is None:
        return
    if policy.user is not None and not policy.seccomp:
        sandbox.become(policy.user)
    if policy.seccomp:
        sandbox.enter(memory_limit=policy.memory_limit, nofile=held + 1, user=policy.user,
                      mapped=policy.mapped_hint)


def _await_assignment(chan: socket.socket) -> tuple[socket.socket, str] | None:
    """Block until the template sends ``tenant`` with the child's socket; return ``(sock, tenant)`` with
    the channel closed, or ``None`` (channel closed too) on EOF or anything malformed.

    May run in the sandbox: only recvmsg and close. The channel and the child's socket are blocking (the
    template never changes their mode), and the socket object is built with its family given so that
    constructing it makes no syscall."""
    try:
        while True:
            try:
                data, fds = fdpass.recv(chan, 256, maxfds=1)
            except InterruptedError:
                continue
            except (OSError, fdpass.FdPassError):  # FdPassError: fdpass closed what arrived
                return None
            break
    finally:
        chan.close()
    try:
        tenant = data.decode("ascii")
    except UnicodeDecodeError:
        tenant = ""
    if len(fds) != 1 or not tenant:
        fdpass.close_fds(fds)
        return None
    # Always above 0-2: the hygiene left 0, 1 and 2 open.
    return socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0, fileno=fds[0]), tenant


# Python's own start-up convention, kept in the child: these raise OSError (BrokenPipeError, EFBIG) in the
# worker instead of killing it silently.
_PYTHON_IGNORED = {signal.SIGPIPE, signal.SIGXFSZ}

# (signal, wanted handler) pairs to reset in each child, computed once in the template by
# plan_signal_reset(): signal.valid_signals() and getsignal() build enum members and cost ~0.6 ms per child.
# Plain ints, applied through the C module: signal.signal() and signal.pthread_sigmask() wrap every argument
# and result in enum members, Python code whose pages each child would otherwise copy (copy-on-write faults).
_reset_plan: list[tuple[int, int]] | None = None


def plan_signal_reset() -> None:
    """Template side: record which signal dispositions differ from what a child wants. Call after the
    template installed its own handlers; children forked afterwards reset exactly those."""
    global _reset_plan
    _reset_plan = _compute_plan()


def _compute_plan() -> list[tuple[int, int]]:
    plan: list[tuple[int, int]] = []
    for sig in signal.valid_signals():
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        want = signal.SIG_IGN if sig in _PYTHON_IGNORED else signal.SIG_DFL
        # getsignal() is None for a handler installed outside Python: reset that one too.
        if signal.getsignal(sig) is not want:
            plan.append((int(sig), int(want)))
    return plan


def _default_signals() -> None:
    _signal.set_wakeup_fd(-1)
    for sig, want in _reset_plan if _reset_plan is not None else _compute_plan():
        try:
            _signal.signal(sig, want)
        except (OSError, ValueError):
            pass  # signals Python may not touch (e.g. reserved real-time ones)
    _signal.pthread_sigmask(_signal.SIG_SETMASK, ())


# Python objects that wrapped fds we closed: kept alive forever so that no later garbage collection closes
# an fd number the worker has reused meanwhile.
_kept_alive: list[object] = []


def _rebind_stdio() -> None:
    """Make sys.stdin/stdout/stderr use fds 0/1/2 (e.g. a test runner's capture file is gone now), so that a
    worker's traceback reaches the inherited stderr."""
    for name, fd, mode in (("stdin", 0, "r"), ("stdout", 1, "w"), ("stderr", 2, "w")):
        current = getattr(sys, name)
        try:
            if current is not None and current.fileno() == fd:
                continue
        except (OSError, ValueError, AttributeError):
            pass
        _kept_alive.append(current)
        setattr(sys, name, open(fd, mode, buffering=1 if mode == "w" else -1, closefd=False,
                                errors="backslashreplace"))


def _close_fds_except(sock_fd: int) -> int:
    """Close everything but stderr and the socket; 0/1 become /dev/null. Returns the socket's (new) fd."""
    if sock_fd < 3:
        # Only possible if the template ran with std fds closed: move the socket above them first.
        low, sock_fd = sock_fd, fcntl.fcntl(sock_fd, fcntl.F_DUPFD, 3)
        os.close(low)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1):
        if fd != devnull:
            os.dup2(devnull, fd, inheritable=True)
    # Only {0, 1, 2, sock_fd} survive (os.closerange uses close_range(2) where the kernel has it).
    os.closerange(3, sock_fd)
    os.closerange(sock_fd + 1, max(os.sysconf("SC_OPEN_MAX"), sock_fd + 1))
    return sock_fd
