"""PostgreSQL's masks (bufmask.c + heap_mask) on real PostgreSQL 15 heap pages."""

from __future__ import annotations

import struct

import pytest

from walredo_template.pg import page as P
from walredo_template.pg.errors import InvalidPage
from walredo_template.pg.mask import mask_heap_page, mask_vm_page


@pytest.fixture(scope="module")
def real_heap_page(default_capture):
    """A full heap page of table ``t`` as written to disk by PostgreSQL."""
    spc, db, rel = default_capture.tables["t"]
    for tag, page in default_capture.disk_pages.items():
        if (tag.spcnode, tag.dbnode, tag.relnode, tag.forknum) == (spc, db, rel, 0) and P.max_offset(page) > 20:
            return tag, page
    raise AssertionError("no heap page of t on disk")


def _first_normal(page):
    for i in range(1, P.max_offset(page) + 1):
        w = P.get_itemid(page, i)
        if P.lp_flags(w) == P.LP_NORMAL:
            return i, P.lp_off(w), P.lp_len(w)
    raise AssertionError("no normal item")


def test_mask_is_idempotent_and_keeps_size(real_heap_page):
    tag, page = real_heap_page
    m = mask_heap_page(page, tag.blknum)
    assert len(m) == 8192
    assert mask_heap_page(m, tag.blknum) == m


def test_mask_hides_lsn_checksum_hints_and_unused_space(real_heap_page):
    tag, page = real_heap_page
    other = bytearray(page)
    struct.pack_into("<IIH", other, 0, 7, 7, 0xBEEF)  # pd_lsn, pd_checksum
    struct.pack_into("<H", other, P.OFF_FLAGS, P.get_flags(page) ^ (P.PD_ALL_VISIBLE | P.PD_PAGE_FULL))
    struct.pack_into("<I", other, P.OFF_PRUNE_XID, 1234)
    lower, upper = P.get_lower(page), P.get_upper(page)
    other[lower:upper] = b"\xAA" * (upper - lower)
    _i, off, length = _first_normal(page)
    infomask = struct.unpack_from("<H", page, off + P.T_INFOMASK)[0]
    if infomask & 0x0300 != 0x0300:  # not frozen: every HEAP_XACT_MASK bit is a hint to heap_mask
        struct.pack_into("<H", other, off + P.T_INFOMASK, infomask ^ 0x0500)
    struct.pack_into("<I", other, off + P.T_CID, 99)  # t_cid
    pad = ((length + 7) & ~7) - length
    if pad:
        other[off + length:off + length + pad] = b"\x55" * pad
    assert bytes(other) != page
    assert mask_heap_page(bytes(other), tag.blknum) == mask_heap_page(page, tag.blknum)


def test_mask_keeps_real_differences(real_heap_page):
    tag, page = real_heap_page
    _i, off, length = _first_normal(page)
    hoff = page[off + P.T_HOFF]
    other = bytearray(page)
    other[off + hoff] ^= 0xFF  # tuple data
    assert mask_heap_page(bytes(other), tag.blknum) != mask_heap_page(page, tag.blknum)
    other = bytearray(page)
    struct.pack_into("<I", other, off + P.T_XMAX, 4242)  # xmax is not a hint
    assert mask_heap_page(bytes(other), tag.blknum) != mask_heap_page(page, tag.blknum)
    other = bytearray(page)
    struct.pack_into("<H", other, off + P.T_INFOMASK2, struct.unpack_from("<H", page, off + P.T_INFOMASK2)[0] ^ 0x4000)
    assert mask_heap_page(bytes(other), tag.blknum) != mask_heap_page(page, tag.blknum)


def test_speculative_ctid_masked_to_self():
    page = bytearray(8192)
    P.page_init(page)
    tup = bytearray(32)
    struct.pack_into("<HHH", tup, 12, 0, 77, 0xFFFE)  # speculative token in ctid
    tup[22] = 24
    P.add_item(page, bytes(tup), 1)
    m = mask_heap_page(bytes(page), 5)
    off = P.lp_off(P.get_itemid(m, 1))
    assert struct.unpack_from("<HHH", m, off + 12) == (0, 5, 1)


def test_mask_refuses_corrupt_bounds():
    page = bytearray(8192)
    P.page_init(page)
    struct.pack_into("<H", page, P.OFF_LOWER, 9000)
    with pytest.raises(InvalidPage):
        mask_heap_page(bytes(page))
    with pytest.raises(InvalidPage):
        mask_heap_page(b"\0" * 100)


def test_all_zero_page_masks_to_itself():
    assert mask_heap_page(bytes(8192)) == bytes(8192)


def test_vm_mask_compares_bits(default_capture):
    vm = [(t, p) for t, p in default_capture.disk_pages.items() if t.forknum == 2 and any(p[24:])]
    assert vm
    _tag, page = vm[0]
    other = bytearray(page)
    struct.pack_into("<IIH", other, 0, 1, 2, 3)
    assert mask_vm_page(bytes(other)) == mask_vm_page(page)
    other[24] ^= 1
    assert mask_vm_page(bytes(other)) != mask_vm_page(page)
