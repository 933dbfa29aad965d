"""The child protocol codec, fed bytes directly: splits, corruption, bounds, wrong types."""

import struct

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from walredo_template import BufferTag
from walredo_template import protocol as p

TAG = BufferTag(1663, 5, 16384, 0, 7)
PAGE = bytes(range(256)) * 32


def frame(payload) -> bytes:
    body = msgpack.packb(payload, use_bin_type=True)
    return struct.pack(">I", len(body)) + body


def encode(m) -> bytes:
    """Frame any message object of the protocol with its own encoder (the protocol has none for objects:
    the parent and the child build each frame from its fields)."""
    match m:
        case p.Ping(id=id):
            return p.encode_ping(id)
        case p.Redo():
            return p.encode_redo(m.tag, m.lsn, m.base_image, m.records, m.pg_version, m.id,
                                 wal_log_hints=m.wal_log_hints)
        case p.Pong(id=id):
            return p.encode_pong(id)
        case p.Page(page=page, id=id):
            return p.encode_page(page, id)
        case p.Error(code=code, message=text, id=id):
            return p.encode_error(code, text, id)
    raise TypeError(m)


def decode_all(decoder, data: bytes) -> list:
    decoder.receive_data(data)
    return list(decoder)


# --- round trips -------------------------------------------------------------------------------------

REQUESTS = [
    p.Ping(),
    p.Ping(id=0),
    p.Ping(id=2**64 - 1),
    p.Redo(TAG, 0x16B3740, None, [(0x16B3700, b"\x01\x02"), (0x16B3740, b"")], 15, id=9),
    p.Redo(TAG, 1, PAGE, [], 15),
    p.Redo(TAG, 1, PAGE, [(1, b"r")], 16),  # version is the child's decision, not the codec's
    p.Redo(TAG, 1, PAGE, [(1, b"r")], 15, id=2, wal_log_hints=True),
]
RESPONSES = [p.Pong(), p.Pong(5), p.Page(PAGE, 1), p.Error("invalid-record", "bad crc", 3), p.Error("protocol", "")]


def test_requests_round_trip_in_one_buffer():
    data = b"".join(encode(m) for m in REQUESTS)
    assert decode_all(p.RequestDecoder(), data) == REQUESTS


def test_responses_round_trip_in_one_buffer():
    data = b"".join(encode(m) for m in RESPONSES)
    assert decode_all(p.ResponseDecoder(), data) == RESPONSES


def test_byte_by_byte_split():
    data = b"".join(encode(m) for m in REQUESTS)
    d = p.RequestDecoder()
    out = []
    for i in range(len(data)):
        d.receive_data(data[i : i + 1])
        out.extend(d)
    assert out == REQUESTS
    assert d.buffered == 0 and d.next_event() is None


def test_truncated_frame_is_need_data_and_buffered():
    data = p.encode_ping(1)
    d = p.RequestDecoder()
    d.receive_data(data[:-1])
    assert d.next_event() is None
    assert d.buffered == len(data) - 1


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_arbitrary_split_points(data):
    blob = b"".join(encode(m) for m in RESPONSES * 3)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(blob)), max_size=20)))
    d = p.ResponseDecoder()
    out = []
    prev = 0
    for c in cuts + [len(blob)]:
        d.receive_data(blob[prev:c])
        out.extend(d)
        prev = c
    assert out == RESPONSES * 3


u64 = st.integers(0, 2**64 - 1)
u32 = st.integers(0, 2**32 - 1)


