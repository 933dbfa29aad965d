"""A minimal pipelined asyncio client for length-prefixed frames (u32 big-endian length + payload).

Responses come back in request order (the child protocol and the echo server both guarantee it), so
matching is a FIFO of futures: no ids, no decoding. This is the client half of the raw echo floor, and the
ping used to decide that a freshly started child is ready.
"""

from __future__ import annotations

import asyncio
import collections
import socket
import struct

_LEN = struct.Struct(">I")


async def ping_once(sock: socket.socket, frame: bytes) -> bytes:
    """Send ``frame`` on a non-blocking ``sock`` and read one whole response frame (its payload).

    Uses the loop's ``sock_*`` calls (no transport is built), so it measures the round trip and little else.
    Raises ``ConnectionError`` on EOF before a whole frame. Not cancel-safe for the stream: a cancelled
    call can leave half a response unread.
    """
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(sock, frame)
    buf = b""
    while True:
        if len(buf) >= 4:
            (n,) = _LEN.unpack_from(buf)
            if len(buf) >= 4 + n:
                return buf[4 : 4 + n]
        chunk = await loop.sock_recv(sock, 65536)
        if not chunk:
            raise ConnectionError("EOF before a whole response frame")
        buf += chunk


class FramedClient:
    """Pipelined requests on one stream: any number of :meth:`request` calls in flight, answered in order.

    Built on asyncio streams (the ordinary way to talk to a socket from asyncio). A reader task resolves
    the oldest waiting request with each frame read; on EOF or error it fails every waiting request with
    ``ConnectionError``.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._waiting: collections.deque[asyncio.Future[bytes]] = collections.deque()
        self._reader_task = asyncio.create_task(self._read_loop())

    @classmethod
    async def open(cls, sock: socket.socket) -> FramedClient:
        reader, writer = await asyncio.open_unix_connection(sock=sock)
        return cls(reader, writer)

    async def _read_loop(self) -> None:
        try:
            while True:
                header = await self._reader.readexactly(4)
                payload = await self._reader.readexactly(_LEN.unpack(header)[0])
                fut = self._waiting.popleft()
                if not fut.done():  # a cancelled caller: its response is read and dropped
                    fut.set_result(payload)
        except (asyncio.IncompleteReadError, ConnectionError, IndexError) as e:
            err = ConnectionError(f"stream ended: {type(e).__name__}")
            while self._waiting:
                fut = self._waiting.popleft()
                if not fut.done():
                    fut.set_exception(err)

    async def request(self, frame: bytes) -> bytes:
        """Send one whole frame; return the payload of its response. Raises ``ConnectionError``.

        Cancel-safe for the stream: the frame is written before the first await, and a cancelled caller's
        response is still read (and dropped) by the reader task.
        """
        fut = asyncio.get_running_loop().create_future()
        self._waiting.append(fut)
        self._writer.write(frame)
        return await fut

    async def aclose(self) -> None:
        """Close the stream and stop the reader task. Idempotent."""
        self._writer.close()
        try:
            await self._writer.wait_closed()
        except ConnectionError:
            pass
        self._reader_task.cancel()
        try:
            await self._reader_task
        except asyncio.CancelledError:
            pass
