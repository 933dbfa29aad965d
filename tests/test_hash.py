"""Hash redo (walredo_template/pg/hash.py, hash_page.py): the oracle on tests/workloads/hash.sql in the three
index configurations, hand-made records for the paths PostgreSQL's workload never takes, hypothesis mutations
of real Hash records and of the pages they apply to, and hash_mask. Bucket splits and squeezes are
tests/test_hash_split.py; the hand-made pages and records both use are tests/hashpages.py."""

from __future__ import annotations

import math
import struct

import pytest
from hashpages import (
    BITMAP,
    BUCKET,
    BUCKET2,
    INV,
    LSN,
    META,
    NEWMAP,
    OTHER,
    OVFL,
    RM,
    bitmap_page,
    bucket_page,
    codes,
    itup,
    meta_head,
    meta_page,
    ntuples,
    opaque,
    redo,
    squeeze_record,
    u32,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mutations import check_outcome, check_rebuilt_samples, flipped_page, header_and_special, mutated_record
from pgcluster import INDEX_CONFIG_NAMES
from recordbuilder import Block

from walredo_template.pg import hash as hashredo
from walredo_template.pg import hash_page as H
from walredo_template.pg import indexpage as IP
from walredo_template.pg import page as P
from walredo_template.pg.errors import BlockNotReferenced, InvalidPage, InvalidRecord, UnsupportedRecord
from walredo_template.pg.xlogrecord import decode_record

PREFIX = hashredo.NAME + "/"
# Every (record kind, block role) the workload makes PostgreSQL write and the oracle compare.
EXPECTED_KINDS = [
    "Hash/INIT_META_PAGE",
    "Hash/INIT_BITMAP_PAGE", "Hash/INIT_BITMAP_PAGE [block 1]",
    "Hash/INSERT", "Hash/INSERT [block 1]",
    "Hash/ADD_OVFL_PAGE", "Hash/ADD_OVFL_PAGE [block 1]", "Hash/ADD_OVFL_PAGE [block 2]",
    "Hash/ADD_OVFL_PAGE [block 4]",
    "Hash/SPLIT_ALLOCATE_PAGE", "Hash/SPLIT_ALLOCATE_PAGE [block 1]", "Hash/SPLIT_ALLOCATE_PAGE [block 2]",
    "Hash/SPLIT_COMPLETE", "Hash/SPLIT_COMPLETE [block 1]",
    "Hash/MOVE_PAGE_CONTENTS", "Hash/MOVE_PAGE_CONTENTS [block 1]", "Hash/MOVE_PAGE_CONTENTS [block 2]",
    "Hash/SQUEEZE_PAGE", "Hash/SQUEEZE_PAGE [block 1]", "Hash/SQUEEZE_PAGE [block 3]",
    "Hash/SQUEEZE_PAGE [block 5]", "Hash/SQUEEZE_PAGE [block 6]",
    "Hash/DELETE", "Hash/DELETE [block 1]",
    "Hash/SPLIT_CLEANUP",
    "Hash/UPDATE_META_PAGE",
    "Hash/VACUUM_ONE_PAGE", "Hash/VACUUM_ONE_PAGE [block 1]",
]
# Always restored from an image PostgreSQL flags for apply (SPLIT_PAGE forces one; the freed overflow page
# of SQUEEZE_PAGE was re-initialised, LSN 0, before the record): applied, never compared at that record.
APPLIED_ONLY_KINDS = ["Hash/SPLIT_PAGE", "Hash/SQUEEZE_PAGE [block 2]"]


# -- the oracle --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", INDEX_CONFIG_NAMES)
def test_hash_records_match_postgres(oracle_results, name):
    res = oracle_results.get(name)
    mine, applied = res.rmgr_kinds(PREFIX)
    print(f"\n[{name}] Hash compared: " + ", ".join(f"{k} {v}" for k, v in mine.items()))
    print(f"[{name}] Hash applied only: " + ", ".join(f"{k} {applied[k]}" for k in APPLIED_ONLY_KINDS if k in applied))
    missing = [k for k in EXPECTED_KINDS if not mine.get(k)] + [k for k in APPLIED_ONLY_KINDS if not applied.get(k)]
    assert not missing, f"the workload no longer produces {missing}"
    hash_pages = {t for t, rm in res.page_rmgr.items() if rm == RM}
    assert len(hash_pages) > 40
    disk = res.disk
    assert not [m for m in disk.mismatches if m[0] in hash_pages]
    assert not [m for m in disk.lsn_mismatches if m[0] in hash_pages]


def _samples(res):
    return [s for s in res.samples if s[4][0] == RM]


def test_workload_variants(oracle_results):
    """The record variants the workload is meant to produce: splits with both metapage updates and with the
    splitpoint alone, overflow pages new and reused, squeezes and moves writing to an overflow page (block 0
    = the primary bucket, cleanup lock only), VACUUM deletes clearing LH_PAGE_HAS_DEAD_TUPLES."""
    seen = set()
    for _t, _b, _e, raw, key in _samples(oracle_results.get("indexes")):
        md = decode_record(raw).main_data
        op = key[1]
        if op == 0x40:
            seen.add(("split flags", md[8]))
        elif op == 0x30:
            seen.add(("bmpage_found", md[2]))
        elif op == 0x70:
            seen.add(("move prim_same", md[2]))
        elif op == 0x80:
            seen.add(("squeeze prim/prev same", md[10], md[11]))
        elif op == 0x90:
            seen.add(("delete clear/primary", md[0], md[1]))
    assert {("split flags", 0), ("split flags", 2), ("split flags", 3), ("bmpage_found", 0), ("bmpage_found", 1),
            ("move prim_same", 0), ("move prim_same", 1), ("squeeze prim/prev same", 0, 0),
            ("squeeze prim/prev same", 1, 0), ("squeeze prim/prev same", 1, 1), ("delete clear/primary", 1, 0),
            ("delete clear/primary", 0, 0), ("delete clear/primary", 0, 1)} <= seen


# -- hand-made pages and records ---------------------------------------------------------------------------


# INIT_META_PAGE, INIT_BITMAP_PAGE

def test_init_meta_page_is_built_from_the_record():
    page = redo(META, None, 0x00, [Block(0, META, will_init=True)], struct.pack("<dIH", 0.0, 450, 307))
    assert meta_head(page) == (H.HASH_MAGIC, 4, 0.0, 307, 8152, 4096, 15, 1, 3, 1, 1, 0, 0, 450)
    assert u32(page, H.M_SPARES + 4) == 1 and not any(page[H.M_SPARES + 8:P.BLCKSZ - 16])
    assert P.get_lower(page) == 4568 and P.get_upper(page) == 8176 and P.get_special(page) == 8176
    assert opaque(page) == (INV, INV, INV, H.LH_META_PAGE, 0xFF80)
    assert P.get_lsn(page) == LSN
    # an image that comes along is overwritten: XLogInitBufferForRedo's result is not looked at
    again = redo(META, None, 0x00, [Block(0, META, will_init=True, image=bytes(bucket_page(5)))],
                 struct.pack("<dIH", 0.0, 450, 307))
    assert again == page
    with pytest.raises(InvalidRecord, match="WILL_INIT"):
        redo(META, meta_page(), 0x00, [Block(0, META)], struct.pack("<dIH", 0.0, 450, 307))
    with pytest.raises(InvalidRecord, match="main data"):
        redo(META, None, 0x00, [Block(0, META, will_init=True)], struct.pack("<dI", 0.0, 450))


@pytest.mark.parametrize("num_tuples, ffactor, maxbucket, highmask, ovflpoint", [
    (2260.0, 307, 7, 15, 3),  # the estimate PostgreSQL uses for a new empty table: 8 buckets
    (-5.0, 307, 1, 3, 1),
    (1e6, 307, 3583, 4095, 20),  # 3257 buckets wanted: rounded up to splitpoint phase 20 (3584)
    (1e12, 10, 0x3FFFFFFF, 0x7FFFFFFF, 93),  # capped at 2^30
    (5.0, 0, 0x3FFFFFFF, 0x7FFFFFFF, 93),  # x / 0 = inf
    (-5.0, 0, 1, 3, 1),  # -inf
])
def test_init_meta_page_bucket_count(num_tuples, ffactor, maxbucket, highmask, ovflpoint):
    page = redo(META, None, 0x00, [Block(0, META, will_init=True)], struct.pack("<dIH", num_tuples, 1, ffactor))
    head = meta_head(page)
    assert head[7:11] == (maxbucket, highmask, highmask >> 1, ovflpoint)
    assert u32(page, H.M_SPARES + 4 * ovflpoint) == 1


def test_init_meta_page_refuses_nan():
    for num_tuples, ffactor in ((math.nan, 307), (0.0, 0)):
        with pytest.raises(InvalidRecord, match="num_tuples"):
            redo(META, None, 0x00, [Block(0, META, will_init=True)], struct.pack("<dIH", num_tuples, 1, ffactor))


def test_splitpoint_phases_round_trip():
    # ten one-phase groups, then four phases a group
    assert [H.total_buckets(p) for p in range(16)] == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 640, 768, 896,
                                                       1024, 1280, 1536]
    for phase in range(H.HASH_MAX_SPLITPOINTS - 2):
        assert H.spare_index(H.total_buckets(phase)) == phase
        assert H.spare_index(H.total_buckets(phase) + 1) == phase + 1


