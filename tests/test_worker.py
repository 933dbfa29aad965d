"""walredo_template.worker.main in a real forked child, spoken to over a real socketpair."""

import socket
import struct

import pytest
from walredo_child import fork_child

from walredo_template import BufferTag, worker
from walredo_template import protocol as p
from walredo_template.pg import errors as pg_errors

TAG = BufferTag(1663, 5, 16384, 0, 7)
PAGE = bytes(8192)


@pytest.fixture
def child():
    c = fork_child(worker.main)
    c.socket.settimeout(30)
    yield c
    c.cleanup()


def read_responses(sock: socket.socket, n: int) -> list:
    d = p.ResponseDecoder()
    out: list = []
    while len(out) < n:
        data = sock.recv(1 << 16)
        assert data, f"EOF after {len(out)} of {n} responses"
        d.receive_data(data)
        out.extend(d)
    assert d.buffered == 0
    return out


def read_until_eof(sock: socket.socket) -> list:
    d = p.ResponseDecoder()
    out: list = []
    while True:
        try:
            data = sock.recv(1 << 16)
        except ConnectionResetError:  # the child closed with our unread request bytes in its queue
            break
        if not data:
            break
        d.receive_data(data)
        out.extend(d)
    return out


def test_ping(child):
    child.socket.sendall(p.encode_ping(1))
    assert read_responses(child.socket, 1) == [p.Pong(1)]


def test_pipelined_pings_answered_in_order(child):
    child.socket.sendall(b"".join(p.encode_ping(i) for i in range(500)))
    assert read_responses(child.socket, 500) == [p.Pong(i) for i in range(500)]


def test_requests_split_byte_by_byte(child):
    data = p.encode_ping(1) + p.encode_ping() + p.encode_ping(3)
    for i in range(len(data)):
        child.socket.sendall(data[i : i + 1])
    assert read_responses(child.socket, 3) == [p.Pong(1), p.Pong(), p.Pong(3)]


def test_eof_ends_the_child_cleanly(child):
    child.socket.shutdown(socket.SHUT_WR)
    assert child.wait_blocking() == 0


def test_unsupported_pg_version_is_a_typed_error_and_child_keeps_serving(child):
    child.socket.sendall(p.encode_redo(TAG, 10, PAGE, [], 16, id=1) + p.encode_ping(2))
    err, pong = read_responses(child.socket, 2)
    assert err.code == "unsupported-pg-version" and err.id == 1 and "16" in err.message
    assert pong == p.Pong(2)


def test_bad_request_values_answered_and_stream_continues(child):
    # Well-formed frames with invalid values (encoded by hand: the encoder would refuse them).
    import msgpack

    def raw(payload):
        body = msgpack.packb(payload, use_bin_type=True)
        return struct.pack(">I", len(body)) + body

    base = {"type": "redo", "tag": [1, 2, 3, 0, 4], "lsn": 10, "records": [], "pg_version": 15}
    child.socket.sendall(
        raw({**base, "id": 1, "base_image": b"short"})
        + raw({**base, "id": 2, "base_image": None})
        + raw({**base, "id": 3, "base_image": PAGE, "lsn": -5})
        + p.encode_ping(4)
    )
    r = read_responses(child.socket, 4)
    assert [(e.code, e.id) for e in r[:3]] == [("bad-request", 1), ("bad-request", 2), ("bad-request", 3)]
    assert r[3] == p.Pong(4)


@pytest.mark.parametrize(
    "garbage",
    [
        struct.pack(">I", p.MAX_FRAME_SIZE + 1),  # oversized: refused on the length alone
        struct.pack(">I", 2) + b"\xc1\xc1",  # not msgpack
        struct.pack(">I", 1) + b"\x90",  # msgpack, but an array
    ],
)
def test_malformed_frame_gets_protocol_error_then_close(child, garbage):
    child.socket.sendall(p.encode_ping(1) + p.encode_ping(2) + garbage + p.encode_ping(3))
    r = read_until_eof(child.socket)
    assert r[:2] == [p.Pong(1), p.Pong(2)]
    assert len(r) == 3 and r[2].code == "protocol" and r[2].id is None
    assert child.wait_blocking() == 0


def test_truncated_frame_then_eof_exits_cleanly(child):
    child.socket.sendall(p.encode_ping(1)[:-1])
    child.socket.shutdown(socket.SHUT_WR)
    assert read_until_eof(child.socket) == []
    assert child.wait_blocking() == 0


def test_parent_gone_mid_write_does_not_kill_child_by_sigpipe():
    import signal

    def target(sock, tenant):
        # The template restores SIGPIPE's default in its children; the worker must not die of it.
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        worker.main(sock, tenant)

    c = fork_child(target)
    try:
        c.socket.sendall(b"".join(p.encode_ping(i) for i in range(20000)))
        c.socket.close()
        assert c.wait_blocking() == 0
    finally:
        c.cleanup()


# --- the engine's outcomes, with a stand-in engine -----------------------------------------------------
# A stand-in is the only way to make the engine raise every kind of error (and to simulate an engine bug);
# the real engine's round trip is in test_real_redo_round_trip below.


def _child_with_engine(monkeypatch, engine):
    monkeypatch.setattr(worker, "apply_records", engine)  # inherited by the forked child
    c = fork_child(worker.main)
    c.socket.settimeout(30)
    return c


