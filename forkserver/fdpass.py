"""All SCM_RIGHTS handling of the fork server: send bytes with fds, receive bytes with fds.

Runs in every process role (parent, template); it is the only module that builds or parses ancillary data,
and it reads a peer's credentials (:func:`peer_credentials`, ``SO_PEERCRED``) for both ends of the control
socket.

Guarantees of :func:`recv`:

- received fds are close-on-exec (``MSG_CMSG_CLOEXEC``), so a later ``exec`` in the receiver never leaks them;
- only ``SOL_SOCKET``/``SCM_RIGHTS`` control messages are accepted, at most ``maxfds`` fds in total, and a
  truncated control buffer (``MSG_CTRUNC``) is an error: :class:`FdsTruncated` (carrying the bytes) when we
  were out of descriptors, :class:`FdPassError` when the peer sent too many;
- on *any* error every fd that did arrive is closed before the error propagates, so a hostile or broken peer
  cannot make the receiver leak descriptors.

Stream-socket facts the control protocol relies on (Linux ``unix_stream_sendmsg`` / ``..._read_generic``):
fds passed to one ``sendmsg`` ride on its first byte; one ``recvmsg`` returns at most one batch of fds, and
that batch belongs to the last segment the call read (reading stops right after a segment carrying fds).

:func:`check_stream_socket` checks what a received fd *is* before anyone relies on it: the template
refuses a spawn whose fd is not a connected ``AF_UNIX`` stream socket (a UDP socket, a datagram socket whose
peer closed, a pipe), since a worker given one would block forever.
"""

from __future__ import annotations

import array
import os
import socket
import struct
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from forkserver.errors import ControlProtocolError

__all__ = ["MAX_FDS", "FdPassError", "FdsTruncated", "PeerCredentials", "close_fds", "peer_credentials", "recv", "send"]

# A control-protocol message carries at most one fd; a little headroom lets us see (and reject) a peer
# that sends more instead of having the kernel silently truncate.
MAX_FDS = 4

_FD_SIZE = array.array("i").itemsize
_UCRED = struct.Struct("3i")  # struct ucred {pid_t pid; uid_t uid; gid_t gid;}


class FdPassError(ControlProtocolError):
    """The peer sent ancillary data we do not accept (wrong type, too many fds, truncated)."""

    def __init__(self, message: str):
        super().__init__("bad-fds", message)


class FdsTruncated(FdPassError):
    """The peer's fds could not all be received because this process is out of descriptors (EMFILE /
    ENFILE: the kernel drops what it cannot install and sets ``MSG_CTRUNC``). The bytes are intact:
    ``data`` holds what arrived with the lost fds, so the receiver may keep the stream and fail only the
    message they belonged to. Every fd that did arrive is closed."""

    def __init__(self, data: bytes):
        super().__init__("control data truncated: out of file descriptors")
        self.data = data


class PeerCredentials(NamedTuple):
    pid: int
    uid: int
    gid: int


def peer_credentials(sock: socket.socket) -> PeerCredentials:
    """The credentials the kernel recorded for the peer of a connected ``AF_UNIX`` socket (at
    ``connect``/``socketpair`` time). Errors: ``OSError``."""
    return PeerCredentials(*_UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)))


def check_stream_socket(fd: int) -> str | None:
    """Why ``fd`` is not a connected ``AF_UNIX`` ``SOCK_STREAM`` socket, or None if it is one. ``fd`` stays
    open and unchanged (three ``getsockopt`` and a ``getpeername``; no I/O on it)."""
    try:
        sock = socket.socket(fileno=fd)  # asks the kernel for family and type (ENOTSOCK for a non-socket)
    except OSError as e:
        return f"not a socket ({e.strerror})"
    try:
        if sock.family != socket.AF_UNIX:
            return f"not an AF_UNIX socket (family {sock.family.name})"
        if sock.type != socket.SOCK_STREAM:
            return f"not a stream socket (type {sock.type.name})"
        try:
            sock.getpeername()
        except OSError as e:  # ENOTCONN: never connected, or a listening socket
            return f"not connected ({e.strerror})"
        return None
    finally:
        sock.detach()  # the fd is the caller's


def close_fds(fds: Iterable[int]) -> None:
    """Close every fd in ``fds``, ignoring ones that are already closed (best effort cleanup)."""
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def send(sock: socket.socket, data: bytes | memoryview, fds: Sequence[int] = ()) -> int:
    """Send ``data`` with ``fds`` attached to its first byte; return the number of bytes sent.

    The fds stay open in the sender (the kernel duplicates them). On a partial send the fds were delivered
    with the bytes that did go out; the caller sends the rest without fds.

    Errors: ``BlockingIOError`` on a full non-blocking socket (nothing sent, fds not delivered), other
    ``OSError`` (e.g. ``BrokenPipeError``) when the peer is gone.
    """
    if not fds:
        return sock.send(data)
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
    return sock.sendmsg([data], anc)


def recv(sock: socket.socket, bufsize: int, maxfds: int = MAX_FDS) -> tuple[bytes, list[int]]:
    """Receive up to ``bufsize`` bytes and any fds that came with them.

    Returns ``(data, fds)``; ``data == b""`` means EOF (there may still be fds, which the caller owns).
    The caller owns the returned fds and must close them.

    Errors: :class:`FdPassError` for unacceptable ancillary data (every received fd already closed;
    :class:`FdsTruncated`, with the bytes, when we were out of descriptors);
    ``BlockingIOError`` when nothing is available; other ``OSError`` when the connection broke.
    """
    data, ancdata, flags, _addr = sock.recvmsg(
        bufsize, socket.CMSG_SPACE(maxfds * _FD_SIZE), socket.MSG_CMSG_CLOEXEC
    )
    fds: list[int] = []
    problem = None
    # Collect every fd first, whatever else is wrong, so that the error path can close all of them.
    for level, kind, cdata in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(cdata) - len(cdata) % _FD_SIZE
            fds.extend(array.array("i", cdata[:usable]))
            if usable != len(cdata):
                problem = "SCM_RIGHTS payload is not a whole number of fds"
        else:
            problem = f"unexpected control message level={level} type={kind}"
    if flags & socket.MSG_CTRUNC and len(fds) < maxfds:
        # Room was left in the buffer, so the peer did not send too many: we could not install them.
        close_fds(fds)
        raise FdsTruncated(data)
    if flags & socket.MSG_CTRUNC:
        problem = "control data truncated (too many fds)"
    elif len(fds) > maxfds:
        problem = f"{len(fds)} fds in one message (at most {maxfds})"
    if problem is not None:
        close_fds(fds)
        raise FdPassError(problem)
    return data, fds
