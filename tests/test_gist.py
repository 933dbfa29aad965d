"""GiST redo (walredo_template/pg/gist.py) against a real PostgreSQL 15 and by hand-made records (the
hand-made pages and records are tests/gistpages.py; mutations of the real records, tests/test_gist_mutations.py).

The ``indexes*`` captures run tests/workloads/gist.sql (among the other access methods' scripts) with
``wal_consistency_checking = 'all'``: every GiST record is replayed through the engine and compared with
PostgreSQL's image masked by ``gist.mask``. The code paths the workload never produces (splits into three
or more non-root pages, no F_FOLLOW_RIGHT marking, a restored left child, several deletions plus
insertions in one PAGE_UPDATE, ASSIGN_LSN, …) are exercised with records built by tests/recordbuilder.py.
"""

from __future__ import annotations

import struct
from collections import Counter

import pytest
from gistpages import (
    LSN,
    TAG,
    assert_sane,
    block_tag,
    gist_page,
    itup,
    opaque,
    redo,
    split_data,
    split_main,
    tuples_of,
    update_main,
)
from pgcluster import INDEX_CONFIG_NAMES
from recordbuilder import Block

from walredo_template import BufferTag
from walredo_template.pg import gist
from walredo_template.pg import indexpage as IP
from walredo_template.pg import page as P
from walredo_template.pg.errors import BlockNotReferenced, InvalidPage, InvalidRecord, UnsupportedRecord
from walredo_template.pg.xlogrecord import decode_record
from walredo_template.redo import apply_records

PREFIX = gist.NAME + "/"
# Every kind the workload must produce and the oracle compare (oracle.record_kind names).
REQUIRED_KINDS = [
    "Gist/PAGE_UPDATE",  # inserts, one-for-one downlink replacements, VACUUM deletions
    "Gist/PAGE_UPDATE [block 1]",  # the left child of a split getting its downlink
    "Gist/DELETE",  # killed items removed from a full leaf
    "Gist/PAGE_SPLIT",  # block 0: the left child of an inner page split
    "Gist/PAGE_SPLIT [block 1]",
    "Gist/PAGE_SPLIT [block 2]",
    "Gist/PAGE_SPLIT [block 3]",  # root splits
    "Gist/PAGE_DELETE",
    "Gist/PAGE_DELETE [block 1]",
]


# --- the oracle ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", INDEX_CONFIG_NAMES)
def test_gist_records_match_postgres(oracle_results, wal_captures, name):
    res = oracle_results.get(name)
    compared, _applied = res.rmgr_kinds(PREFIX)
    print(f"\n[{name}] Gist compared: {compared}")
    for kind in REQUIRED_KINDS:
        assert compared.get(kind, 0) > 0, f"no {kind} compared in {name}: {compared}"
    assert sum(compared.values()) > 5000
    disk = res.disk
    gist_disk = [t for t, _d in disk.mismatches if res.page_rmgr.get(t) == gist.RM_ID]
    gist_lsn = [t for t, *_x in disk.lsn_mismatches if res.page_rmgr.get(t) == gist.RM_ID]
    assert gist_disk == [] and gist_lsn == []
    assert sum(1 for t in res.pages if res.page_rmgr.get(t) == gist.RM_ID) > 100
    # PAGE_REUSE has no block reference, so the oracle never applies it: check the capture has some, and
    # that each is refused for the very page it is about
    reuse = Counter()
    for _s, end, raw in wal_captures.get(name).records:
        if raw[17] == gist.RM_ID and raw[16] & 0xF0 == gist.XLOG_GIST_PAGE_REUSE:
            rec = decode_record(raw)
            spc, db, rel, blkno, _xid = struct.unpack_from("<IIIIQ", rec.main_data)
            assert rec.blocks == {}
            with pytest.raises(BlockNotReferenced):
                apply_records(BufferTag(spc, db, rel, 0, blkno), gist_page([]), [(end, raw)])
            reuse[rel] += 1
    print(f"[{name}] PAGE_REUSE records: {sum(reuse.values())}")
    assert sum(reuse.values()) > 0


# --- hand-made records: PAGE_UPDATE --------------------------------------------------------------

