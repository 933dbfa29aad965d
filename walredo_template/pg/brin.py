"""Redo of PostgreSQL 15 BRIN records (``access/brin/brin_xlog.c``) for one page.

A BRIN index has three kinds of page, told apart by the last half-word of their 8-byte special space
(``BrinSpecialSpace``: flags at pd_special + 4, type at pd_special + 6):

* the metapage (block 0, type 0xF091): ``BrinMetaPageData`` right after the page header — u32 magic
  0xA8109CFA, u32 version, u32 pagesPerRange, u32 lastRevmapPage — and pd_lower just past it (40);
* revmap pages (blocks 1..lastRevmapPage, type 0xF092): an array of 1360 ItemPointers (u16 block hi,
  u16 block lo, u16 offset; 6 bytes each) from byte 24 on, one per page range, pointing at the range's
  summary tuple. pd_lower stays 24: the array lives in what bufpage.c would call the hole;
* regular pages (type 0xF093): summary tuples as ordinary line-pointer items (opaque bytes here: minmax,
  minmax-multi, inclusion and bloom summaries all look alike to redo).

Redo per info code (``info & 0x70``; 0x80 is XLOG_BRIN_INIT_PAGE) and the role of each block id, with the
main data layout::

    CREATE_INDEX    u32 pagesPerRange, u16 version
                    block 0 metapage: initialized (always; WILL_INIT)
    INSERT(+INIT)   u32 heapBlk, u32 pagesPerRange, u16 offnum
                    block 0 regular page, data = the new tuple: added at offnum (PAI_OVERWRITE: an unused
                    slot or one past the end); with +INIT the page is first initialized (always, even
                    when an image was restored, as brin_xlog_insert_update does)
                    block 1 revmap page: the entry of heapBlk's range := (block 0's blkno, offnum)
    UPDATE(+INIT)   u16 oldOffnum, 2 pad, then INSERT's 10 bytes
                    blocks 0 and 1 as INSERT; block 2 old regular page: oldOffnum removed, its line
                    pointer left unused (PageIndexTupleDeleteNoCompact)
    SAMEPAGE_UPDATE u16 offnum; block 0 regular page, data = the tuple overwriting offnum in place
    REVMAP_EXTEND   u32 targetBlk
                    block 0 metapage: lastRevmapPage := targetBlk, pd_lower := 40
                    block 1 the new revmap page: initialized (always; WILL_INIT)
    DESUMMARIZE     u32 pagesPerRange, u32 heapBlk, u16 regOffset
                    block 0 revmap page: the entry of heapBlk's range made invalid ((0xFFFF, 0xFFFF, 0))
                    block 1 regular page: regOffset removed as in UPDATE's block 2

As everywhere in this engine only the requested page is rebuilt. PostgreSQL's redo never checks the type
of the page it changes; this module does (InvalidPage otherwise): a revmap entry goes only into a revmap
page (inside its pd_lower..pd_upper), lastRevmapPage and pd_lower = 40 only into a metapage, tuples only
into regular pages, because a TID or pd_lower = 40 written into another kind of page turns its bytes into
line pointers. After each tuple operation every line pointer with storage must still lie inside the tuple
space (bufpage.c checks only the item it acts on and shifts the others).
"""

from __future__ import annotations

import struct

from . import indexpage as IP
from . import page as P
from .bufmgr import (
    RedoContext,
    block_data,
    finish,
    init_for_redo,
    main_struct,
    page_for_redo,
    referenced_block,
    unsupported,
)
from .errors import InvalidPage, InvalidRecord
from .mask import mask_page_hint_bits, mask_page_lsn_and_checksum, mask_unused_space
from .xlogrecord import BlockRef, DecodedRecord

RM_ID = 17
NAME = "BRIN"

XLOG_BRIN_CREATE_INDEX = 0x00
XLOG_BRIN_INSERT = 0x10
XLOG_BRIN_UPDATE = 0x20
XLOG_BRIN_SAMEPAGE_UPDATE = 0x30
XLOG_BRIN_REVMAP_EXTEND = 0x40
XLOG_BRIN_DESUMMARIZE = 0x50
XLOG_BRIN_OPMASK = 0x70
XLOG_BRIN_INIT_PAGE = 0x80

