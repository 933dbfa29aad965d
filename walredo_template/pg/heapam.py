"""Redo of PostgreSQL 15 Heap and Heap2 records for one page (``heap_xlog_*`` in ``heapam.c``).

Each ``redo_*`` function replays one decoded record onto the single page being reconstructed — the
page named by ``ctx.tag`` — and leaves every other block the record touches alone, as Neon's walredo
does. A record can reach a page in three ways:

* as a block reference whose tag is the page (the ordinary case);
* as the visibility-map page of a heap block whose VM bits the record clears without referencing the VM
  block (``*_ALL_VISIBLE_CLEARED``, ``XLH_LOCK_ALL_FROZEN_CLEARED``) — see :mod:`.visibilitymap`;
* as block 0 (the VM page) of ``XLOG_HEAP2_VISIBLE``.

Buffer handling mirrors ``XLogReadBufferForRedoExtended``: a block image flagged "apply" is restored
(pd_lsn := record end) and the record's own redo for that block is skipped (BLK_RESTORED); a page whose
pd_lsn is already at or past the record is left alone (BLK_DONE); otherwise the redo runs and pd_lsn is
set to the record's end LSN. Where PostgreSQL would ``elog(PANIC)`` on a record that does not fit the
page, this raises :class:`InvalidRecord` (or :class:`InvalidPage` for a corrupt page).

Record layouts (``access/heapam_xlog.h`` of 15; main data unless said otherwise)::

    INSERT       u16 offnum, u8 flags             block 0 data: xl_heap_header(5) + tuple body
    MULTI_INSERT u8 flags, pad, u16 ntuples, [u16 offsets[ntuples] unless INIT_PAGE]
                 block 0 data: per tuple, 2-byte aligned: u16 datalen, u16 infomask2, u16 infomask,
                 u8 hoff, then datalen bytes
    DELETE       u32 xmax, u16 offnum, u8 infobits_set, u8 flags
    UPDATE       u32 old_xmax, u16 old_offnum, u8 old_infobits, u8 flags, u32 new_xmax, u16 new_offnum
                 block 0 (new page) data: [u16 prefixlen] [u16 suffixlen] xl_heap_header + body;
                 block 1 = old page when different
    LOCK         u32 locking_xid, u16 offnum, u8 infobits_set, u8 flags
    LOCK_UPDATED u32 xmax, u16 offnum, u8 infobits_set, u8 flags
    CONFIRM      u16 offnum          INPLACE  u16 offnum, block 0 data: the new tuple body
    PRUNE        u32 latestRemovedXid, u16 nredirected, u16 ndead; block 0 data: u16 offsets
    VACUUM       u16 nunused; block 0 data: u16 offsets
    FREEZE_PAGE  u32 cutoff_xid, u16 ntuples; block 0 data: 12-byte freeze plans
    VISIBLE      u32 cutoff_xid, u8 flags; block 0 = VM page, block 1 = heap page
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from .. import BufferTag
from . import page as P
from . import visibilitymap as VM
from .bufmgr import RedoContext, block_data, init_for_redo, main_struct, page_for_redo, restore_image
from .bufmgr import block_matches as _matches
from .errors import BlockNotReferenced, InvalidRecord, UnsupportedRecord
from .xlogrecord import RM_HEAP2_ID, RM_HEAP_ID, BlockRef, DecodedRecord

MAIN_FORKNUM = 0
VISIBILITYMAP_FORKNUM = 2

# Heap opcodes (info & XLOG_HEAP_OPMASK)
XLOG_HEAP_INSERT = 0x00
XLOG_HEAP_DELETE = 0x10
XLOG_HEAP_UPDATE = 0x20
XLOG_HEAP_TRUNCATE = 0x30
XLOG_HEAP_HOT_UPDATE = 0x40
XLOG_HEAP_CONFIRM = 0x50
XLOG_HEAP_LOCK = 0x60
XLOG_HEAP_INPLACE = 0x70
XLOG_HEAP_OPMASK = 0x70
XLOG_HEAP_INIT_PAGE = 0x80
# Heap2 opcodes
XLOG_HEAP2_REWRITE = 0x00
XLOG_HEAP2_PRUNE = 0x10
XLOG_HEAP2_VACUUM = 0x20
XLOG_HEAP2_FREEZE_PAGE = 0x30
XLOG_HEAP2_VISIBLE = 0x40
XLOG_HEAP2_MULTI_INSERT = 0x50
XLOG_HEAP2_LOCK_UPDATED = 0x60
XLOG_HEAP2_NEW_CID = 0x70

HEAP_OP_NAMES = {
    0x00: "INSERT", 0x10: "DELETE", 0x20: "UPDATE", 0x30: "TRUNCATE", 0x40: "HOT_UPDATE",
    0x50: "CONFIRM", 0x60: "LOCK", 0x70: "INPLACE",
}
HEAP2_OP_NAMES = {
    0x00: "REWRITE", 0x10: "PRUNE", 0x20: "VACUUM", 0x30: "FREEZE_PAGE", 0x40: "VISIBLE",
    0x50: "MULTI_INSERT", 0x60: "LOCK_UPDATED", 0x70: "NEW_CID",
}

XLH_INSERT_ALL_VISIBLE_CLEARED = 1 << 0
XLH_INSERT_ALL_FROZEN_SET = 1 << 5
XLH_UPDATE_OLD_ALL_VISIBLE_CLEARED = 1 << 0
XLH_UPDATE_NEW_ALL_VISIBLE_CLEARED = 1 << 1
XLH_UPDATE_PREFIX_FROM_OLD = 1 << 5
XLH_UPDATE_SUFFIX_FROM_OLD = 1 << 6
XLH_DELETE_ALL_VISIBLE_CLEARED = 1 << 0
XLH_DELETE_IS_SUPER = 1 << 3
XLH_DELETE_IS_PARTITION_MOVE = 1 << 4
XLH_LOCK_ALL_FROZEN_CLEARED = 0x01

XLHL_XMAX_IS_MULTI = 0x01
XLHL_XMAX_LOCK_ONLY = 0x02
XLHL_XMAX_EXCL_LOCK = 0x04
XLHL_XMAX_KEYSHR_LOCK = 0x08
XLHL_KEYS_UPDATED = 0x10

XLH_FREEZE_XVAC = 0x02
XLH_INVALID_XVAC = 0x04

# t_infomask / t_infomask2 bits (access/htup_details.h)
HEAP_XMAX_KEYSHR_LOCK = 0x0010
HEAP_COMBOCID = 0x0020
HEAP_XMAX_EXCL_LOCK = 0x0040
HEAP_XMAX_LOCK_ONLY = 0x0080
HEAP_LOCK_MASK = 0x0050
HEAP_XMAX_COMMITTED = 0x0400
HEAP_XMAX_INVALID = 0x0800
HEAP_XMAX_IS_MULTI = 0x1000
HEAP_MOVED = 0xC000
HEAP_XMAX_BITS = HEAP_XMAX_COMMITTED | HEAP_XMAX_INVALID | HEAP_XMAX_IS_MULTI | HEAP_LOCK_MASK | HEAP_XMAX_LOCK_ONLY
HEAP_KEYS_UPDATED = 0x2000
HEAP_HOT_UPDATED = 0x4000

FROZEN_TRANSACTION_ID = 2
INVALID_BLOCK_NUMBER = 0xFFFFFFFF
MOVED_PARTITIONS_OFFSET_NUMBER = 0xFFFD


_INSERT = struct.Struct("<HB")
_DELETE = struct.Struct("<IHBB")
_UPDATE = struct.Struct("<IHBBIH")
_LOCK = struct.Struct("<IHBB")
_U16 = struct.Struct("<H")
_PRUNE = struct.Struct("<IHH")
_FREEZE_PAGE = struct.Struct("<IH")
_FREEZE_TUPLE = struct.Struct("<IHHHBx")  # 12 bytes: sizeof(xl_heap_freeze_tuple)
_VISIBLE = struct.Struct("<IB")
_MULTI_INSERT = struct.Struct("<BxH")
_XL_HEAP_HEADER = struct.Struct("<HHB")
_MULTI_TUPLE = struct.Struct("<HHHB")
# t_infomask2, t_infomask at offset 18
_INFOMASKS = struct.Struct("<HH")
_XMAX_CID = struct.Struct("<II")


def record_name(rmid: int, info: int) -> str:
    if rmid == RM_HEAP_ID:
        return "Heap/" + HEAP_OP_NAMES[info & XLOG_HEAP_OPMASK] + ("+INIT" if info & XLOG_HEAP_INIT_PAGE else "")
    if rmid == RM_HEAP2_ID:
        return "Heap2/" + HEAP2_OP_NAMES[info & XLOG_HEAP_OPMASK] + ("+INIT" if info & XLOG_HEAP_INIT_PAGE else "")
    return f"rmgr {rmid}"


# --- block helpers -------------------------------------------------------------------------------

def _same_rel(blk: BlockRef, tag: BufferTag) -> bool:
    return blk.relnode == tag.relnode and blk.dbnode == tag.dbnode and blk.spcnode == tag.spcnode


def _fix_infomask_from_infobits(infobits: int, infomask: int, infomask2: int) -> tuple[int, int]:
    infomask &= ~(HEAP_XMAX_IS_MULTI | HEAP_XMAX_LOCK_ONLY | HEAP_XMAX_KEYSHR_LOCK | HEAP_XMAX_EXCL_LOCK)
    infomask2 &= ~HEAP_KEYS_UPDATED
    if infobits & XLHL_XMAX_IS_MULTI:
        infomask |= HEAP_XMAX_IS_MULTI
    if infobits & XLHL_XMAX_LOCK_ONLY:
        infomask |= HEAP_XMAX_LOCK_ONLY
    if infobits & XLHL_XMAX_EXCL_LOCK:
        infomask |= HEAP_XMAX_EXCL_LOCK
    if infobits & XLHL_XMAX_KEYSHR_LOCK:
        infomask |= HEAP_XMAX_KEYSHR_LOCK
    if infobits & XLHL_KEYS_UPDATED:
        infomask2 |= HEAP_KEYS_UPDATED
    return infomask, infomask2


def _clear_all_visible(page: bytearray) -> None:
    P.U16.pack_into(page, P.OFF_FLAGS, P.U16.unpack_from(page, P.OFF_FLAGS)[0] & ~P.PD_ALL_VISIBLE)


def _set_all_visible(page: bytearray) -> None:
    P.U16.pack_into(page, P.OFF_FLAGS, P.U16.unpack_from(page, P.OFF_FLAGS)[0] | P.PD_ALL_VISIBLE)


def _set_ctid(page: bytearray, off: int, blkno: int, offnum: int) -> None:
    P.CTID.pack_into(page, off + P.T_CTID, (blkno >> 16) & 0xFFFF, blkno & 0xFFFF, offnum)


# --- implicit visibility-map clears --------------------------------------------------------------

def vm_clears(rec: DecodedRecord) -> list[tuple[BlockRef, int, int]]:
    """The VM bit clears a heap record implies: (heap block ref, heap block number, VM flags to clear).

    These are the ``visibilitymap_clear`` calls in the heap redo routines, which run even when the heap
    page itself is skipped. Raises :class:`InvalidRecord` if the record is too short to say.
    """
    rmid = rec.rmid
    op = rec.info & XLOG_HEAP_OPMASK
    blk0 = rec.blocks.get(0)
    if blk0 is None:
        return []
    md = rec.main_data
    if rmid == RM_HEAP_ID:
        if op == XLOG_HEAP_INSERT:
            flags = main_struct(rec, _INSERT, "INSERT")[1]
            if flags & XLH_INSERT_ALL_VISIBLE_CLEARED:
                return [(blk0, blk0.blkno, VM.VISIBILITYMAP_VALID_BITS)]
        elif op == XLOG_HEAP_DELETE:
            flags = main_struct(rec, _DELETE, "DELETE")[3]
            if flags & XLH_DELETE_ALL_VISIBLE_CLEARED:
                return [(blk0, blk0.blkno, VM.VISIBILITYMAP_VALID_BITS)]
        elif op == XLOG_HEAP_UPDATE or op == XLOG_HEAP_HOT_UPDATE:
            flags = main_struct(rec, _UPDATE, "UPDATE")[3]
            out = []
            if flags & XLH_UPDATE_OLD_ALL_VISIBLE_CLEARED:
                old = rec.blocks.get(1, blk0)
                out.append((old, old.blkno, VM.VISIBILITYMAP_VALID_BITS))
            if flags & XLH_UPDATE_NEW_ALL_VISIBLE_CLEARED:
                out.append((blk0, blk0.blkno, VM.VISIBILITYMAP_VALID_BITS))
            return out
        elif op == XLOG_HEAP_LOCK:
            flags = main_struct(rec, _LOCK, "LOCK")[3]
            if flags & XLH_LOCK_ALL_FROZEN_CLEARED:
                return [(blk0, blk0.blkno, VM.VISIBILITYMAP_ALL_FROZEN)]
    elif rmid == RM_HEAP2_ID:
        if op == XLOG_HEAP2_MULTI_INSERT:
            if len(md) < 1:
                raise InvalidRecord("MULTI_INSERT: no main data")
            if md[0] & XLH_INSERT_ALL_VISIBLE_CLEARED:
                return [(blk0, blk0.blkno, VM.VISIBILITYMAP_VALID_BITS)]
        elif op == XLOG_HEAP2_LOCK_UPDATED:
            flags = main_struct(rec, _LOCK, "LOCK_UPDATED")[3]
            if flags & XLH_LOCK_ALL_FROZEN_CLEARED:
                return [(blk0, blk0.blkno, VM.VISIBILITYMAP_ALL_FROZEN)]
    return []


def _vm_page_for_update(ctx: RedoContext) -> bytearray:
    """The VM page as visibilitymap_pin/vm_readbuf give it: a missing or all-zero page is PageInit'ed."""
    page = ctx.page
    if page is None:
        page = ctx.page = bytearray(P.BLCKSZ)
        P.page_init(page)
    elif P.is_new(page):
        P.page_init(page)
    else:
        P.check_page(page)
    return page