def test_update_overwrite_replaces_in_place_with_any_size():
    base = gist_page([itup(i, 16) for i in range(1, 6)], flags=0)
    for plen in (8, 16, 40):
        new = itup(99, plen)
        data = struct.pack("<H", 3) + new
        out = redo(TAG, base, 0x00, [Block(0, TAG, data=data)], update_main(1, 1))
        want = bytearray(base)
        IP.overwrite_item(want, 3, new)
        P.set_lsn(want, LSN)
        assert out == bytes(want)
        assert tuples_of(out)[2] == new and IP.items(out) == 5


def test_update_several_deletes_then_inserts_appends_after_the_rest():
    base = gist_page([itup(i) for i in range(1, 9)])
    new = [itup(50), itup(51, 24)]
    data = struct.pack("<3H", 2, 4, 7) + b"".join(new)
    out = redo(TAG, base, 0x00, [Block(0, TAG, data=data)], update_main(3, 2))
    assert tuples_of(out) == [itup(i) for i in (1, 3, 5, 6, 8)] + new
    assert opaque(out)[2] == gist.F_LEAF | gist.F_TUPLES_DELETED
    assert P.get_lsn(out) == LSN
    # an inner page is not marked F_TUPLES_DELETED
    inner = gist_page([itup(i) for i in range(1, 9)], flags=0)
    out = redo(TAG, inner, 0x00, [Block(0, TAG, data=data)], update_main(3, 2))
    assert opaque(out)[2] == 0


def test_update_without_deletes_or_tuples_only_sets_lsn():
    base = gist_page([itup(1)])
    out = redo(TAG, base, 0x00, [Block(0, TAG)], update_main(0, 0))
    assert out[8:] == base[8:] and P.get_lsn(out) == LSN


def test_update_on_empty_page_starts_at_first_offset():
    base = gist_page([])
    out = redo(TAG, base, 0x00, [Block(0, TAG, data=itup(1) + itup(2))], update_main(0, 2))
    assert tuples_of(out) == [itup(1), itup(2)]


def test_update_already_applied_page_is_left_alone():
    base = gist_page([itup(1)], lsn=LSN + 10)
    out = redo(TAG, base, 0x00, [Block(0, TAG, data=itup(2))], update_main(0, 1))
    assert out == base


def test_update_child_block_sets_nsn_and_clears_follow_right():
    child_tag = block_tag(9)
    child = gist_page([itup(1)], flags=gist.F_LEAF | gist.F_FOLLOW_RIGHT, nsn=0x77, rightlink=12)
    blocks = [Block(0, TAG, data=itup(5)), Block(1, child_tag)]
    out = redo(child_tag, child, 0x00, blocks, update_main(0, 1))
    assert opaque(out) == (LSN, 12, gist.F_LEAF, gist.GIST_PAGE_ID)
    assert P.get_lsn(out) == LSN and out[24:gist.MAX_SPECIAL] == child[24:gist.MAX_SPECIAL]
    # the target page of the same record is unaffected by the child's role
    target = redo(TAG, gist_page([]), 0x00, blocks, update_main(0, 1))
    assert tuples_of(target) == [itup(5)]


def test_update_child_restored_from_image_still_gets_nsn_and_flag():
    # the primary changes the child after taking its image, so redo applies both on top of the image
    child_tag = block_tag(9)
    image = gist_page([itup(1), itup(2)], flags=gist.F_LEAF | gist.F_FOLLOW_RIGHT, nsn=0x55)
    blocks = [Block(0, TAG, data=itup(5)), Block(1, child_tag, image=image)]
    out = redo(child_tag, None, 0x00, blocks, update_main(0, 1))
    assert opaque(out)[:3] == (LSN, gist.INVALID_BLOCK, gist.F_LEAF)
    assert P.get_lsn(out) == LSN and tuples_of(out) == [itup(1), itup(2)]
    # a child page already past the record is left alone
    newer = gist_page([itup(1)], flags=gist.F_LEAF | gist.F_FOLLOW_RIGHT, lsn=LSN)
    assert redo(child_tag, newer, 0x00, [Block(0, TAG, data=itup(5)), Block(1, child_tag)],
                update_main(0, 1)) == newer


def test_target_restored_from_image_is_not_redone():
    image = gist_page([itup(1)])
    out = redo(TAG, None, 0x00, [Block(0, TAG, image=image)], update_main(0, 1))
    assert out[8:] == image[8:] and P.get_lsn(out) == LSN


