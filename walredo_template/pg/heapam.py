"""Redo of PostgreSQL 15 Heap and Heap2 records for one page (``heap_xlog_*`` in ``heapam.c``).

Each ``redo_*`` function replays one decoded record onto the single page being reconstructed — the
page named by ``ctx.tag`` — and leaves every other block the record touches alone, as Neon's walredo
does. A record can reach a page in three ways:

* as a block reference whose tag is the page (the ordinary case);
* as the visibility-map page of a heap block whose VM bits the record clears without referencing the VM
  block (``*_ALL_VISIBLE_CLEARED``, ``XLH_LOCK_ALL_FROZEN_CLEARED``) — see :mod:`.heapam_vm`;
* as block 0 (the VM page) of ``XLOG_HEAP2_VISIBLE``.

Buffer handling mirrors ``XLogReadBufferForRedoExtended``: a block image flagged "apply" is restored
(pd_lsn := record end) and the record's own redo for that block is skipped (BLK_RESTORED); a page whose
pd_lsn is already at or past the record is left alone (BLK_DONE); otherwise the redo runs and pd_lsn is
set to the record's end LSN. Where PostgreSQL would ``elog(PANIC)`` on a record that does not fit the
page, this raises :class:`InvalidRecord` (or :class:`InvalidPage` for a corrupt page).

This module replays the Heap records and dispatches both rmgrs (:func:`redo_heap_record`); the Heap2 records
are :mod:`.heapam2`'s, the visibility-map page :mod:`.heapam_vm`'s, and the record layouts, opcodes and
flag bits :mod:`.heapam_xlog`'s.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from . import page as P
from .bufmgr import RedoContext, block_data, main_struct, page_for_redo
from .bufmgr import block_matches as _matches
from .errors import BlockNotReferenced, InvalidRecord, UnsupportedRecord
from .heapam2 import redo_freeze_page, redo_multi_insert, redo_prune, redo_vacuum, redo_visible_heap
from .heapam_vm import redo_vm_page
from .heapam_xlog import (
    HEAP_COMBOCID,
    HEAP_HOT_UPDATED,
    HEAP_KEYS_UPDATED,
    HEAP_LOCK_MASK,
    HEAP_MOVED,
    HEAP_XMAX_BITS,
    HEAP_XMAX_EXCL_LOCK,
    HEAP_XMAX_IS_MULTI,
    HEAP_XMAX_LOCK_ONLY,
    INVALID_BLOCK_NUMBER,
    MOVED_PARTITIONS_OFFSET_NUMBER,
    VISIBILITYMAP_FORKNUM,
    XL_DELETE,
    XL_HEAP_HEADER,
    XL_INSERT,
    XL_LOCK,
    XL_UPDATE,
    XLH_DELETE_ALL_VISIBLE_CLEARED,
    XLH_DELETE_IS_PARTITION_MOVE,
    XLH_DELETE_IS_SUPER,
    XLH_INSERT_ALL_VISIBLE_CLEARED,
    XLH_UPDATE_NEW_ALL_VISIBLE_CLEARED,
    XLH_UPDATE_OLD_ALL_VISIBLE_CLEARED,
    XLH_UPDATE_PREFIX_FROM_OLD,
    XLH_UPDATE_SUFFIX_FROM_OLD,
    XLOG_HEAP2_FREEZE_PAGE,
    XLOG_HEAP2_LOCK_UPDATED,
    XLOG_HEAP2_MULTI_INSERT,
    XLOG_HEAP2_PRUNE,
    XLOG_HEAP2_VACUUM,
    XLOG_HEAP2_VISIBLE,
    XLOG_HEAP_CONFIRM,
    XLOG_HEAP_DELETE,
    XLOG_HEAP_HOT_UPDATE,
    XLOG_HEAP_INIT_PAGE,
    XLOG_HEAP_INPLACE,
    XLOG_HEAP_INSERT,
    XLOG_HEAP_LOCK,
    XLOG_HEAP_OPMASK,
    XLOG_HEAP_UPDATE,
    clear_all_visible,
    fix_infomask_from_infobits,
    heap_page_for_redo,
    record_name,
    set_ctid,
)
from .xlogrecord import RM_HEAP2_ID, RM_HEAP_ID, BlockRef, DecodedRecord

# --- Heap records --------------------------------------------------------------------------------

def redo_insert(ctx: RedoContext, rec: DecodedRecord, blk: BlockRef, lsn: int) -> None:
    offnum, flags = main_struct(rec, XL_INSERT, "INSERT")
    page = heap_page_for_redo(ctx, blk, lsn, bool(rec.info & XLOG_HEAP_INIT_PAGE))
    if page is None:
        return
    data = block_data(blk, "INSERT")
    if len(data) <= XL_HEAP_HEADER.size:
        raise InvalidRecord(f"INSERT: tuple data of {len(data)} bytes")
    infomask2, infomask, hoff = XL_HEAP_HEADER.unpack_from(data)
    P.add_heap_tuple(page, offnum, rec.xid, 0, blk.blkno, infomask2, infomask, hoff,
                     memoryview(data)[XL_HEAP_HEADER.size:])
    P.set_lsn(page, lsn)
    if flags & XLH_INSERT_ALL_VISIBLE_CLEARED:
        clear_all_visible(page)


def redo_delete(ctx: RedoContext, rec: DecodedRecord, blk: BlockRef, lsn: int) -> None:
    xmax, offnum, infobits, flags = main_struct(rec, XL_DELETE, "DELETE")
    page = page_for_redo(ctx, blk, lsn)
    if page is None:
        return
    off, _len = P.normal_item(page, offnum)
    infomask2, infomask = P.INFOMASKS.unpack_from(page, off + P.T_INFOMASK2)
    infomask &= ~(HEAP_XMAX_BITS | HEAP_MOVED)
    infomask2 &= ~(HEAP_KEYS_UPDATED | HEAP_HOT_UPDATED)
    infomask, infomask2 = fix_infomask_from_infobits(infobits, infomask, infomask2)
    if not flags & XLH_DELETE_IS_SUPER:
        P.U32.pack_into(page, off + P.T_XMAX, xmax)
    else:
        P.U32.pack_into(page, off + P.T_XMIN, 0)
    P.U32.pack_into(page, off + P.T_CID, 0)
    infomask &= ~HEAP_COMBOCID
    P.INFOMASKS.pack_into(page, off + P.T_INFOMASK2, infomask2, infomask)
    P.set_prunable(page, rec.xid)
    if flags & XLH_DELETE_ALL_VISIBLE_CLEARED:
        clear_all_visible(page)
    if flags & XLH_DELETE_IS_PARTITION_MOVE:
        set_ctid(page, off, INVALID_BLOCK_NUMBER, MOVED_PARTITIONS_OFFSET_NUMBER)
    else:
        set_ctid(page, off, blk.blkno, offnum)
    P.set_lsn(page, lsn)


# t_xmax, t_cid, t_ctid (bi_hi, bi_lo, posid), t_infomask2, t_infomask: bytes 4..22 of a tuple header,
# rewritten in one go by UPDATE's old-tuple half
_XMAX_TO_INFOMASK = struct.Struct("<IIHHHHH")
_XMAX_CID = struct.Struct("<II")  # t_xmax, t_cid


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
    infomask2, infomask = P.INFOMASKS.unpack_from(page, off + P.T_INFOMASK2)
    infomask &= ~(HEAP_XMAX_BITS | HEAP_MOVED | HEAP_COMBOCID)
    if hot:
        infomask2 = (infomask2 & ~HEAP_KEYS_UPDATED) | HEAP_HOT_UPDATED
    else:
        infomask2 &= ~(HEAP_KEYS_UPDATED | HEAP_HOT_UPDATED)
    if old_infobits:
        infomask, infomask2 = fix_infomask_from_infobits(old_infobits, infomask, infomask2)
    # xmax, cid = FirstCommandId (HEAP_COMBOCID cleared above), ctid -> the new tuple
    _XMAX_TO_INFOMASK.pack_into(page, off + P.T_XMAX, old_xmax, 0, (newblk_no >> 16) & 0xFFFF,
                                newblk_no & 0xFFFF, new_offnum, infomask2, infomask)
    # PageSetPrunable, inline (one of the hottest paths: every HOT update)
    xid = rec.xid
    cur = P.U32.unpack_from(page, P.OFF_PRUNE_XID)[0]
    if cur == 0 or (xid < cur if xid < 3 or cur < 3 else (xid - cur) & 0xFFFFFFFF >= 0x80000000):
        P.U32.pack_into(page, P.OFF_PRUNE_XID, xid)
    if flags & XLH_UPDATE_OLD_ALL_VISIBLE_CLEARED:
        clear_all_visible(page)
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
        fields = XL_UPDATE.unpack_from(rec.main_data)
    except struct.error:
        raise InvalidRecord(f"UPDATE: main data has {len(rec.main_data)} bytes, expected {XL_UPDATE.size}") from None
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
    else:
        page = heap_page_for_redo(ctx, blk0, lsn, bool(rec.info & XLOG_HEAP_INIT_PAGE))
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
                prefixlen = P.U16.unpack_from(data, pos)[0]
                pos += 2
            if flags & XLH_UPDATE_SUFFIX_FROM_OLD:
                suffixlen = P.U16.unpack_from(data, pos)[0]
                pos += 2
        infomask2, infomask, hoff = XL_HEAP_HEADER.unpack_from(data, pos)
    except struct.error:
        raise InvalidRecord("UPDATE: new tuple data truncated") from None
    pos += 5  # XL_HEAP_HEADER.size
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
        clear_all_visible(page)
    P.LSN.pack_into(page, P.OFF_LSN, lsn >> 32, lsn & 0xFFFFFFFF)


def redo_confirm(ctx: RedoContext, rec: DecodedRecord, blk: BlockRef, lsn: int) -> None:
    (offnum,) = main_struct(rec, P.U16, "CONFIRM")
    page = page_for_redo(ctx, blk, lsn)
    if page is None:
        return
    off, _len = P.normal_item(page, offnum)
    set_ctid(page, off, blk.blkno, offnum)
    P.set_lsn(page, lsn)


def _locked_infomasks(page: bytearray, offnum: int, infobits: int) -> tuple[int, int, int]:
    """The tuple at ``offnum`` and its infomasks as LOCK and LOCK_UPDATED redo rewrite them: xmax bits and
    HEAP_MOVED cleared, HEAP_KEYS_UPDATED cleared, then the record's infobits applied."""
    off, _len = P.normal_item(page, offnum)
    infomask2, infomask = P.INFOMASKS.unpack_from(page, off + P.T_INFOMASK2)
    infomask &= ~(HEAP_XMAX_BITS | HEAP_MOVED)
    infomask2 &= ~HEAP_KEYS_UPDATED
    infomask, infomask2 = fix_infomask_from_infobits(infobits, infomask, infomask2)
    return off, infomask2, infomask