def redo_vm_page(ctx: RedoContext, rec: DecodedRecord, lsn: int) -> bool:
    """Replay ``rec`` onto the visibility-map page ``ctx.tag``; False if the record does not touch it.

    Handles XLOG_HEAP2_VISIBLE's VM block and the implicit clears of :func:`vm_clears`.
    """
    tag = ctx.tag
    if rec.rmid == RM_HEAP2_ID and rec.info & XLOG_HEAP_OPMASK == XLOG_HEAP2_VISIBLE:
        vmblk = rec.blocks.get(0)
        if vmblk is None or not _matches(vmblk, tag):
            return False
        _redo_visible_vm(ctx, rec, vmblk, lsn)
        return True
    touched = False
    for heapblk, heap_blkno, flags in vm_clears(rec):
        if heapblk.forknum != MAIN_FORKNUM or not _same_rel(heapblk, tag):
            continue
        if VM.vm_block_of(heap_blkno) != tag.blknum:
            continue
        page = _vm_page_for_update(ctx)
        VM.clear_bits(page, heap_blkno, flags)
        touched = True
    return touched


def _redo_visible_vm(ctx: RedoContext, rec: DecodedRecord, vmblk: BlockRef, lsn: int) -> None:
    cutoff_xid, flags = main_struct(rec, _VISIBLE, "VISIBLE")
    heapblk = rec.blocks.get(1)
    if heapblk is None:
        raise InvalidRecord("VISIBLE: no heap block reference (block 1)")
    if flags & ~VM.VISIBILITYMAP_VALID_BITS or not flags:
        raise InvalidRecord(f"VISIBLE: invalid visibility map flags {flags:#x}")
    if VM.vm_block_of(heapblk.blkno) != vmblk.blkno:
        raise InvalidRecord(
            f"VISIBLE: heap block {heapblk.blkno} is not covered by visibility map block {vmblk.blkno}"
        )
    if vmblk.will_init:
        raise InvalidRecord("block with WILL_INIT flag must be zeroed by redo")
    if vmblk.apply_image:
        restore_image(ctx, vmblk, lsn)
        return
    # RBM_ZERO_ON_ERROR: a missing VM page reads as zeros and is then initialized.
    if ctx.page is None:
        ctx.page = bytearray(P.BLCKSZ)
    page = ctx.page
    if P.get_lsn(page) >= lsn:
        return  # BLK_DONE
    if P.is_new(page):
        P.page_init(page)
    else:
        P.check_page(page)
    if lsn > P.get_lsn(page) and VM.set_bits(page, heapblk.blkno, flags):
        P.set_lsn(page, lsn)


