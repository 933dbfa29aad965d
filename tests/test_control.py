"""forkserver.control, sans-IO: handshake, framing, fd attribution, and typed errors — no sockets involved.

Fds are real (os.pipe / /dev/null) so that "closed on every error path" is checked for real.
"""

import os
import struct

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forkserver import control
from forkserver.control import (
    BadRequest,
    ControlConnection,
    ErrorReply,
    FrameDecoder,
    Role,
    Spawn,
    Spawned,
    State,
    StatsRequest,
)
from forkserver.errors import ControlProtocolError, InvalidTenantId

KEY = bytes(range(32))
TENANT = "0123456789abcdef0123456789abcdef"


def devnull() -> int:
    return os.open(os.devnull, os.O_RDONLY)


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


def pump(src: ControlConnection, dst: ControlConnection, split: int | None = None) -> list:
    """Move everything src wants to send into dst (optionally in chunks of ``split`` bytes, fds on the
    chunk holding the frame's first byte); return dst's events."""
    for frame, fds in src.data_to_send():
        if split is None:
            dst.receive_data(frame, fds)
        else:
            for i in range(0, len(frame), split):
                dst.receive_data(frame[i:i + split], fds if i == 0 else [])
    events = []
    while (ev := dst.next_event()) is not None:
        events.append(ev)
    return events


def handshake(split=None, key_parent=KEY):
    t = ControlConnection(Role.TEMPLATE, KEY, pid=1234)
    p = ControlConnection(Role.PARENT, key_parent)
    t.start()
    assert pump(t, p, split) == []
    assert pump(p, t, split) == []
    assert pump(t, p, split) == []
    return t, p


def raw_frame(body) -> bytes:
    packed = msgpack.packb(body, use_bin_type=True)
    return struct.pack(">I", len(packed)) + packed


@pytest.mark.parametrize("split", [None, 1, 7])
def test_handshake_and_spawn_round_trip(split):
    t, p = handshake(split)
    assert t.state is State.READY and p.state is State.READY and p.peer_pid == 1234
    fd = devnull()
    p.send(Spawn(7, TENANT, {"a": 1}, fd))
    (ev,) = pump(p, t, split)
    assert isinstance(ev, Spawn) and ev.request_id == 7 and ev.tenant == TENANT and ev.options == {"a": 1}
    assert ev.fd == fd  # sans-IO: the fd number travels as given
    pidfd = devnull()
    t.send(Spawned(7, 42, pidfd))
    (ev,) = pump(t, p, split)
    assert ev == Spawned(7, 42, pidfd)
    t.send(control.Exited(42, -9))
    assert pump(t, p, split) == [control.Exited(42, -9)]
    os.close(fd)
    os.close(pidfd)


def test_wrong_key_is_refused_before_any_request():
    t = ControlConnection(Role.TEMPLATE, KEY)
    p = ControlConnection(Role.PARENT, bytes(32))
    t.start()
    pump(t, p)
    with pytest.raises(ControlProtocolError) as e:
        pump(p, t)
    assert e.value.code == "auth-failed" and t.state is State.CLOSED
    # The template queued an error frame for a best-effort send; the parent turns it into ControlProtocolError.
    with pytest.raises(ControlProtocolError) as e:
        pump(t, p)
    assert e.value.code == "auth-failed"


def test_request_before_auth_is_fatal_and_its_fd_closed():
    t = ControlConnection(Role.TEMPLATE, KEY)
    t.start()
    fd = devnull()
    frame, fds = control.encode(Spawn(1, TENANT, {}, fd))
    t.receive_data(frame, [fd])
    with pytest.raises(ControlProtocolError) as e:
        t.next_event()
    assert e.value.code == "auth-failed" and not is_open(fd)


def test_template_must_prove_the_key():
    t = ControlConnection(Role.TEMPLATE, bytes(32))  # an impostor without our key
    p = ControlConnection(Role.PARENT, KEY)
    t.start()
    pump(t, p)
    p_out = p.data_to_send()
    # Forge a welcome with a garbage mac
    p.receive_data(*control.encode(control.Welcome(b"\0" * 32, 1)))
    with pytest.raises(ControlProtocolError) as e:
        p.next_event()
    assert e.value.code == "auth-failed" and p_out


def test_unauthenticated_frames_are_small():
    t = ControlConnection(Role.TEMPLATE, KEY)
    t.start()
    t.receive_data(struct.pack(">I", control.MAX_FRAME_UNAUTHENTICATED + 1))
    with pytest.raises(ControlProtocolError) as e:
        t.next_event()
    assert e.value.code == "frame-too-large"


def test_oversized_frame_after_auth_is_fatal_and_closes_held_fds():
    t, _ = handshake()
    fd = devnull()
    t.receive_data(struct.pack(">I", control.MAX_FRAME + 1) + b"xx", [fd])
    with pytest.raises(ControlProtocolError) as e:
        t.next_event()
    assert e.value.code == "frame-too-large" and not is_open(fd)
    assert t.state is State.CLOSED