def test_init_bitmap_page_and_its_metapage_entry():
    blocks = [Block(0, BITMAP, will_init=True), Block(1, META)]
    page = redo(BITMAP, None, 0x10, blocks, struct.pack("<H", 4096))
    assert page[24:24 + 4096] == b"\xff" * 4096 and not any(page[4120:8176])
    assert P.get_lower(page) == 4120 and opaque(page) == (INV, INV, INV, H.LH_BITMAP_PAGE, 0xFF80)
    meta = redo(META, meta_page(), 0x10, blocks, struct.pack("<H", 4096))
    assert u32(meta, H.M_NMAPS) == 1 and u32(meta, H.M_MAPP) == 3  # maxbucket 1 + 2
    with pytest.raises(InvalidRecord, match="bitmap size"):
        redo(BITMAP, None, 0x10, blocks, struct.pack("<H", 8153))
    full = meta_page()
    struct.pack_into("<I", full, H.M_NMAPS, 1024)
    with pytest.raises(InvalidPage, match="1024 bitmap pages"):
        redo(META, full, 0x10, blocks, struct.pack("<H", 4096))
    with pytest.raises(InvalidPage, match="page type"):
        redo(BUCKET, bucket_page(1), 0x10, [Block(0, BITMAP, will_init=True), Block(1, BUCKET)],
             struct.pack("<H", 4096))