@settings(max_examples=200, deadline=None)
@given(
    tag=st.tuples(u32, u32, u32, u32, u32),
    lsn=u64,
    base=st.one_of(st.none(), st.binary(min_size=8192, max_size=8192)),
    # valid requests only: records in strictly ascending end-LSN order (the request's LSN is moved to the last)
    records=st.lists(st.tuples(u64, st.binary(max_size=64)), max_size=5, unique_by=lambda r: r[0]).map(sorted),
    ver=st.integers(-(2**63), 2**63 - 1),
    id=st.one_of(st.none(), u64),
    hints=st.booleans(),
)
def test_redo_round_trip_property(tag, lsn, base, records, ver, id, hints):
    if base is None and not records:
        records = [(lsn, b"x")]
    lsn = max(lsn, records[-1][0]) if records else lsn
    msg = p.Redo(BufferTag(*tag), lsn, base, records, ver, id, hints)
    assert decode_all(p.RequestDecoder(), encode(msg)) == [msg]


# --- malformed frames ----------------------------------------------------------------------------------


def test_oversized_length_fails_before_payload_arrives():
    d = p.RequestDecoder(max_frame_size=100)
    d.receive_data(struct.pack(">I", 101))
    with pytest.raises(p.FrameTooLarge):
        d.next_event()


def test_default_bound_is_64_mib():
    d = p.RequestDecoder()
    d.receive_data(struct.pack(">I", p.MAX_FRAME_SIZE + 1))
    with pytest.raises(p.FrameTooLarge):
        d.next_event()
    d = p.RequestDecoder()
    d.receive_data(struct.pack(">I", p.MAX_FRAME_SIZE))
    assert d.next_event() is None  # at the bound: just waits for the payload


def test_encoder_refuses_oversized_redo():
    with pytest.raises(p.FrameTooLarge):
        p.encode_redo(TAG, 1, None, [(1, b"x" * 200)], max_frame_size=100)


def test_decoder_stays_broken():
    d = p.RequestDecoder()
    d.receive_data(frame([1, 2]) + p.encode_ping())
    with pytest.raises(p.InvalidMessage) as first:
        d.next_event()
    with pytest.raises(p.InvalidMessage) as again:
        d.next_event()
    assert again.value is first.value


@pytest.mark.parametrize(
    "payload",
    [
        b"",  # empty frame
        b"\xc1",  # never-used msgpack byte
        b"\x92\x01",  # array header promising 2 items, 1 given
        b"\x01\x02",  # two values in one frame
        b"\xa2\xff\xfe",  # str that is not UTF-8
    ],
)
def test_not_msgpack(payload):
    d = p.RequestDecoder()
    d.receive_data(struct.pack(">I", len(payload)) + payload)
    with pytest.raises(p.MalformedFrame):
        d.next_event()


GOOD_REDO = {
    "type": "redo",
    "tag": [1, 2, 3, 0, 4],
    "lsn": 10,
    "base_image": None,
    "records": [[9, b"x"]],
    "pg_version": 15,
}


def _redo(**changes):
    m = dict(GOOD_REDO)
    for k, v in changes.items():
        if v is KeyError:
            del m[k]
        else:
            m[k] = v
    return m


@pytest.mark.parametrize(
    "payload",
    [
        [1, 2],
        "ping",
        {"type": "nope"},
        {"type": 1},
        {"id": 1},
        {b"type": "ping"},
        {"type": "ping", "id": -1},
        {"type": "ping", "id": True},
        {"type": "ping", "id": "1"},
        {"type": "ping", "extra": 1},
        {"type": "pong"},  # a response is not a request
        _redo(tag=[1, 2, 3, 4]),
        _redo(tag=[1, 2, 3, 4, "5"]),
        _redo(tag=[1, 2, 3, 4, True]),
        _redo(tag=(1, 2)),
        _redo(lsn=1.5),
        _redo(lsn=KeyError),
        _redo(base_image="x" * 8192),
        _redo(records=[[1, "x"]]),
        _redo(records=[[1, b"x", 3]]),
        _redo(records=[b"x"]),
        _redo(records={"a": 1}),
        _redo(pg_version="15"),
        _redo(pg_version=None),
        _redo(wal_log_hints=1),
        _redo(wal_log_hints=None),
    ],
)
def test_invalid_requests(payload):
    d = p.RequestDecoder()
    d.receive_data(frame(payload))
    with pytest.raises(p.InvalidMessage):
        d.next_event()