OP_NAMES = {
    XLOG_BRIN_CREATE_INDEX: "CREATE_INDEX", XLOG_BRIN_INSERT: "INSERT", XLOG_BRIN_UPDATE: "UPDATE",
    XLOG_BRIN_SAMEPAGE_UPDATE: "SAMEPAGE_UPDATE", XLOG_BRIN_REVMAP_EXTEND: "REVMAP_EXTEND",
    XLOG_BRIN_DESUMMARIZE: "DESUMMARIZE",
}

# the block ids each record's redo reads (PostgreSQL PANICs when one is missing, whichever page it rebuilds)
_BLOCKS = {
    XLOG_BRIN_CREATE_INDEX: (0,), XLOG_BRIN_INSERT: (0, 1), XLOG_BRIN_UPDATE: (0, 1, 2),
    XLOG_BRIN_SAMEPAGE_UPDATE: (0,), XLOG_BRIN_REVMAP_EXTEND: (0, 1), XLOG_BRIN_DESUMMARIZE: (0, 1),
}

BRIN_PAGETYPE_META = 0xF091
BRIN_PAGETYPE_REVMAP = 0xF092
BRIN_PAGETYPE_REGULAR = 0xF093
BRIN_EVACUATE_PAGE = 0x0001
BRIN_META_MAGIC = 0xA8109CFA
SPECIAL_SIZE = 8  # MAXALIGN(sizeof(BrinSpecialSpace))
CONTENTS = P.SIZE_OF_PAGE_HEADER  # PageGetContents: MAXALIGN(SizeOfPageHeaderData)
META_END = CONTENTS + 16  # pd_lower of a metapage
REVMAP_PAGE_MAXITEMS = (P.BLCKSZ - CONTENTS - SPECIAL_SIZE) // 6  # 1360

_CREATE = struct.Struct("<IH")  # xl_brin_createidx
_INSERT = struct.Struct("<IIH")  # xl_brin_insert
_UPDATE = struct.Struct("<H2xIIH")  # xl_brin_update: oldOffnum, then an aligned xl_brin_insert
_SAMEPAGE = struct.Struct("<H")  # xl_brin_samepage_update
_EXTEND = struct.Struct("<I")  # xl_brin_revmap_extend
_DESUMMARIZE = struct.Struct("<IIH")  # xl_brin_desummarize
_META = struct.Struct("<IIII")  # BrinMetaPageData
_TID = struct.Struct("<HHH")  # ItemPointerData
_U16 = P.U16
_U32 = P.U32
_INVALID_TID = _TID.pack(0xFFFF, 0xFFFF, 0)


def page_type(page: bytes | bytearray) -> int:
    """BrinPageType: the last half-word of the special space. Raises :class:`InvalidPage` when pd_special
    leaves no room for BRIN's special space."""
    special = _U16.unpack_from(page, P.OFF_SPECIAL)[0]
    if special > P.BLCKSZ - SPECIAL_SIZE:
        raise InvalidPage(f"pd_special {special} leaves no room for BRIN's special space")
    return int(_U16.unpack_from(page, special + 6)[0])


def brin_page_init(page: bytearray, pagetype: int) -> None:
    """brin_page_init: PageInit with BRIN's 8-byte special space, then the page type."""
    P.page_init(page, SPECIAL_SIZE)
    _U16.pack_into(page, P.BLCKSZ - 2, pagetype)


def _require_type(page: bytearray, pagetype: int, what: str) -> None:
    found = page_type(page)
    if found != pagetype:
        raise InvalidPage(f"{what}: page type is {found:#06x}, expected {pagetype:#06x}")


def _regular_page(page: bytearray, name: str) -> bytearray:
    _require_type(page, BRIN_PAGETYPE_REGULAR, name)
    return page