# INSERT

def test_insert_adds_at_the_offset_and_counts_on_the_metapage():
    base = bucket_page(10, 30)
    blocks = [Block(0, BUCKET, data=itup(20, 9)), Block(1, META)]
    page = redo(BUCKET, base, 0x20, blocks, struct.pack("<H", 2))
    assert codes(page) == [10, 20, 30] and P.get_lsn(page) == LSN
    meta = redo(META, meta_page(), 0x20, blocks, struct.pack("<H", 2))
    assert ntuples(meta) == 1.0 and P.get_lsn(meta) == LSN
    with pytest.raises(InvalidRecord, match="too large"):
        redo(BUCKET, base, 0x20, blocks, struct.pack("<H", 4))
    with pytest.raises(InvalidRecord, match="carries no data"):
        redo(BUCKET, base, 0x20, [Block(0, BUCKET), Block(1, META)], struct.pack("<H", 1))
    with pytest.raises(InvalidPage, match="page type"):
        redo(BUCKET2, bucket_page(1), 0x20, [Block(0, BUCKET, data=itup(1)), Block(1, BUCKET2)], b"\x01\x00")


def test_page_already_past_the_record_is_left_alone():
    base = bucket_page(10, lsn=LSN + 8)
    assert redo(BUCKET, base, 0x20, [Block(0, BUCKET, data=itup(20)), Block(1, META)], b"\x02\x00") == base
    base = bucket_page(10, flag=H.LH_BUCKET_PAGE | H.LH_BUCKET_BEING_SPLIT, lsn=LSN)
    assert redo(BUCKET, base, 0x60, [Block(0, BUCKET), Block(1, BUCKET2)], struct.pack("<HH", 2, 2)) == base


