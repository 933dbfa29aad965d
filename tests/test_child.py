"""forkserver.child.run_child in a real forked process: exit codes, atexit, stray fds, stdio, never returning.

Each test forks this test process; the child runs run_child() (which never returns) and the test reaps it.
"""

import atexit
import os
import signal
import socket
import sys

import pytest

from forkserver import child, fdpass

TENANT = "0123456789abcdef0123456789abcdef"


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


def run(worker, *, extra_fd: int | None = None) -> tuple[int, bytes, bytes]:
    """Fork, run ``worker`` through run_child, return (exit status, what the worker wrote on its socket,
    what the child wrote on stderr)."""
    parent, childsock = socket.socketpair()
    err_r, err_w = os.pipe()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.dup2(err_w, 2)
            parent.close()
            child.run_child(os.dup(childsock.fileno()), TENANT, worker)
        finally:
            os._exit(99)  # only if run_child itself returned, which it must not
    os.close(err_w)
    childsock.close()
    parent.settimeout(30)
    out = b""
    while chunk := parent.recv(65536):
        out += chunk
    parent.close()
    err = b""
    while chunk := os.read(err_r, 65536):
        err += chunk
    os.close(err_r)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), out, err


def test_worker_return_exits_zero_and_sees_only_its_fds():
    keep_open = os.open(os.devnull, os.O_RDONLY)  # inherited by the fork: must be closed by the hygiene
    ran_atexit = []
    atexit.register(ran_atexit.append, 1)  # registered in the parent: must not run in the child

    def worker(sock, tenant):
        fds = sorted(int(f) for f in os.listdir("/proc/self/fd") if _is_open(int(f)))  # not listdir's own
        report = f"{tenant} fds={fds} sock={sock.fileno()} pgid={os.getpgid(0) == os.getpid()} " \
                 f"stdin={os.readlink('/proc/self/fd/0')} stdout={os.readlink('/proc/self/fd/1')} " \
                 f"sigterm={signal.getsignal(signal.SIGTERM) is signal.SIG_DFL}"
        sock.sendall(report.encode())
        atexit.register(os.write, sock.fileno(), b" ATEXIT-RAN")  # cleared? registered after: it may run
        # not run: os._exit skips atexit entirely

    try:
        code, out, err = run(worker)
    finally:
        atexit.unregister(ran_atexit.append)
        os.close(keep_open)
    assert code == 0, err
    text = out.decode()
    sock_fd = int(text.split("sock=")[1].split()[0])
    fds = eval(text.split("fds=")[1].split(" sock=")[0])
    assert fds == sorted({0, 1, 2, sock_fd}), text  # keep_open and everything else inherited is closed
    assert "pgid=True" in text and "sigterm=True" in text
    assert "stdin=/dev/null" in text and "stdout=/dev/null" in text
    assert "ATEXIT-RAN" not in text  # leaves through os._exit: no atexit handler runs
    assert ran_atexit == []


def test_worker_exception_exits_1_with_traceback():
    def worker(sock, tenant):
        raise RuntimeError("boom in worker")

    code, _, err = run(worker)
    assert code == 1 and b"RuntimeError: boom in worker" in err


def test_worker_system_exit_code_is_kept():
    def worker(sock, tenant):
        sys.exit(7)

    assert run(worker)[0] == 7


@pytest.mark.parametrize("exc,expected", [(SystemExit(None), 0), (SystemExit("bye"), 1), (KeyboardInterrupt(), 1)])
def test_other_exits(exc, expected):
    def worker(sock, tenant):
        raise exc

    assert run(worker)[0] == expected


def test_title_is_set_before_the_worker_runs():
    def worker(sock, tenant):
        with open("/proc/self/cmdline", "rb") as f:
            sock.sendall(f.read().replace(b"\0", b" ").strip())

    code, out, _ = run(worker)
    assert code == 0 and out == f"walredo {TENANT}".encode()


def run_idle(worker, assign) -> tuple[int, bytes, bytes]:
    """Fork a pre-forked-style child (run_idle) on a SOCK_SEQPACKET channel; ``assign(chan)`` plays the
    template (sends the assignment, or not). Returns (exit status, what the worker wrote, stderr)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    parent, childsock = socket.socketpair()
    err_r, err_w = os.pipe()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        try:
            os.dup2(err_w, 2)
            child.run_idle(os.dup(theirs.fileno()), worker)
        finally:
            os._exit(99)
    os.close(err_w)
    theirs.close()
    try:
        assign(ours, childsock)
    finally:
        ours.close()
        childsock.close()
    parent.settimeout(30)
    out = b""
    while chunk := parent.recv(65536):
        out += chunk
    parent.close()
    err = b""
    while chunk := os.read(err_r, 65536):
        err += chunk
    os.close(err_r)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), out, err


def _report_worker(sock, tenant):
    fds = sorted(int(f) for f in os.listdir("/proc/self/fd") if _is_open(int(f)))
    with open("/proc/self/cmdline", "rb") as f:
        title = f.read().replace(b"\0", b" ").strip().decode()
    sock.sendall(f"{tenant}|{fds}|{sock.fileno()}|{title}|{signal.getsignal(signal.SIGTERM) is signal.SIG_DFL}"
                 .encode())


def test_idle_child_runs_the_worker_for_its_assignment_with_only_its_fds():
    keep_open = os.open(os.devnull, os.O_RDONLY)  # inherited by the fork: closed before the wait

    def assign(chan, childsock):
        fdpass.send(chan, TENANT.encode(), [childsock.fileno()])

    try:
        code, out, err = run_idle(_report_worker, assign)
    finally:
        os.close(keep_open)
    assert code == 0, err
    tenant, fds, sock_fd, title, sigterm_default = out.decode().split("|")
    assert tenant == TENANT and title == f"walredo {TENANT}" and sigterm_default == "True"
    assert eval(fds) == sorted({0, 1, 2, int(sock_fd)}), out  # the channel is closed too


@pytest.mark.parametrize("how", ["eof", "no-fd", "two-fds", "not-ascii"])
def test_idle_child_exits_quietly_without_a_valid_assignment(how):
    ran = []

    def worker(sock, tenant):
        ran.append(1)
        sock.sendall(b"WORKER-RAN")

    def assign(chan, childsock):
        if how == "no-fd":
            chan.send(TENANT.encode())
        elif how == "two-fds":
            fdpass.send(chan, TENANT.encode(), [childsock.fileno(), childsock.fileno()])
        elif how == "not-ascii":
            fdpass.send(chan, "ténant".encode(), [childsock.fileno()])

    code, out, err = run_idle(worker, assign)
    assert (code, out) == (0, b""), err