def test_parent_accepts_a_stats_reply_listing_every_child_beyond_a_request_frame():
    t, p = handshake()
    children = [[f"{i:032x}-{i % 65536:04x}", 100000 + i, 1.7e9 + i] for i in range(control.MAX_LISTED_CHILDREN)]
    t.send(control.StatsReply(5, {"spawns": 1, "live": len(children), "children": children, "children_omitted": 3}))
    (frame, _), = t.data_to_send()
    assert control.MAX_FRAME < len(frame) <= control.MAX_REPLY_FRAME  # the bound is about the worst case
    (reply,) = pump_frames(frame, p)
    assert reply.request_id == 5 and reply.stats["children"] == children
    # a reply past the parent's bound is still fatal, and the template's own bound stays MAX_FRAME
    p.receive_data(struct.pack(">I", control.MAX_REPLY_FRAME + 1))
    with pytest.raises(ControlProtocolError) as e:
        p.next_event()
    assert e.value.code == "frame-too-large"


def pump_frames(frame: bytes, dst: ControlConnection) -> list:
    dst.receive_data(frame)
    events = []
    while (ev := dst.next_event()) is not None:
        events.append(ev)
    return events


@pytest.mark.parametrize("body,code", [
    (b"\xc1", "bad-request"),  # never-used msgpack byte
    (msgpack.packb([1, 2]), "bad-request"),
    (msgpack.packb({"t": "nope", "id": 3}), "bad-request"),
    (msgpack.packb({"t": "spawn", "id": 3, "tenant": TENANT}), "bad-request"),  # missing options
    (msgpack.packb({"t": "spawn", "id": 3, "tenant": 5, "options": {}}), "bad-request"),
    (msgpack.packb({"t": "spawn", "id": True, "tenant": TENANT, "options": {}}), "bad-request"),
    (msgpack.packb({"t": "spawn", "id": 3, "tenant": TENANT, "options": {}, "x": 1}), "bad-request"),
    (msgpack.packb({"t": "spawn", "id": 3, "tenant": TENANT, "options": {}}), "missing-fd"),
    (msgpack.packb({"t": "spawned", "id": 3, "pid": 1}), "missing-fd"),  # a reply sent to the template
])
def test_bad_requests_are_typed_and_connection_survives(body, code):
    t, p = handshake()
    t.receive_data(struct.pack(">I", len(body)) + body)
    ev = t.next_event()
    assert isinstance(ev, BadRequest) and ev.code == code
    assert ev.request_id in (3, None)
    # still usable
    p.send(StatsRequest(9))
    assert pump(p, t) == [StatsRequest(9)]


def test_extra_fds_are_refused_and_closed():
    t, _ = handshake()
    fds = [devnull(), devnull()]
    frame, _ = control.encode(Spawn(5, TENANT, {}, fds[0]))
    t.receive_data(frame, fds)
    ev = t.next_event()
    assert ev == BadRequest(5, "extra-fds", ev.message)
    assert not any(map(is_open, fds))


def test_fds_on_a_request_that_takes_none_are_closed():
    t, _ = handshake()
    fd = devnull()
    frame, _ = control.encode(StatsRequest(4))
    t.receive_data(frame, [fd])
    ev = t.next_event()
    assert isinstance(ev, BadRequest) and ev.code == "extra-fds" and not is_open(fd)


def test_stray_fds_in_the_middle_of_a_frame_are_fatal_and_closed():
    t, _ = handshake()
    fd = devnull()
    frame, _ = control.encode(StatsRequest(4))
    t.receive_data(frame[:3])
    t.receive_data(frame[3:], [fd])  # no frame starts in this chunk
    with pytest.raises(ControlProtocolError) as e:
        t.next_event()
    assert e.value.code == "bad-fds" and not is_open(fd)


def test_close_releases_fds_of_a_truncated_frame():
    t, _ = handshake()
    fd = devnull()
    frame, _ = control.encode(Spawn(1, TENANT, {}, fd))
    t.receive_data(frame[:-1], [fd])
    assert t.next_event() is None
    t.close()  # EOF with a partial frame
    assert not is_open(fd)


def test_fd_attributed_to_last_frame_starting_in_chunk():
    # One chunk holding a whole fd-less frame and the start of a spawn: the fd belongs to the spawn.
    t, _ = handshake()
    fd = devnull()
    a, _ = control.encode(StatsRequest(1))
    b, _ = control.encode(Spawn(2, TENANT, {}, fd))
    t.receive_data(a + b[:5], [fd])
    assert t.next_event() == StatsRequest(1)
    assert t.next_event() is None
    t.receive_data(b[5:])
    ev = t.next_event()
    assert isinstance(ev, Spawn) and ev.request_id == 2 and ev.fd == fd
    os.close(fd)