# ADD_OVFL_PAGE

def _add_ovfl_blocks(with_map: bool = True, with_newmap: bool = False, bit: int = 70) -> list[Block]:
    blocks = [Block(0, OVFL, data=struct.pack("<I", 9), will_init=True), Block(1, BUCKET)]
    if with_map:
        blocks.append(Block(2, BITMAP, data=struct.pack("<I", bit)))
    if with_newmap:
        blocks.append(Block(3, NEWMAP, will_init=True))
    blocks.append(Block(4, META, data=struct.pack("<I", 77)))
    return blocks


def test_add_ovfl_page_new_page_and_chain_link():
    main = struct.pack("<HB", 4096, 1)
    page = redo(OVFL, None, 0x30, _add_ovfl_blocks(), main)
    assert opaque(page) == (BUCKET.blknum, INV, 9, H.LH_OVERFLOW_PAGE, 0xFF80) and IP.items(page) == 0
    left = redo(BUCKET, bucket_page(1, 2), 0x30, _add_ovfl_blocks(), main)
    assert opaque(left)[:2] == (3, OVFL.blknum) and codes(left) == [1, 2]
    with pytest.raises(InvalidRecord, match="no block 1"):
        redo(OVFL, None, 0x30, [Block(0, OVFL, data=struct.pack("<I", 9), will_init=True)], main)
    with pytest.raises(InvalidRecord, match="carries no data"):
        redo(OVFL, None, 0x30, [Block(0, OVFL, will_init=True), Block(1, BUCKET)], main)


def test_add_ovfl_page_bitmap_bit_and_reused_page_metapage():
    main = struct.pack("<HB", 4096, 1)
    base = bitmap_page()
    base[24 + 8] = 0  # bits 64..71 free
    page = redo(BITMAP, base, 0x30, _add_ovfl_blocks(bit=70), main)
    assert page[24 + 8] == 0x40 and page[24:24 + 8] == b"\xff" * 8
    meta = redo(META, meta_page(), 0x30, _add_ovfl_blocks(), main)
    assert u32(meta, H.M_FIRSTFREE) == 77 and u32(meta, H.M_SPARES + 4) == 1  # found: spares unchanged
    with pytest.raises(InvalidRecord, match="past the bitmap"):
        redo(BITMAP, base, 0x30, _add_ovfl_blocks(bit=8152 * 8), main)
    with pytest.raises(InvalidPage, match="page type"):
        redo(BUCKET2, bucket_page(1), 0x30, [Block(0, OVFL, data=b"\0" * 4, will_init=True), Block(1, BUCKET),
                                             Block(2, BUCKET2, data=b"\0" * 4), Block(4, META, data=b"\0" * 4)],
             main)