def _set_revmap_entry(page: bytearray, pages_per_range: int, heap_blk: int, tid: bytes, name: str) -> None:
    """brinSetHeapBlockItemptr: store ``tid`` (6 bytes) as the revmap entry of ``heap_blk``'s range."""
    if pages_per_range == 0:
        raise InvalidRecord(f"{name}: pagesPerRange is 0")
    _require_type(page, BRIN_PAGETYPE_REVMAP, name)
    pos = CONTENTS + (heap_blk // pages_per_range) % REVMAP_PAGE_MAXITEMS * 6
    lower, upper = P._LU.unpack_from(page, P.OFF_LOWER)
    if pos < lower or pos + 6 > upper:
        raise InvalidPage(f"{name}: revmap entry at {pos} overlaps pd_lower {lower} / pd_upper {upper}")
    page[pos:pos + 6] = tid


def _tid(blkno: int, offnum: int) -> bytes:
    """ItemPointerSet, or ItemPointerSetInvalid for offset 0 (brinSetHeapBlockItemptr's rule)."""
    if offnum == 0:
        return _INVALID_TID
    return _TID.pack(blkno >> 16, blkno & 0xFFFF, offnum)


def _insert_part(ctx: RedoContext, rec: DecodedRecord, blk: BlockRef, lsn: int, heap_blk: int,
                 pages_per_range: int, offnum: int, name: str) -> None:
    """brin_xlog_insert_update for the requested page: block 0 (the tuple's page) or 1 (the revmap)."""
    if blk.block_id == 0:
        if rec.info & XLOG_BRIN_INIT_PAGE:
            # XLogInitBufferForRedo, whose result brin ignores: the page is initialized and the tuple
            # added even when an image was restored.
            page = init_for_redo(ctx, blk, lsn)
            brin_page_init(page, BRIN_PAGETYPE_REGULAR)
            ctx.checked = True
        else:
            found = page_for_redo(ctx, blk, lsn)
            if found is None:
                return
            page = _regular_page(found, name)
        IP.add_item(page, block_data(blk, name), offnum, overwrite=True)
        IP.check_line_pointers(page, name)
        finish(page, lsn)
    elif blk.block_id == 1:
        found = page_for_redo(ctx, blk, lsn)
        if found is None:
            return
        # the entry points at block 0, the page the tuple went to
        _set_revmap_entry(found, pages_per_range, heap_blk, _tid(rec.blocks[0].blkno, offnum), name)
        finish(found, lsn)
    else:
        raise InvalidRecord(f"{name}: block {blk.block_id} has no role in this record")


def _remove_tuple(ctx: RedoContext, blk: BlockRef, lsn: int, offnum: int, name: str) -> None:
    page = page_for_redo(ctx, blk, lsn)
    if page is not None:
        IP.delete_item_no_compact(_regular_page(page, name), offnum)
        IP.check_line_pointers(page, name)
        finish(page, lsn)


def redo(ctx: RedoContext, rec: DecodedRecord, lsn: int) -> None:
    """Replay a BRIN record onto ``ctx.page`` (the block of the record naming ``ctx.tag``).

    Raises :class:`UnsupportedRecord` for an unknown opcode, :class:`BlockNotReferenced` when the record
    does not touch the page, :class:`InvalidRecord` for short main data, missing block data or a tuple that
    does not fit or a block PostgreSQL's redo reads missing (REVMAP_EXTEND: also a targetBlk other than
    block 1's block number, which PostgreSQL only asserts), :class:`InvalidPage` for a page that cannot
    take the change.
    """
    info = rec.info & 0xF0
    op = info & XLOG_BRIN_OPMASK
    if op not in OP_NAMES:
        raise unsupported(rec, NAME)
    name = record_name(info)
    blk = referenced_block(ctx, rec, name)
    bid = blk.block_id
    blocks = rec.blocks
    for need in _BLOCKS[op]:
        if need not in blocks:
            raise InvalidRecord(f"{name}: the record has no block {need}")
    if op == XLOG_BRIN_INSERT:
        heap_blk, ppr, offnum = main_struct(rec, _INSERT, name)
        _insert_part(ctx, rec, blk, lsn, heap_blk, ppr, offnum, name)
    elif op == XLOG_BRIN_UPDATE:
        old_off, heap_blk, ppr, offnum = main_struct(rec, _UPDATE, name)
        if bid == 2:
            _remove_tuple(ctx, blk, lsn, old_off, name)
        else:
            _insert_part(ctx, rec, blk, lsn, heap_blk, ppr, offnum, name)
    elif op == XLOG_BRIN_SAMEPAGE_UPDATE:
        (offnum,) = main_struct(rec, _SAMEPAGE, name)
        if bid != 0:
            raise InvalidRecord(f"{name}: block {bid} has no role in this record")
        page = page_for_redo(ctx, blk, lsn)
        if page is not None:
            IP.overwrite_item(_regular_page(page, name), offnum, block_data(blk, name))
            IP.check_line_pointers(page, name)
            finish(page, lsn)
    elif op == XLOG_BRIN_DESUMMARIZE:
        ppr, heap_blk, reg_off = main_struct(rec, _DESUMMARIZE, name)
        if bid == 0:
            page = page_for_redo(ctx, blk, lsn)
            if page is not None:
                _set_revmap_entry(page, ppr, heap_blk, _INVALID_TID, name)
                finish(page, lsn)
        elif bid == 1:
            _remove_tuple(ctx, blk, lsn, reg_off, name)
        else:
            raise InvalidRecord(f"{name}: block {bid} has no role in this record")
    elif op == XLOG_BRIN_REVMAP_EXTEND:
        (target,) = main_struct(rec, _EXTEND, name)
        if target != blocks[1].blkno:  # an Assert in brin_xlog_revmap_extend
            raise InvalidRecord(f"{name}: targetBlk {target} is not block 1's block {blocks[1].blkno}")
        if bid == 0:
            page = page_for_redo(ctx, blk, lsn)
            if page is not None:
                _require_type(page, BRIN_PAGETYPE_META, name)
                if P.get_upper(page) < META_END:
                    raise InvalidPage(f"{name}: metapage pd_upper {P.get_upper(page)} is below {META_END}")
                _U32.pack_into(page, CONTENTS + 12, target)
                _U16.pack_into(page, P.OFF_LOWER, META_END)
                finish(page, lsn)
        elif bid == 1:
            # XLogInitBufferForRedo; the page is initialized whatever it returned.
            revmap = init_for_redo(ctx, blk, lsn)
            brin_page_init(revmap, BRIN_PAGETYPE_REVMAP)
            ctx.checked = True
            finish(revmap, lsn)
        else:
            raise InvalidRecord(f"{name}: block {bid} has no role in this record")
    else:  # CREATE_INDEX
        ppr, version = main_struct(rec, _CREATE, name)
        if bid != 0:
            raise InvalidRecord(f"{name}: block {bid} has no role in this record")
        page = init_for_redo(ctx, blk, lsn)
        brin_page_init(page, BRIN_PAGETYPE_META)
        _META.pack_into(page, CONTENTS, BRIN_META_MAGIC, version, ppr, 0)
        _U16.pack_into(page, P.OFF_LOWER, META_END)
        ctx.checked = True
        finish(page, lsn)


def mask(page: bytearray, blkno: int) -> None:
    """PostgreSQL 15's ``brin_mask`` in place: LSN, checksum and hint bits; the hole between pd_lower and
    pd_upper of regular pages, and of metapages whose pd_lower is past the header (revmap pages keep
    their TIDs there, so theirs is compared); the unlogged BRIN_EVACUATE_PAGE flag. Raises
    :class:`InvalidPage` for a page whose pd_special leaves no room for the special space or whose
    bounds are inconsistent."""
    mask_page_lsn_and_checksum(page)
    mask_page_hint_bits(page)
    pagetype = page_type(page)
    if pagetype == BRIN_PAGETYPE_REGULAR or (
            pagetype == BRIN_PAGETYPE_META and _U16.unpack_from(page, P.OFF_LOWER)[0] > P.SIZE_OF_PAGE_HEADER):
        mask_unused_space(page)
    flags_at = _U16.unpack_from(page, P.OFF_SPECIAL)[0] + 4
    _U16.pack_into(page, flags_at, _U16.unpack_from(page, flags_at)[0] & ~BRIN_EVACUATE_PAGE)


def record_name(info: int) -> str:
    """``BRIN/OPERATION`` as pg_waldump prints it (``+INIT`` for INSERT and UPDATE with
    XLOG_BRIN_INIT_PAGE; ``UNKNOWN (xx)`` for what brin_identify does not name)."""
    info &= 0xF0
    op = info & XLOG_BRIN_OPMASK
    if info & XLOG_BRIN_INIT_PAGE:
        if op in (XLOG_BRIN_INSERT, XLOG_BRIN_UPDATE):
            return f"{NAME}/{OP_NAMES[op]}+INIT"
        return f"{NAME}/UNKNOWN ({info:x})"
    return f"{NAME}/{OP_NAMES[op]}" if op in OP_NAMES else f"{NAME}/UNKNOWN ({info:x})"
