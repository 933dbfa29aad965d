"""Redo of PostgreSQL 15 Heap2 records for one page (``heap_xlog_*`` in ``heapam.c``): MULTI_INSERT(+INIT),
PRUNE, VACUUM, FREEZE_PAGE and VISIBLE on the heap page. :func:`.heapam.redo_heap_record` dispatches
to them; VISIBLE's VM block is :mod:`.heapam_vm`'s, and LOCK_UPDATED lives in :mod:`.heapam` beside
LOCK, whose infomask rules it shares. Record layouts: :mod:`.heapam_xlog`.
"""

from __future__ import annotations

import struct

from . import page as P
from .bufmgr import RedoContext, block_data, main_struct, page_for_redo
from .errors import InvalidRecord
from .heapam_xlog import (
    FROZEN_TRANSACTION_ID,
    XL_FREEZE_PAGE,
    XL_FREEZE_TUPLE,
    XL_MULTI_INSERT,
    XL_MULTI_INSERT_TUPLE,
    XL_PRUNE,
    XL_VISIBLE,
    XLH_FREEZE_XVAC,
    XLH_INSERT_ALL_FROZEN_SET,
    XLH_INSERT_ALL_VISIBLE_CLEARED,
    XLH_INVALID_XVAC,
    XLOG_HEAP_INIT_PAGE,
    clear_all_visible,
    heap_page_for_redo,
    set_all_visible,
)
from .xlogrecord import BlockRef, DecodedRecord


def redo_multi_insert(ctx: RedoContext, rec: DecodedRecord, blk: BlockRef, lsn: int) -> None:
    flags, ntuples = main_struct(rec, XL_MULTI_INSERT, "MULTI_INSERT")
    isinit = bool(rec.info & XLOG_HEAP_INIT_PAGE)
    md = rec.main_data
    if not isinit and len(md) < XL_MULTI_INSERT.size + 2 * ntuples:
        raise InvalidRecord(f"MULTI_INSERT: main data too short for {ntuples} offsets")
    page = heap_page_for_redo(ctx, blk, lsn, isinit)
    if page is None:
        return
    data = block_data(blk, "MULTI_INSERT")
    if isinit:
        _multi_insert_into_empty_page(page, data, ntuples, rec.xid, blk.blkno)
        P.set_lsn(page, lsn)
        if flags & XLH_INSERT_ALL_VISIBLE_CLEARED:
            clear_all_visible(page)
        if flags & XLH_INSERT_ALL_FROZEN_SET:
            set_all_visible(page)
        return
    end = len(data)
    pos = 0
    blkno = blk.blkno
    xid = rec.xid
    mv = memoryview(data)
    for i in range(ntuples):
        offnum = P.U16.unpack_from(md, XL_MULTI_INSERT.size + 2 * i)[0]
        pos = (pos + 1) & ~1  # SHORTALIGN: each xl_multi_insert_tuple starts 2-byte aligned
        if pos + XL_MULTI_INSERT_TUPLE.size > end:
            raise InvalidRecord(f"MULTI_INSERT: tuple {i} header beyond the block data")
        datalen, infomask2, infomask, hoff = XL_MULTI_INSERT_TUPLE.unpack_from(data, pos)
        pos += XL_MULTI_INSERT_TUPLE.size
        if pos + datalen > end:
            raise InvalidRecord(f"MULTI_INSERT: tuple {i} data beyond the block data")
        P.add_heap_tuple(page, offnum, xid, 0, blkno, infomask2, infomask, hoff, mv[pos:pos + datalen])
        pos += datalen
    if pos != end:
        raise InvalidRecord("MULTI_INSERT: total tuple length mismatch")
    P.set_lsn(page, lsn)
    if flags & XLH_INSERT_ALL_VISIBLE_CLEARED:
        clear_all_visible(page)
    if flags & XLH_INSERT_ALL_FROZEN_SET:
        set_all_visible(page)


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
    unpack_tuple = XL_MULTI_INSERT_TUPLE.unpack_from
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


def _offsets(data: bytes, count: int) -> list[int]:
    return list(struct.unpack_from(f"<{count}H", data)) if count else []


def _check_offsets(page: bytearray, offsets: list[int], what: str) -> None:
    maxoff = P.max_offset(page)
    for o in offsets:
        if o < 1 or o > maxoff:
            raise InvalidRecord(f"{what}: item {o} beyond the line pointer array ({maxoff} items)")


def redo_prune(ctx: RedoContext, rec: DecodedRecord, blk: BlockRef, lsn: int) -> None:
    _xid, nredirected, ndead = main_struct(rec, XL_PRUNE, "PRUNE")
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
    (nunused,) = main_struct(rec, P.U16, "VACUUM")
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
    _cutoff, ntuples = main_struct(rec, XL_FREEZE_PAGE, "FREEZE_PAGE")
    page = page_for_redo(ctx, blk, lsn)
    if page is None:
        return
    data = blk.data or b""
    if len(data) < XL_FREEZE_TUPLE.size * ntuples:
        raise InvalidRecord(f"FREEZE_PAGE: {len(data)} bytes of freeze plans for {ntuples} tuples")
    for i in range(ntuples):
        xmax, offnum, infomask2, infomask, frzflags = XL_FREEZE_TUPLE.unpack_from(data, i * XL_FREEZE_TUPLE.size)
        off, _len = P.normal_item(page, offnum)
        P.U32.pack_into(page, off + P.T_XMAX, xmax)
        if frzflags & XLH_FREEZE_XVAC:
            P.U32.pack_into(page, off + P.T_CID, FROZEN_TRANSACTION_ID)
        if frzflags & XLH_INVALID_XVAC:
            P.U32.pack_into(page, off + P.T_CID, 0)
        P.INFOMASKS.pack_into(page, off + P.T_INFOMASK2, infomask2, infomask)
    P.set_lsn(page, lsn)


def redo_visible_heap(ctx: RedoContext, rec: DecodedRecord, blk: BlockRef, lsn: int) -> None:
    """VISIBLE on the heap page (block 1): set PD_ALL_VISIBLE; the LSN only with wal_log_hints/checksums."""
    main_struct(rec, XL_VISIBLE, "VISIBLE")
    page = page_for_redo(ctx, blk, lsn)
    if page is None:
        return
    set_all_visible(page)
    if ctx.wal_log_hints:
        P.set_lsn(page, lsn)