# --- Heap records --------------------------------------------------------------------------------

def redo_insert(ctx: RedoContext, rec: DecodedRecord, blk: BlockRef, lsn: int) -> None:
    offnum, flags = main_struct(rec, _INSERT, "INSERT")
    page: bytearray | None
    if rec.info & XLOG_HEAP_INIT_PAGE:
        page = init_for_redo(ctx, blk, lsn)  # redone even over a restored image, as heap_xlog_insert does
        P.page_init(page)
    else:
        page = page_for_redo(ctx, blk, lsn)
        if page is None:
            return
    data = block_data(blk, "INSERT")
    if len(data) <= _XL_HEAP_HEADER.size:
        raise InvalidRecord(f"INSERT: tuple data of {len(data)} bytes")
    infomask2, infomask, hoff = _XL_HEAP_HEADER.unpack_from(data)
    P.add_heap_tuple(page, offnum, rec.xid, 0, blk.blkno, infomask2, infomask, hoff,
                     memoryview(data)[_XL_HEAP_HEADER.size:])
    P.set_lsn(page, lsn)
    if flags & XLH_INSERT_ALL_VISIBLE_CLEARED:
        _clear_all_visible(page)


def redo_multi_insert(ctx: RedoContext, rec: DecodedRecord, blk: BlockRef, lsn: int) -> None:
    flags, ntuples = main_struct(rec, _MULTI_INSERT, "MULTI_INSERT")
    isinit = bool(rec.info & XLOG_HEAP_INIT_PAGE)
    md = rec.main_data
    if not isinit and len(md) < _MULTI_INSERT.size + 2 * ntuples:
        raise InvalidRecord(f"MULTI_INSERT: main data too short for {ntuples} offsets")
    page: bytearray | None
    if isinit:
        page = init_for_redo(ctx, blk, lsn)  # redone even over a restored image, as in heapam.c
        P.page_init(page)
    else:
        page = page_for_redo(ctx, blk, lsn)
        if page is None:
            return
    data = block_data(blk, "MULTI_INSERT")
    if isinit:
        _multi_insert_into_empty_page(page, data, ntuples, rec.xid, blk.blkno)
        P.set_lsn(page, lsn)
        if flags & XLH_INSERT_ALL_VISIBLE_CLEARED:
            _clear_all_visible(page)
        if flags & XLH_INSERT_ALL_FROZEN_SET:
            _set_all_visible(page)
        return
    end = len(data)
    pos = 0
    blkno = blk.blkno
    xid = rec.xid
    mv = memoryview(data)
    for i in range(ntuples):
        offnum = _U16.unpack_from(md, _MULTI_INSERT.size + 2 * i)[0]
        pos = (pos + 1) & ~1  # SHORTALIGN: each xl_multi_insert_tuple starts 2-byte aligned
        if pos + _MULTI_TUPLE.size > end:
            raise InvalidRecord(f"MULTI_INSERT: tuple {i} header beyond the block data")
        datalen, infomask2, infomask, hoff = _MULTI_TUPLE.unpack_from(data, pos)
        pos += _MULTI_TUPLE.size
        if pos + datalen > end:
            raise InvalidRecord(f"MULTI_INSERT: tuple {i} data beyond the block data")
        P.add_heap_tuple(page, offnum, xid, 0, blkno, infomask2, infomask, hoff, mv[pos:pos + datalen])
        pos += datalen
    if pos != end:
        raise InvalidRecord("MULTI_INSERT: total tuple length mismatch")
    P.set_lsn(page, lsn)
    if flags & XLH_INSERT_ALL_VISIBLE_CLEARED:
        _clear_all_visible(page)
    if flags & XLH_INSERT_ALL_FROZEN_SET:
        _set_all_visible(page)