@pytest.mark.parametrize(
    "exc, code",
    [
        (pg_errors.UnsupportedRecord("rmgr 11", rmid=11, info=0), "unsupported-record"),
        (pg_errors.InvalidRecord("bad crc"), "invalid-record"),
        (pg_errors.BlockNotReferenced("no block 7"), "block-not-referenced"),
        (pg_errors.InvalidPage("bad version"), "invalid-page"),
        (pg_errors.MissingCompressionLibrary("lz4"), "missing-compression-library"),
        (pg_errors.RedoError("other"), "invalid-record"),
    ],
)
def test_redo_errors_are_typed_and_child_survives(monkeypatch, exc, code):
    def engine(tag, base, records, **_):
        raise exc

    c = _child_with_engine(monkeypatch, engine)
    try:
        c.socket.sendall(p.encode_redo(TAG, 10, PAGE, [(10, b"r")], id=1) + p.encode_ping(2))
        err, pong = read_responses(c.socket, 2)
        assert (err.code, err.id, err.message) == (code, 1, str(exc))
        assert pong == p.Pong(2)
    finally:
        c.cleanup()


@pytest.mark.parametrize("result", [ZeroDivisionError, b"short", None])
def test_engine_bug_is_internal_error_never_a_page(monkeypatch, result):
    def engine(tag, base, records, **_):
        if result is ZeroDivisionError:
            return 1 // 0
        return result

    c = _child_with_engine(monkeypatch, engine)
    try:
        c.socket.sendall(p.encode_redo(TAG, 10, PAGE, [(10, b"r")], id=1) + p.encode_ping(2))
        err, pong = read_responses(c.socket, 2)
        assert isinstance(err, p.Error) and (err.code, err.id) == ("internal", 1)
        assert pong == p.Pong(2)
    finally:
        c.cleanup()


def test_page_passes_through(monkeypatch):
    def engine(tag, base, records, *, wal_log_hints):
        assert wal_log_hints is (tag.blknum % 2 == 1)
        return bytes([tag.blknum]) * 8192

    c = _child_with_engine(monkeypatch, engine)
    try:
        reqs = b"".join(
            p.encode_redo(TAG._replace(blknum=i), 10, None, [(10, b"r")], id=i, wal_log_hints=i % 2 == 1)
            for i in range(50)
        )
        c.socket.sendall(reqs)
        assert read_responses(c.socket, 50) == [p.Page(bytes([i]) * 8192, i) for i in range(50)]
    finally:
        c.cleanup()


def test_real_engine_errors_are_typed(child):
    # The real engine (no stand-in): malformed input comes back as typed errors and the child goes on.
    child.socket.sendall(
        p.encode_redo(TAG, 1, None, [(1, b"\x00" * 30)], id=1)
        + p.encode_redo(TAG, 1, b"\xff" * 8192, [(1, b"\x00" * 30)], id=2)
        + p.encode_ping(3)
    )
    r = read_responses(child.socket, 3)
    assert (r[0].code, r[0].id) == ("invalid-record", 1)
    assert r[1].code in ("invalid-page", "invalid-record") and r[1].id == 2
    assert r[2] == p.Pong(3)


def test_early_answer_is_not_held_back_by_a_slow_request_behind_it(monkeypatch):
    import os

    gate_r, gate_w = os.pipe()

    def engine(tag, base, records, **_):
        if tag.blknum == 1:
            import time

            time.sleep(2 * worker.FLUSH_AFTER_SECONDS)  # longer than the batching window
        else:
            os.read(gate_r, 1)  # blocks until the test opens the gate
        return bytes([tag.blknum]) * 8192

    c = _child_with_engine(monkeypatch, engine)
    try:
        c.socket.sendall(
            p.encode_redo(TAG._replace(blknum=1), 10, None, [(10, b"r")], id=1)
            + p.encode_redo(TAG._replace(blknum=2), 10, None, [(10, b"r")], id=2)
        )
        # The second request is blocked in the engine; the first answer must arrive anyway.
        assert read_responses(c.socket, 1) == [p.Page(b"\x01" * 8192, 1)]
        os.write(gate_w, b"x")
        assert read_responses(c.socket, 1) == [p.Page(b"\x02" * 8192, 2)]
    finally:
        os.close(gate_w)
        c.cleanup()
        os.close(gate_r)


def test_prepare_warms_the_paths_and_hands_its_buffer_to_main():
    """prepare() (run by pool children before they have a tenant) drives a ping and a redo through the
    decoder, engine and encoders, and leaves the receive buffer for main() to take."""
    import mmap

    from walredo_template import worker

    assert worker.main.prepare is worker.prepare
    try:
        worker.prepare()
        assert isinstance(worker._prepared_buffer, mmap.mmap)
        assert len(worker._prepared_buffer) == worker.RECV_SIZE
    finally:
        worker._prepared_buffer = None


def test_records_out_of_lsn_order_are_refused_by_the_child_too(child):
    """A frame built without the parent's checks (another client, a fuzzer): the child answers bad-request
    for records out of LSN order or ending after the request's LSN, and keeps serving."""
    import msgpack

    def raw(id, lsn, ends):
        body = msgpack.packb({"type": "redo", "id": id, "tag": [1, 2, 3, 0, 4], "lsn": lsn, "base_image": PAGE,
                              "records": [[e, b"r"] for e in ends], "pg_version": 15}, use_bin_type=True)
        return struct.pack(">I", len(body)) + body

    child.socket.sendall(raw(1, 0x300, [0x200, 0x100]) + raw(2, 0x300, [0x200, 0x200]) + raw(3, 0x1FF, [0x200])
                         + p.encode_ping(4))
    r = read_responses(child.socket, 4)
    assert [(e.code, e.id) for e in r[:3]] == [("bad-request", 1), ("bad-request", 2), ("bad-request", 3)]
    assert "ascending" in r[0].message and "after" in r[2].message
    assert r[3] == p.Pong(4)
