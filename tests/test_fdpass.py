"""forkserver.fdpass on real Unix socketpairs: fds arrive, are CLOEXEC, and never leak on an error path."""

import array
import fcntl
import os
import socket

import pytest

from forkserver import fdpass


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def pair():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    yield a, b
    a.close()
    b.close()


def test_round_trip_with_fds(pair):
    a, b = pair
    r, w = os.pipe()
    try:
        assert fdpass.send(a, b"hello", [r, w]) == 5
        data, fds = fdpass.recv(b, 100)
        assert data == b"hello" and len(fds) == 2
        for fd in fds:
            assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        os.write(fds[1], b"x")  # the received write end is the same pipe
        assert os.read(r, 1) == b"x"
        fdpass.close_fds(fds)
    finally:
        fdpass.close_fds([r, w])


def test_plain_data_and_eof(pair):
    a, b = pair
    fdpass.send(a, b"abc")
    assert fdpass.recv(b, 100) == (b"abc", [])
    a.shutdown(socket.SHUT_WR)
    assert fdpass.recv(b, 100) == (b"", [])


def test_too_many_fds_are_all_closed(pair):
    a, b = pair
    fds = [os.open(os.devnull, os.O_RDONLY) for _ in range(3)]
    try:
        before = open_fds()
        fdpass.send(a, b"x", fds)
        with pytest.raises(fdpass.FdPassError) as e:
            fdpass.recv(b, 100, maxfds=2)
        assert e.value.code == "bad-fds"
        assert open_fds() == before
    finally:
        fdpass.close_fds(fds)


def test_truncated_control_data_leaks_nothing(pair):
    # More fds than the receive buffer has room for: the kernel truncates (MSG_CTRUNC) and we reject.
    a, b = pair
    fds = [os.open(os.devnull, os.O_RDONLY) for _ in range(20)]
    try:
        before = open_fds()
        fdpass.send(a, b"x", fds)
        with pytest.raises(fdpass.FdPassError):
            fdpass.recv(b, 100)
        assert open_fds() == before
    finally:
        fdpass.close_fds(fds)


def test_foreign_control_message_rejected_and_fds_closed(pair):
    # SO_PASSCRED makes the kernel attach SCM_CREDENTIALS: not something we accept.
    a, b = pair
    b.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    fd = os.open(os.devnull, os.O_RDONLY)
    try:
        before = open_fds()
        fdpass.send(a, b"x", [fd])
        with pytest.raises(fdpass.FdPassError):
            fdpass.recv(b, 100)
        assert open_fds() == before
    finally:
        os.close(fd)


def test_send_raw_ancillary_is_what_we_parse(pair):
    # A peer building SCM_RIGHTS by hand (not via fdpass.send) is understood the same way.
    a, b = pair
    fd = os.open(os.devnull, os.O_RDONLY)
    try:
        a.sendmsg([b"y"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]).tobytes())])
        data, fds = fdpass.recv(b, 10)
        assert data == b"y" and len(fds) == 1
        assert os.fstat(fds[0]).st_ino == os.fstat(fd).st_ino
        fdpass.close_fds(fds)
    finally:
        os.close(fd)


def test_nonblocking_empty_raises_blocking(pair):
    a, b = pair
    b.setblocking(False)
    with pytest.raises(BlockingIOError):
        fdpass.recv(b, 10)


def test_close_fds_ignores_closed():
    r, w = os.pipe()
    os.close(r)
    fdpass.close_fds([r, w])
    with pytest.raises(OSError):
        os.fstat(w)


def test_kernel_stops_a_read_after_a_segment_carrying_fds(pair):
    """The control protocol's fd attribution rests on this Linux behaviour (see forkserver.fdpass): plain bytes
    may be glued before a segment with fds, but one read never goes past a segment that carried fds."""
    a, b = pair
    fd1, fd2 = os.open(os.devnull, os.O_RDONLY), os.open(os.devnull, os.O_RDONLY)
    try:
        fdpass.send(a, b"plain-")
        fdpass.send(a, b"first", [fd1])
        fdpass.send(a, b"second", [fd2])
        fdpass.send(a, b"-tail")
        data, fds = fdpass.recv(b, 1000)
        assert data == b"plain-first" and len(fds) == 1
        data2, fds2 = fdpass.recv(b, 1000)
        assert data2 == b"second" and len(fds2) == 1
        assert fdpass.recv(b, 1000) == (b"-tail", [])
        fdpass.close_fds(fds + fds2)
    finally:
        fdpass.close_fds([fd1, fd2])


def test_peer_credentials_are_ours(pair):
    a, _ = pair
    cred = fdpass.peer_credentials(a)
    assert (cred.pid, cred.uid, cred.gid) == (os.getpid(), os.getuid(), os.getgid())


def test_frame_sender_queues_in_order_and_closes_owned_fds_once_sent(pair):
    """forkserver.sender.FrameSender: a full socket queues (fds still on the frame's first byte), flush
    sends in order, owned copies are closed only once their frame went out, close() closes the rest."""
    from forkserver.sender import FrameSender

    a, b = pair
    a.setblocking(False)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    s = FrameSender(a)
    filler = b"f" * (1 << 20)
    s.send(filler)  # more than the socket takes: the rest waits
    assert s and s.queued > 0
    r, w = os.pipe()
    s.send(b"withfd", [r], owned=[r])
    os.fstat(r)  # not sent yet: still open
    received, fds = b"", []
    while len(received) < len(filler) + 6:
        s.flush()
        data, got = fdpass.recv(b, 1 << 16)
        received += data
        fds += got
    assert not s and s.queued == 0 and received == filler + b"withfd"
    assert len(fds) == 1
    # Our copy was closed once it went out: its number is free (recvmsg may have reused it) or closed.
    if fds[0] != r:
        with pytest.raises(OSError):
            os.fstat(r)
    fdpass.close_fds(fds + [w])
    r2, w2 = os.pipe()
    s.send(filler)
    s.send(b"x", [r2], owned=[r2])
    s.close()  # never sent: the owned copy is closed
    with pytest.raises(OSError):
        os.fstat(r2)
    os.close(w2)


def test_check_stream_socket_accepts_only_a_connected_unix_stream_socket():
    a, b = socket.socketpair()
    r, w = os.pipe()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    d1, d2 = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    d1.close()  # a datagram socket whose peer closed
    seq1, seq2 = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    unconnected = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        assert fdpass.check_stream_socket(a.fileno()) is None
        b.close()
        assert fdpass.check_stream_socket(a.fileno()) is None  # peer gone: the worker reads EOF and exits
        cases = {r: "not a socket", udp.fileno(): "not an AF_UNIX socket", d2.fileno(): "not a stream socket",
                 seq2.fileno(): "not a stream socket", unconnected.fileno(): "not connected"}
        for fd, why in cases.items():
            problem = fdpass.check_stream_socket(fd)
            assert problem is not None and problem.startswith(why), (fd, problem)
            os.fstat(fd)  # still open: the fd stays the caller's
        assert a.fileno() >= 0 and udp.fileno() >= 0
    finally:
        for s in (a, udp, d2, seq1, seq2, unconnected):
            s.close()
        os.close(r)
        os.close(w)