_ZERO_PAD = bytes(8)
_LOWER_UPPER = struct.Struct("<HH")


# t_xmin, t_xmax, t_cid, t_ctid's block number: the first 16 bytes of every tuple MULTI_INSERT adds
_HEADER_TO_CTID_BLOCK = struct.Struct("<IIIHH")
# the low and high byte of offset numbers 1..MaxHeapTuplesPerPage (t_ctid.ip_posid), for slice assignment
_POSID_LO = bytes(i & 0xFF for i in range(1, P.MAX_HEAP_TUPLES_PER_PAGE + 1))
_POSID_HI = bytes(i >> 8 for i in range(1, P.MAX_HEAP_TUPLES_PER_PAGE + 1))


def _multi_insert_uniform(page: bytearray, data: bytes, ntuples: int, xid: int, blkno: int) -> bool:
    """MULTI_INSERT+INIT when every tuple has the same length (COPY into a fixed-width table, as
    ``pgbench -i``): the layout is then arithmetic and is built without a Python step per tuple.
    Returns False, having changed nothing, when the tuples are not uniform; then the general loop runs.

    The block data is ``ntuples`` chunks ``u16 datalen, u16 infomask2, u16 infomask, u8 hoff, data``,
    each SHORTALIGNed; a tuple on the page is 16 header bytes (xmin, xmax, cid, ctid block), t_ctid's
    offset number, then exactly the chunk's bytes after datalen, MAXALIGNed. So: overwrite every
    datalen with the offset number (two extended-slice assignments), cut the chunks, and join them last
    first with the 16 header bytes and the alignment padding as the separator. Same page, same errors
    as the general loop.
    """
    datalen = data[0] | data[1] << 8
    chunk = 7 + datalen
    stride = (chunk + 1) & ~1  # SHORTALIGN
    if (
        len(data) != stride * (ntuples - 1) + chunk
        or data[0::stride] != data[0:1] * ntuples
        or data[1::stride] != data[1:2] * ntuples
    ):
        return False
    size = P.SIZEOF_HEAP_TUPLE_HEADER + datalen
    if size > P.MAX_HEAP_TUPLE_SIZE:
        raise InvalidRecord(f"tuple of {size} bytes exceeds MaxHeapTupleSize")
    alen = (size + 7) & ~7
    upper = P.BLCKSZ - ntuples * alen
    lower = P.SIZE_OF_PAGE_HEADER + P.SIZEOF_ITEMID * ntuples
    if lower > upper:
        raise InvalidRecord(f"item of {size} bytes does not fit on the page")
    buf = bytearray(data)
    buf[0::stride] = _POSID_LO[:ntuples]
    buf[1::stride] = _POSID_HI[:ntuples]
    head = _HEADER_TO_CTID_BLOCK.pack(xid, 0, 0, (blkno >> 16) & 0xFFFF, blkno & 0xFFFF)
    pad = bytes(alen - size)
    # tuple 1 lies highest on the page: lay the tuples out last first
    chunks = [buf[start:start + chunk] for start in range((ntuples - 1) * stride, -1, -stride)]
    page[upper:P.BLCKSZ] = b"".join((head, (pad + head).join(chunks), pad))
    # line pointer k: lp_off = BLCKSZ - k * alen, LP_NORMAL, lp_len = size (lp_off < 0x8000, so | is +)
    bits = (P.LP_NORMAL << 15) | (size << 17)
    P.lp_array(ntuples).pack_into(
        page, P.SIZE_OF_PAGE_HEADER, *range(P.BLCKSZ - alen + bits, upper - 1 + bits, -alen)
    )
    _LOWER_UPPER.pack_into(page, P.OFF_LOWER, lower, upper)
    return True


def _multi_insert_into_empty_page(page: bytearray, data: bytes, ntuples: int, xid: int, blkno: int) -> None:
    """MULTI_INSERT+INIT onto a just-initialized page: items 1..ntuples appended in order.

    Equivalent to ``ntuples`` PageAddItem calls on the empty page, but the line pointers are written with
    one pack and the tuple area with one join (tuple 1 nearest the end of the page; alignment padding is
    zeros, as on the freshly zeroed page). COPY produces these by the thousand; when all tuples have the
    same length, :func:`_multi_insert_uniform` lays them out without a Python step per tuple.
    """
    if ntuples > P.MAX_HEAP_TUPLES_PER_PAGE:
        raise InvalidRecord(f"can't put more than {P.MAX_HEAP_TUPLES_PER_PAGE} items in a heap page")
    if ntuples and len(data) >= 2 and _multi_insert_uniform(page, data, ntuples, xid, blkno):
        return
    _multi_insert_general(page, data, ntuples, xid, blkno)


