"""The processes of a chaos run, as seen from the campaign's own process: descendants, liveness, signals only
to our own descendants (through a pidfd), the child subreaper setting and a :class:`Reaper` for the orphans
it re-parents here, and :func:`settle`, which waits for (and then kills) whatever a scenario left.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import time

import psutil  # type: ignore[import-untyped]  # no stubs installed (types-psutil)

_PR_SET_CHILD_SUBREAPER = 36
_PR_GET_CHILD_SUBREAPER = 37
_libc = ctypes.CDLL(None, use_errno=True)


def subreaper(on: bool) -> bool:
    """Set PR_SET_CHILD_SUBREAPER; return the previous setting."""
    prev = ctypes.c_int(0)
    _libc.prctl(_PR_GET_CHILD_SUBREAPER, ctypes.byref(prev), 0, 0, 0)
    if _libc.prctl(_PR_SET_CHILD_SUBREAPER, 1 if on else 0, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
    return bool(prev.value)


def descendants() -> dict[int, psutil.Process]:
    try:
        return {p.pid: p for p in psutil.Process().children(recursive=True)}
    except psutil.Error:
        return {}


def alive(p: psutil.Process) -> bool:
    try:
        return bool(p.is_running() and p.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def _is_mine(pid: int) -> bool:
    try:
        return any(parent.pid == os.getpid() for parent in psutil.Process(pid).parents())
    except psutil.Error:
        return False


def signal_mine(pid: int, sig: int) -> bool:
    """Send ``sig`` to ``pid`` only if it is a descendant of this process; through a pidfd opened first, so
    a pid recycled after the check is never hit. Returns whether the signal was sent."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    try:
        if not _is_mine(pid):
            return False
        signal.pidfd_send_signal(fd, sig)
        return True
    except ProcessLookupError:
        return False
    finally:
        os.close(fd)


def rss(pid: int | None) -> int | None:
    if pid is None:
        return None
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return None


class Reaper:
    """Reaps zombies re-parented to this (subreaper) process: orphans of a killed template or parent.

    Never touches a child that existed before it started nor one in ``protected`` (a subprocess whose
    owner waits for it)."""

    def __init__(self) -> None:
        self.protected: set[int] = set()
        self._before = {p.pid for p in psutil.Process().children()}
        self._task: asyncio.Task[None] | None = None
        self.reaped = 0

    def reap(self) -> None:
        for p in psutil.Process().children():
            if p.pid in self._before or p.pid in self.protected:
                continue
            try:
                if p.status() == psutil.STATUS_ZOMBIE and os.waitpid(p.pid, os.WNOHANG)[0]:
                    self.reaped += 1
            except (psutil.Error, ChildProcessError):
                pass

    async def _loop(self) -> None:
        while True:
            self.reap()
            await asyncio.sleep(0.05)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="chaos-reaper")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.reap()


async def settle(before: set[int], reaper: Reaper, bound: float = 5.0) -> list[str]:
    """Wait (bounded) until no process that appeared under us since ``before`` is alive; SIGKILL and describe
    what is still there after ``bound``."""
    deadline = time.monotonic() + bound
    while True:
        reaper.reap()
        left = [p for pid, p in descendants().items() if pid not in before and alive(p)]
        if not left or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    out = []
    for p in left:
        with contextlib.suppress(psutil.Error):
            out.append(f"{p.pid} {' '.join(p.cmdline())[:80] or p.name()}")
        signal_mine(p.pid, signal.SIGKILL)
    if left:
        await asyncio.sleep(0.2)
        reaper.reap()
    return out
