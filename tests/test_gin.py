"""GIN redo (walredo_template/pg/gin.py, pg/gin_posting.py): the oracle on tests/workloads/gin.sql in the
three index configurations, hand-made records for the paths PostgreSQL's workload never takes, the
posting-list codec, hypothesis mutations of real GIN records and of the pages they apply to, and gin_mask."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mutations import check_outcome, check_rebuilt_samples, flipped_page, header_and_special, mutate, mutated_record
from pgcluster import INDEX_CONFIG_NAMES
from recordbuilder import Block, build_record

from walredo_template import BufferTag
from walredo_template.pg import gin
from walredo_template.pg import gin_posting as GP
from walredo_template.pg import indexpage as IP
from walredo_template.pg import page as P
from walredo_template.pg.errors import BlockNotReferenced, InvalidPage, InvalidRecord, RedoError, UnsupportedRecord
from walredo_template.pg.xlogrecord import decode_record
from walredo_template.redo import apply_records

RM = gin.RM_ID
PREFIX = gin.NAME + "/"
# Every (record kind, block role) the workload must make PostgreSQL write and the oracle compare. SPLIT's
# blocks 0-2 and VACUUM_PAGE are restored from the images they must carry: those are applied (the image
# is PostgreSQL's page itself), not compared, and listed in EXPECTED_APPLIED.
EXPECTED_KINDS = [
    "Gin/CREATE_PTREE",
    "Gin/INSERT", "Gin/INSERT [block 1]",
    "Gin/SPLIT [block 3]",
    "Gin/VACUUM_DATA_LEAF_PAGE",
    "Gin/DELETE_PAGE", "Gin/DELETE_PAGE [block 1]", "Gin/DELETE_PAGE [block 2]",
    "Gin/UPDATE_META_PAGE", "Gin/UPDATE_META_PAGE [block 1]",
    "Gin/INSERT_LISTPAGE",
    "Gin/DELETE_LISTPAGE", "Gin/DELETE_LISTPAGE [block 1]", "Gin/DELETE_LISTPAGE [block 2]",
]
EXPECTED_APPLIED = ["Gin/SPLIT", "Gin/SPLIT [block 1]", "Gin/SPLIT [block 2]", "Gin/VACUUM_PAGE"]
# INSERT and SPLIT variants (flags: ISDATA 1, ISLEAF 2, ROOT 4) the workload must write.
EXPECTED_INSERT_FLAGS = {0, 1, 2, 3}  # entry internal, data internal, entry leaf, data leaf
EXPECTED_SPLIT_FLAGS = {0, 4, 2, 6, 3, 7}  # entry internal (+root), entry leaf (+root), data leaf (+root)
EXPECTED_ACTIONS = {GP.SEGMENT_INSERT, GP.SEGMENT_REPLACE, GP.SEGMENT_ADDITEMS}  # in data leaf INSERTs
EXPECTED_VACUUM_ACTIONS = {GP.SEGMENT_DELETE, GP.SEGMENT_REPLACE}

SPC, DB, REL = 1663, 5, 80000
META = BufferTag(SPC, DB, REL, 0, 0)
PAGE = BufferTag(SPC, DB, REL, 0, 1)
PAGE2 = BufferTag(SPC, DB, REL, 0, 2)
PAGE3 = BufferTag(SPC, DB, REL, 0, 3)
LSN0 = 0x1000
LSN = 0x2000
INVALID = 0xFFFFFFFF


# -- the oracle --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", INDEX_CONFIG_NAMES)
def test_gin_records_match_postgres(oracle_results, name):
    res = oracle_results.get(name)
    mine, applied = res.rmgr_kinds(PREFIX)
    print(f"\n[{name}] GIN compared: " + ", ".join(f"{k} {v}" for k, v in mine.items()))
    print(f"[{name}] GIN applied: " + ", ".join(f"{k} {v}" for k, v in applied.items()))
    missing = [k for k in EXPECTED_KINDS if not mine.get(k)]
    assert not missing, f"the workload no longer produces {missing}"
    missing = [k for k in EXPECTED_APPLIED if not applied.get(k)]
    assert not missing, f"the workload no longer produces {missing}"
    gin_pages = {t for t, rm in res.page_rmgr.items() if rm == RM}
    assert len(gin_pages) > 50
    disk = res.disk
    assert not [m for m in disk.mismatches if m[0] in gin_pages]
    assert not [m for m in disk.lsn_mismatches if m[0] in gin_pages]


def _actions(data: bytes) -> set[int]:
    n = struct.unpack_from("<H", data)[0]
    p, out = 2, set()
    for _ in range(n):
        a = data[p + 1]
        p += 2
        if a in (GP.SEGMENT_INSERT, GP.SEGMENT_REPLACE):
            p += 8 + ((struct.unpack_from("<H", data, p + 6)[0] + 1) & ~1)
        elif a == GP.SEGMENT_ADDITEMS:
            p += 2 + 6 * struct.unpack_from("<H", data, p)[0]
        out.add(a)
    return out


def test_workload_writes_every_insert_split_and_recompress_variant(wal_captures):
    cap = wal_captures.get("indexes")
    inserts, splits, actions, vacuum_actions, metas = set(), set(), set(), set(), set()
    for _s, _e, raw in cap.records:
        if raw[17] != RM:
            continue
        rec = decode_record(raw, verify_crc=False)
        op = rec.info & 0xF0
        if op == gin.XLOG_GIN_INSERT:
            flags = struct.unpack_from("<H", rec.main_data)[0]
            inserts.add(flags)
            if flags == 3:
                actions |= _actions(rec.blocks[0].data or b"")
        elif op == gin.XLOG_GIN_SPLIT:
            splits.add(struct.unpack_from("<H", rec.main_data, 24)[0])
        elif op == gin.XLOG_GIN_VACUUM_DATA_LEAF_PAGE:
            vacuum_actions |= _actions(rec.blocks[0].data or b"")
        elif op == gin.XLOG_GIN_UPDATE_META_PAGE:
            prev_tail, _rl, ntuples = struct.unpack_from("<IIi", rec.main_data, 72)
            metas.add("tuples" if ntuples > 0 else "link" if prev_tail != INVALID else "metapage only")
    assert EXPECTED_INSERT_FLAGS <= inserts, inserts
    assert EXPECTED_SPLIT_FLAGS <= splits, splits
    assert EXPECTED_ACTIONS <= actions, actions
    assert EXPECTED_VACUUM_ACTIONS <= vacuum_actions, vacuum_actions
    # tuples appended to the tail, a new sublist linked after the old tail, the metapage alone
    assert metas == {"tuples", "link", "metapage only"}, metas


# -- hand-made pages and records ---------------------------------------------------------------------------

def gpage(flags: int, lsn: int = LSN0, rightlink: int = INVALID, maxoff: int = 0) -> bytearray:
    page = bytearray(P.BLCKSZ)
    P.page_init(page, 8)
    struct.pack_into("<IHH", page, 8184, rightlink, maxoff, flags)
    P.set_lsn(page, lsn)
    return page


def opaque(page: bytes | bytearray) -> tuple[int, int, int]:
    return struct.unpack_from("<IHH", page, 8184)


def itup(key: int, size: int = 16, tid: tuple[int, int] = (0, 0)) -> bytes:
    """An index tuple of ``size`` bytes (t_tid = tid, t_info = size) with a recognizable body."""
    return struct.pack("<HHHH", tid[0] >> 16, tid[0] & 0xFFFF, tid[1], size) + bytes([key & 0xFF]) * (size - 8)


def entry_page(*tuples: bytes, flags: int = gin.GIN_LEAF, lsn: int = LSN0) -> bytearray:
    page = gpage(flags, lsn)
    for t in tuples:
        IP.add_item(page, t, IP.items(page) + 1)
    return page


def items_of(page: bytes | bytearray) -> list[bytes]:
    return [bytes(IP.item(page, i)) for i in range(1, IP.items(page) + 1)]


def tid(blk: int, off: int) -> int:
    return blk << 16 | off


def leaf_page(*segments: list[int], lsn: int = LSN0) -> bytearray:
    page = gpage(gin.GIN_DATA | gin.GIN_LEAF | gin.GIN_COMPRESSED, lsn)
    data = b"".join(GP.encode_segment(s)[0] for s in segments)
    page[32:32 + len(data)] = data
    struct.pack_into("<H", page, 12, 32 + len(data))
    return page


def leaf_items(page: bytes | bytearray) -> list[list[int]]:
    out, pos, end = [], 32, P.get_lower(page)
    buf = bytes(page)
    while pos < end:
        out.append(GP.decode_segment(buf, pos))
        pos += GP.segment_size(buf, pos, end)
    return out


def posting_item(child: int, key: tuple[int, int]) -> bytes:
    return struct.pack("<HHHHH", child >> 16, child & 0xFFFF, key[0] >> 16, key[0] & 0xFFFF, key[1])


def internal_data_page(*items: bytes, lsn: int = LSN0) -> bytearray:
    page = gpage(gin.GIN_DATA, lsn, maxoff=len(items))
    data = b"".join(items)
    page[32:32 + len(data)] = data
    struct.pack_into("<H", page, 12, 32 + len(data))
    return page


def redo(tag: BufferTag, base: bytes | bytearray | None, info: int, blocks: list[Block], main: bytes,
         lsn: int = LSN) -> bytearray:
    raw = build_record(RM, info, blocks, main)
    return bytearray(apply_records(tag, None if base is None else bytes(base), [(lsn, raw)]))


def insert_main(flags: int, left: int = 0, right: int = 0) -> bytes:
    if flags & gin.GIN_INSERT_ISLEAF:
        return struct.pack("<H", flags)
    return struct.pack("<HHHHH", flags, left >> 16, left & 0xFFFF, right >> 16, right & 0xFFFF)


def actions(*acts: tuple[int, int, bytes]) -> bytes:
    return struct.pack("<H", len(acts)) + b"".join(struct.pack("<BB", s, a) + d for s, a, d in acts)


def additems(*tids: int) -> bytes:
    return struct.pack("<H", len(tids)) + b"".join(struct.pack("<HHH", t >> 32, (t >> 16) & 0xFFFF, t & 0xFFFF)
                                                   for t in tids)


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


# CREATE_PTREE

def test_create_ptree_initializes_a_compressed_leaf():
    seg = GP.encode_segment([tid(1, 1), tid(1, 2), tid(3, 4)])[0]
    main = struct.pack("<I", len(seg)) + seg
    page = redo(PAGE, None, 0x10, [Block(0, PAGE, will_init=True)], main)
    assert opaque(page) == (INVALID, 0, gin.GIN_DATA | gin.GIN_LEAF | gin.GIN_COMPRESSED)
    assert P.get_lower(page) == 32 + len(seg) and P.get_upper(page) == 8184 and P.get_lsn(page) == LSN
    assert leaf_items(page) == [[tid(1, 1), tid(1, 2), tid(3, 4)]]
    # an image to apply is restored, then overwritten by the initialization (XLogInitBufferForRedo)
    img = bytes(entry_page(itup(1), lsn=0))
    assert redo(PAGE, None, 0x10, [Block(0, PAGE, will_init=True, image=img)], main) == page
    with pytest.raises(InvalidRecord, match="WILL_INIT"):
        redo(PAGE, leaf_page(), 0x10, [Block(0, PAGE)], main)
    with pytest.raises(InvalidRecord, match="does not fit"):
        redo(PAGE, None, 0x10, [Block(0, PAGE, will_init=True)], main[:-2])
    with pytest.raises(InvalidRecord, match="does not fit"):
        redo(PAGE, None, 0x10, [Block(0, PAGE, will_init=True)], struct.pack("<I", 8153) + bytes(8153))


# INSERT, entry tree

def entry_insert(offset: int, tup: bytes, delete: bool = False) -> bytes:
    return struct.pack("<HBx", offset, delete) + tup


def test_entry_leaf_insert_and_replace():
    base = entry_page(itup(1), itup(2), itup(3))
    page = redo(PAGE, base, 0x20, [Block(0, PAGE, data=entry_insert(2, itup(9, 24)))], insert_main(2))
    assert items_of(page) == [itup(1), itup(9, 24), itup(2), itup(3)]
    page = redo(PAGE, base, 0x20, [Block(0, PAGE, data=entry_insert(2, itup(9, 40), True))], insert_main(2))
    assert items_of(page) == [itup(1), itup(9, 40), itup(3)]
    page = redo(PAGE, base, 0x20, [Block(0, PAGE, data=entry_insert(4, itup(9)))], insert_main(2))
    assert items_of(page)[-1] == itup(9)
    with pytest.raises(InvalidRecord, match="too large"):
        redo(PAGE, base, 0x20, [Block(0, PAGE, data=entry_insert(5, itup(9)))], insert_main(2))
    with pytest.raises(InvalidRecord, match="invalid index offnum"):
        redo(PAGE, base, 0x20, [Block(0, PAGE, data=entry_insert(7, itup(9), True))], insert_main(2))
    with pytest.raises(InvalidRecord, match="does not fit the record"):
        redo(PAGE, base, 0x20, [Block(0, PAGE, data=entry_insert(2, itup(9, 24))[:-1])], insert_main(2))
    with pytest.raises(InvalidRecord, match="truncated"):
        redo(PAGE, base, 0x20, [Block(0, PAGE, data=b"\x01\x00")], insert_main(2))
    with pytest.raises(InvalidRecord, match="posting tree page"):
        redo(PAGE, leaf_page(), 0x20, [Block(0, PAGE, data=entry_insert(1, itup(9)))], insert_main(2))


def test_entry_internal_insert_sets_the_downlink_and_clears_the_childs_split_flag():
    base = entry_page(itup(1, tid=(7, 0)), itup(2, tid=(8, 0)), flags=0)
    blocks = [Block(0, PAGE, data=entry_insert(2, itup(5, tid=(7, 0)))), Block(1, PAGE2)]
    main = insert_main(0, 7, 0x12345)
    page = redo(PAGE, base, 0x20, blocks, main)
    assert items_of(page) == [itup(1, tid=(7, 0)), itup(5, tid=(7, 0)), itup(2, tid=(0x12345, 0))]
    child = entry_page(itup(1), flags=gin.GIN_LEAF | gin.GIN_INCOMPLETE_SPLIT)
    out = redo(PAGE2, child, 0x20, blocks, main)
    assert opaque(out)[2] == gin.GIN_LEAF and P.get_lsn(out) == LSN and out[8:8184] == child[8:8184]
    # the child is only touched by internal inserts; a leaf insert leaves a block 1 alone
    leaf_blocks = [Block(0, PAGE, data=entry_insert(1, itup(5))), Block(1, PAGE2)]
    assert redo(PAGE2, child, 0x20, leaf_blocks, insert_main(2)) == child
    with pytest.raises(InvalidRecord, match="block 1 is missing"):
        redo(PAGE, base, 0x20, blocks[:1], main)
    with pytest.raises(InvalidRecord, match="main data"):
        redo(PAGE, base, 0x20, blocks, main[:6])


def test_a_line_pointer_outside_the_tuple_space_is_refused_even_where_redo_does_not_move_it():
    child = entry_page(itup(1), itup(2), flags=gin.GIN_LEAF | gin.GIN_INCOMPLETE_SPLIT)
    w = P.get_itemid(child, 2)
    struct.pack_into("<I", child, 28, (w & ~0x7FFF) | 8180)  # item 2 now runs into the special space
    blocks = [Block(0, PAGE, data=entry_insert(2, itup(5))), Block(1, PAGE2)]
    with pytest.raises(InvalidPage, match="outside the tuple space"):
        redo(PAGE2, child, 0x20, blocks, insert_main(0, 7, 9))
    with pytest.raises(InvalidPage, match="outside the tuple space"):
        redo(PAGE2, child, 0x20, [Block(0, PAGE2, data=entry_insert(1, itup(5)))], insert_main(2))


def test_page_already_past_the_record_is_left_alone():
    base = entry_page(itup(1), lsn=LSN + 100)
    assert redo(PAGE, base, 0x20, [Block(0, PAGE, data=entry_insert(1, itup(2)))], insert_main(2)) == base


# INSERT, data tree

def test_data_internal_insert():
    base = internal_data_page(posting_item(10, (1, 1)), posting_item(11, (9, 9)))
    data = struct.pack("<H", 2) + posting_item(20, (5, 5))
    page = redo(PAGE, base, 0x20, [Block(0, PAGE, data=data), Block(1, PAGE2)], insert_main(1, 11, 21))
    assert page[32:62] == posting_item(10, (1, 1)) + posting_item(20, (5, 5)) + posting_item(21, (9, 9))
    assert opaque(page)[1] == 3 and P.get_lower(page) == 62
    data = struct.pack("<H", 3) + posting_item(22, (0xFFFFFFFF, 0xFFFF))  # append: the right child is new
    page = redo(PAGE, base, 0x20, [Block(0, PAGE, data=data), Block(1, PAGE2)], insert_main(1, 11, 21))
    assert page[32:62] == base[32:52] + posting_item(22, (0xFFFFFFFF, 0xFFFF))
    for off in (0, 4):
        with pytest.raises(InvalidRecord, match="outside"):
            redo(PAGE, base, 0x20, [Block(0, PAGE, data=struct.pack("<H", off) + posting_item(1, (1, 1))),
                                    Block(1, PAGE2)], insert_main(1, 11, 21))
    with pytest.raises(InvalidRecord, match="not those of a posting tree internal"):
        redo(PAGE, leaf_page(), 0x20, [Block(0, PAGE, data=data), Block(1, PAGE2)], insert_main(1, 11, 21))
    full = gpage(gin.GIN_DATA, maxoff=815)
    struct.pack_into("<H", full, 12, 32 + 8150)
    with pytest.raises(InvalidRecord, match="no room"):
        redo(PAGE, full, 0x20, [Block(0, PAGE, data=data), Block(1, PAGE2)], insert_main(1, 11, 21))


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


# SPLIT, VACUUM_PAGE

def split_main(flags: int) -> bytes:
    return struct.pack("<IIIIIIH", SPC, DB, REL, INVALID, 7, 8, flags)


def test_split_restores_images_and_clears_the_child_flag():
    left, right = bytes(entry_page(itup(1), lsn=0)), bytes(entry_page(itup(2), lsn=0))
    child = entry_page(itup(3), flags=gin.GIN_LEAF | gin.GIN_INCOMPLETE_SPLIT)
    blocks = [Block(0, PAGE, image=left), Block(1, PAGE2, image=right), Block(3, PAGE3)]
    page = redo(PAGE2, entry_page(), 0x30, blocks, split_main(0))
    assert page[8:] == right[8:] and P.get_lsn(page) == LSN
    out = redo(PAGE3, child, 0x30, blocks, split_main(0))
    assert opaque(out)[2] == gin.GIN_LEAF
    # a leaf split has no child: block 3 is left alone
    assert redo(PAGE3, child, 0x30, blocks, split_main(2)) == child
    with pytest.raises(InvalidRecord, match="full-page image of block 1"):
        redo(PAGE, None, 0x30, [Block(0, PAGE, image=left), Block(1, PAGE2), Block(3, PAGE3)], split_main(0))
    with pytest.raises(InvalidRecord, match="full-page image of block 1"):
        redo(PAGE, None, 0x30, [Block(0, PAGE, image=left), Block(1, PAGE2, image=right, apply_image=False),
                                Block(3, PAGE3)], split_main(0))
    with pytest.raises(InvalidRecord, match="block 2 is missing"):
        redo(PAGE, None, 0x30, blocks, split_main(gin.GIN_SPLIT_ROOT))
    with pytest.raises(InvalidRecord, match="block 3 is missing"):
        redo(PAGE, None, 0x30, blocks[:2], split_main(0))


def test_vacuum_page_needs_an_image():
    img = bytes(entry_page(itup(1), lsn=0))
    assert redo(PAGE, None, 0x40, [Block(0, PAGE, image=img)], b"")[8:] == img[8:]
    with pytest.raises(InvalidRecord, match="did not restore"):
        redo(PAGE, entry_page(itup(2)), 0x40, [Block(0, PAGE)], b"")


# DELETE_PAGE

def test_delete_page_on_each_of_its_three_pages():
    main = struct.pack("<H2xII", 2, 77, 4242)
    blocks = [Block(0, PAGE), Block(1, PAGE2), Block(2, PAGE3)]
    victim = leaf_page([tid(1, 1)], lsn=LSN0)
    out = redo(PAGE, victim, 0x50, blocks, main)
    assert opaque(out)[2] == victim[8190] | gin.GIN_DELETED and P.get_prune_xid(out) == 4242
    assert out[24:8184] == victim[24:8184]
    parent = internal_data_page(posting_item(5, (1, 1)), posting_item(1, (2, 2)), posting_item(6, (3, 3)))
    out = redo(PAGE2, parent, 0x50, blocks, main)
    assert out[32:52] == posting_item(5, (1, 1)) + posting_item(6, (3, 3)) and opaque(out)[1] == 2
    assert P.get_lower(out) == 52 and out[52:62] == posting_item(6, (3, 3))  # memmove leaves the old last
    out = redo(PAGE2, parent, 0x50, blocks, struct.pack("<H2xII", 3, 77, 4242))
    assert out[32:52] == parent[32:52] and P.get_lower(out) == 52
    left = leaf_page([tid(0, 1)])
    out = redo(PAGE3, left, 0x50, blocks, main)
    assert opaque(out)[0] == 77
    for off in (0, 4):
        with pytest.raises(InvalidRecord, match="outside"):
            redo(PAGE2, parent, 0x50, blocks, struct.pack("<H2xII", off, 77, 4242))
    with pytest.raises(InvalidRecord, match="internal page"):
        redo(PAGE2, leaf_page(), 0x50, blocks, main)
    for tag in (PAGE, PAGE3):
        with pytest.raises(InvalidRecord, match="not those of a posting tree page"):
            redo(tag, entry_page(itup(1)), 0x50, blocks, main)
    with pytest.raises(InvalidRecord, match="block 2 is missing"):
        redo(PAGE, victim, 0x50, blocks[:2], main)


# pending list

def meta_bytes(head: int = 4, tail: int = 5, ntuples: int = 3) -> bytes:
    return struct.pack("<IIIIqIIIxxxxqi4x", head, tail, 100, 2, ntuples, 9, 3, 4, 50, 2)


def update_meta_main(prev_tail: int, new_rightlink: int, ntuples: int, meta: bytes | None = None) -> bytes:
    return struct.pack("<III4x", SPC, DB, REL) + (meta or meta_bytes()) + struct.pack("<IIi", prev_tail,
                                                                                     new_rightlink, ntuples)


def test_update_meta_page_rebuilds_the_metapage():
    main = update_meta_main(INVALID, INVALID, 0)
    page = redo(META, gpage(gin.GIN_META), 0x60, [Block(0, META, will_init=True)], main)
    assert opaque(page) == (INVALID, 0, gin.GIN_META) and P.get_lower(page) == 80 and P.get_upper(page) == 8184
    assert page[24:80] == meta_bytes() and P.get_lsn(page) == LSN
    # an LSN past the record does not matter: the metapage is rebuilt all the same
    assert redo(META, gpage(gin.GIN_META, lsn=LSN * 2), 0x60, [Block(0, META, will_init=True)], main) == page
    with pytest.raises(InvalidRecord, match="WILL_INIT"):
        redo(META, gpage(gin.GIN_META), 0x60, [Block(0, META)], main)
    with pytest.raises(InvalidRecord, match="main data"):
        redo(META, None, 0x60, [Block(0, META, will_init=True)], main[:80])


def test_update_meta_page_appends_to_the_tail_or_links_a_new_sublist():
    tail = gpage(gin.GIN_LIST | gin.GIN_LIST_FULLROW, maxoff=1)
    IP.add_item(tail, itup(1), 1)
    tuples = itup(2) + itup(3, 24)
    blocks = [Block(0, META, will_init=True), Block(1, PAGE, data=tuples)]
    out = redo(PAGE, tail, 0x60, blocks, update_meta_main(INVALID, INVALID, 2))
    assert items_of(out) == [itup(1), itup(2), itup(3, 24)] and opaque(out)[1] == 2
    empty = gpage(gin.GIN_LIST)
    out = redo(PAGE, empty, 0x60, blocks, update_meta_main(INVALID, INVALID, 2))
    assert items_of(out) == [itup(2), itup(3, 24)] and opaque(out)[1] == 1
    with pytest.raises(InvalidRecord, match="posting tree page"):
        redo(PAGE, leaf_page(), 0x60, blocks, update_meta_main(INVALID, INVALID, 2))
    for n, match in ((3, "truncated"), (1, "left over")):
        with pytest.raises(InvalidRecord, match=match):
            redo(PAGE, tail, 0x60, blocks, update_meta_main(INVALID, INVALID, n))
    link = [Block(0, META, will_init=True), Block(1, PAGE)]
    out = redo(PAGE, tail, 0x60, link, update_meta_main(1, 9, 0))
    assert opaque(out)[0] == 9 and out[24:8184] == tail[24:8184]
    # neither tuples nor a previous tail: block 1 is not PostgreSQL's to touch
    assert redo(PAGE, tail, 0x60, link, update_meta_main(INVALID, 9, 0)) == tail
    with pytest.raises(InvalidRecord, match="block 1 is missing"):
        redo(META, None, 0x60, blocks[:1], update_meta_main(1, 9, 0))


def test_insert_listpage():
    tuples = itup(1) + itup(2, 32)
    page = redo(PAGE, None, 0x70, [Block(0, PAGE, data=tuples, will_init=True)], struct.pack("<Ii", INVALID, 2))
    assert opaque(page) == (INVALID, 1, gin.GIN_LIST | gin.GIN_LIST_FULLROW)
    assert items_of(page) == [itup(1), itup(2, 32)]
    page = redo(PAGE, leaf_page(), 0x70, [Block(0, PAGE, data=tuples, will_init=True)], struct.pack("<Ii", 8, 2))
    assert opaque(page) == (8, 0, gin.GIN_LIST) and len(items_of(page)) == 2
    with pytest.raises(InvalidRecord, match="does not fit the record"):
        redo(PAGE, None, 0x70, [Block(0, PAGE, data=tuples[:-1], will_init=True)], struct.pack("<Ii", 8, 2))
    with pytest.raises(InvalidRecord, match="does not fit on the page"):
        redo(PAGE, None, 0x70, [Block(0, PAGE, data=itup(1, 4096) * 2, will_init=True)], struct.pack("<Ii", 8, 2))


def test_delete_listpage():
    main = meta_bytes(INVALID, INVALID, 0) + struct.pack("<i4x", 2)
    blocks = [Block(0, META, will_init=True), Block(1, PAGE, will_init=True), Block(2, PAGE2, will_init=True),
              Block(3, PAGE3, will_init=True)]
    page = redo(META, None, 0x80, blocks, main)
    assert page[24:80] == meta_bytes(INVALID, INVALID, 0) and opaque(page)[2] == gin.GIN_META
    listpage = entry_page(itup(1), flags=gin.GIN_LIST)
    page = redo(PAGE2, listpage, 0x80, blocks, main)
    assert opaque(page) == (INVALID, 0, gin.GIN_DELETED) and P.get_lower(page) == 24 and P.get_lsn(page) == LSN
    assert redo(PAGE3, listpage, 0x80, blocks, main) == listpage  # past ndeleted
    with pytest.raises(InvalidRecord, match="block 2 is missing"):
        redo(META, None, 0x80, blocks[:2], main)


def test_block_0_is_required_whichever_page_is_rebuilt():
    with pytest.raises(InvalidRecord, match="block 0 is missing"):
        redo(PAGE2, leaf_page(), 0x10, [Block(3, PAGE2, will_init=True)], struct.pack("<I", 0))
    # a block PostgreSQL does not read is left alone
    page = leaf_page()
    seg = GP.encode_segment([tid(1, 1)])[0]
    assert redo(PAGE2, page, 0x10, [Block(0, PAGE, will_init=True), Block(1, PAGE2)],
                struct.pack("<I", len(seg)) + seg) == page


def test_record_not_touching_the_page():
    with pytest.raises(BlockNotReferenced):
        redo(PAGE2, entry_page(itup(1)), 0x20, [Block(0, PAGE, data=entry_insert(1, itup(2)))], insert_main(2))


@pytest.mark.parametrize("info", [0x00, 0xA0, 0xB0, 0xF0])
def test_unknown_info_codes(info):
    with pytest.raises(UnsupportedRecord, match=f"Gin info {info:#04x}") as ei:
        redo(PAGE, entry_page(itup(1)), info, [Block(0, PAGE, data=b"\x01\x00")], b"\x02\x00")
    assert ei.value.rmid == RM and ei.value.info == info
    assert gin.record_name(info) == f"Gin/UNKNOWN ({info:x})"


def test_record_names():
    assert [gin.record_name(i) for i in (0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0x80, 0x90, 0x21)] == [
        "Gin/CREATE_PTREE", "Gin/INSERT", "Gin/SPLIT", "Gin/VACUUM_PAGE", "Gin/DELETE_PAGE",
        "Gin/UPDATE_META_PAGE", "Gin/INSERT_LISTPAGE", "Gin/DELETE_LISTPAGE", "Gin/VACUUM_DATA_LEAF_PAGE",
        "Gin/INSERT"]


# mask

def test_mask():
    page = entry_page(itup(1), itup(2))
    page[100:110] = b"x" * 10  # the hole: masked
    struct.pack_into("<H", page, 10, P.PD_HAS_FREE_LINES | P.PD_PAGE_FULL)
    struct.pack_into("<I", page, 20, 1234)  # pd_prune_xid: compared (stricter than PostgreSQL)
    gin.mask(page, 1)
    want = entry_page(itup(1), itup(2))
    want[0:10] = bytes(10)
    struct.pack_into("<I", want, 20, 1234)
    assert page == want
    # pd_lower at the header's end: the hole is compared, as in PostgreSQL
    bare = gpage(gin.GIN_LEAF)
    bare[100] = 1
    gin.mask(bare, 1)
    assert bare[100] == 1
    # a deleted page: everything past the header masked, pd_lower/pd_upper too, but its flags compared
    dead = leaf_page([tid(1, 1)])
    struct.pack_into("<H", dead, 8190, gin.GIN_DATA | gin.GIN_LEAF | gin.GIN_DELETED)
    struct.pack_into("<I", dead, 8184, 55)
    gin.mask(dead, 3)
    assert dead[24:8190] == bytes(8166) and P.get_lower(dead) == 0 and P.get_upper(dead) == 0
    assert opaque(dead)[2] == gin.GIN_DATA | gin.GIN_LEAF | gin.GIN_DELETED
    zero = bytearray(P.BLCKSZ)
    gin.mask(zero, 5)
    assert zero == bytes(P.BLCKSZ)
    bad = entry_page()
    struct.pack_into("<H", bad, 16, 8192)
    with pytest.raises(InvalidPage):
        gin.mask(bad, 2)


# -- hypothesis: mutated real records and pages ------------------------------------------------------------

def _samples(res):
    return [s for s in res.samples if s[4][0] == RM]


@pytest.fixture(scope="module")
def samples(oracle_results):
    out = _samples(oracle_results.get("indexes"))
    assert len({s[4] for s in out}) >= 12
    return out


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_records_give_a_valid_page_or_a_redo_error(samples, data):
    tag, base, end, raw, _key = data.draw(st.sampled_from(samples))
    check_outcome(tag, base, end, mutated_record(data, raw, ("main", "block", "block", "drop", "init")), RM)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_base_pages_give_a_valid_page_or_a_redo_error(samples, data):
    """Bytes 8.. of the page before the record are flipped (pd_lsn is kept: a page past the record is
    returned as it came, whatever it holds)."""
    with_base = [s for s in samples if s[1] is not None]
    tag, base, end, raw, _key = data.draw(st.sampled_from(with_base))
    check_outcome(tag, flipped_page(data, base, header_and_special(40, 8), most=6), end, raw, RM)


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


def test_real_samples_replay_to_their_consistency_images(samples):
    """The rebuilt-record path the mutation tests take reproduces PostgreSQL's page when nothing is mutated."""
    check_rebuilt_samples(samples, gin.mask)
