"""The visibility-map page as heap records change it: XLOG_HEAP2_VISIBLE's VM block, and the bits that
heap records clear without referencing the VM block (``*_ALL_VISIBLE_CLEARED``,
``XLH_LOCK_ALL_FROZEN_CLEARED``): the ``visibilitymap_clear`` calls of the heap redo routines, which run
even when the heap page itself is skipped. The bit layout is :mod:`.visibilitymap`'s."""

from __future__ import annotations

from .. import BufferTag
from . import page as P
from . import visibilitymap as VM
from .bufmgr import RedoContext, main_struct, restore_image
from .bufmgr import block_matches as _matches
from .errors import InvalidRecord
from .heapam_xlog import (
    MAIN_FORKNUM,
    XL_DELETE,
    XL_INSERT,
    XL_LOCK,
    XL_UPDATE,
    XL_VISIBLE,
    XLH_DELETE_ALL_VISIBLE_CLEARED,
    XLH_INSERT_ALL_VISIBLE_CLEARED,
    XLH_LOCK_ALL_FROZEN_CLEARED,
    XLH_UPDATE_NEW_ALL_VISIBLE_CLEARED,
    XLH_UPDATE_OLD_ALL_VISIBLE_CLEARED,
    XLOG_HEAP2_LOCK_UPDATED,
    XLOG_HEAP2_MULTI_INSERT,
    XLOG_HEAP2_VISIBLE,
    XLOG_HEAP_DELETE,
    XLOG_HEAP_HOT_UPDATE,
    XLOG_HEAP_INSERT,
    XLOG_HEAP_LOCK,
    XLOG_HEAP_OPMASK,
    XLOG_HEAP_UPDATE,
)
from .xlogrecord import RM_HEAP2_ID, RM_HEAP_ID, BlockRef, DecodedRecord


def _same_rel(blk: BlockRef, tag: BufferTag) -> bool:
    return blk.relnode == tag.relnode and blk.dbnode == tag.dbnode and blk.spcnode == tag.spcnode


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
            flags = main_struct(rec, XL_INSERT, "INSERT")[1]
            if flags & XLH_INSERT_ALL_VISIBLE_CLEARED:
                return [(blk0, blk0.blkno, VM.VISIBILITYMAP_VALID_BITS)]
        elif op == XLOG_HEAP_DELETE:
            flags = main_struct(rec, XL_DELETE, "DELETE")[3]
            if flags & XLH_DELETE_ALL_VISIBLE_CLEARED:
                return [(blk0, blk0.blkno, VM.VISIBILITYMAP_VALID_BITS)]
        elif op == XLOG_HEAP_UPDATE or op == XLOG_HEAP_HOT_UPDATE:
            flags = main_struct(rec, XL_UPDATE, "UPDATE")[3]
            out = []
            if flags & XLH_UPDATE_OLD_ALL_VISIBLE_CLEARED:
                old = rec.blocks.get(1, blk0)
                out.append((old, old.blkno, VM.VISIBILITYMAP_VALID_BITS))
            if flags & XLH_UPDATE_NEW_ALL_VISIBLE_CLEARED:
                out.append((blk0, blk0.blkno, VM.VISIBILITYMAP_VALID_BITS))
            return out
        elif op == XLOG_HEAP_LOCK:
            flags = main_struct(rec, XL_LOCK, "LOCK")[3]
            if flags & XLH_LOCK_ALL_FROZEN_CLEARED:
                return [(blk0, blk0.blkno, VM.VISIBILITYMAP_ALL_FROZEN)]
    elif rmid == RM_HEAP2_ID:
        if op == XLOG_HEAP2_MULTI_INSERT:
            if len(md) < 1:
                raise InvalidRecord("MULTI_INSERT: no main data")
            if md[0] & XLH_INSERT_ALL_VISIBLE_CLEARED:
                return [(blk0, blk0.blkno, VM.VISIBILITYMAP_VALID_BITS)]
        elif op == XLOG_HEAP2_LOCK_UPDATED:
            flags = main_struct(rec, XL_LOCK, "LOCK_UPDATED")[3]
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
    cutoff_xid, flags = main_struct(rec, XL_VISIBLE, "VISIBLE")
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
