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
7. run ``worker(sock, tenant)``; it returns when its socket reaches EOF;
8. leave only through ``os._exit``: never unwind into the template's selector loop.
"""

from __future__ import annotations

import _signal
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

from forkserver import fdpass

__all__ = ["run_child", "run_idle", "plan_signal_reset"]

Worker = Callable[[socket.socket, str], object]


def run_child(sock_fd: int, tenant: str, worker: Worker, forget: Iterable[socket.socket] = ()) -> NoReturn:
    """Turn the freshly forked process into tenant ``tenant``'s worker on socket ``sock_fd``. Never returns.

    Exit status: 0 when the worker returns, the ``SystemExit`` code if it raises one, 1 on any other
    exception (traceback on stderr), 70 if the hygiene itself failed.
    """
    def body(status: _Status) -> None:
        _forget(forget)
        _default_signals()
        os.setpgid(0, 0)
        atexit._clear()
        setproctitle.setproctitle(f"walredo {tenant}")
        fd = _close_fds_except(sock_fd)
        _rebind_stdio()
        status.code = 1
        _run_worker(fd, tenant, worker)
        status.code = 0

    _exit_after(body)


def run_idle(chan_fd: int, worker: Worker, forget: Iterable[socket.socket] = ()) -> NoReturn:
    """Pre-forked child: do the tenant-independent hygiene now, wait on ``chan_fd`` (a ``SOCK_SEQPACKET``
    socket to the template) for one assignment — the tenant id (ASCII) with exactly one fd, the child's
    socket — then close the channel, set the title and run ``worker(sock, tenant)``. Never returns.

    Titled ``walredo (idle)`` while it waits. Until the assignment only stderr, /dev/null on 0/1 and the
    channel are open; after it, stderr and the child's socket (the channel is closed before the worker runs).
    Exit status as for :func:`run_child`; 0 without running the worker on EOF or a malformed assignment (the
    template is gone or stopping).
    """
    def body(status: _Status) -> None:
        _forget(forget)
        _default_signals()
        os.setpgid(0, 0)
        atexit._clear()
        chan = _close_fds_except(chan_fd)
        _rebind_stdio()
        # Not the template's title it inherited: `ps` would show a second template.
        setproctitle.setproctitle("walredo (idle)")
        _prepare(worker)
        assignment = _await_assignment(chan)
        if assignment is None:
            status.code = 0
            return
        sock_fd, tenant = assignment
        setproctitle.setproctitle(f"walredo {tenant}")
        status.code = 1
        _run_worker(sock_fd, tenant, worker)
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


def _run_worker(sock_fd: int, tenant: str, worker: Worker) -> None:
    sock = socket.socket(fileno=sock_fd)
    sock.setblocking(True)
    worker(sock, tenant)


def _await_assignment(chan_fd: int) -> tuple[int, str] | None:
    """Block until the template sends ``tenant`` with the child's socket; return ``(sock_fd, tenant)`` with
    the channel closed, or ``None`` (channel closed too) on EOF or anything malformed."""
    chan = socket.socket(fileno=chan_fd)
    try:
        chan.setblocking(True)
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
    sock_fd = fds[0]
    if sock_fd < 3:
        # Only if the template ran with std fds closed: keep the socket above 0-2 like run_child does.
        low, sock_fd = sock_fd, fcntl.fcntl(sock_fd, fcntl.F_DUPFD_CLOEXEC, 3)
        os.close(low)
    return sock_fd, tenant


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


def _compute_plan() -> list[tuple[int, object]]:
    plan = []
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
_kept_alive: list = []


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