@pytest.mark.parametrize("main, data, what", [
    (update_main(0, 2), itup(1), "count short"),
    (update_main(0, 1), itup(1) + itup(2), "count long"),
    (update_main(0, 1), itup(1)[:10], "truncated tuple"),
    (update_main(0, 1), struct.pack("<HHHH", 0, 1, 1, 0) + bytes(8), "zero-size tuple"),
    (update_main(2, 0), struct.pack("<H", 1), "offsets missing"),
    (update_main(1, 1), struct.pack("<H", 9) + itup(1), "overwrite offset beyond the page"),
    (update_main(3, 0), struct.pack("<3H", 3, 2, 1), "offsets not ascending"),
    (b"\x01", b"", "short main data"),
])
def test_update_malformed_is_invalid_record(main, data, what):
    base = gist_page([itup(i) for i in range(1, 4)])
    with pytest.raises(InvalidRecord):
        redo(TAG, base, 0x00, [Block(0, TAG, data=data)], main)


def test_update_item_that_does_not_fit_is_invalid_record():
    big = [itup(i, 1000) for i in range(8)]
    base = gist_page(big)
    with pytest.raises(InvalidRecord):
        redo(TAG, base, 0x00, [Block(0, TAG, data=itup(9, 1000))], update_main(0, 1))


def test_page_without_gist_special_space_is_invalid_page():
    heap_like = bytearray(P.BLCKSZ)
    P.page_init(heap_like, 0)
    P.set_lsn(heap_like, 0x100)
    with pytest.raises(InvalidPage):
        redo(TAG, bytes(heap_like), 0x00, [Block(0, TAG, data=itup(1))], update_main(0, 1))
    with pytest.raises(InvalidPage):
        redo(TAG, bytes(heap_like), 0x00, [Block(0, block_tag(1), data=itup(1)), Block(1, TAG)], update_main(0, 1))


# --- hand-made records: DELETE -------------------------------------------------------------------

def test_delete_removes_offsets_and_clears_garbage():
    base = gist_page([itup(i) for i in range(1, 7)], flags=gist.F_LEAF | gist.F_HAS_GARBAGE)
    main = struct.pack("<IH", 1234, 3) + struct.pack("<3H", 1, 4, 6)
    out = redo(TAG, base, 0x10, [Block(0, TAG)], main)
    assert tuples_of(out) == [itup(i) for i in (2, 3, 5)]
    assert opaque(out)[2] == gist.F_LEAF | gist.F_TUPLES_DELETED
    # no offsets at all: only the flags change
    out = redo(TAG, base, 0x10, [Block(0, TAG)], struct.pack("<IH", 1234, 0))
    assert tuples_of(out) == tuples_of(base) and opaque(out)[2] == gist.F_LEAF | gist.F_TUPLES_DELETED
    with pytest.raises(InvalidRecord):
        redo(TAG, base, 0x10, [Block(0, TAG)], struct.pack("<IH", 1234, 3) + struct.pack("<2H", 1, 2))
    with pytest.raises(InvalidRecord):
        redo(TAG, base, 0x10, [Block(0, TAG)], struct.pack("<I", 1))


# --- hand-made records: PAGE_SPLIT ---------------------------------------------------------------

def test_split_into_three_pages_chains_rightlinks_and_follow_right():
    blknos = [7, 20, 21]
    pages = [[itup(1), itup(2)], [itup(3)], [itup(4), itup(5, 30)]]
    blocks = [Block(i + 1, block_tag(b), data=split_data(t), will_init=True)
              for i, (b, t) in enumerate(zip(blknos, pages))]
    main = split_main(origrlink=33, orignsn=0xABC, origleaf=True, npage=3, markfollowright=True)
    for i, b in enumerate(blknos):
        out = redo(block_tag(b), gist_page([itup(9)]), 0x30, blocks, main)
        nsn, rl, flags, pid = opaque(out)
        assert tuples_of(out) == pages[i]
        assert nsn == 0xABC and pid == gist.GIST_PAGE_ID and P.get_lsn(out) == LSN
        assert rl == (blknos[i + 1] if i < 2 else 33)
        assert flags == gist.F_LEAF | (gist.F_FOLLOW_RIGHT if i < 2 else 0)
        assert_sane(out)
    # without markfollowright (buffering build) no page is marked
    main = split_main(origrlink=33, orignsn=0xABC, origleaf=False, npage=3, markfollowright=False)
    for b in blknos:
        assert opaque(redo(block_tag(b), None, 0x30, blocks, main))[2] == 0


