"""Process hygiene for the fork-server tests: a fixture that fails a test which leaves a process behind.

While a test runs, this pytest process is a *child subreaper* (``PR_SET_CHILD_SUBREAPER``), so every process the
test orphans (a template whose launching parent was killed, children of a killed template) is reparented to us
instead of to PID 1. At teardown we wait (bounded) for every process that appeared under us during the test,
and every process whose command line mentions one of the test's socket directories, to exit; we reap our
zombies. Leftovers are SIGKILLed and reaped, and the test fails.
"""

from __future__ import annotations

import ctypes
import os
import signal
import time

import psutil
import pytest

_PR_SET_CHILD_SUBREAPER = 36
_libc = ctypes.CDLL(None, use_errno=True)


def _set_subreaper(on: bool) -> None:
    if _libc.prctl(_PR_SET_CHILD_SUBREAPER, 1 if on else 0, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


class ProcGuard:
    def __init__(self) -> None:
        self.me = psutil.Process()
        self.before = {p.pid for p in self.me.children(recursive=True)}
        self.dirs: list[str] = []
        self.pids: set[int] = set()

    def watch_dir(self, path: str) -> str:
        """Also require every process whose cmdline mentions ``path`` to be gone at teardown."""
        self.dirs.append(str(path))
        return str(path)

    def reap(self) -> None:
        """Reap our zombies that appeared during the test (never one that existed before it)."""
        for p in self.me.children():
            if p.pid in self.before:
                continue
            try:
                if p.status() == psutil.STATUS_ZOMBIE:
                    os.waitpid(p.pid, os.WNOHANG)
            except (psutil.NoSuchProcess, ChildProcessError):
                pass

    def leftovers(self) -> list[psutil.Process]:
        self.reap()
        found = {p.pid: p for p in self.me.children(recursive=True) if p.pid not in self.before}
        for pid in self.pids:
            try:
                p = psutil.Process(pid)
                if p.status() != psutil.STATUS_ZOMBIE:
                    found[pid] = p
            except psutil.NoSuchProcess:
                pass
        if self.dirs:
            for p in psutil.process_iter(["cmdline"]):
                cmd = " ".join(p.info["cmdline"] or ())
                if any(d in cmd for d in self.dirs) and p.pid != self.me.pid:
                    found[p.pid] = p
        return list(found.values())

    def check(self, timeout: float = 10.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while True:
            left = self.leftovers()
            if not left:
                return []
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        described = []
        for p in left:
            try:
                described.append(f"{p.pid} {p.status()} {' '.join(p.cmdline())!r}")
                p.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        time.sleep(0.2)
        self.reap()
        return described


@pytest.fixture
def proc_guard():
    _set_subreaper(True)
    guard = ProcGuard()
    try:
        yield guard
        left = guard.check()
    finally:
        _set_subreaper(False)
    if left:
        pytest.fail(f"processes left behind: {left}")
