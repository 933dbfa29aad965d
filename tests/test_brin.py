"""BRIN redo (walredo_template/pg/brin.py): the oracle on tests/workloads/brin.sql in the three index
configurations, hand-made records for the paths PostgreSQL's workload never takes, hypothesis mutations of
real BRIN records and of the pages they apply to, and brin_mask."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mutations import check_outcome, check_rebuilt_samples, flipped_page, header_and_special, mutated_record
from pgcluster import INDEX_CONFIG_NAMES
from recordbuilder import Block, build_record

from walredo_template import BufferTag
from walredo_template.pg import brin
from walredo_template.pg import indexpage as IP
from walredo_template.pg import page as P
from walredo_template.pg.errors import BlockNotReferenced, InvalidPage, InvalidRecord, UnsupportedRecord
from walredo_template.pg.xlogrecord import decode_record
from walredo_template.redo import apply_records

RM = brin.RM_ID
PREFIX = brin.NAME + "/"
# Every (record kind, block role) the workload must make PostgreSQL write and the oracle compare.
EXPECTED_KINDS = [
    "BRIN/CREATE_INDEX",
    "BRIN/INSERT", "BRIN/INSERT [block 1]",
    "BRIN/INSERT+INIT", "BRIN/INSERT+INIT [block 1]",
    "BRIN/UPDATE", "BRIN/UPDATE [block 1]", "BRIN/UPDATE [block 2]",
    "BRIN/UPDATE+INIT", "BRIN/UPDATE+INIT [block 1]", "BRIN/UPDATE+INIT [block 2]",
    "BRIN/SAMEPAGE_UPDATE",
    "BRIN/REVMAP_EXTEND", "BRIN/REVMAP_EXTEND [block 1]",
    "BRIN/DESUMMARIZE", "BRIN/DESUMMARIZE [block 1]",
]

SPC, DB, REL = 1663, 5, 70000
META = BufferTag(SPC, DB, REL, 0, 0)
REVMAP = BufferTag(SPC, DB, REL, 0, 1)
REG = BufferTag(SPC, DB, REL, 0, 2)
REG2 = BufferTag(SPC, DB, REL, 0, 3)
LSN0 = 0x1000
LSN = 0x2000


# -- the oracle --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", INDEX_CONFIG_NAMES)
def test_brin_records_match_postgres(oracle_results, name):
    res = oracle_results.get(name)
    mine, _applied = res.rmgr_kinds(PREFIX)
    print(f"\n[{name}] BRIN compared: " + ", ".join(f"{k} {v}" for k, v in mine.items()))
    missing = [k for k in EXPECTED_KINDS if not mine.get(k)]
    assert not missing, f"the workload no longer produces {missing}"
    # the workload's CHECKPOINT makes later first changes carry an image to restore (applied, no answer key)
    restored = sum(v - res.compared[k] for k, v in res.applied.items() if k.startswith(PREFIX))
    assert restored >= 5
    brin_pages = {t for t, rm in res.page_rmgr.items() if rm == RM}
    assert len(brin_pages) > 20
    disk = res.disk
    assert not [m for m in disk.mismatches if m[0] in brin_pages]
    assert not [m for m in disk.lsn_mismatches if m[0] in brin_pages]


def _samples(res):
    return [s for s in res.samples if s[4][0] == RM]


def test_revmap_extends_past_its_first_page(oracle_results):
    """pages_per_range = 1 and 1,440 heap pages: the second revmap page (block 2, an evacuated regular
    page) was created."""
    targets = {struct.unpack_from("<I", decode_record(raw).main_data)[0]
               for _t, _b, _e, raw, key in _samples(oracle_results.get("indexes")) if key[1] == 0x40}
    assert 2 in targets


# -- hand-made pages and records ---------------------------------------------------------------------------

def regular(*tuples: bytes | None, lsn: int = LSN0) -> bytearray:
    """A regular BRIN page with ``tuples`` at offsets 1.. (None: a removed item, its pointer left unused)."""
    page = bytearray(P.BLCKSZ)
    brin.brin_page_init(page, brin.BRIN_PAGETYPE_REGULAR)
    for t in tuples:
        IP.add_item(page, t or b"\x00" * 8, IP.items(page) + 1)
    for i, t in enumerate(tuples, 1):
        if t is None:
            IP.delete_item_no_compact(page, i)
    P.set_lsn(page, lsn)
    return page


def revmap_page(lsn: int = LSN0) -> bytearray:
    page = bytearray(P.BLCKSZ)
    brin.brin_page_init(page, brin.BRIN_PAGETYPE_REVMAP)
    P.set_lsn(page, lsn)
    return page


def meta_page(pd_lower: int = 40, last: int = 1, lsn: int = LSN0) -> bytearray:
    page = bytearray(P.BLCKSZ)
    brin.brin_page_init(page, brin.BRIN_PAGETYPE_META)
    struct.pack_into("<IIII", page, 24, brin.BRIN_META_MAGIC, 1, 1, last)
    struct.pack_into("<H", page, 12, pd_lower)
    P.set_lsn(page, lsn)
    return page


def tup(n: int, size: int = 24) -> bytes:
    return struct.pack("<IB", n, 0x08) + bytes([n & 0xFF]) * (size - 5)


def redo(tag: BufferTag, base: bytes | bytearray | None, info: int, blocks: list[Block], main: bytes,
         lsn: int = LSN) -> bytearray:
    raw = build_record(RM, info, blocks, main)
    return bytearray(apply_records(tag, None if base is None else bytes(base), [(lsn, raw)]))


def insert_main(heap_blk: int, ppr: int, offnum: int) -> bytes:
    return struct.pack("<IIH", heap_blk, ppr, offnum)


def update_main(old_off: int, heap_blk: int, ppr: int, offnum: int) -> bytes:
    return struct.pack("<H2xIIH", old_off, heap_blk, ppr, offnum)


def revmap_entry(page: bytes | bytearray, index: int) -> tuple[int, int]:
    hi, lo, off = struct.unpack_from("<HHH", page, 24 + 6 * index)
    return hi << 16 | lo, off


def items_of(page: bytes | bytearray) -> list[bytes | None]:
    out: list[bytes | None] = []
    for i in range(1, IP.items(page) + 1):
        w = P.get_itemid(page, i)
        out.append(bytes(IP.item(page, i)) if w >> 17 else None)
    return out


def test_insert_into_an_unused_slot_keeps_pd_lower():
    """Redo adds with PAI_OVERWRITE at the logged offset; PostgreSQL's own insert appends (BRIN pages never
    get PD_HAS_FREE_LINES), so an unused slot is only refilled by hand-made records."""
    base = regular(tup(1), None, tup(3))
    new = tup(9, 40)
    page = redo(REG, base, 0x10, [Block(0, REG, data=new), Block(1, REVMAP)], insert_main(7, 1, 2))
    assert items_of(page) == [tup(1), new, tup(3)]
    assert P.get_lower(page) == P.get_lower(base)
    assert P.get_lsn(page) == LSN
    with pytest.raises(InvalidRecord, match="used item"):
        redo(REG, base, 0x10, [Block(0, REG, data=new), Block(1, REVMAP)], insert_main(7, 1, 1))
    with pytest.raises(InvalidRecord, match="too large"):
        redo(REG, base, 0x10, [Block(0, REG, data=new), Block(1, REVMAP)], insert_main(7, 1, 5))


def test_insert_sets_the_revmap_entry_of_the_range():
    base = revmap_page()
    blocks = [Block(0, REG2, data=tup(1)), Block(1, REVMAP)]
    page = redo(REVMAP, base, 0x10, blocks, insert_main(2 * 1360 * 4 + 4 * 5 + 3, 4, 7))
    assert revmap_entry(page, 5) == (3, 7)  # (heapBlk / 4) % 1360 = 5; the tuple's block is block 0's
    expected = bytearray(base)
    expected[24 + 30:24 + 36] = struct.pack("<HHH", 0, 3, 7)
    assert page[8:] == expected[8:]
    # offset 0 makes the TID invalid, as ItemPointerSet + brinSetHeapBlockItemptr do
    page = redo(REVMAP, page, 0x10, blocks, insert_main(4 * 5, 4, 0), lsn=LSN + 8)
    assert struct.unpack_from("<HHH", page, 24 + 30) == (0xFFFF, 0xFFFF, 0)
    with pytest.raises(InvalidRecord, match="pagesPerRange is 0"):
        redo(REVMAP, base, 0x10, blocks, insert_main(1, 0, 1))
    with pytest.raises(InvalidRecord, match="no block 0"):
        redo(REVMAP, base, 0x10, [Block(1, REVMAP)], insert_main(1, 1, 1))
    with pytest.raises(InvalidRecord, match="no block 1"):  # PostgreSQL reads every block of the record
        redo(REG2, regular(), 0x10, [Block(0, REG2, data=tup(1))], insert_main(1, 1, 1))


def test_insert_offset_zero_appends():
    page = redo(REG, regular(tup(1), None, tup(3)), 0x10, [Block(0, REG, data=tup(5)), Block(1, REVMAP)],
                insert_main(0, 1, 0))
    assert items_of(page) == [tup(1), None, tup(3), tup(5)]


def test_insert_with_an_applied_image_restores_it_and_insert_init_reinitializes_anyway():
    image = regular(tup(1), tup(2), lsn=0)
    page = redo(REG, regular(tup(1)), 0x10, [Block(0, REG, data=tup(3), image=bytes(image)), Block(1, REVMAP)],
                insert_main(0, 1, 3))
    assert items_of(page) == [tup(1), tup(2)] and P.get_lsn(page) == LSN
    # +INIT: XLogInitBufferForRedo restores the image, brin_xlog_insert_update initializes the page anyway
    page = redo(REG, None, 0x90, [Block(0, REG, data=tup(3), will_init=True, image=bytes(image)),
                                  Block(1, REVMAP)], insert_main(0, 1, 1))
    assert items_of(page) == [tup(3)]
    assert brin.page_type(page) == brin.BRIN_PAGETYPE_REGULAR and P.get_special(page) == 8184


def test_insert_init_needs_will_init_and_plain_insert_refuses_it():
    with pytest.raises(InvalidRecord, match="WILL_INIT"):
        redo(REG, None, 0x90, [Block(0, REG, data=tup(3)), Block(1, REVMAP)], insert_main(0, 1, 1))
    with pytest.raises(InvalidRecord, match="WILL_INIT"):
        redo(REG, regular(tup(1)), 0x10, [Block(0, REG, data=tup(3), will_init=True), Block(1, REVMAP)],
             insert_main(0, 1, 2))


def test_page_already_past_the_record_is_left_alone():
    base = regular(tup(1), lsn=LSN + 100)
    page = redo(REG, base, 0x10, [Block(0, REG, data=tup(2)), Block(1, REVMAP)], insert_main(0, 1, 2))
    assert page == base
    base = revmap_page(lsn=LSN)
    assert redo(REVMAP, base, 0x50, [Block(0, REVMAP), Block(1, REG)], struct.pack("<IIH", 1, 0, 1)) == base


def test_update_removes_the_old_tuple_leaving_an_unused_pointer():
    base = regular(tup(1), tup(2, 48), tup(3))
    blocks = [Block(0, REG2, data=tup(2, 64)), Block(1, REVMAP), Block(2, REG)]
    page = redo(REG, base, 0x20, blocks, update_main(2, 9, 1, 1))
    assert items_of(page) == [tup(1), None, tup(3)]
    assert P.get_upper(page) == P.get_upper(base) + 48
    page = redo(REG, base, 0xA0, blocks, update_main(3, 9, 1, 1))  # last pointer: dropped
    assert items_of(page) == [tup(1), tup(2, 48)]
    with pytest.raises(InvalidRecord, match="invalid index offnum"):
        redo(REG, base, 0x20, blocks, update_main(4, 9, 1, 1))
    with pytest.raises(InvalidRecord, match="block 3 has no role"):
        redo(REG, base, 0x20, [Block(0, REG2, data=tup(2)), Block(1, REVMAP), Block(2, META), Block(3, REG)],
             update_main(1, 9, 1, 1))
    with pytest.raises(InvalidRecord, match="main data"):
        redo(REG, base, 0x20, blocks, update_main(2, 9, 1, 1)[:13])


def test_update_init_on_the_new_page_and_the_revmap():
    blocks = [Block(0, REG2, data=tup(7, 32), will_init=True), Block(1, REVMAP), Block(2, REG)]
    main = update_main(1, 1361, 1, 1)
    page = redo(REG2, None, 0xA0, blocks, main)
    assert items_of(page) == [tup(7, 32)] and P.get_lsn(page) == LSN
    page = redo(REVMAP, revmap_page(), 0xA0, blocks, main)
    assert revmap_entry(page, 1) == (3, 1)


def test_samepage_update_shrinks_and_grows_in_place():
    base = regular(tup(1, 40), tup(2, 24), tup(3, 56))
    for size in (8, 24, 33, 200):
        page = redo(REG, base, 0x30, [Block(0, REG, data=tup(9, size))], struct.pack("<H", 2))
        assert items_of(page) == [tup(1, 40), tup(9, size), tup(3, 56)]
        assert P.get_upper(page) == P.get_upper(base) + 24 - ((size + 7) & ~7)
    with pytest.raises(InvalidRecord, match="does not fit"):
        redo(REG, base, 0x30, [Block(0, REG, data=tup(9, 8100))], struct.pack("<H", 2))
    with pytest.raises(InvalidRecord, match="carries no data"):
        redo(REG, base, 0x30, [Block(0, REG)], struct.pack("<H", 2))
    with pytest.raises(InvalidRecord, match="block 1 has no role"):
        redo(REG, base, 0x30, [Block(0, REG2, data=tup(1)), Block(1, REG, data=tup(1))], struct.pack("<H", 2))


def test_init_flag_on_other_opcodes_is_ignored_as_brin_redo_does():
    base = regular(tup(1, 40))
    page = redo(REG, base, 0xB0, [Block(0, REG, data=tup(9, 40))], struct.pack("<H", 1))
    assert items_of(page) == [tup(9, 40)]
    assert brin.record_name(0xB0) == "BRIN/UNKNOWN (b0)"


def test_revmap_extend_updates_a_pre_v11_metapage_and_initializes_the_target():
    base = meta_page(pd_lower=24, last=1)
    blocks = [Block(0, META), Block(1, BufferTag(SPC, DB, REL, 0, 2), will_init=True)]
    page = redo(META, base, 0x40, blocks, struct.pack("<I", 2))
    assert P.get_lower(page) == 40 and struct.unpack_from("<IIII", page, 24) == (brin.BRIN_META_MAGIC, 1, 1, 2)
    target = BufferTag(SPC, DB, REL, 0, 2)
    page = redo(target, regular(tup(1)), 0x40, blocks, struct.pack("<I", 2))
    assert page == revmap_page(lsn=LSN)
    # "never a full-page image here", but one restored would be re-initialized all the same
    blocks_img = [Block(0, META), Block(1, target, will_init=True, image=bytes(regular(tup(1))))]
    assert redo(target, None, 0x40, blocks_img, struct.pack("<I", 2)) == revmap_page(lsn=LSN)
    with pytest.raises(InvalidRecord, match="WILL_INIT"):
        redo(target, regular(tup(1)), 0x40, [Block(0, META), Block(1, target)], struct.pack("<I", 2))
    with pytest.raises(InvalidRecord, match="targetBlk 3"):
        redo(META, base, 0x40, blocks, struct.pack("<I", 3))
    with pytest.raises(InvalidRecord, match="no block 1"):
        redo(META, base, 0x40, [Block(0, META)], struct.pack("<I", 2))


def test_create_index_initializes_the_metapage():
    page = redo(META, None, 0x00, [Block(0, META, will_init=True)], struct.pack("<IH", 4, 1))
    assert P.get_lower(page) == 40 and P.get_upper(page) == 8184 and P.get_special(page) == 8184
    assert struct.unpack_from("<IIII", page, 24) == (brin.BRIN_META_MAGIC, 1, 4, 0)
    assert brin.page_type(page) == brin.BRIN_PAGETYPE_META and P.get_lsn(page) == LSN
    with pytest.raises(InvalidRecord, match="WILL_INIT"):
        redo(META, meta_page(), 0x00, [Block(0, META)], struct.pack("<IH", 4, 1))
    with pytest.raises(InvalidRecord, match="main data"):
        redo(META, None, 0x00, [Block(0, META, will_init=True)], struct.pack("<I", 4))


def test_desummarize_clears_the_entry_and_removes_the_tuple():
    rm = revmap_page()
    struct.pack_into("<HHH", rm, 24 + 6 * 3, 0, 2, 1)
    blocks = [Block(0, REVMAP), Block(1, REG)]
    main = struct.pack("<IIH", 2, 7, 1)
    page = redo(REVMAP, rm, 0x50, blocks, main)
    assert struct.unpack_from("<HHH", page, 24 + 18) == (0xFFFF, 0xFFFF, 0)
    page = redo(REG, regular(tup(1), tup(2)), 0x50, blocks, main)
    assert items_of(page) == [None, tup(2)]


def test_pages_of_the_wrong_type_are_refused():
    """brin_xlog.c never looks at the page type; writing a TID or pd_lower = 40 into another kind of page
    would make line pointers of its bytes, so the engine refuses."""
    blocks = [Block(0, REG2, data=tup(1)), Block(1, REVMAP)]
    with pytest.raises(InvalidPage, match="page type"):
        redo(REVMAP, regular(tup(1)), 0x10, blocks, insert_main(1, 1, 1))
    with pytest.raises(InvalidPage, match="page type"):
        redo(META, revmap_page(), 0x40, [Block(0, META), Block(1, REG, will_init=True)], struct.pack("<I", 2))
    with pytest.raises(InvalidPage, match="page type"):
        redo(REG2, meta_page(), 0x10, blocks, insert_main(1, 1, 0))
    odd = revmap_page()
    struct.pack_into("<H", odd, 12, 8000)  # pd_lower past the entry
    with pytest.raises(InvalidPage, match="overlaps"):
        redo(REVMAP, odd, 0x10, blocks, insert_main(1, 1, 1))
    low = meta_page()
    struct.pack_into("<H", low, 14, 32)  # pd_upper below the metadata's end
    struct.pack_into("<H", low, 12, 24)
    with pytest.raises(InvalidPage, match="pd_upper"):
        redo(META, low, 0x40, [Block(0, META), Block(1, REG, will_init=True)], struct.pack("<I", 2))


def test_a_line_pointer_outside_the_tuple_space_is_refused():
    base = regular(tup(1), tup(2), tup(3))
    w = P.get_itemid(base, 1)
    struct.pack_into("<I", base, 24, (w & ~0x7FFF) | 8180)  # item 1 now runs past pd_special
    with pytest.raises(InvalidPage, match="outside the tuple space"):
        redo(REG, base, 0x30, [Block(0, REG, data=tup(9))], struct.pack("<H", 3))
    # a pointer below pd_upper, shifted down by an item that grows in place, would go below offset 0
    base = regular(tup(1), tup(2), tup(3))
    struct.pack_into("<I", base, 24, (P.get_itemid(base, 1) & ~0x7FFF) | 8)
    with pytest.raises(InvalidPage, match="below pd_upper"):
        redo(REG, base, 0x30, [Block(0, REG, data=tup(9, 400))], struct.pack("<H", 3))


def test_record_not_touching_the_page():
    with pytest.raises(BlockNotReferenced):
        redo(REG, regular(tup(1)), 0x30, [Block(0, REG2, data=tup(1))], struct.pack("<H", 1))


@pytest.mark.parametrize("info", [0x60, 0x70, 0xE0, 0xF0])
def test_unknown_info_codes(info):
    with pytest.raises(UnsupportedRecord, match=f"BRIN info {info:#04x}") as ei:
        redo(REG, regular(tup(1)), info, [Block(0, REG, data=tup(1))], b"\x01\x00")
    assert ei.value.rmid == RM and ei.value.info == info
    assert brin.record_name(info) == f"BRIN/UNKNOWN ({info:x})"


def test_record_names():
    assert [brin.record_name(i) for i in (0x00, 0x10, 0x90, 0x20, 0xA0, 0x30, 0x40, 0x50, 0x12)] == [
        "BRIN/CREATE_INDEX", "BRIN/INSERT", "BRIN/INSERT+INIT", "BRIN/UPDATE", "BRIN/UPDATE+INIT",
        "BRIN/SAMEPAGE_UPDATE", "BRIN/REVMAP_EXTEND", "BRIN/DESUMMARIZE", "BRIN/INSERT"]


def test_mask():
    page = regular(tup(1), tup(2))
    page[100:110] = b"x" * 10  # the hole of a regular page: masked
    struct.pack_into("<H", page, 8188, brin.BRIN_EVACUATE_PAGE)  # unlogged flag: masked
    struct.pack_into("<H", page, 10, P.PD_HAS_FREE_LINES)
    brin.mask(page, 2)
    assert page == _masked(regular(tup(1), tup(2)))
    rm = revmap_page()
    struct.pack_into("<HHH", rm, 30, 0, 5, 1)  # revmap entries live in the "hole": compared
    keep = bytes(rm)
    brin.mask(rm, 1)
    assert rm[24:] == keep[24:]
    old_meta = meta_page(pd_lower=24)  # pd_lower not set (pre-v11): the metadata is compared
    brin.mask(old_meta, 0)
    assert struct.unpack_from("<I", old_meta, 24)[0] == brin.BRIN_META_MAGIC
    meta = meta_page()
    meta[200:201] = b"x"
    brin.mask(meta, 0)
    assert meta[40:8184] == bytes(8144) and struct.unpack_from("<I", meta, 36)[0] == 1
    zero = bytearray(P.BLCKSZ)
    brin.mask(zero, 5)
    assert zero == bytes(P.BLCKSZ)
    bad = regular()
    struct.pack_into("<H", bad, 16, 8192)
    with pytest.raises(InvalidPage):
        brin.mask(bad, 2)


def _masked(page: bytearray) -> bytearray:
    page[0:10] = bytes(10)
    return page


# -- hypothesis: mutated real records and pages ------------------------------------------------------------

@pytest.fixture(scope="module")
def samples(oracle_results):
    out = _samples(oracle_results.get("indexes"))
    assert len({s[4] for s in out}) >= 12
    return out


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_records_give_a_valid_page_or_a_redo_error(samples, data):
    """Main data or one block's data flipped, cut or extended, a block dropped or its WILL_INIT flag toggled;
    the record rebuilt (so it decodes, CRC included) and applied to the real page it was written for."""
    tag, base, end, raw, _key = data.draw(st.sampled_from(samples))
    check_outcome(tag, base, end, mutated_record(data, raw), RM)


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
    check_rebuilt_samples(samples, brin.mask)