def test_root_split_of_an_inner_root():
    blocks = [Block(0, block_tag(40)), Block(1, block_tag(0), data=split_data([itup(1), itup(2)]), will_init=True),
              Block(2, block_tag(41), data=split_data([itup(3)]), will_init=True),
              Block(3, block_tag(42), data=split_data([itup(4)]), will_init=True)]
    main = split_main(origrlink=gist.INVALID_BLOCK, orignsn=0x99, origleaf=False, npage=3, markfollowright=True)
    root = redo(block_tag(0), None, 0x30, blocks, main)
    assert opaque(root)[:3] == (0x99, gist.INVALID_BLOCK, 0)
    left = redo(block_tag(41), None, 0x30, blocks, main)
    assert opaque(left)[:3] == (0x99, 42, 0)  # no F_FOLLOW_RIGHT in a root split
    right = redo(block_tag(42), None, 0x30, blocks, main)
    assert opaque(right)[:3] == (0x99, gist.INVALID_BLOCK, 0)
    # block 0: the left child of the split inner page gets its downlink
    child = gist_page([itup(7)], flags=gist.F_LEAF | gist.F_FOLLOW_RIGHT)
    out = redo(block_tag(40), child, 0x30, blocks, main)
    assert opaque(out)[:3] == (LSN, gist.INVALID_BLOCK, gist.F_LEAF)
    # a leaf root split: the children are leaves, the root is not
    main = split_main(origrlink=gist.INVALID_BLOCK, orignsn=0, origleaf=True, npage=3, markfollowright=True)
    assert opaque(redo(block_tag(0), None, 0x30, blocks, main))[2] == 0
    assert opaque(redo(block_tag(41), None, 0x30, blocks, main))[2] == gist.F_LEAF


def test_split_page_with_image_is_still_rebuilt_from_the_record():
    img = gist_page([itup(8), itup(9)])
    data = split_data([itup(1)])
    main = split_main(5, 0, True, 1, True)
    with_image = redo(TAG, None, 0x30, [Block(1, TAG, data=data, will_init=True, image=img)], main)
    plain = redo(TAG, None, 0x30, [Block(1, TAG, data=data, will_init=True)], main)
    assert with_image == plain and tuples_of(plain) == [itup(1)]


def test_split_malformed():
    main = split_main(5, 0, True, 2, True)
    ok = [Block(1, TAG, data=split_data([itup(1)]), will_init=True),
          Block(2, block_tag(8), data=split_data([itup(2)]), will_init=True)]
    redo(TAG, None, 0x30, ok, main)
    with pytest.raises(InvalidRecord):  # next page of the split has no block reference
        redo(TAG, None, 0x30, ok[:1], main)
    with pytest.raises(InvalidRecord):  # not WILL_INIT
        redo(TAG, None, 0x30, [Block(1, TAG, data=split_data([itup(1)])), ok[1]], main)
    for data in (b"", struct.pack("<i", 2) + itup(1), struct.pack("<i", -1), split_data([itup(1)]) + b"\0",
                 struct.pack("<i", 1) + itup(1)[:12]):
        with pytest.raises(InvalidRecord):
            redo(TAG, None, 0x30, [Block(1, TAG, data=data, will_init=True), ok[1]], main)
    with pytest.raises(InvalidRecord):
        redo(TAG, None, 0x30, ok, main[:20])
    # a block listed beyond npage is never read
    base = gist_page([itup(3)])
    extra = ok + [Block(3, block_tag(77), data=b"junk", will_init=True)]
    assert redo(block_tag(77), base, 0x30, extra, main) == base
    # tuples that do not fit on a page
    many = split_data([itup(i, 1000) for i in range(9)])
    with pytest.raises(InvalidRecord):
        redo(TAG, None, 0x30, [Block(1, TAG, data=many, will_init=True), ok[1]], main)


# --- hand-made records: PAGE_DELETE --------------------------------------------------------------

