"""Each child's stderr, captured by the template and sent to the parent that owns the child.

Runs in the template process. Before every fork (on request or into the pool) the template makes a pipe; the
child makes its write end its fd 2 (before its fd hygiene closes everything else), the template keeps the
read end, non-blocking, in its selector. Lines read there go, as ``stderr`` messages of the control protocol,
to the connection that spawned the child (the parent logs them with the tenant and pid: Neon runs a stderr
logger per walredo process); a line of a pool child not yet assigned, or whose parent is gone, is logged by
the template itself, also with its pid (and tenant, once known).

Bounds, so that a chatty child can neither stall the template nor flood its parent's connection: a line is
cut at :data:`MAX_LINE` bytes; at most :data:`BURST` lines per child are forwarded at once, refilled at
:data:`LINES_PER_SECOND`; lines beyond are read and dropped (the pipe never fills, the child never blocks)
and counted in the next line forwarded.
"""

from __future__ import annotations

import functools
import logging
import os
import selectors
import time
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["ChildStderr", "MAX_LINE", "LINES_PER_SECOND", "BURST"]

MAX_LINE = 1024
LINES_PER_SECOND = 50.0
BURST = 200
_READ = 16384

log = logging.getLogger("forkserver.child")

Send = Callable[[object, int, str, str], bool]  # (owner, pid, tenant, line) -> sent to the owner?


@dataclass
class _Pipe:
    fd: int
    tenant: str | None = None
    owner: object | None = None  # the connection that spawned the child
    buf: bytearray = field(default_factory=bytearray)
    tokens: float = BURST
    refilled: float = field(default_factory=time.monotonic)
    dropped: int = 0


class ChildStderr:
    """The read ends of the children's stderr pipes, in ``selector``; keys carry bound handlers. ``send``
    forwards one line to a child's owner and says whether it could."""

    def __init__(self, selector: selectors.BaseSelector, send: Send) -> None:
        self._sel = selector
        self._send = send
        self._pipes: dict[int, _Pipe] = {}
        self._next: tuple[int, int] | None = None

    def before_fork(self) -> int | None:
        """Make the pipe of the child about to be forked; return its write end (None: no pipe, the child
        keeps the template's stderr — e.g. out of descriptors)."""
        try:
            self._next = os.pipe2(os.O_CLOEXEC)
        except OSError as e:
            log.warning("no stderr pipe for the next child (%s): it writes to the template's stderr", e)
            self._next = None
            return None
        return self._next[1]

    @staticmethod
    def in_child(write_end: int | None) -> None:
        """In the forked child, first thing: the pipe becomes fd 2 (the fd hygiene closes the originals)."""
        if write_end is not None:
            os.dup2(write_end, 2)

    def after_fork(self, pid: int | None) -> None:
        """In the template after the fork (``pid`` None: the fork failed): close the write end, watch the
        read end."""
        pair, self._next = self._next, None
        if pair is None:
            return
        r, w = pair
        os.close(w)
        if pid is None:
            os.close(r)
            return
        os.set_blocking(r, False)
        self._pipes[pid] = _Pipe(r)
        self._sel.register(r, selectors.EVENT_READ, functools.partial(self._on_readable, pid))

    def bind(self, pid: int, tenant: str, owner: object) -> None:
        """``pid`` now serves ``tenant`` for the connection ``owner``."""
        pipe = self._pipes.get(pid)
        if pipe is not None:
            pipe.tenant, pipe.owner = tenant, owner

    def unbind(self, owner: object) -> None:
        """The connection ``owner`` is gone: its children's lines are logged here from now on."""
        for pipe in self._pipes.values():
            if pipe.owner is owner:
                pipe.owner = None

    def reaped(self, pid: int) -> None:
        """The child exited: forward what it still wrote, then close its pipe."""
        pipe = self._pipes.get(pid)
        if pipe is not None:
            self._read(pid, pipe, drain=True)
            self._close(pid)

    def close(self) -> None:
        """Close every pipe (template shutdown)."""
        for pid in list(self._pipes):
            self._close(pid)

    def _on_readable(self, pid: int, events: int) -> None:
        pipe = self._pipes.get(pid)
        if pipe is not None and not self._read(pid, pipe, drain=False):
            self._close(pid)

    def _read(self, pid: int, pipe: _Pipe, *, drain: bool) -> bool:
        """Read what is there (a few chunks at most unless draining); False at EOF."""
        for _ in range(1000 if drain else 4):
            try:
                data = os.read(pipe.fd, _READ)
            except BlockingIOError:
                return True
            except OSError:
                return False
            if not data:
                if pipe.buf:
                    self._emit(pid, pipe, bytes(pipe.buf))
                    pipe.buf.clear()
                return False
            pipe.buf += data
            while True:
                nl = pipe.buf.find(b"\n")
                if nl < 0:
                    if len(pipe.buf) >= MAX_LINE:
                        self._emit(pid, pipe, bytes(pipe.buf[:MAX_LINE]))
                        del pipe.buf[:MAX_LINE]
                        continue
                    break
                self._emit(pid, pipe, bytes(pipe.buf[:nl]))
                del pipe.buf[:nl + 1]
        return True

    def _emit(self, pid: int, pipe: _Pipe, raw: bytes) -> None:
        now = time.monotonic()
        pipe.tokens = min(BURST, pipe.tokens + (now - pipe.refilled) * LINES_PER_SECOND)
        pipe.refilled = now
        if pipe.tokens < 1:
            pipe.dropped += 1
            return
        pipe.tokens -= 1
        line = raw[:MAX_LINE].decode("utf-8", "replace").rstrip("\r")
        if pipe.dropped:
            line = f"({pipe.dropped} lines dropped) {line}"
            pipe.dropped = 0
        tenant = pipe.tenant or "(pool)"
        if pipe.owner is None or not self._send(pipe.owner, pid, tenant, line):
            log.warning("tenant %s pid %d: stderr: %s", tenant, pid, line)

    def _close(self, pid: int) -> None:
        pipe = self._pipes.pop(pid)
        try:
            self._sel.unregister(pipe.fd)
        except (KeyError, ValueError):
            pass
        os.close(pipe.fd)