@pytest.mark.parametrize(
    "payload",
    [
        {"type": "page", "page": b"x"},
        {"type": "page", "page": "x" * 8192},
        {"type": "page"},
        {"type": "error", "code": "nope", "message": ""},
        {"type": "error", "code": "internal"},
        {"type": "error", "code": "internal", "message": b"bytes"},
        {"type": "ping"},  # a request is not a response
    ],
)
def test_invalid_responses(payload):
    d = p.ResponseDecoder()
    d.receive_data(frame(payload))
    with pytest.raises(p.InvalidMessage):
        d.next_event()


def test_out_of_range_redo_values_decode_for_bad_request():
    # Well-formed but invalid values are not a protocol error: the child answers bad-request and goes on.
    msg = frame(_redo(lsn=-1, base_image=b"short", tag=[1, 2, 3, 0, 2**40]))
    (event,) = decode_all(p.RequestDecoder(), msg)
    with pytest.raises(p.BadRedoRequest):
        p.validate_redo(event.tag, event.lsn, event.base_image, event.records, event.pg_version)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_never_crashes(blob):
    for decoder in (p.RequestDecoder(max_frame_size=1000), p.ResponseDecoder(max_frame_size=1000)):
        decoder.receive_data(blob)
        try:
            list(decoder)
        except p.ProtocolError:
            pass


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text() | st.binary(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["type", "id", "tag", "lsn", "records", "page", "code", "message"]),
                       msgpack_values | st.sampled_from(["ping", "redo", "pong", "page", "error"])))
def test_arbitrary_maps_decode_or_raise_typed(payload):
    for decoder in (p.RequestDecoder(), p.ResponseDecoder()):
        decoder.receive_data(frame(payload))
        try:
            event = decoder.next_event()
        except p.ProtocolError:
            continue
        assert isinstance(event, (p.Ping, p.Redo, p.Pong, p.Page, p.Error))


# --- encoder argument checks ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, exc",
    [
        ((TAG[:4], 1, None, [(1, b"x")]), p.BadRedoRequest),
        ((TAG, -1, None, [(1, b"x")]), p.BadRedoRequest),
        ((TAG, 1, b"short", [(1, b"x")]), p.BadRedoRequest),
        ((TAG, 1, None, []), p.BadRedoRequest),
        ((TAG, 1, None, [(2**64, b"x")]), p.BadRedoRequest),
        ((TAG, 1, None, [(1, "x")]), TypeError),
        ((TAG, 1, None, [(1.0, b"x")]), TypeError),
        ((TAG, 1, None, b"x"), TypeError),
        ((TAG, 1, "p" * 8192, [(1, b"x")]), TypeError),
        ((TAG, True, None, [(1, b"x")]), TypeError),
    ],
)
def test_encode_redo_rejects_bad_arguments(args, exc):
    with pytest.raises(exc):
        p.encode_redo(*args)


def test_wal_log_hints_is_optional_on_the_wire():
    (event,) = decode_all(p.RequestDecoder(), frame(GOOD_REDO))
    assert event.wal_log_hints is False
    (event,) = decode_all(p.RequestDecoder(), frame({**GOOD_REDO, "wal_log_hints": True}))
    assert event.wal_log_hints is True
    with pytest.raises(TypeError):
        p.encode_redo(TAG, 1, None, [(1, b"x")], wal_log_hints=1)


def test_encode_checks():
    with pytest.raises(ValueError):
        p.encode_page(b"x")
    with pytest.raises(ValueError):
        p.encode_error("nope", "x")
    with pytest.raises(p.InvalidMessage):
        p.encode_ping(-1)