@settings(max_examples=60, deadline=None)
@given(cuts=st.lists(st.integers(min_value=1, max_value=400), max_size=6), n=st.integers(1, 5))
def test_pipelined_spawns_any_split(cuts, n):
    """Many spawns in flight, the byte stream cut anywhere (fds riding on the chunk with the frame start,
    as the kernel delivers them): every spawn gets exactly its own fd."""
    t, _ = handshake()
    fds = [devnull() for _ in range(n)]
    try:
        stream, starts = b"", []
        for i, fd in enumerate(fds):
            frame, _ = control.encode(Spawn(i, TENANT, {"i": i}, fd))
            starts.append(len(stream))
            stream += frame
        # Chunk boundaries: arbitrary cuts, plus a forced boundary right after each fd-carrying frame start
        # (the kernel ends a read after the segment carrying fds).
        bounds = sorted({0, len(stream), *(c % len(stream) for c in cuts)})
        got = []
        for lo, hi in zip(bounds, bounds[1:]):
            chunk_starts = [i for i, s in enumerate(starts) if lo <= s < hi]
            # deliver each fd-carrying frame start in its own read that ends inside that frame
            pos = lo
            for i in chunk_starts:
                seg_end = min(hi, starts[i + 1] if i + 1 < len(starts) else len(stream))
                t.receive_data(stream[pos:seg_end], [fds[i]])
                pos = seg_end
                while (ev := t.next_event()) is not None:
                    got.append(ev)
            if pos < hi:
                t.receive_data(stream[pos:hi])
            while (ev := t.next_event()) is not None:
                got.append(ev)
        assert [(e.request_id, e.fd) for e in got] == list(enumerate(fds))
    finally:
        for fd in fds:
            if is_open(fd):
                os.close(fd)


@settings(max_examples=100, deadline=None)
@given(body=st.binary(max_size=200))
def test_garbage_bodies_never_crash(body):
    t, _ = handshake()
    t.receive_data(struct.pack(">I", len(body)) + body)
    try:
        ev = t.next_event()
    except ControlProtocolError:
        return
    assert ev is None or isinstance(ev, (BadRequest, Spawn, StatsRequest))


def test_send_guards():
    t, p = handshake()
    with pytest.raises(RuntimeError):
        p.send(ErrorReply(1, "x"))  # a parent never sends errors
    fresh = ControlConnection(Role.PARENT, KEY)
    with pytest.raises(RuntimeError):
        fresh.send(StatsRequest(1))
    with pytest.raises(ValueError):
        ControlConnection(Role.PARENT, b"short")


def test_decoder_refuses_fd_batch_flood():
    d = FrameDecoder()
    fds = [devnull() for _ in range(FrameDecoder.MAX_PENDING_BATCHES + 1)]
    d.feed(struct.pack(">I", 1000))
    with pytest.raises(ControlProtocolError):
        for fd in fds:
            d.feed(b"x", [fd])
    assert not any(map(is_open, fds))


@pytest.mark.parametrize("tenant", [TENANT, TENANT + "-00ff"])
def test_valid_tenants(tenant):
    assert control.validate_tenant(tenant) == tenant


@pytest.mark.parametrize("tenant", [
    TENANT.upper(), TENANT[:-1], TENANT + "0", TENANT + "-0", TENANT + "-00fff", TENANT + "\n", "", None, 5,
    "g" * 32, TENANT + "_0000",
])
def test_invalid_tenants(tenant):
    with pytest.raises(InvalidTenantId):
        control.validate_tenant(tenant)
    assert issubclass(InvalidTenantId, ValueError)


def test_options_validation():
    assert control.validate_options({"a": 1, "b": None, "c": "x", "d": b"y", "e": 1.5, "f": True}) == {
        "a": 1, "b": None, "c": "x", "d": b"y", "e": 1.5, "f": True}
    with pytest.raises(TypeError):
        control.validate_options([1])
    for bad in ({1: 2}, {"a": [1]}, {"a": float("nan")}, {str(i): i for i in range(40)}, {"a": 2**70}):
        with pytest.raises(ValueError):
            control.validate_options(bad)


def test_a_template_key_in_a_secret_page_authenticates_a_bytes_key_parent():
    from forkserver.secret import Key

    key = Key.from_bytes(KEY)
    t = ControlConnection(Role.TEMPLATE, key, pid=1)
    p = ControlConnection(Role.PARENT, KEY)
    t.start()
    assert pump(t, p) == [] and pump(p, t) == [] and pump(t, p) == []
    assert t.state is State.READY and p.state is State.READY
    assert t._key is key  # shared, not copied into the connection
    wrong = ControlConnection(Role.TEMPLATE, Key.from_bytes(bytes(32)), pid=1)
    wrong.start()
    pump(wrong, p2 := ControlConnection(Role.PARENT, KEY))
    with pytest.raises(ControlProtocolError):
        pump(p2, wrong)
