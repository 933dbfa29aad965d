"""The non-blocking queued sender of framed messages with fds, shared by both ends of a control connection.

Runs in the parent (:mod:`forkserver.session`, asyncio writer callbacks) and in the template
(:mod:`forkserver.template`, selector loop); neither the loop nor the protocol is its business. A frame
goes out at once when nothing is queued ahead of it; what the socket does not take waits in order, and
:meth:`FrameSender.flush` sends it when the caller's loop says the socket is writable.

The fds of a frame ride on its first byte (:func:`forkserver.fdpass.send`): they are passed to the
``sendmsg`` that starts the frame, never to a later one. Each frame may come with *owned* fds: the
sender's copies of what it passes, closed once the frame's first byte went out (closing them earlier
could let an fd number be reused and sent in its place), or when the sender is closed.
"""

from __future__ import annotations

import socket
from collections import deque
from collections.abc import Sequence

from forkserver.fdpass import close_fds, send

__all__ = ["FrameSender"]


class _OutFrame:
    __slots__ = ("view", "fds", "owned")

    def __init__(self, view: memoryview, fds: list[int], owned: list[int]):
        self.view = view
        self.fds = fds  # attached to the next sendmsg (the frame's first byte)
        self.owned = owned  # our copies to close once the fds went out


class FrameSender:
    """Frames waiting to go out on one non-blocking stream socket, in order, with their fds.

    ``queued`` counts the bytes waiting; truth value: whether anything waits (the caller watches for
    writability exactly while it does). Errors of :meth:`send` and :meth:`flush`: ``OSError`` other than
    "would block" when the peer is gone (the caller closes the connection, then this sender)."""

    __slots__ = ("sock", "queued", "_out")

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.queued = 0
        self._out: deque[_OutFrame] = deque()

    def __bool__(self) -> bool:
        return bool(self._out)

    def send(self, frame: bytes, fds: Sequence[int] = (), owned: Sequence[int] = ()) -> None:
        """Send ``frame`` with ``fds`` on its first byte now if nothing is queued ahead, else queue it.
        ``owned`` are closed once the fds went out; on an error they are closed before it propagates."""
        if not self._out:
            # Nothing queued ahead (the usual case): send it now, without the queue's bookkeeping (in the
            # template every object touched is a page copied after each fork).
            try:
                n = send(self.sock, frame, fds)
            except (BlockingIOError, InterruptedError):
                n = -1  # nothing went out, fds included: queue the whole frame
            except OSError:
                close_fds(owned)
                raise
            if n >= 0:
                close_fds(owned)  # delivered with the first byte: our copies are done
                if n == len(frame):
                    return
                self._push(memoryview(frame)[n:], [], [])
                return
        self._push(memoryview(frame), list(fds), list(owned))

    def _push(self, view: memoryview, fds: list[int], owned: list[int]) -> None:
        self._out.append(_OutFrame(view, fds, owned))
        self.queued += len(view)

    def flush(self) -> None:
        """Send what the socket takes now, in order; return when it would block or nothing is left."""
        out = self._out
        while out:
            item = out[0]
            try:
                n = send(self.sock, item.view, item.fds)
            except (BlockingIOError, InterruptedError):
                return
            if item.fds:
                item.fds = []
                close_fds(item.owned)
                item.owned = []
            item.view = item.view[n:]
            self.queued -= n
            if not len(item.view):
                out.popleft()

    def send_head_best_effort(self) -> None:
        """Try once to send the first queued frame if it carries no fds (e.g. an error explaining a
        hang-up); errors are ignored. Call before :meth:`close`."""
        if self._out and not self._out[0].fds:
            try:
                self.sock.send(self._out[0].view)
            except OSError:
                pass

    def close(self) -> None:
        """Forget every queued frame and close the fds we owned for them. Idempotent; the socket is the
        caller's."""
        while self._out:
            close_fds(self._out.popleft().owned)
        self.queued = 0