def test_page_delete_leaf_and_parent():
    leaf = gist_page([])
    parent = gist_page([itup(1), itup(2), itup(3)], flags=0)
    blocks = [Block(0, TAG), Block(1, block_tag(3))]
    main = struct.pack("<QH", (5 << 32) | 777, 2)
    out = redo(TAG, leaf, 0x60, blocks, main)
    assert opaque(out)[2] == gist.F_LEAF | gist.F_DELETED
    assert P.get_lower(out) == 32 and struct.unpack_from("<Q", out, 24)[0] == (5 << 32) | 777
    assert_sane(out)
    out = redo(block_tag(3), parent, 0x60, blocks, main)
    assert tuples_of(out) == [itup(1), itup(3)]
    with pytest.raises(InvalidRecord):  # the leaf is not empty
        redo(TAG, gist_page([itup(1)]), 0x60, blocks, main)
    with pytest.raises(InvalidRecord):  # downlink offset beyond the parent
        redo(block_tag(3), parent, 0x60, blocks, struct.pack("<QH", 1, 9))
    with pytest.raises(InvalidRecord):
        redo(TAG, leaf, 0x60, blocks, struct.pack("<Q", 1))


# --- hand-made records: PAGE_REUSE, ASSIGN_LSN, unknown codes, names ---------------------------------

def test_reuse_and_assign_lsn_touch_no_page():
    reuse = struct.pack("<IIIIQ", 1663, 5, 40000, 7, 1234)
    with pytest.raises(BlockNotReferenced):
        redo(TAG, gist_page([]), 0x20, [], reuse)
    with pytest.raises(BlockNotReferenced):
        redo(TAG, gist_page([]), 0x70, [], struct.pack("<i", 0))
    # even when (malformed) they reference the page, they do not change it
    base = gist_page([itup(1)])
    assert redo(TAG, base, 0x70, [Block(0, TAG, data=b"x")], struct.pack("<i", 0)) == base
    assert redo(TAG, base, 0x20, [Block(0, TAG)], reuse) == base


@pytest.mark.parametrize("info", [0x40, 0x50, 0x80, 0x90, 0xA0, 0xB0, 0xC0, 0xD0, 0xE0, 0xF0])
def test_unknown_info_codes_are_unsupported(info):
    with pytest.raises(UnsupportedRecord) as ei:
        redo(TAG, gist_page([]), info, [Block(0, TAG)], update_main(0, 0))
    assert ei.value.rmid == gist.RM_ID and ei.value.info == info
    assert "Gist" in str(ei.value) and f"{info:#04x}" in str(ei.value)


def test_record_names():
    assert [gist.record_name(i) for i in (0x00, 0x10, 0x20, 0x30, 0x60, 0x70, 0x40)] == [
        "Gist/PAGE_UPDATE", "Gist/DELETE", "Gist/PAGE_REUSE", "Gist/PAGE_SPLIT", "Gist/PAGE_DELETE",
        "Gist/ASSIGN_LSN", "Gist/0x40"]
    assert gist.record_name(0x01) == "Gist/PAGE_UPDATE"  # XLR_INFO_MASK bits are not part of the name


# --- mask ----------------------------------------------------------------------------------------

def _masked(page: bytes) -> bytes:
    buf = bytearray(page)
    gist.mask(buf, 0)
    return bytes(buf)


def test_mask_hides_what_changes_without_wal_and_no_more():
    base = gist_page([itup(1), itup(2)], flags=gist.F_LEAF, nsn=5)
    other = bytearray(base)
    struct.pack_into("<II", other, gist.MAX_SPECIAL, 0, 99)  # NSN
    struct.pack_into("<H", other, gist.MAX_SPECIAL + 12, gist.F_LEAF | gist.F_FOLLOW_RIGHT | gist.F_HAS_GARBAGE)
    IP.set_item_flags(other, 2, P.LP_DEAD)  # a killed item
    P.set_lsn(other, 0x999)
    assert _masked(base) == _masked(bytes(other))
    # an item unused on one side only is still a difference (PostgreSQL's mask_lp_flags hides it)
    unused = bytearray(base)
    IP.set_item_flags(unused, 2, P.LP_UNUSED)
    assert _masked(base) != _masked(bytes(unused))
    # F_TUPLES_DELETED: not compared on leaves (DELETE's redo sets it, the primary does not)
    td = bytearray(base)
    struct.pack_into("<H", td, gist.MAX_SPECIAL + 12, gist.F_LEAF | gist.F_TUPLES_DELETED)
    assert _masked(base) == _masked(bytes(td))
    inner = gist_page([itup(1)], flags=0)
    inner_td = bytearray(inner)
    struct.pack_into("<H", inner_td, gist.MAX_SPECIAL + 12, gist.F_TUPLES_DELETED)
    assert _masked(inner) != _masked(bytes(inner_td))
    # LP_DEAD on an inner page is compared
    inner_dead = bytearray(inner)
    IP.set_item_flags(inner_dead, 1, P.LP_DEAD)
    assert _masked(inner) != _masked(bytes(inner_dead))


