"""Btree redo (walredo_template/pg/nbtree.py, nbtree_page.py): the oracle on tests/workloads/btree.sql in the
three index configurations, hand-made records for the paths PostgreSQL's workload never takes, hypothesis
mutations of real Btree records and of the pages they apply to, and btree_mask."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mutations import check_outcome, check_rebuilt_samples, flipped_page, header_and_special, mutated_record
from pgcluster import INDEX_CONFIG_NAMES
from recordbuilder import Block, build_record

from walredo_template import BufferTag
from walredo_template.pg import indexpage as IP
from walredo_template.pg import nbtree
from walredo_template.pg import nbtree_page as B
from walredo_template.pg import page as P
from walredo_template.pg.errors import BlockNotReferenced, InvalidPage, InvalidRecord, UnsupportedRecord
from walredo_template.pg.xlogrecord import decode_record
from walredo_template.redo import apply_records

RM = nbtree.RM_ID
PREFIX = nbtree.NAME + "/"
# Every (record kind, block role) the workload makes PostgreSQL write and the oracle compare.
EXPECTED_KINDS = [
    "Btree/INSERT_LEAF", "Btree/INSERT_POST",
    "Btree/INSERT_UPPER", "Btree/INSERT_UPPER [block 1]",
    "Btree/INSERT_META", "Btree/INSERT_META [block 1]", "Btree/INSERT_META [block 2]",
    "Btree/SPLIT_L", "Btree/SPLIT_L [block 1]", "Btree/SPLIT_L [block 2]",
    "Btree/SPLIT_R", "Btree/SPLIT_R [block 1]", "Btree/SPLIT_R [block 2]", "Btree/SPLIT_R [block 3]",
    "Btree/DEDUP", "Btree/DELETE", "Btree/VACUUM",
    "Btree/MARK_PAGE_HALFDEAD", "Btree/MARK_PAGE_HALFDEAD [block 1]",
    "Btree/UNLINK_PAGE", "Btree/UNLINK_PAGE [block 1]", "Btree/UNLINK_PAGE [block 2]", "Btree/UNLINK_PAGE [block 3]",
    "Btree/UNLINK_PAGE_META", "Btree/UNLINK_PAGE_META [block 2]", "Btree/UNLINK_PAGE_META [block 4]",
    "Btree/NEWROOT", "Btree/NEWROOT [block 1]", "Btree/NEWROOT [block 2]",
    "Btree/META_CLEANUP",
]

SPC, DB, REL = 1663, 5, 72000
LSN0 = 0x1000
LSN = 0x2000


def tag(blkno: int) -> BufferTag:
    return BufferTag(SPC, DB, REL, 0, blkno)


# -- the oracle --------------------------------------------------------------------------------------------

def _btree_records(wal_captures, name):
    for _s, end, raw in wal_captures.get(name).records:
        if raw[17] == RM:
            yield end, decode_record(raw, verify_crc=False)


@pytest.mark.parametrize("name", INDEX_CONFIG_NAMES)
def test_btree_records_match_postgres(oracle_results, wal_captures, name):
    res = oracle_results.get(name)
    mine, _applied = res.rmgr_kinds(PREFIX)
    print(f"\n[{name}] Btree compared: " + ", ".join(f"{k} {v}" for k, v in mine.items()))
    missing = [k for k in EXPECTED_KINDS if not mine.get(k)]
    assert not missing, f"the workload no longer produces {missing}"
    pages = {t for t, rm in res.page_rmgr.items() if rm == RM}
    assert len(pages) > 100
    disk = res.disk
    assert not [m for m in disk.mismatches if m[0] in pages]
    assert not [m for m in disk.lsn_mismatches if m[0] in pages]
    # Variants inside the kinds: posting-list splits during a page split, posting lists updated by VACUUM
    # and by simple/bottom-up deletion, a level-0 NEWROOT, REUSE_PAGE (no page: nothing to compare).
    seen = set()
    for end, rec in _btree_records(wal_captures, name):
        info = rec.info & 0xF0
        compared = end in res.compared_at
        if info in (nbtree.XLOG_BTREE_SPLIT_L, nbtree.XLOG_BTREE_SPLIT_R) and struct.unpack_from(
                "<IHHH", rec.main_data)[3] and compared:
            seen.add("split with posting split")
        if info == nbtree.XLOG_BTREE_VACUUM and struct.unpack_from("<HH", rec.main_data)[1] and compared:
            seen.add("vacuum with updates")
        if info == nbtree.XLOG_BTREE_DELETE and struct.unpack_from("<IHH", rec.main_data)[2] and compared:
            seen.add("delete with updates")
        if info == nbtree.XLOG_BTREE_NEWROOT and struct.unpack_from("<II", rec.main_data)[1] == 0 and compared:
            seen.add("level-0 root")
        if info == nbtree.XLOG_BTREE_REUSE_PAGE and not rec.blocks:
            seen.add("reuse page")
    assert seen == {"split with posting split", "vacuum with updates", "delete with updates", "level-0 root",
                    "reuse page"}


# -- hand-made pages and records ------------------------------------------------------------------------

def tup(key: bytes, blk: int = 1, off: int = 1) -> bytes:
    """A plain non-pivot index tuple (MAXALIGNed)."""
    size = B.maxalign(8 + len(key))
    return (struct.pack("<HHHH", blk >> 16, blk & 0xFFFF, off, size) + key).ljust(size, b"\0")


def posting_tup(key: bytes, tids: list[tuple[int, int]]) -> bytes:
    keysize = B.maxalign(8 + len(key))
    size = B.maxalign(keysize + 6 * len(tids))
    head = struct.pack("<HHHH", 0, keysize, len(tids) | B.BT_IS_POSTING, size | B.INDEX_ALT_TID_MASK)
    body = (head + key).ljust(keysize, b"\0") + b"".join(struct.pack("<HHH", b >> 16, b & 0xFFFF, o) for b, o in tids)
    return body.ljust(size, b"\0")


def tids_of(t: bytes) -> list[tuple[int, int]]:
    off, n = B.posting(t, "test")
    return [(hi << 16 | lo, o) for hi, lo, o in struct.iter_unpack("<HHH", t[off:off + 6 * n])]


def make_page(items: list[bytes], *, prev: int = 0, nxt: int = 0, level: int = 0, flags: int = B.BTP_LEAF,
              lsn: int = LSN0) -> bytes:
    page = bytearray(P.BLCKSZ)
    P.page_init(page, 16)
    B.OPAQUE.pack_into(page, B.BT_SPECIAL, prev, nxt, level, flags, 0)
    for i, it in enumerate(items, 1):
        IP.add_item(page, it, i)
    P.set_lsn(page, lsn)
    return bytes(page)


def items_of(page: bytes) -> list[bytes]:
    out = []
    for i in range(1, IP.items(page) + 1):
        w = P.get_itemid(page, i)
        out.append(bytes(page[w & 0x7FFF:(w & 0x7FFF) + (w >> 17)]))
    return out


def opaque(page: bytes) -> tuple[int, int, int, int, int]:
    return B.OPAQUE.unpack_from(page, B.BT_SPECIAL)


def meta_data(root: int = 3, level: int = 1) -> bytes:
    return struct.pack("<IIIIIIB3x", 4, root, level, root, level, 0, 1)


def redo(t: BufferTag, base: bytes | None, info: int, blocks: list[Block], main: bytes = b"") -> bytes:
    return apply_records(t, base, [(LSN, build_record(RM, info, blocks, main))])


K = [bytes([65 + i]) * 8 for i in range(10)]  # keys that sort in list order


def test_insert_leaf_adds_at_the_offset_and_page_past_the_record_is_left_alone():
    base = make_page([tup(K[9]), tup(K[1]), tup(K[3])], nxt=7)
    out = redo(tag(1), base, nbtree.XLOG_BTREE_INSERT_LEAF, [Block(0, tag(1), data=tup(K[2]))], struct.pack("<H", 3))
    assert items_of(out) == [tup(K[9]), tup(K[1]), tup(K[2]), tup(K[3])]
    assert P.get_lsn(out) == LSN
    ahead = make_page([tup(K[9])], lsn=LSN + 8)
    assert redo(tag(1), ahead, nbtree.XLOG_BTREE_INSERT_LEAF, [Block(0, tag(1), data=tup(K[2]))],
                struct.pack("<H", 2)) == ahead


def test_insert_post_swaps_the_new_tid_into_the_posting_list():
    post = posting_tup(K[2], [(1, 2), (1, 5), (1, 9)])
    base = make_page([tup(K[1]), post, tup(K[3])])
    data = struct.pack("<H", 2) + tup(K[2], 1, 6)
    out = redo(tag(1), base, nbtree.XLOG_BTREE_INSERT_POST, [Block(0, tag(1), data=data)], struct.pack("<H", 3))
    got = items_of(out)
    assert tids_of(got[1]) == [(1, 2), (1, 5), (1, 6)]
    assert got[2] == tup(K[2], 1, 9) and got[3] == tup(K[3])
    for bad in (0, 3):
        with pytest.raises(InvalidRecord, match="cannot be split"):
            redo(tag(1), base, nbtree.XLOG_BTREE_INSERT_POST,
                 [Block(0, tag(1), data=struct.pack("<H", bad) + tup(K[2], 1, 6))], struct.pack("<H", 3))
    with pytest.raises(InvalidRecord, match="not a posting list"):
        redo(tag(1), base, nbtree.XLOG_BTREE_INSERT_POST, [Block(0, tag(1), data=data)], struct.pack("<H", 2))


def test_insert_upper_clears_the_child_split_flag_and_insert_meta_rebuilds_the_metapage():
    child = make_page([tup(K[1])], flags=B.BTP_LEAF | B.BTP_INCOMPLETE_SPLIT)
    blocks = [Block(0, tag(3), data=tup(K[4])), Block(1, tag(1)), Block(2, tag(0), data=meta_data(), will_init=True)]
    out = redo(tag(1), child, nbtree.XLOG_BTREE_INSERT_META, blocks, struct.pack("<H", 2))
    assert opaque(out)[3] == B.BTP_LEAF and items_of(out) == items_of(child)
    meta = redo(tag(0), None, nbtree.XLOG_BTREE_INSERT_META, blocks, struct.pack("<H", 2))
    assert struct.unpack_from("<IIIIIII", meta, 24) == (B.BTREE_MAGIC, 4, 3, 1, 3, 1, 0)
    assert struct.unpack_from("<dB", meta, 56) == (-1.0, 1) and P.get_lower(meta) == 72
    assert opaque(meta) == (0, 0, 0, B.BTP_META, 0)
    with pytest.raises(InvalidRecord, match="no block 1"):
        redo(tag(3), make_page([tup(K[1])], level=1, flags=0), nbtree.XLOG_BTREE_INSERT_UPPER,
             [Block(0, tag(3), data=tup(K[4]))], struct.pack("<H", 2))
    with pytest.raises(InvalidRecord, match="metadata"):
        redo(tag(0), None, nbtree.XLOG_BTREE_META_CLEANUP, [Block(0, tag(0), data=b"\0" * 25, will_init=True)])


def _split_record(info: int, postingoff: int, newitemoff: int, firstright: int, left_data: bytes,
                  right_items: list[bytes], level: int = 0) -> list[Block]:
    right_data = b"".join(reversed(right_items))
    blocks = [Block(0, tag(1), data=left_data), Block(1, tag(5), data=right_data, will_init=True), Block(2, tag(7))]
    if level:
        blocks.append(Block(3, tag(9)))
    return blocks


def test_split_r_with_a_posting_split_on_the_last_left_item():
    # Posting list split at offset 3 while splitting: firstright == newitemoff, the new item goes right.
    post = posting_tup(K[2], [(1, 2), (1, 5), (1, 9)])
    base = make_page([tup(K[9]), tup(K[1]), post, tup(K[3]), tup(K[4])], prev=2, nxt=7, level=0)
    lefthikey = tup(K[2])
    right = [tup(K[9]), tup(K[2], 1, 9), tup(K[3]), tup(K[4])]
    blocks = _split_record(nbtree.XLOG_BTREE_SPLIT_R, 2, 4, 4, tup(K[2], 1, 6) + lefthikey, right)
    main = struct.pack("<IHHH", 0, 4, 4, 2)
    left = redo(tag(1), base, nbtree.XLOG_BTREE_SPLIT_R, blocks, main)
    got = items_of(left)
    assert got[0] == lefthikey and got[1] == tup(K[1]) and tids_of(got[2]) == [(1, 2), (1, 5), (1, 6)]
    assert len(got) == 3
    assert opaque(left) == (2, 5, 0, B.BTP_INCOMPLETE_SPLIT | B.BTP_LEAF, 0)
    rpage = redo(tag(5), None, nbtree.XLOG_BTREE_SPLIT_R, blocks, main)
    assert items_of(rpage) == right and opaque(rpage) == (1, 7, 0, B.BTP_LEAF, 0)
    sib = redo(tag(7), make_page([tup(K[9])], prev=1), nbtree.XLOG_BTREE_SPLIT_R, blocks, main)
    assert opaque(sib)[0] == 5


def test_split_l_new_item_last_on_the_left_and_upper_level_child():
    base = make_page([tup(K[1]), tup(K[2]), tup(K[4])], level=1, flags=B.BTP_ROOT)  # rightmost root, no hikey
    blocks = _split_record(nbtree.XLOG_BTREE_SPLIT_L, 0, 3, 3, tup(K[3]) + tup(K[3]), [tup(K[4])], level=1)
    main = struct.pack("<IHHH", 1, 3, 3, 0)
    left = redo(tag(1), base, nbtree.XLOG_BTREE_SPLIT_L, blocks, main)
    assert items_of(left) == [tup(K[3]), tup(K[1]), tup(K[2]), tup(K[3])]
    assert opaque(left) == (0, 5, 1, B.BTP_INCOMPLETE_SPLIT, 0)  # the root flag goes
    child = make_page([tup(K[1])], flags=B.BTP_LEAF | B.BTP_INCOMPLETE_SPLIT)
    assert opaque(redo(tag(9), child, nbtree.XLOG_BTREE_SPLIT_L, blocks, main))[3] == B.BTP_LEAF
    with pytest.raises(InvalidRecord, match="no block 3"):
        redo(tag(1), base, nbtree.XLOG_BTREE_SPLIT_L, blocks[:3], main)
    with pytest.raises(InvalidRecord, match="beyond"):
        redo(tag(1), base, nbtree.XLOG_BTREE_SPLIT_L, blocks, struct.pack("<IHHH", 1, 9, 3, 0))


def test_dedup_merges_the_logged_intervals():
    base = make_page([tup(K[9]), tup(K[1], 1, 1), tup(K[1], 1, 2), posting_tup(K[1], [(1, 3), (1, 4)]),
                      tup(K[2], 2, 1), tup(K[2], 2, 2)], nxt=7, flags=B.BTP_LEAF | B.BTP_HAS_GARBAGE)
    data = struct.pack("<HH", 2, 3)  # one interval: base offset 2, three items; K[2]'s pair stays apart
    out = redo(tag(1), base, nbtree.XLOG_BTREE_DEDUP, [Block(0, tag(1), data=data)], struct.pack("<H", 1))
    got = items_of(out)
    assert got[0] == tup(K[9]) and tids_of(got[1]) == [(1, 1), (1, 2), (1, 3), (1, 4)]
    assert got[1] == posting_tup(K[1], [(1, 1), (1, 2), (1, 3), (1, 4)])
    assert got[2:] == [tup(K[2], 2, 1), tup(K[2], 2, 2)]
    assert opaque(out)[3] == B.BTP_LEAF
    # BTMaxItemSize is 2704: a 2688-byte base tuple takes two TIDs (2704), a 2696-byte one does not (2712)
    fits = [tup(b"x" * 2680, 1, 1), tup(b"x" * 2680, 1, 2)]
    out = redo(tag(1), make_page(fits), nbtree.XLOG_BTREE_DEDUP, [Block(0, tag(1), data=struct.pack("<HH", 1, 2))],
               struct.pack("<H", 1))
    assert [len(t) for t in items_of(out)] == [2704]
    big = [tup(b"x" * 2688, 1, 1), tup(b"x" * 2688, 1, 2)]
    with pytest.raises(InvalidRecord, match="deduplication"):
        redo(tag(1), make_page(big), nbtree.XLOG_BTREE_DEDUP, [Block(0, tag(1), data=struct.pack("<HH", 1, 2))],
             struct.pack("<H", 1))
    with pytest.raises(InvalidRecord, match="no items"):
        redo(tag(1), make_page([tup(K[9])], nxt=7), nbtree.XLOG_BTREE_DEDUP, [Block(0, tag(1))], struct.pack("<H", 0))
    with pytest.raises(InvalidRecord, match="intervals"):
        redo(tag(1), base, nbtree.XLOG_BTREE_DEDUP, [Block(0, tag(1), data=data)], struct.pack("<H", 2))


@pytest.mark.parametrize("info", [nbtree.XLOG_BTREE_DELETE, nbtree.XLOG_BTREE_VACUUM])
def test_delete_and_vacuum_update_posting_lists_then_delete(info):
    post = posting_tup(K[2], [(1, 2), (1, 5), (1, 9)])
    post2 = posting_tup(K[3], [(2, 1), (2, 2)])
    base = make_page([tup(K[1]), post, post2, tup(K[4]), tup(K[5])], flags=B.BTP_LEAF | B.BTP_HAS_GARBAGE)
    head = struct.pack("<IHH", 77, 2, 2) if info == nbtree.XLOG_BTREE_DELETE else struct.pack("<HH", 2, 2)
    data = struct.pack("<HHHH", 1, 5, 2, 3) + struct.pack("<HH", 1, 1) + struct.pack("<HH", 1, 0)
    out = redo(tag(1), base, info, [Block(0, tag(1), data=data)], head)
    got = items_of(out)
    assert got == [posting_tup(K[2], [(1, 2), (1, 9)]), tup(K[3], 2, 2), tup(K[4])]
    assert opaque(out)[3] == B.BTP_LEAF
    # update of item 2 (three TIDs): not ascending, out of range, every TID, data cut short
    for bad in (struct.pack("<4H", 2, 2, 1, 0), struct.pack("<4H", 2, 2, 0, 3), struct.pack("<5H", 2, 3, 0, 1, 2),
                struct.pack("<3H", 2, 2, 0)):
        with pytest.raises(InvalidRecord):
            redo(tag(1), base, info, [Block(0, tag(1), data=bad)],
                 struct.pack("<IHH", 77, 0, 1) if info == nbtree.XLOG_BTREE_DELETE else struct.pack("<HH", 0, 1))


def test_halfdead_parent_and_leaf():
    parent = make_page([tup(K[9], 0, 0), tup(K[1], 10, 0), tup(K[2], 11, 0), tup(K[3], 12, 0)], level=1, flags=0,
                       nxt=4)
    main = struct.pack("<H2xIIII", 2, 10, 20, 11, 30)
    blocks = [Block(0, tag(10), will_init=True), Block(1, tag(3))]
    out = redo(tag(3), parent, nbtree.XLOG_BTREE_MARK_PAGE_HALFDEAD, blocks, main)
    assert items_of(out) == [tup(K[9], 0, 0), tup(K[1], 11, 0), tup(K[3], 12, 0)]
    leaf = redo(tag(10), None, nbtree.XLOG_BTREE_MARK_PAGE_HALFDEAD, blocks, main)
    assert opaque(leaf) == (20, 11, 0, B.BTP_HALF_DEAD | B.BTP_LEAF, 0)
    assert items_of(leaf) == [struct.pack("<HHHH", 0, 30, 0, 8 | B.INDEX_ALT_TID_MASK)]
    with pytest.raises(InvalidRecord):
        redo(tag(3), parent, nbtree.XLOG_BTREE_MARK_PAGE_HALFDEAD, blocks, struct.pack("<H2xIIII", 4, 10, 20, 11, 30))


def test_unlink_internal_target_with_leaf_and_no_left_sibling():
    # An internal target (block 3 re-creates the leaf) without a left sibling, where block 1 is left alone.
    main = struct.pack("<III4xQIII", 0, 12, 1, (1 << 32) | 999, 20, 21, 40)
    blocks = [Block(0, tag(11), will_init=True), Block(1, tag(4)), Block(2, tag(12)), Block(3, tag(10), will_init=True)]
    target = redo(tag(11), None, nbtree.XLOG_BTREE_UNLINK_PAGE, blocks, main)
    assert opaque(target) == (0, 12, 1, B.BTP_DELETED | B.BTP_HAS_FULLXID, 0)
    assert P.get_lower(target) == 32 and P.get_upper(target) == B.BT_SPECIAL
    assert struct.unpack_from("<Q", target, 24)[0] == (1 << 32) | 999
    leaf = redo(tag(10), None, nbtree.XLOG_BTREE_UNLINK_PAGE, blocks, main)
    assert opaque(leaf) == (20, 21, 0, B.BTP_HALF_DEAD | B.BTP_LEAF, 0)
    assert items_of(leaf) == [struct.pack("<HHHH", 0, 40, 0, 8 | B.INDEX_ALT_TID_MASK)]
    right = make_page([tup(K[1])], prev=11)
    assert opaque(redo(tag(12), right, nbtree.XLOG_BTREE_UNLINK_PAGE, blocks, main))[0] == 0
    other = make_page([tup(K[1])], nxt=11)
    assert redo(tag(4), other, nbtree.XLOG_BTREE_UNLINK_PAGE, blocks, main) == other  # leftsib is P_NONE
    with pytest.raises(InvalidRecord, match="no block 4"):
        redo(tag(11), None, nbtree.XLOG_BTREE_UNLINK_PAGE_META, blocks, main)


def test_init_blocks_are_rebuilt_even_over_an_applied_image():
    image = make_page([tup(K[1])], lsn=0)
    main = struct.pack("<II", 3, 0)
    blocks = [Block(0, tag(3), will_init=True, image=image), Block(2, tag(0), data=meta_data(3, 0), will_init=True)]
    root = redo(tag(3), None, nbtree.XLOG_BTREE_NEWROOT, blocks, main)
    assert items_of(root) == [] and opaque(root) == (0, 0, 0, B.BTP_ROOT | B.BTP_LEAF, 0)
    assert P.get_lsn(root) == LSN
    with pytest.raises(InvalidRecord, match="WILL_INIT"):
        redo(tag(3), None, nbtree.XLOG_BTREE_NEWROOT, [Block(0, tag(3)), blocks[1]], main)
    with pytest.raises(InvalidRecord, match="no block 1"):
        redo(tag(3), None, nbtree.XLOG_BTREE_NEWROOT, blocks, struct.pack("<II", 3, 1))


def test_newroot_upper_level_restores_its_items():
    items = [tup(K[0], 1, 0), tup(K[5], 2, 0)]
    blocks = [Block(0, tag(3), data=b"".join(reversed(items)), will_init=True), Block(1, tag(1)),
              Block(2, tag(0), data=meta_data(), will_init=True)]
    root = redo(tag(3), None, nbtree.XLOG_BTREE_NEWROOT, blocks, struct.pack("<II", 3, 1))
    assert items_of(root) == items and opaque(root) == (0, 0, 1, B.BTP_ROOT, 0)
    bad = [Block(0, tag(3), data=b"\0" * 12, will_init=True)] + blocks[1:]
    with pytest.raises(InvalidRecord):
        redo(tag(3), None, nbtree.XLOG_BTREE_NEWROOT, bad, struct.pack("<II", 3, 1))


def test_reuse_page_touches_no_page():
    main = struct.pack("<IIIIQ", SPC, DB, REL, 5, 1234)
    with pytest.raises(BlockNotReferenced):
        redo(tag(5), make_page([]), nbtree.XLOG_BTREE_REUSE_PAGE, [], main)
    base = make_page([tup(K[1])])
    assert redo(tag(5), base, nbtree.XLOG_BTREE_REUSE_PAGE, [Block(0, tag(5))], main) == base


def test_a_page_without_the_btree_special_space_is_refused():
    page = bytearray(P.BLCKSZ)
    P.page_init(page, 0)
    P.set_lsn(page, LSN0)
    with pytest.raises(InvalidPage, match="not a btree page"):
        redo(tag(1), bytes(page), nbtree.XLOG_BTREE_DELETE, [Block(0, tag(1))], struct.pack("<IHH", 1, 0, 0))


@pytest.mark.parametrize("info", [0xF0, 0xF1])
def test_unknown_info_codes(info):
    with pytest.raises(UnsupportedRecord, match="Btree") as e:
        redo(tag(1), make_page([]), info, [Block(0, tag(1))])
    assert e.value.rmid == RM and e.value.info == info


def test_record_names():
    assert nbtree.record_name(0x00) == "Btree/INSERT_LEAF"
    assert nbtree.record_name(0x90) == "Btree/UNLINK_PAGE_META"
    assert nbtree.record_name(0xE0) == "Btree/META_CLEANUP"
    assert nbtree.record_name(0xF0) == "Btree/UNKNOWN (F0)"


def test_mask_folds_lp_dead_and_hint_state_only():
    a = bytearray(make_page([tup(K[1]), tup(K[2])], flags=B.BTP_LEAF))
    b = bytearray(a)
    IP.set_item_flags(b, 2, P.LP_DEAD)
    B.OPAQUE.pack_into(b, B.BT_SPECIAL, 0, 0, 0, B.BTP_LEAF | B.BTP_HAS_GARBAGE | B.BTP_SPLIT_END, 77)
    b[P.get_lower(b) + 5] = 0xAB  # the hole
    b[8] = 0x12  # checksum
    ma, mb = bytearray(a), bytearray(b)
    nbtree.mask(ma, 1)
    nbtree.mask(mb, 1)
    assert ma == mb
    c = bytearray(a)
    IP.set_item_flags(c, 2, P.LP_UNUSED)  # not a btree state: compared (PostgreSQL would fold it too)
    mc = bytearray(c)
    nbtree.mask(mc, 1)
    assert mc != ma
    d = bytearray(a)
    d[P.OFF_FLAGS] = P.PD_HAS_FREE_LINES
    md = bytearray(d)
    nbtree.mask(md, 1)
    assert md != ma
    zero = bytearray(P.BLCKSZ)
    nbtree.mask(zero, 1)
    assert zero == bytes(P.BLCKSZ)
    with pytest.raises(InvalidPage):
        nbtree.mask(bytearray(P.BLCKSZ - 1), 1)


def test_mask_keeps_a_deleted_pages_safexid():
    main = struct.pack("<III4xQIII", 0, 12, 0, 0x18000, 0, 0, 0)
    page = bytearray(redo(tag(11), None, nbtree.XLOG_BTREE_UNLINK_PAGE, [Block(0, tag(11), will_init=True),
                                                                         Block(2, tag(12))], main))
    nbtree.mask(page, 11)
    assert struct.unpack_from("<Q", page, 24)[0] == 0x18000


# -- hypothesis: mutated real records and pages ------------------------------------------------------------

@pytest.fixture(scope="module")
def samples(oracle_results):
    out = [s for s in oracle_results.get("indexes").samples if s[4][0] == RM]
    assert len({s[4] for s in out}) >= 20
    return out


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_records_give_a_valid_page_or_a_redo_error(samples, data):
    tag, base, end, raw, _key = data.draw(st.sampled_from(samples))
    check_outcome(tag, base, end, mutated_record(data, raw, ("main", "block", "block", "drop", "init")), RM)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_base_pages_give_a_valid_page_or_a_redo_error(samples, data):
    """Bytes 8.. of the page before the record are changed (pd_lsn is kept)."""
    with_base = [s for s in samples if s[1] is not None]
    tag, base, end, raw, _key = data.draw(st.sampled_from(with_base))
    upper = P.get_upper(base)
    positions = st.one_of(header_and_special(120, 16), st.integers(min(upper, P.BLCKSZ - 1), P.BLCKSZ - 1))
    check_outcome(tag, flipped_page(data, base, positions, most=6), end, raw, RM)


def test_rebuilt_samples_replay_like_the_originals(samples):
    """The rebuilt-record path the mutation tests take gives the same page when nothing is mutated, and
    that page is PostgreSQL's (masked) where the record carries its image."""
    check_rebuilt_samples(samples, nbtree.mask)