def _multi_insert_general(page: bytearray, data: bytes, ntuples: int, xid: int, blkno: int) -> None:
    """The tuple-by-tuple loop of :func:`_multi_insert_into_empty_page` (any tuple lengths)."""
    end = len(data)
    pos = 0
    upper = P.BLCKSZ
    lower = P.SIZE_OF_PAGE_HEADER
    bhi = (blkno >> 16) & 0xFFFF
    blo = blkno & 0xFFFF
    pack_header = P.TUPLE_HEADER.pack
    unpack_tuple = _MULTI_TUPLE.unpack_from
    parts = []
    lps = []
    for i in range(ntuples):
        pos = (pos + 1) & ~1  # SHORTALIGN: each xl_multi_insert_tuple starts 2-byte aligned
        if pos + 7 > end:
            raise InvalidRecord(f"MULTI_INSERT: tuple {i} header beyond the block data")
        datalen, infomask2, infomask, hoff = unpack_tuple(data, pos)
        pos += 7
        stop = pos + datalen
        if stop > end:
            raise InvalidRecord(f"MULTI_INSERT: tuple {i} data beyond the block data")
        size = P.SIZEOF_HEAP_TUPLE_HEADER + datalen
        if size > P.MAX_HEAP_TUPLE_SIZE:
            raise InvalidRecord(f"tuple of {size} bytes exceeds MaxHeapTupleSize")
        alen = (size + 7) & ~7
        upper -= alen
        lower += P.SIZEOF_ITEMID
        if lower > upper:
            raise InvalidRecord(f"item of {size} bytes does not fit on the page")
        lps.append(upper | (P.LP_NORMAL << 15) | (size << 17))
        parts.append(pack_header(xid, 0, 0, bhi, blo, i + 1, infomask2, infomask, hoff)
                     + data[pos:stop] + _ZERO_PAD[:alen - size])
        pos = stop
    if pos != end:
        raise InvalidRecord("MULTI_INSERT: total tuple length mismatch")
    if not lps:
        return
    parts.reverse()  # tuple 1 lies highest on the page: lay the tuples out last first
    page[upper:P.BLCKSZ] = b"".join(parts)
    P.lp_array(len(lps)).pack_into(page, P.SIZE_OF_PAGE_HEADER, *lps)
    _LOWER_UPPER.pack_into(page, P.OFF_LOWER, lower, upper)


def redo_delete(ctx: RedoContext, rec: DecodedRecord, blk: BlockRef, lsn: int) -> None:
    xmax, offnum, infobits, flags = main_struct(rec, _DELETE, "DELETE")
    page = page_for_redo(ctx, blk, lsn)
    if page is None:
        return
    off, _len = P.normal_item(page, offnum)
    infomask2, infomask = _INFOMASKS.unpack_from(page, off + P.T_INFOMASK2)
    infomask &= ~(HEAP_XMAX_BITS | HEAP_MOVED)
    infomask2 &= ~(HEAP_KEYS_UPDATED | HEAP_HOT_UPDATED)
    infomask, infomask2 = _fix_infomask_from_infobits(infobits, infomask, infomask2)
    if not flags & XLH_DELETE_IS_SUPER:
        P.U32.pack_into(page, off + P.T_XMAX, xmax)
    else:
        P.U32.pack_into(page, off + P.T_XMIN, 0)
    P.U32.pack_into(page, off + P.T_CID, 0)
    infomask &= ~HEAP_COMBOCID
    _INFOMASKS.pack_into(page, off + P.T_INFOMASK2, infomask2, infomask)
    P.set_prunable(page, rec.xid)
    if flags & XLH_DELETE_ALL_VISIBLE_CLEARED:
        _clear_all_visible(page)
    if flags & XLH_DELETE_IS_PARTITION_MOVE:
        _set_ctid(page, off, INVALID_BLOCK_NUMBER, MOVED_PARTITIONS_OFFSET_NUMBER)
    else:
        _set_ctid(page, off, blk.blkno, offnum)
    P.set_lsn(page, lsn)


# t_xmax, t_cid, t_ctid (bi_hi, bi_lo, posid), t_infomask2, t_infomask: bytes 4..22 of a tuple header,
# rewritten in one go by UPDATE's old-tuple half
_XMAX_TO_INFOMASK = struct.Struct("<IIHHHHH")


def _update_old(ctx: RedoContext, rec: DecodedRecord, lsn: int, hot: bool, fields: tuple[int, ...],
                newblk_no: int, blk_old: BlockRef, stamp: bool = True) -> tuple[bytearray | None, int, int]:
    """The old-tuple half of UPDATE on the old page; returns (the page, old tuple offset, old tuple length),
    the page None when it needed no redo (:func:`.bufmgr.page_for_redo`).

    ``stamp=False`` leaves pd_lsn to the caller, which sets it after the new-tuple half on the same page.
    """
    old_xmax, old_offnum, old_infobits, flags, _new_xmax, new_offnum = fields
    page = page_for_redo(ctx, blk_old, lsn)
    if page is None:
        return None, 0, 0
    off, length = P.normal_item(page, old_offnum)
    infomask2, infomask = _INFOMASKS.unpack_from(page, off + P.T_INFOMASK2)
    infomask &= ~(HEAP_XMAX_BITS | HEAP_MOVED | HEAP_COMBOCID)
    if hot:
        infomask2 = (infomask2 & ~HEAP_KEYS_UPDATED) | HEAP_HOT_UPDATED
    else:
        infomask2 &= ~(HEAP_KEYS_UPDATED | HEAP_HOT_UPDATED)
    if old_infobits:
        infomask, infomask2 = _fix_infomask_from_infobits(old_infobits, infomask, infomask2)
    # xmax, cid = FirstCommandId (HEAP_COMBOCID cleared above), ctid -> the new tuple
    _XMAX_TO_INFOMASK.pack_into(page, off + P.T_XMAX, old_xmax, 0, (newblk_no >> 16) & 0xFFFF,
                                newblk_no & 0xFFFF, new_offnum, infomask2, infomask)
    # PageSetPrunable, inline (one of the hottest paths: every HOT update)
    xid = rec.xid
    cur = P.U32.unpack_from(page, P.OFF_PRUNE_XID)[0]
    if cur == 0 or (xid < cur if xid < 3 or cur < 3 else (xid - cur) & 0xFFFFFFFF >= 0x80000000):
        P.U32.pack_into(page, P.OFF_PRUNE_XID, xid)
    if flags & XLH_UPDATE_OLD_ALL_VISIBLE_CLEARED:
        _clear_all_visible(page)
    if stamp:
        P.LSN.pack_into(page, P.OFF_LSN, lsn >> 32, lsn & 0xFFFFFFFF)
    return page, off, length