def test_add_ovfl_page_with_a_new_bitmap_page():
    """Never produced by the workload (it takes 32,768 overflow pages): the new bitmap page (block 3) and
    the metapage's extra spare, mapp entry and nmaps."""
    main = struct.pack("<HB", 4096, 0)
    blocks = _add_ovfl_blocks(with_map=False, with_newmap=True)
    page = redo(NEWMAP, None, 0x30, blocks, main)
    assert page == bitmap_page(lsn=LSN)
    base = meta_page()
    struct.pack_into("<I", base, H.M_NMAPS, 1)
    struct.pack_into("<I", base, H.M_MAPP, 3)
    meta = redo(META, base, 0x30, blocks, main)
    assert u32(meta, H.M_SPARES + 4) == 3 and u32(meta, H.M_NMAPS) == 2
    assert (u32(meta, H.M_MAPP), u32(meta, H.M_MAPP + 4)) == (3, NEWMAP.blknum)
    assert u32(meta, H.M_FIRSTFREE) == 77
    meta = redo(META, base, 0x30, _add_ovfl_blocks(with_map=False), main)  # a new page, no new bitmap
    assert u32(meta, H.M_SPARES + 4) == 2 and u32(meta, H.M_NMAPS) == 1
    bad = meta_page()
    struct.pack_into("<I", bad, H.M_OVFLPOINT, 98)
    with pytest.raises(InvalidPage, match="splitpoint 98"):
        redo(META, bad, 0x30, blocks, main)
    with pytest.raises(InvalidRecord, match="WILL_INIT"):
        redo(NEWMAP, None, 0x30, [Block(0, OVFL, data=b"\0" * 4, will_init=True), Block(1, BUCKET),
                                  Block(3, NEWMAP), Block(4, META, data=b"\0" * 4)], main)


# DELETE, SPLIT_CLEANUP, UPDATE_META_PAGE, VACUUM_ONE_PAGE

def test_delete_from_an_overflow_page():
    flag = H.LH_OVERFLOW_PAGE | H.LH_PAGE_HAS_DEAD_TUPLES
    base = bucket_page(1, 2, 3, 4, flag=flag)
    blocks = [Block(0, BUCKET), Block(1, OVFL, data=struct.pack("<3H", 1, 3, 4))]
    page = redo(OVFL, base, 0x90, blocks, b"\x01\x00")
    assert codes(page) == [2] and opaque(page)[3] == H.LH_OVERFLOW_PAGE
    page = redo(OVFL, base, 0x90, blocks, b"\x00\x00")
    assert codes(page) == [2] and opaque(page)[3] == flag
    page = redo(OVFL, base, 0x90, [Block(0, BUCKET), Block(1, OVFL)], b"\x01\x00")  # no offsets
    assert codes(page) == [1, 2, 3, 4] and opaque(page)[3] == H.LH_OVERFLOW_PAGE
    other = bucket_page(9)
    assert redo(BUCKET, other, 0x90, blocks, b"\x00\x00") == other
    assert redo(BUCKET, other, 0x90, blocks, b"\x00\x01") == other  # "primary": block 0 not read
    with pytest.raises(InvalidRecord, match="incorrect index offsets"):
        redo(OVFL, base, 0x90, [Block(0, BUCKET), Block(1, OVFL, data=struct.pack("<3H", 4, 3, 1))], b"\0\0")
    with pytest.raises(InvalidRecord, match="invalid index offnum"):
        redo(OVFL, base, 0x90, [Block(0, BUCKET), Block(1, OVFL, data=struct.pack("<H", 5))], b"\0\0")


def test_split_cleanup_clears_only_its_flag():
    base = bucket_page(1, flag=H.LH_BUCKET_PAGE | H.LH_BUCKET_NEEDS_SPLIT_CLEANUP | H.LH_PAGE_HAS_DEAD_TUPLES)
    page = redo(BUCKET, base, 0xA0, [Block(0, BUCKET)], b"")
    assert opaque(page)[3] == H.LH_BUCKET_PAGE | H.LH_PAGE_HAS_DEAD_TUPLES and P.get_lsn(page) == LSN


def test_update_meta_page_copies_the_logged_double():
    nan = struct.pack("<Q", 0x7FF4000000000123)  # a signalling NaN's payload survives
    meta = redo(META, meta_page(), 0xB0, [Block(0, META)], nan)
    assert meta[H.M_NTUPLES:H.M_NTUPLES + 8] == nan
    meta = redo(META, meta_page(), 0xB0, [Block(0, META)], struct.pack("<d", 1234.0))
    assert ntuples(meta) == 1234.0
    with pytest.raises(InvalidRecord, match="expected 8"):
        redo(META, meta_page(), 0xB0, [Block(0, META)], b"\0" * 7)