def test_validate_redo_records_fast_check_and_detailed_loop_agree():
    """validate_redo accepts exact (int, bytes) tuples in one pass; anything else goes through the loop that
    names the problem (and still accepts lists, bytearray and memoryview records)."""
    tag = (1663, 5, 16384, 0, 1)
    p.validate_redo(tag, 10, None, [(9, b"x"), (10, b"y")], 15)
    p.validate_redo(tag, 10, None, [[9, bytearray(b"x")], (10, memoryview(b"y"))], 15)
    with pytest.raises(TypeError):
        p.validate_redo(tag, 9, None, [(9, b"x"), (True, b"y")], 15)
    with pytest.raises(p.BadRedoRequest):
        p.validate_redo(tag, 9, None, [(9, b"x"), (-1, b"y")], 15)
    with pytest.raises(p.BadRedoRequest):
        p.validate_redo(tag, 9, None, [(2**64, b"y")], 15)
    with pytest.raises(TypeError):
        p.validate_redo(tag, 9, None, [(9, b"x", 1)], 15)
    with pytest.raises(TypeError):
        p.validate_redo(tag, 9, None, [(9, "x")], 15)


# --- frames refused unread (the child's memory budget) ---------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 3, 1000, 1 << 20])
def test_a_frame_above_refuse_above_is_refused_unread_and_the_stream_goes_on(chunk):
    big = p.encode_redo(TAG, 1, PAGE, [(1, b"r" * 5000)], 15, id=1)
    data = p.encode_ping(0) + big + p.encode_ping(2)
    d = p.RequestDecoder(refuse_above=1000)
    events = []
    for i in range(0, len(data), chunk):
        d.receive_data(data[i:i + chunk])
        events.extend(d)
        assert d.buffered <= max(chunk, 1000) + 4  # the refused payload is never buffered
    assert events == [p.Ping(0), p.Oversized(len(big) - 4, 1000), p.Ping(2)]


def test_refuse_above_does_not_lift_the_hard_bound():
    d = p.RequestDecoder(max_frame_size=100, refuse_above=10)
    d.receive_data(struct.pack(">I", 101))
    with pytest.raises(p.FrameTooLarge):
        d.next_event()
    assert "too-large" in p.ERROR_CODES


# --- the shared frame core (walredo_template.framing) ------------------------------------------------


def test_frame_reader_splits_discards_and_counts_stream_offsets():
    from walredo_template import framing

    frames = [framing.pack({"n": i}) for i in range(3)]
    big = framing.pack({"blob": b"x" * 100})
    stream = frames[0] + big + frames[1] + frames[2]
    r = framing.FrameReader(max_frame=1000)
    got = []
    for i in range(len(stream)):  # one byte at a time: every split point
        r.feed(stream[i:i + 1])
        while (n := r.next_length()) is not None:
            if n > 50:
                r.discard(n)  # refused unread: its body is dropped as it arrives
                got.append("discarded")
                continue
            view = r.take(n)
            if view is None:
                break
            with view:
                got.append(msgpack.unpackb(view))
    assert got == [{"n": 0}, "discarded", {"n": 1}, {"n": 2}]
    assert r.consumed == r.received == len(stream) and r.buffered == 0
    with pytest.raises(framing.FrameTooLarge):
        framing.pack({"blob": b"x" * 100}, max_frame=50)
    r.feed(framing.HEADER.pack(1001))
    with pytest.raises(framing.FrameTooLarge) as e:
        r.next_length()
    assert (e.value.length, e.value.bound) == (1001, 1000)


@pytest.mark.parametrize("lsn, ends, why", [
    (0x300, [0x200, 0x100], "ascending"), (0x300, [0x200, 0x200], "ascending"), (0x1FF, [0x100, 0x200], "after"),
])
def test_records_out_of_lsn_order_or_past_the_request_lsn_are_refused(lsn, ends, why):
    records = [(e, b"r") for e in ends]
    with pytest.raises(p.BadRedoRequest, match=why):
        p.validate_redo((1, 2, 3, 0, 0), lsn, None, records, 15)
