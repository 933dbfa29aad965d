"""GIN posting lists (walredo_template/pg/gin_posting.py): the varbyte segment codec against PostgreSQL's
layout, ADDITEMS and the data leaf recompression actions of ginRedoRecompress (and the pre-9.4
uncompressed leaf converted first), on hand-made pages, and hypothesis mutations of those actions.
"""

from __future__ import annotations

import struct

import pytest
from ginpages import (
    INVALID,
    LSN,
    PAGE,
    actions,
    additems,
    entry_page,
    gpage,
    insert_main,
    itup,
    leaf_items,
    leaf_page,
    opaque,
    redo,
    tid,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from mutations import mutate
from recordbuilder import Block

from walredo_template.pg import gin
from walredo_template.pg import gin_posting as GP
from walredo_template.pg import page as P
from walredo_template.pg.errors import InvalidPage, InvalidRecord, RedoError

# codec

def test_varbyte_codec_roundtrips_and_matches_postgres_layout():
    items = [tid(0, 1), tid(0, 2), tid(0, 130), tid(1, 1), tid(1000, 7), tid(0x3FFFFFFF, 2047)]
    seg, n = GP.encode_segment(items)
    assert n == len(items)
    hi, lo, posid, nbytes = struct.unpack_from("<HHHH", seg)
    assert (hi, lo, posid) == (0, 0, 1)
    # deltas: 1 -> 01; 128 -> 80 01; 2048 - 129 = 1919 -> ff 0e; ...
    assert seg[8:13] == bytes([0x01, 0x80, 0x01, 0xFF, 0x0E])
    assert len(seg) == 8 + ((nbytes + 1) & ~1) and (nbytes % 2 == 0 or seg[-1] == 0)
    assert GP.decode_segment(seg, 0) == items
    # the seventh byte of a varbyte integer is taken whole (bits 42..49)
    big = [tid(0, 1), tid(0xFFFFFFFF, 5)]
    seg, _ = GP.encode_segment(big)
    assert struct.unpack_from("<H", seg, 6)[0] == 7
    assert GP.decode_segment(seg, 0) == big


def test_encode_stops_when_full_and_refuses_unsorted_items():
    items = [tid(b, 1) for b in range(100)]  # 2-byte deltas
    seg, n = GP.encode_segment(items, 8 + 21)
    assert n == 11 and struct.unpack_from("<H", seg, 6)[0] == 20
    with pytest.raises(InvalidRecord, match="ascending"):
        GP.encode_segment([tid(5, 1), tid(4, 1)])
    with pytest.raises(InvalidRecord, match="ascending"):
        GP.encode_segment([tid(5, 1), tid(5, 1)])


def test_merge_items_as_gin_merge_item_pointers():
    assert GP.merge_items([1, 2], [3, 4]) == [1, 2, 3, 4]
    assert GP.merge_items([5, 6], [3, 4]) == [3, 4, 5, 6]
    assert GP.merge_items([2, 4, 6], [1, 4, 5, 9]) == [1, 2, 4, 5, 6, 9]
    assert GP.merge_items([], [1]) == [1] and GP.merge_items([1], []) == [1]


def test_decode_refuses_a_segment_ending_inside_an_integer():
    seg = bytearray(GP.encode_segment([tid(0, 1), tid(5, 1)])[0])
    seg[8 + struct.unpack_from("<H", seg, 6)[0] - 1] |= 0x80
    with pytest.raises(InvalidPage, match="inside a varbyte"):
        GP.decode_segment(bytes(seg), 0)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 0xFFFFFFFF), st.integers(0, 2047)), min_size=1, max_size=200,
                unique=True))
def test_codec_roundtrip_property(pairs):
    items = sorted(tid(b, o) for b, o in pairs)
    seg, n = GP.encode_segment(items)
    assert n == len(items)
    assert GP.decode_segment(seg, 0) == items


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 0xFFFFFFFF), st.integers(0, 2047)), min_size=1, max_size=80, unique=True),
       st.lists(st.tuples(st.integers(0, 0xFFFFFFFF), st.integers(0, 2047)), min_size=1, max_size=20, unique=True),
       st.booleans())