def redo_update(ctx: RedoContext, rec: DecodedRecord, blk: BlockRef, lsn: int) -> None:
    """UPDATE / HOT_UPDATE: block 0 is the new page, block 1 the old page when it differs; ``blk`` is the
    block reference naming the requested page (block 0 or 1).

    Only the half of the record that concerns the requested page is replayed. With prefix/suffix
    compression the new tuple borrows bytes from the old one, which is then on the same page.
    """
    hot = rec.info & XLOG_HEAP_OPMASK == XLOG_HEAP_HOT_UPDATE
    fields: tuple[int, ...]
    try:
        fields = _UPDATE.unpack_from(rec.main_data)
    except struct.error:
        raise InvalidRecord(f"UPDATE: main data has {len(rec.main_data)} bytes, expected {_UPDATE.size}") from None
    flags = fields[3]
    blocks = rec.blocks
    blk0 = blocks.get(0)
    if blk0 is None:
        raise InvalidRecord("UPDATE: no block 0")
    newblk_no = blk0.blkno
    if len(blocks) > 1:
        blk1 = blocks.get(1)
        if blk1 is not None and _matches(blk1, blk0.tag):
            raise InvalidRecord("UPDATE: block 1 names the same page as block 0")
    else:
        blk1 = None
    if blk.block_id == 1:
        # The requested page is the old page only (``blk`` is block 1).
        _update_old(ctx, rec, lsn, hot, fields, newblk_no, blk)
        return
    old_off = old_len = 0
    page: bytearray | None
    if blk1 is None:
        # same page: pd_lsn is set once, after the new tuple (nothing reads it in between)
        page, old_off, old_len = _update_old(ctx, rec, lsn, hot, fields, newblk_no, blk0, False)
    elif rec.info & XLOG_HEAP_INIT_PAGE:
        page = init_for_redo(ctx, blk0, lsn)  # redone even over a restored image, as heap_xlog_update does
        P.page_init(page)
    else:
        page = page_for_redo(ctx, blk0, lsn)
    if page is None:
        return
    data = blk0.data
    if data is None:
        raise InvalidRecord("UPDATE: block 0 carries no data")
    pos = 0
    prefixlen = suffixlen = 0
    try:
        if flags & (XLH_UPDATE_PREFIX_FROM_OLD | XLH_UPDATE_SUFFIX_FROM_OLD):
            if blk1 is not None:
                raise InvalidRecord("UPDATE: prefix/suffix compression across pages")
            if flags & XLH_UPDATE_PREFIX_FROM_OLD:
                prefixlen = _U16.unpack_from(data, pos)[0]
                pos += 2
            if flags & XLH_UPDATE_SUFFIX_FROM_OLD:
                suffixlen = _U16.unpack_from(data, pos)[0]
                pos += 2
        infomask2, infomask, hoff = _XL_HEAP_HEADER.unpack_from(data, pos)
    except struct.error:
        raise InvalidRecord("UPDATE: new tuple data truncated") from None
    pos += 5  # _XL_HEAP_HEADER.size
    if prefixlen or suffixlen:
        old_hoff = page[old_off + P.T_HOFF]
        if prefixlen + suffixlen > old_len - old_hoff or old_hoff < P.SIZEOF_HEAP_TUPLE_HEADER:
            raise InvalidRecord(
                f"UPDATE: prefix {prefixlen} + suffix {suffixlen} longer than the old tuple's data"
            )
        if prefixlen:
            bitmap_len = hoff - P.SIZEOF_HEAP_TUPLE_HEADER
            if bitmap_len < 0 or bitmap_len > len(data) - pos:
                raise InvalidRecord(
                    f"UPDATE: t_hoff {hoff} inconsistent with {len(data) - pos} bytes of tuple data"
                )
            start = old_off + old_hoff
            body = b"".join((data[pos:pos + bitmap_len], page[start:start + prefixlen], data[pos + bitmap_len:]))
        else:
            body = data[pos:]
        suffix = page[old_off + old_len - suffixlen:old_off + old_len] if suffixlen else None
    else:
        body = data[pos:]
        suffix = None
    P.add_heap_tuple(page, fields[5], rec.xid, fields[4], newblk_no, infomask2, infomask, hoff, body, suffix)
    if flags & XLH_UPDATE_NEW_ALL_VISIBLE_CLEARED:
        _clear_all_visible(page)
    P.LSN.pack_into(page, P.OFF_LSN, lsn >> 32, lsn & 0xFFFFFFFF)


def redo_confirm(ctx: RedoContext, rec: DecodedRecord, blk: BlockRef, lsn: int) -> None:
    (offnum,) = main_struct(rec, _U16, "CONFIRM")
    page = page_for_redo(ctx, blk, lsn)
    if page is None:
        return
    off, _len = P.normal_item(page, offnum)
    _set_ctid(page, off, blk.blkno, offnum)
    P.set_lsn(page, lsn)


def _locked_infomasks(page: bytearray, offnum: int, infobits: int) -> tuple[int, int, int]:
    """The tuple at ``offnum`` and its infomasks as LOCK and LOCK_UPDATED redo rewrite them: xmax bits and
    HEAP_MOVED cleared, HEAP_KEYS_UPDATED cleared, then the record's infobits applied."""
    off, _len = P.normal_item(page, offnum)
    infomask2, infomask = _INFOMASKS.unpack_from(page, off + P.T_INFOMASK2)
    infomask &= ~(HEAP_XMAX_BITS | HEAP_MOVED)
    infomask2 &= ~HEAP_KEYS_UPDATED
    infomask, infomask2 = _fix_infomask_from_infobits(infobits, infomask, infomask2)
    return off, infomask2, infomask