def redo_lock(ctx: RedoContext, rec: DecodedRecord, blk: BlockRef, lsn: int) -> None:
    locking_xid, offnum, infobits, _flags = main_struct(rec, XL_LOCK, "LOCK")
    page = page_for_redo(ctx, blk, lsn)
    if page is None:
        return
    off, infomask2, infomask = _locked_infomasks(page, offnum, infobits)
    # HEAP_XMAX_IS_LOCKED_ONLY: only a locker, no update: no HOT chain, ctid points at itself
    if infomask & HEAP_XMAX_LOCK_ONLY or (infomask & (HEAP_XMAX_IS_MULTI | HEAP_LOCK_MASK)) == HEAP_XMAX_EXCL_LOCK:
        infomask2 &= ~HEAP_HOT_UPDATED
        set_ctid(page, off, blk.blkno, offnum)
    _XMAX_CID.pack_into(page, off + P.T_XMAX, locking_xid, 0)
    infomask &= ~HEAP_COMBOCID
    P.INFOMASKS.pack_into(page, off + P.T_INFOMASK2, infomask2, infomask)
    P.set_lsn(page, lsn)


def redo_lock_updated(ctx: RedoContext, rec: DecodedRecord, blk: BlockRef, lsn: int) -> None:
    xmax, offnum, infobits, _flags = main_struct(rec, XL_LOCK, "LOCK_UPDATED")
    page = page_for_redo(ctx, blk, lsn)
    if page is None:
        return
    off, infomask2, infomask = _locked_infomasks(page, offnum, infobits)
    P.U32.pack_into(page, off + P.T_XMAX, xmax)
    P.INFOMASKS.pack_into(page, off + P.T_INFOMASK2, infomask2, infomask)
    P.set_lsn(page, lsn)


def redo_inplace(ctx: RedoContext, rec: DecodedRecord, blk: BlockRef, lsn: int) -> None:
    (offnum,) = main_struct(rec, P.U16, "INPLACE")
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