def test_additems_matches_merging_and_reencoding(old_pairs, new_pairs, after):
    """ADDITEMS appends deltas to the old bytes when the new items follow the old ones: the result must be
    the segment that decoding, merging and re-encoding (ginRedoRecompress's way) gives."""
    old = sorted(tid(b, o) for b, o in old_pairs)
    new = sorted(tid(b, o) for b, o in new_pairs)
    if after:
        new = [t for t in new if t > old[-1]] or [old[-1] + 1 if (old[-1] & 0xFFFF) < 2047 else old[-1] + 0x10000]
        new = [t for t in new if (t >> 16) <= 0xFFFFFFFF]
        if not new:
            return
    out = redo(PAGE, leaf_page(old), 0x90, [Block(0, PAGE, data=actions((0, GP.SEGMENT_ADDITEMS,
                                                                           additems(*new))))], b"")
    want = GP.encode_segment(GP.merge_items(new, old))[0]
    assert bytes(out[32:P.get_lower(out)]) == want


def test_additems_on_a_non_canonical_segment_reencodes_it():
    seg = bytearray(GP.encode_segment([tid(1, 1), tid(1, 3)])[0])
    assert seg[8:9] == b"\x02"
    seg[6:12] = struct.pack("<H", 2) + b"\x82\x00" + b"\x00\x00"  # delta 2 in two bytes (padding: none)
    page = gpage(gin.GIN_DATA | gin.GIN_LEAF | gin.GIN_COMPRESSED)
    page[32:32 + 10] = seg[:10]
    struct.pack_into("<H", page, 12, 42)
    out = redo(PAGE, page, 0x90, [Block(0, PAGE, data=actions((0, GP.SEGMENT_ADDITEMS, additems(tid(1, 4)))))],
               b"")
    assert bytes(out[32:P.get_lower(out)]) == GP.encode_segment([tid(1, 1), tid(1, 3), tid(1, 4)])[0]


def test_data_leaf_recompress_actions():
    s0 = [tid(1, i) for i in range(1, 40)]
    s1 = [tid(2, i) for i in range(1, 40)]
    s2 = [tid(3, i) for i in range(1, 40)]
    base = leaf_page(s0, s1, s2)
    new = [tid(2, 100), tid(2, 101)]
    seg_new = GP.encode_segment(new)[0]

    def run(data: bytes, page: bytes | bytearray = base) -> bytearray:
        return redo(PAGE, page, 0x20, [Block(0, PAGE, data=data)], insert_main(3))

    # ADDITEMS in the middle of segment 1 (items merged, a duplicate kept once)
    page = run(actions((1, GP.SEGMENT_ADDITEMS, additems(tid(2, 5), tid(2, 50)))))
    assert leaf_items(page) == [s0, s1 + [tid(2, 50)], s2]
    page = run(actions((1, GP.SEGMENT_ADDITEMS, additems(tid(1, 0x7F0), tid(2, 1)))))
    assert leaf_items(page) == [s0, [tid(1, 0x7F0)] + s1, s2]
    # DELETE, INSERT before a segment, REPLACE, INSERT past the last segment
    page = run(actions((0, GP.SEGMENT_DELETE, b""), (1, GP.SEGMENT_INSERT, seg_new),
                       (1, GP.SEGMENT_REPLACE, seg_new), (3, GP.SEGMENT_INSERT, seg_new)))
    assert leaf_items(page) == [new, new, s2, new]
    assert P.get_lsn(page) == LSN
    # deleting the last segment leaves its bytes past pd_lower, as the in-place copy does
    page = run(actions((2, GP.SEGMENT_DELETE, b"")))
    assert leaf_items(page) == [s0, s1] and page[P.get_lower(page):P.get_lower(base)] == \
        base[P.get_lower(page):P.get_lower(base)]
    # no actions at all: ginRedoRecompress leaves an empty posting list
    assert leaf_items(run(actions())) == []
    # an empty leaf gets its first segment
    assert leaf_items(run(actions((0, GP.SEGMENT_INSERT, seg_new)), leaf_page())) == [new]