def redo_lock(ctx: RedoContext, rec: DecodedRecord, blk: BlockRef, lsn: int) -> None:
    locking_xid, offnum, infobits, _flags = main_struct(rec, _LOCK, "LOCK")
    page = page_for_redo(ctx, blk, lsn)
    if page is None:
        return
    off, infomask2, infomask = _locked_infomasks(page, offnum, infobits)
    # HEAP_XMAX_IS_LOCKED_ONLY: only a locker, no update: no HOT chain, ctid points at itself
    if infomask & HEAP_XMAX_LOCK_ONLY or (infomask & (HEAP_XMAX_IS_MULTI | HEAP_LOCK_MASK)) == HEAP_XMAX_EXCL_LOCK:
        infomask2 &= ~HEAP_HOT_UPDATED
        _set_ctid(page, off, blk.blkno, offnum)
    _XMAX_CID.pack_into(page, off + P.T_XMAX, locking_xid, 0)
    infomask &= ~HEAP_COMBOCID
    _INFOMASKS.pack_into(page, off + P.T_INFOMASK2, infomask2, infomask)
    P.set_lsn(page, lsn)


def redo_lock_updated(ctx: RedoContext, rec: DecodedRecord, blk: BlockRef, lsn: int) -> None:
    xmax, offnum, infobits, _flags = main_struct(rec, _LOCK, "LOCK_UPDATED")
    page = page_for_redo(ctx, blk, lsn)
    if page is None:
        return
    off, infomask2, infomask = _locked_infomasks(page, offnum, infobits)
    P.U32.pack_into(page, off + P.T_XMAX, xmax)
    _INFOMASKS.pack_into(page, off + P.T_INFOMASK2, infomask2, infomask)
    P.set_lsn(page, lsn)


def redo_inplace(ctx: RedoContext, rec: DecodedRecord, blk: BlockRef, lsn: int) -> None:
    (offnum,) = main_struct(rec, _U16, "INPLACE")
    page = page_for_redo(ctx, blk, lsn)
    if page is None:
        return
    newtup = blk.data or b""
    off, length = P.normal_item(page, offnum)
    hoff = page[off + P.T_HOFF]
    if length - hoff != len(newtup):
        raise InvalidRecord(f"INPLACE: wrong tuple length {len(newtup)}, the tuple has {length - hoff}")
    page[off + hoff:off + length] = newtup
    P.set_lsn(page, lsn)


# --- Heap2 records -------------------------------------------------------------------------------

def _offsets(data: bytes, count: int) -> list[int]:
    return list(struct.unpack_from(f"<{count}H", data)) if count else []


def _check_offsets(page: bytearray, offsets: list[int], what: str) -> None:
    maxoff = P.max_offset(page)
    for o in offsets:
        if o < 1 or o > maxoff:
            raise InvalidRecord(f"{what}: item {o} beyond the line pointer array ({maxoff} items)")


def redo_prune(ctx: RedoContext, rec: DecodedRecord, blk: BlockRef, lsn: int) -> None:
    _xid, nredirected, ndead = main_struct(rec, _PRUNE, "PRUNE")
    page = page_for_redo(ctx, blk, lsn)
    if page is None:
        return
    data = blk.data or b""
    if len(data) & 1 or len(data) < 2 * (2 * nredirected + ndead):
        raise InvalidRecord(f"PRUNE: {len(data)} bytes of offsets for {nredirected} redirects, {ndead} dead")
    count = len(data) // 2
    offs = _offsets(data, count)
    _check_offsets(page, offs, "PRUNE")
    if not offs:
        raise InvalidRecord("PRUNE: nothing to do")
    set_itemid = P.set_itemid
    n2 = 2 * nredirected
    for i in range(0, n2, 2):
        set_itemid(page, offs[i], offs[i + 1], P.LP_REDIRECT, 0)
    for i in range(n2, n2 + ndead):
        set_itemid(page, offs[i], 0, P.LP_DEAD, 0)
    for i in range(n2 + ndead, count):
        set_itemid(page, offs[i], 0, P.LP_UNUSED, 0)
    P.repair_fragmentation(page)
    P.set_lsn(page, lsn)


def redo_vacuum(ctx: RedoContext, rec: DecodedRecord, blk: BlockRef, lsn: int) -> None:
    (nunused,) = main_struct(rec, _U16, "VACUUM")
    page = page_for_redo(ctx, blk, lsn)
    if page is None:
        return
    data = blk.data or b""
    if nunused == 0 or len(data) < 2 * nunused:
        raise InvalidRecord(f"VACUUM: {len(data)} bytes of offsets for {nunused} unused items")
    offs = _offsets(data, nunused)
    _check_offsets(page, offs, "VACUUM")
    for o in offs:
        P.set_itemid(page, o, 0, P.LP_UNUSED, 0)
    P.truncate_line_pointer_array(page)
    P.set_lsn(page, lsn)


def redo_freeze_page(ctx: RedoContext, rec: DecodedRecord, blk: BlockRef, lsn: int) -> None:
    _cutoff, ntuples = main_struct(rec, _FREEZE_PAGE, "FREEZE_PAGE")
    page = page_for_redo(ctx, blk, lsn)
    if page is None:
        return
    data = blk.data or b""
    if len(data) < _FREEZE_TUPLE.size * ntuples:
        raise InvalidRecord(f"FREEZE_PAGE: {len(data)} bytes of freeze plans for {ntuples} tuples")
    for i in range(ntuples):
        xmax, offnum, infomask2, infomask, frzflags = _FREEZE_TUPLE.unpack_from(data, i * _FREEZE_TUPLE.size)
        off, _len = P.normal_item(page, offnum)
        P.U32.pack_into(page, off + P.T_XMAX, xmax)
        if frzflags & XLH_FREEZE_XVAC:
            P.U32.pack_into(page, off + P.T_CID, FROZEN_TRANSACTION_ID)
        if frzflags & XLH_INVALID_XVAC:
            P.U32.pack_into(page, off + P.T_CID, 0)
        _INFOMASKS.pack_into(page, off + P.T_INFOMASK2, infomask2, infomask)
    P.set_lsn(page, lsn)


