"""PostgreSQL's page masks for consistency comparisons (``access/common/bufmask.c``, ``heap_mask``).

Two pages that PostgreSQL's ``wal_consistency_checking`` would call consistent compare equal after
masking. What is masked, and why (MASK_MARKER is 0):

* ``mask_page_lsn_and_checksum``: pd_lsn and pd_checksum (set by whoever last wrote the page).
* ``mask_page_hint_bits``: pd_prune_xid and the PD_PAGE_FULL / PD_HAS_FREE_LINES / PD_ALL_VISIBLE flags,
  which change without WAL.
* ``mask_unused_space``: the hole between pd_lower and pd_upper.
* per tuple (``heap_mask``): t_infomask hint bits (all of HEAP_XACT_MASK unless xmin is frozen, else just
  the xmax hint bits), t_cid (redo always writes FirstCommandId), the ctid of speculative insertions, and
  the alignment padding after each item.

For visibility-map pages PostgreSQL applies ``heap_mask`` too (they belong to Heap2 records), which wipes
the whole bitmap because pd_lower = 24 and pd_upper = 8192; that compares nothing. ``mask_vm_page``
masks only the LSN and checksum so the bits themselves are compared.
"""

from __future__ import annotations

from .errors import InvalidPage
from .page import (
    _BOUNDS,
    BLCKSZ,
    CTID,
    LP_DEAD,
    LP_NORMAL,
    LSN,
    OFF_CHECKSUM,
    OFF_FLAGS,
    OFF_PRUNE_XID,
    PD_ALL_VISIBLE,
    PD_HAS_FREE_LINES,
    PD_PAGE_FULL,
    SIZE_OF_PAGE_HEADER,
    T_CID,
    T_CTID,
    T_INFOMASK,
    U16,
    U32,
    ZERO_PAGE,
    is_new,
    lp_array,
    max_offset,
)

HEAP_XACT_MASK = 0xFFF0
HEAP_XMIN_FROZEN = 0x0300
HEAP_XMAX_COMMITTED = 0x0400
HEAP_XMAX_INVALID = 0x0800
SPEC_TOKEN_OFFSET_NUMBER = 0xFFFE


def mask_page_lsn_and_checksum(page: bytearray) -> None:
    LSN.pack_into(page, 0, 0, 0)
    U16.pack_into(page, OFF_CHECKSUM, 0)


def mask_lsn_and_hole(page: bytearray) -> None:
    """pd_lsn, pd_checksum and the hole between pd_lower and pd_upper: all of ``seq_mask`` and
    ``generic_mask`` (PostgreSQL 15 masks no hint bits there).

    A never-initialized page (pd_upper 0) gets only the LSN and checksum masked, where PostgreSQL's
    mask_unused_space would raise an error: nothing more is hidden, so this is not looser.
    Raises :class:`InvalidPage` on an initialized page whose bounds are inconsistent.
    """
    mask_page_lsn_and_checksum(page)
    if not is_new(page):
        mask_unused_space(page)


def begin_index_mask(page: bytearray) -> bool:
    """The first step of an index access method's mask: the page must be BLCKSZ bytes (raises
    :class:`InvalidPage`); LSN and checksum are masked. False for an all-zero page (a never-initialized
    block), which has nothing else to mask."""
    if len(page) != BLCKSZ:
        raise InvalidPage(f"page has {len(page)} bytes, expected {BLCKSZ}")
    mask_page_lsn_and_checksum(page)
    return page != ZERO_PAGE


def mask_lp_dead(page: bytearray) -> None:
    """The part of bufmask.c's ``mask_lp_flags`` that matters for btree, hash and GiST pages, stricter: an
    LP_DEAD line pointer reads as LP_NORMAL. PostgreSQL sets every used pointer's flags to LP_UNUSED, which
    would also hide a NORMAL/REDIRECT/UNUSED difference; these pages only ever gain LP_DEAD without WAL
    (items killed by index scans). Raises :class:`InvalidPage` for an array that runs off the page."""
    nline = max_offset(page)
    if nline == 0:
        return
    if SIZE_OF_PAGE_HEADER + 4 * nline > BLCKSZ:
        raise InvalidPage(f"line pointer array of {nline} items runs off the page")
    st = lp_array(nline)
    words = st.unpack_from(page, SIZE_OF_PAGE_HEADER)
    dead = LP_DEAD << 15
    if any(w & 0x18000 == dead for w in words):
        st.pack_into(page, SIZE_OF_PAGE_HEADER, *[w & ~0x10000 if w & 0x18000 == dead else w for w in words])