def test_data_leaf_recompress_refuses_bad_actions():
    base = leaf_page([tid(1, 1), tid(1, 2)], [tid(2, 1)])
    seg = GP.encode_segment([tid(9, 1)])[0]
    seg2 = GP.encode_segment([tid(9, 1), tid(9, 2), tid(9, 3)])[0]
    bad = {
        "unexpected GIN leaf action": actions((0, 7, b"")),
        "past the last segment": actions((2, GP.SEGMENT_DELETE, b"")),
        "the page has 2": actions((3, GP.SEGMENT_INSERT, seg)),
        "after segment": actions((1, GP.SEGMENT_DELETE, b""), (0, GP.SEGMENT_DELETE, b"")),
        "truncated \\(segment\\)": actions((0, GP.SEGMENT_REPLACE, seg2[:-1])),
        "truncated \\(segment header\\)": actions((0, GP.SEGMENT_REPLACE, seg[:-1])),
        "truncated \\(items\\)": actions((0, GP.SEGMENT_ADDITEMS, additems(tid(1, 3))[:-1])),
        "truncated \\(action header\\)": struct.pack("<H", 2) + struct.pack("<BB", 0, GP.SEGMENT_DELETE),
        "no action count": b"\x01",
        "ascending": actions((0, GP.SEGMENT_ADDITEMS, additems(tid(1, 9), tid(1, 3)))),
    }
    for match, data in bad.items():
        with pytest.raises(InvalidRecord, match=match):
            redo(PAGE, base, 0x20, [Block(0, PAGE, data=data)], insert_main(3))
    big = GP.encode_segment([tid(b, 1) for b in range(0, 4080)])[0]  # 8166 bytes: no room next to the rest
    with pytest.raises(InvalidRecord, match="do not fit"):
        redo(PAGE, base, 0x20, [Block(0, PAGE, data=actions((2, GP.SEGMENT_INSERT, big)))], insert_main(3))
    with pytest.raises(InvalidRecord, match="leaf page"):
        redo(PAGE, entry_page(itup(1)), 0x20, [Block(0, PAGE, data=actions())], insert_main(3))
    broken = bytearray(base)
    struct.pack_into("<H", broken, 32 + 6, 5000)  # first segment claims more bytes than the list has
    with pytest.raises(InvalidPage, match="runs past"):
        redo(PAGE, broken, 0x20, [Block(0, PAGE, data=actions((1, GP.SEGMENT_DELETE, b"")))], insert_main(3))
    low = bytearray(base)
    struct.pack_into("<H", low, 12, 28)
    with pytest.raises(InvalidPage, match="pd_lower"):
        redo(PAGE, low, 0x20, [Block(0, PAGE, data=actions())], insert_main(3))


def test_pre_94_uncompressed_leaf_is_converted_first():
    items = [tid(1, 1), tid(1, 2), tid(4, 7)]
    page = gpage(gin.GIN_DATA | gin.GIN_LEAF, maxoff=3)
    for i, t in enumerate(items):
        struct.pack_into("<HHH", page, 32 + 6 * i, t >> 32, (t >> 16) & 0xFFFF, t & 0xFFFF)
    out = redo(PAGE, page, 0x90, [Block(0, PAGE, data=actions((0, GP.SEGMENT_ADDITEMS, additems(tid(5, 1)))))],
               b"")
    assert leaf_items(out) == [items + [tid(5, 1)]]
    assert opaque(out) == (INVALID, 0, gin.GIN_DATA | gin.GIN_LEAF | gin.GIN_COMPRESSED)
    empty = gpage(gin.GIN_DATA | gin.GIN_LEAF)
    out = redo(PAGE, empty, 0x90, [Block(0, PAGE, data=actions())], b"")
    assert P.get_lower(out) == 32 and opaque(out)[2] & gin.GIN_COMPRESSED
    lying = gpage(gin.GIN_DATA | gin.GIN_LEAF, maxoff=2000)
    with pytest.raises(InvalidPage, match="more than the page holds"):
        redo(PAGE, lying, 0x90, [Block(0, PAGE, data=actions())], b"")


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_mutated_hand_made_recompressions_give_a_valid_page_or_a_redo_error(data):
    """The data leaf paths on hand-made pages: random segments, random action lists (bytes mutated)."""
    segs = []
    blk = 0
    for _ in range(data.draw(st.integers(0, 5))):
        n = data.draw(st.integers(1, 60))
        segs.append([tid(blk + i // 100, 1 + i % 100) for i in range(n)])
        blk += 2
    base = leaf_page(*segs)
    acts = []
    for _ in range(data.draw(st.integers(0, 4))):
        segno = data.draw(st.integers(0, 6))
        kind = data.draw(st.integers(0, 5))
        if kind in (GP.SEGMENT_INSERT, GP.SEGMENT_REPLACE):
            b0 = data.draw(st.integers(0, 20))
            payload = GP.encode_segment([tid(b0, 1 + j) for j in range(5)])[0]
        elif kind == GP.SEGMENT_ADDITEMS:
            payload = additems(*sorted({tid(data.draw(st.integers(0, 12)), data.draw(st.integers(1, 200)))
                                        for _ in range(data.draw(st.integers(0, 6)))}))
        else:
            payload = b""
        acts.append((segno, kind, payload))
    raw = actions(*acts)
    if data.draw(st.booleans()):
        raw = mutate(data, raw, 2)
    try:
        out = redo(PAGE, base, 0x90, [Block(0, PAGE, data=raw)], b"")
    except RedoError:
        return
    P.check_page(out)
    assert 32 <= P.get_lower(out) <= P.get_upper(out)