def test_mask_compares_the_delete_xid_of_deleted_pages():
    leaf = gist_page([])
    blocks = [Block(0, TAG), Block(1, block_tag(3))]
    a = redo(TAG, leaf, 0x60, blocks, struct.pack("<QH", 0x18000, 1))
    b = redo(TAG, leaf, 0x60, blocks, struct.pack("<QH", 0x08000, 1))
    assert _masked(a) != _masked(b)


def test_mask_of_zero_and_foreign_pages():
    zero = bytearray(P.BLCKSZ)
    gist.mask(zero, 0)
    assert zero == bytearray(P.BLCKSZ)
    heap_like = bytearray(P.BLCKSZ)
    P.page_init(heap_like, 0)
    with pytest.raises(InvalidPage):
        gist.mask(heap_like, 0)
    with pytest.raises(InvalidPage):
        gist.mask(bytearray(100), 0)


def test_base_page_with_pointer_outside_the_tuple_space_is_refused():
    base = bytearray(gist_page([itup(1), itup(2)]))
    w = struct.unpack_from("<I", base, 24)[0]
    struct.pack_into("<I", base, 24, (w & ~0x7FFF) | 40)  # item 1 now points into the line pointer array
    with pytest.raises(InvalidPage, match="outside the tuple space"):
        redo(TAG, bytes(base), 0x00, [Block(0, TAG, data=itup(3))], update_main(0, 1))
    with pytest.raises(InvalidPage, match="outside the tuple space"):
        redo(TAG, bytes(base), 0x00, [Block(0, block_tag(1), data=itup(3)), Block(1, TAG)], update_main(0, 1))


def test_item_changes_on_a_deleted_page_are_refused():
    deleted = redo(TAG, gist_page([]), 0x60, [Block(0, TAG), Block(1, block_tag(3))], struct.pack("<QH", 1 << 40, 1),
                   lsn=LSN - 100)
    with pytest.raises(InvalidPage, match="deleted"):
        redo(TAG, deleted, 0x00, [Block(0, TAG, data=itup(3))], update_main(0, 1))
    with pytest.raises(InvalidPage, match="deleted"):
        redo(TAG, deleted, 0x10, [Block(0, TAG)], struct.pack("<IH", 1, 0))
    with pytest.raises(InvalidPage, match="deleted"):
        redo(TAG, deleted, 0x60, [Block(0, TAG), Block(1, block_tag(3))], struct.pack("<QH", 1, 1))
    # a deleted page can still be the left child whose flag is cleared, and be reused by a split
    out = redo(TAG, deleted, 0x00, [Block(0, block_tag(1), data=itup(3)), Block(1, TAG)], update_main(0, 1))
    assert out[24:32] == deleted[24:32] and opaque(out)[0] == LSN
    out = redo(TAG, deleted, 0x30, [Block(1, TAG, data=split_data([itup(1)]), will_init=True)],
               split_main(5, 0, True, 1, True))
    assert tuples_of(out) == [itup(1)]


def test_split_page_bytes_equal_page_add_item_one_by_one():
    tuples = [itup(i, plen) for i, plen in enumerate((16, 13, 40, 1, 7, 200, 3), 1)]
    out = redo(TAG, None, 0x30, [Block(1, TAG, data=split_data(tuples), will_init=True)],
               split_main(gist.INVALID_BLOCK, 0x1234, True, 1, False))
    want = bytearray(gist_page(tuples, flags=gist.F_LEAF, lsn=LSN, nsn=0x1234))
    assert out == bytes(want)
