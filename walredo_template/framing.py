"""Length-prefixed msgpack framing, sans-IO: the one wire core both protocols of the fork server share.

The child protocol (:mod:`walredo_template.protocol`, keyed by ``"type"``) and the control protocol
(:mod:`forkserver.control`, keyed by ``"t"``, fds attached to frames) put their messages in the same frame::

    0               4                                  4 + length
    +---------------+----------------------------------+
    | length: u32 BE| body: length bytes of msgpack     |
    +---------------+----------------------------------+

``length`` counts the body only. Each protocol sets its own bound (the child protocol 64 MiB, the control
protocol 64 KiB once authenticated and 512 bytes before); a length above it is detected as soon as the 4
header bytes have arrived, before any of the body is buffered. What the body means, and what a protocol
does about a frame that is too large, is the protocol's business: this module only splits and joins.

It runs in every process role (parent, template, child) and never touches a socket.
"""

from __future__ import annotations

import struct

import msgpack

__all__ = ["HEADER", "FrameTooLarge", "FrameReader", "pack"]

HEADER = struct.Struct(">I")


class FrameTooLarge(ValueError):
    """A frame's length (announced in its header, or of a body being framed) exceeds the bound.

    Each protocol turns this into its own error (the stream is unusable afterwards either way)."""

    def __init__(self, length: int, bound: int):
        super().__init__(f"frame of {length} bytes exceeds the bound of {bound}")
        self.length = length
        self.bound = bound


def pack(obj: object, max_frame: int | None = None) -> bytes:
    """Return ``obj`` as one frame (header + msgpack body, bin type for bytes).

    Errors: :class:`FrameTooLarge` if ``max_frame`` is given and the body is longer; whatever msgpack
    raises for an object it cannot pack (``TypeError``, ``OverflowError``)."""
    body: bytes = msgpack.packb(obj, use_bin_type=True)
    if max_frame is not None and len(body) > max_frame:
        raise FrameTooLarge(len(body), max_frame)
    return HEADER.pack(len(body)) + body


class FrameReader:
    """The receive side of a framed stream: :meth:`feed` bytes as they arrive, take whole frames out.

    Usage: :meth:`next_length` says whether a header has arrived and checks its bound; :meth:`take` returns
    the body once it is complete; :meth:`discard` drops a frame unread (its body as it arrives, never
    buffered). Consumed frames are dropped lazily, at the next :meth:`feed`, so a burst of small pipelined
    frames costs linear, not quadratic, copying.

    ``received`` and ``consumed`` are stream offsets (bytes fed so far, bytes consumed so far, counting
    discarded bytes): the control protocol attributes fds to frames by them.
    """

    __slots__ = ("max_frame", "received", "consumed", "_buf", "_pos", "_skip")

    def __init__(self, max_frame: int):
        self.max_frame = max_frame
        self.received = 0
        self.consumed = 0
        self._buf = bytearray()
        self._pos = 0  # read position in _buf: everything before it is consumed
        self._skip = 0  # body bytes of a discarded frame that have not arrived yet

    @property
    def buffered(self) -> int:
        """Bytes received but not yet consumed (non-zero at EOF = a truncated frame)."""
        return len(self._buf) - self._pos

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append bytes read from the stream (copied: the caller may reuse its buffer)."""
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
        self.received += len(data)
        if self._skip:
            # Inside a discarded frame: drop its bytes without copying them.
            n = min(self._skip, len(data))
            self._skip -= n
            data = data[n:]
        self._buf += data

    def next_length(self) -> int | None:
        """The body length of the next frame once its header has arrived, else ``None``.

        Errors: :class:`FrameTooLarge` when it exceeds ``max_frame`` (nothing is consumed)."""
        if len(self._buf) - self._pos < HEADER.size:
            return None
        length: int = HEADER.unpack_from(self._buf, self._pos)[0]
        if length > self.max_frame:
            raise FrameTooLarge(length, self.max_frame)
        return length

    def take(self, length: int) -> memoryview | None:
        """Consume the next frame, whose body is ``length`` bytes (from :meth:`next_length`), and return a
        view of its body; ``None`` (nothing consumed) while it is incomplete.

        The view points into the buffer: release it (``with``, or ``bytes()`` it and release) before the
        next :meth:`feed`, which may resize the buffer."""
        start = self._pos + HEADER.size
        end = start + length
        if len(self._buf) < end:
            return None
        self._pos = end
        self.consumed += HEADER.size + length
        return memoryview(self._buf)[start:end]

    def discard(self, length: int) -> None:
        """Consume the next frame (body ``length`` bytes) unread: what is buffered now is dropped, the rest
        as it arrives."""
        here = min(HEADER.size + length, len(self._buf) - self._pos)
        self._pos += here
        self._skip = HEADER.size + length - here
        self.consumed += HEADER.size + length

    def clear(self) -> None:
        """Drop everything buffered (a closed stream)."""
        self._buf.clear()
        self._pos = 0
        self._skip = 0