def test_vacuum_one_page():
    base = bucket_page(1, 2, 3, 4, flag=H.LH_BUCKET_PAGE | H.LH_PAGE_HAS_DEAD_TUPLES)
    blocks = [Block(0, BUCKET), Block(1, META)]
    main = struct.pack("<Ii3H", 700, 3, 1, 2, 4)
    page = redo(BUCKET, base, 0xC0, blocks, main)
    assert codes(page) == [3] and opaque(page)[3] == H.LH_BUCKET_PAGE
    m = meta_page()
    struct.pack_into("<d", m, H.M_NTUPLES, 10.0)
    assert ntuples(redo(META, m, 0xC0, blocks, main)) == 7.0
    page = redo(BUCKET, base, 0xC0, blocks, struct.pack("<Ii", 700, 3))  # no offsets: nothing deleted
    assert codes(page) == [1, 2, 3, 4] and opaque(page)[3] == H.LH_BUCKET_PAGE
    with pytest.raises(InvalidRecord, match="3 offsets"):
        redo(BUCKET, base, 0xC0, blocks, main[:-1])
    with pytest.raises(InvalidRecord, match="negative"):
        redo(META, m, 0xC0, blocks, struct.pack("<Ii", 700, -1))


# record routing, names, errors

def test_record_not_touching_the_page():
    with pytest.raises(BlockNotReferenced, match="Hash/SPLIT_CLEANUP"):
        redo(BUCKET, bucket_page(1), 0xA0, [Block(0, BUCKET2)], b"")
    with pytest.raises(InvalidRecord, match="block 1 has no role"):
        redo(BUCKET, bucket_page(1), 0xA0, [Block(0, BUCKET2), Block(1, BUCKET)], b"")
    with pytest.raises(InvalidRecord, match="block 7 has no role"):
        blocks, main = squeeze_record(0, 0)
        redo(OTHER, bucket_page(1), 0x80, blocks + [Block(7, OTHER)], main)


@pytest.mark.parametrize("info", [0xD0, 0xE0, 0xF0])
def test_unknown_info_codes(info):
    with pytest.raises(UnsupportedRecord, match=f"Hash info {info:#04x}") as ei:
        redo(BUCKET, bucket_page(1), info, [Block(0, BUCKET)], b"\0" * 16)
    assert ei.value.rmid == RM and ei.value.info == info
    assert hashredo.record_name(info) == f"Hash/UNKNOWN ({info:x})"


def test_record_names():
    assert [hashredo.record_name(i) for i in range(0, 0xD0, 0x10)] == [
        "Hash/INIT_META_PAGE", "Hash/INIT_BITMAP_PAGE", "Hash/INSERT", "Hash/ADD_OVFL_PAGE",
        "Hash/SPLIT_ALLOCATE_PAGE", "Hash/SPLIT_PAGE", "Hash/SPLIT_COMPLETE", "Hash/MOVE_PAGE_CONTENTS",
        "Hash/SQUEEZE_PAGE", "Hash/DELETE", "Hash/SPLIT_CLEANUP", "Hash/UPDATE_META_PAGE", "Hash/VACUUM_ONE_PAGE"]
    assert hashredo.record_name(0x22) == "Hash/INSERT"  # XLR_INFO_MASK bits are not part of the name


def test_a_corrupt_line_pointer_in_the_base_page_is_refused():
    base = bucket_page(1, 2, 3)
    w = P.get_itemid(base, 2)
    struct.pack_into("<I", base, 28, (w & ~0x7FFF) | 8170)  # item 2 now runs into the special space
    with pytest.raises(InvalidPage, match="outside the tuple space"):
        redo(BUCKET, base, 0xA0, [Block(0, BUCKET)], b"")
    with pytest.raises(InvalidPage, match="outside the tuple space"):
        redo(BUCKET, base, 0x70, [Block(0, BUCKET), Block(1, OVFL)], struct.pack("<HB", 0, 0))