def redo_visible_heap(ctx: RedoContext, rec: DecodedRecord, blk: BlockRef, lsn: int) -> None:
    """VISIBLE on the heap page (block 1): set PD_ALL_VISIBLE; the LSN only with wal_log_hints/checksums."""
    main_struct(rec, _VISIBLE, "VISIBLE")
    page = page_for_redo(ctx, blk, lsn)
    if page is None:
        return
    _set_all_visible(page)
    if ctx.wal_log_hints:
        P.set_lsn(page, lsn)


# --- dispatch ------------------------------------------------------------------------------------

# Every handler replays the record onto the block reference that names the requested page.
RedoHandler = Callable[[RedoContext, DecodedRecord, BlockRef, int], None]

_HEAP_SIMPLE: dict[int, RedoHandler] = {
    XLOG_HEAP_INSERT: redo_insert,
    XLOG_HEAP_DELETE: redo_delete,
    XLOG_HEAP_CONFIRM: redo_confirm,
    XLOG_HEAP_LOCK: redo_lock,
    XLOG_HEAP_INPLACE: redo_inplace,
}
_HEAP2_SIMPLE: dict[int, RedoHandler] = {
    XLOG_HEAP2_PRUNE: redo_prune,
    XLOG_HEAP2_VACUUM: redo_vacuum,
    XLOG_HEAP2_FREEZE_PAGE: redo_freeze_page,
    XLOG_HEAP2_MULTI_INSERT: redo_multi_insert,
    XLOG_HEAP2_LOCK_UPDATED: redo_lock_updated,
}


def _unsupported(rec: DecodedRecord) -> UnsupportedRecord:
    return UnsupportedRecord(
        f"unsupported record {record_name(rec.rmid, rec.info)} (rmgr {rec.rmid}, info {rec.info:#04x})",
        rmid=rec.rmid, info=rec.info,
    )


# Under which block id a record may reference the requested page:
_BLOCK0 = 0  # only as block 0
_UPDATE_NEW_OR_OLD = 1  # UPDATE / HOT_UPDATE: as block 0 (new page) or 1 (old page)
_VISIBLE_HEAP = 2  # VISIBLE: only as block 1 (block 0 is the VM page)

# (rmid << 8) | (info & 0xF0) -> (block rule, handler); INIT_PAGE variants only where PostgreSQL writes
# them. A key not here is an unsupported record. One table lookup and one call per record.
_DISPATCH: dict[int, tuple[int, RedoHandler]] = {}
for _op, _fn in _HEAP_SIMPLE.items():
    _DISPATCH[RM_HEAP_ID << 8 | _op] = (_BLOCK0, _fn)
for _op, _fn in _HEAP2_SIMPLE.items():
    _DISPATCH[RM_HEAP2_ID << 8 | _op] = (_BLOCK0, _fn)
_DISPATCH[RM_HEAP_ID << 8 | XLOG_HEAP_UPDATE] = (_UPDATE_NEW_OR_OLD, redo_update)
_DISPATCH[RM_HEAP_ID << 8 | XLOG_HEAP_HOT_UPDATE] = (_UPDATE_NEW_OR_OLD, redo_update)
_DISPATCH[RM_HEAP2_ID << 8 | XLOG_HEAP2_VISIBLE] = (_VISIBLE_HEAP, redo_visible_heap)
for _key in (RM_HEAP_ID << 8 | XLOG_HEAP_INSERT, RM_HEAP_ID << 8 | XLOG_HEAP_UPDATE,
             RM_HEAP_ID << 8 | XLOG_HEAP_HOT_UPDATE, RM_HEAP2_ID << 8 | XLOG_HEAP2_MULTI_INSERT):
    _DISPATCH[_key | XLOG_HEAP_INIT_PAGE] = _DISPATCH[_key]


def redo_heap_record(ctx: RedoContext, rec: DecodedRecord, lsn: int) -> None:
    """Replay a Heap or Heap2 record onto ``ctx.page``.

    Raises :class:`UnsupportedRecord` for heap opcodes outside the supported set (TRUNCATE, REWRITE,
    NEW_CID touch no page), :class:`BlockNotReferenced` when the record does not touch the page, and
    :class:`InvalidRecord` / :class:`InvalidPage` for a record that does not fit the page.
    """
    handler = _DISPATCH.get(rec.rmid << 8 | (rec.info & 0xF0))
    if handler is None:
        raise _unsupported(rec)
    tag = ctx.tag
    if tag.forknum == VISIBILITYMAP_FORKNUM:
        if redo_vm_page(ctx, rec, lsn):
            return
        raise BlockNotReferenced(
            f"{record_name(rec.rmid, rec.info)} does not reference or clear visibility map page {tuple(tag)}"
        )
    blknum = tag.blknum
    relnode = tag.relnode
    for block_id, blk in rec.blocks.items():  # noqa: B007 (block_id is used after the loop)
        if (blk.blkno == blknum and blk.relnode == relnode and blk.forknum == tag.forknum
                and blk.dbnode == tag.dbnode and blk.spcnode == tag.spcnode):
            break
    else:
        raise BlockNotReferenced(f"{record_name(rec.rmid, rec.info)} does not reference page {tuple(tag)}")
    how, fn = handler
    if how == _BLOCK0:
        if block_id != 0:
            raise BlockNotReferenced(
                f"{record_name(rec.rmid, rec.info)} references page {tuple(tag)} as block {block_id}, not 0"
            )
    elif how == _UPDATE_NEW_OR_OLD:
        if block_id > 1:
            hot = rec.info & XLOG_HEAP_OPMASK == XLOG_HEAP_HOT_UPDATE
            raise BlockNotReferenced(
                f"{'HOT_UPDATE' if hot else 'UPDATE'} references page {tuple(tag)} as block {block_id}"
            )
    elif block_id != 1:
        # VISIBLE: block 0 (the VM page) is in the VM fork and handled by redo_vm_page
        raise BlockNotReferenced(f"VISIBLE references page {tuple(tag)} as block {block_id}")
    fn(ctx, rec, blk, lsn)