def mask_page_hint_bits(page: bytearray) -> None:
    U32.pack_into(page, OFF_PRUNE_XID, 0)
    flags = U16.unpack_from(page, OFF_FLAGS)[0]
    U16.pack_into(page, OFF_FLAGS, flags & ~(PD_PAGE_FULL | PD_HAS_FREE_LINES | PD_ALL_VISIBLE))


def mask_unused_space(page: bytearray) -> None:
    """Zero pd_lower..pd_upper. Raises :class:`InvalidPage` if the bounds are inconsistent."""
    _f, lower, upper, special, _v = _BOUNDS.unpack_from(page, OFF_FLAGS)
    if lower > upper or special < upper or lower < SIZE_OF_PAGE_HEADER or special > BLCKSZ:
        raise InvalidPage(f"invalid page pd_lower {lower} pd_upper {upper} pd_special {special}")
    page[lower:upper] = bytes(upper - lower)


def heap_mask(page: bytearray, blkno: int = 0) -> None:
    """PostgreSQL's ``heap_mask`` in place. Raises :class:`InvalidPage` on a page it cannot walk."""
    if len(page) != BLCKSZ:
        raise InvalidPage(f"page has {len(page)} bytes, expected {BLCKSZ}")
    mask_page_lsn_and_checksum(page)
    if U16.unpack_from(page, 14)[0] == 0 and not any(page):
        return  # a never-initialized (all-zero) page: nothing else to mask
    mask_page_hint_bits(page)
    mask_unused_space(page)
    lower = U16.unpack_from(page, 12)[0]
    nline = (lower - SIZE_OF_PAGE_HEADER) >> 2
    for off in range(1, nline + 1):
        w = U32.unpack_from(page, SIZE_OF_PAGE_HEADER + (off - 1) * 4)[0]
        item = w & 0x7FFF
        length = w >> 17
        if (w >> 15) & 3 == LP_NORMAL:
            if item + 23 > BLCKSZ:
                raise InvalidPage(f"item {off} at {item} runs off the page")
            infomask = U16.unpack_from(page, item + T_INFOMASK)[0]
            if infomask & HEAP_XMIN_FROZEN != HEAP_XMIN_FROZEN:
                infomask &= ~HEAP_XACT_MASK
            else:
                infomask &= ~(HEAP_XMAX_INVALID | HEAP_XMAX_COMMITTED)
            U16.pack_into(page, item + T_INFOMASK, infomask)
            U32.pack_into(page, item + T_CID, 0)
            if U16.unpack_from(page, item + T_CTID + 4)[0] == SPEC_TOKEN_OFFSET_NUMBER:
                CTID.pack_into(page, item + T_CTID, (blkno >> 16) & 0xFFFF, blkno & 0xFFFF, off)
        if length:
            end = item + length
            pad = ((length + 7) & ~7) - length
            if pad:
                if end + pad > BLCKSZ:
                    raise InvalidPage(f"item {off} at {item} length {length} runs off the page")
                page[end:end + pad] = bytes(pad)


def mask_heap_page(page: bytes, blkno: int = 0) -> bytes:
    """A masked copy of a heap page, as PostgreSQL's ``heap_mask`` (see the module docstring).

    ``blkno`` only matters for speculative insertions (their ctid is masked to (blkno, offset)); compare
    two pages masked with the same value. Raises :class:`InvalidPage` for a page that cannot be walked.
    """
    buf = bytearray(page)
    heap_mask(buf, blkno)
    return bytes(buf)


def mask_vm_page(page: bytes) -> bytes:
    """A copy of a visibility-map page with only the LSN and checksum masked (the bits are compared)."""
    if len(page) != BLCKSZ:
        raise InvalidPage(f"page has {len(page)} bytes, expected {BLCKSZ}")
    buf = bytearray(page)
    mask_page_lsn_and_checksum(buf)
    return bytes(buf)
