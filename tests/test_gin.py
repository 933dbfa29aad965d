"""GIN redo (walredo_template/pg/gin.py): the oracle on tests/workloads/gin.sql in the three index
configurations, hand-made records for the paths PostgreSQL's workload never takes, hypothesis mutations of
real GIN records and of the pages they apply to, and gin_mask. The posting-list codec and the data leaf
recompression (pg/gin_posting.py) are tests/test_gin_posting.py; the hand-made pages are tests/ginpages.py."""

from __future__ import annotations

import struct

import pytest
from ginpages import (
    DB,
    INVALID,
    LSN,
    LSN0,
    META,
    PAGE,
    PAGE2,
    PAGE3,
    REL,
    RM,
    SPC,
    entry_page,
    gpage,
    insert_main,
    internal_data_page,
    items_of,
    itup,
    leaf_items,
    leaf_page,
    opaque,
    posting_item,
    redo,
    tid,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mutations import check_outcome, check_rebuilt_samples, flipped_page, header_and_special, mutated_record
from pgcluster import INDEX_CONFIG_NAMES
from recordbuilder import Block

from walredo_template.pg import gin
from walredo_template.pg import gin_posting as GP
from walredo_template.pg import indexpage as IP
from walredo_template.pg import page as P
from walredo_template.pg.errors import BlockNotReferenced, InvalidPage, InvalidRecord, UnsupportedRecord
from walredo_template.pg.xlogrecord import decode_record

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


def test_real_samples_replay_to_their_consistency_images(samples):
    """The rebuilt-record path the mutation tests take reproduces PostgreSQL's page when nothing is mutated."""
    check_rebuilt_samples(samples, gin.mask)