# hash_mask

def _masked(page: bytes | bytearray) -> bytearray:
    out = bytearray(page)
    hashredo.mask(out, 1)
    return out


def test_mask_bucket_page():
    page = bucket_page(1, 2, 3)
    dead = bytearray(page)
    IP.set_item_flags(dead, 2, P.LP_DEAD)
    struct.pack_into("<H", dead, H.OFF_FLAG, H.LH_BUCKET_PAGE | H.LH_PAGE_HAS_DEAD_TUPLES)
    dead[500:510] = b"x" * 10  # the hole
    struct.pack_into("<H", dead, 10, P.PD_HAS_FREE_LINES)
    P.set_lsn(dead, 0x9999)
    assert _masked(dead) == _masked(page)
    assert P.lp_flags(P.get_itemid(_masked(dead), 2)) == P.LP_NORMAL  # stricter than mask_lp_flags
    unused = bytearray(page)
    IP.set_item_flags(unused, 2, P.LP_UNUSED)
    assert _masked(unused) != _masked(page)
    other = bytearray(page)
    struct.pack_into("<H", other, H.OFF_FLAG, H.LH_BUCKET_PAGE | H.LH_BUCKET_BEING_SPLIT)
    assert _masked(other) != _masked(page)


def test_mask_meta_bitmap_and_unused_pages():
    meta = meta_page()
    noisy = bytearray(meta)
    noisy[5000:5008] = b"y" * 8  # past pd_lower 4568: the hole
    assert _masked(noisy) == _masked(meta)
    noisy[H.M_FIRSTFREE] = 3
    assert _masked(noisy) != _masked(meta)
    bm = bitmap_page(4096)
    noisy = bytearray(bm)
    noisy[30] = 0
    assert _masked(noisy) != _masked(bm)
    freed = bucket_page(flag=H.LH_UNUSED_PAGE, prev=INV, bucket=INV)
    other = bytearray(freed)
    struct.pack_into("<I", other, H.OFF_NEXTBLKNO, 5)  # PostgreSQL masks it all; compared here
    assert _masked(other) != _masked(freed)
    zero = bytearray(P.BLCKSZ)
    assert _masked(zero) == zero
    bad = bucket_page(1)
    struct.pack_into("<H", bad, 16, 8190)
    struct.pack_into("<H", bad, 14, 8190)
    with pytest.raises(InvalidPage):
        hashredo.mask(bad, 1)
    with pytest.raises(InvalidPage):
        hashredo.mask(bytearray(100), 1)


# -- hypothesis: mutated real records and pages ------------------------------------------------------------

@pytest.fixture(scope="module")
def samples(oracle_results):
    out = _samples(oracle_results.get("indexes"))
    assert len({s[4] for s in out}) >= 25
    return out


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_records_give_a_valid_page_or_a_redo_error(samples, data):
    tag, base, end, raw, _key = data.draw(st.sampled_from(samples))
    check_outcome(tag, base, end, mutated_record(data, raw), RM)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_base_pages_give_a_valid_page_or_a_redo_error(samples, data):
    """Bytes 8.. of the page before the record are flipped (pd_lsn is kept: a page past the record is
    returned as it came, whatever it holds)."""
    with_base = [s for s in samples if s[1] is not None]
    tag, base, end, raw, _key = data.draw(st.sampled_from(with_base))
    check_outcome(tag, flipped_page(data, base, header_and_special(120, 16), most=6), end, raw, RM)


def test_real_samples_replay_to_their_consistency_images(samples):
    """The rebuilt-record path the mutation tests take reproduces PostgreSQL's page when nothing is mutated."""
    check_rebuilt_samples(samples[:80], lambda page, _blknum: hashredo.mask(page, 1))
