"""PostgreSQL 15 Heap and Heap2 WAL records (``access/heapam_xlog.h``, ``access/htup_details.h``): opcodes,
flag bits, main-data layouts, and the helpers every heap redo module shares (tuple-header bits, the
INIT_PAGE-or-redo page read): :mod:`.heapam` for Heap, :mod:`.heapam2` for Heap2, :mod:`.heapam_vm` for
the visibility map.

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

from . import page as P
from .bufmgr import RedoContext, init_for_redo, page_for_redo
from .xlogrecord import RM_HEAP2_ID, RM_HEAP_ID, BlockRef

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


XL_INSERT = struct.Struct("<HB")
XL_DELETE = struct.Struct("<IHBB")
XL_UPDATE = struct.Struct("<IHBBIH")
XL_LOCK = struct.Struct("<IHBB")
XL_PRUNE = struct.Struct("<IHH")
XL_FREEZE_PAGE = struct.Struct("<IH")
XL_FREEZE_TUPLE = struct.Struct("<IHHHBx")  # 12 bytes: sizeof(xl_heap_freeze_tuple)
XL_VISIBLE = struct.Struct("<IB")
XL_MULTI_INSERT = struct.Struct("<BxH")
XL_HEAP_HEADER = struct.Struct("<HHB")
XL_MULTI_INSERT_TUPLE = struct.Struct("<HHHB")


def record_name(rmid: int, info: int) -> str:
    if rmid == RM_HEAP_ID:
        return "Heap/" + HEAP_OP_NAMES[info & XLOG_HEAP_OPMASK] + ("+INIT" if info & XLOG_HEAP_INIT_PAGE else "")
    if rmid == RM_HEAP2_ID:
        return "Heap2/" + HEAP2_OP_NAMES[info & XLOG_HEAP_OPMASK] + ("+INIT" if info & XLOG_HEAP_INIT_PAGE else "")
    return f"rmgr {rmid}"


# --- tuple and page helpers shared by the heap redo modules ------------------------------------

def fix_infomask_from_infobits(infobits: int, infomask: int, infomask2: int) -> tuple[int, int]:
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


def clear_all_visible(page: bytearray) -> None:
    P.U16.pack_into(page, P.OFF_FLAGS, P.U16.unpack_from(page, P.OFF_FLAGS)[0] & ~P.PD_ALL_VISIBLE)


def set_all_visible(page: bytearray) -> None:
    P.U16.pack_into(page, P.OFF_FLAGS, P.U16.unpack_from(page, P.OFF_FLAGS)[0] | P.PD_ALL_VISIBLE)


def set_ctid(page: bytearray, off: int, blkno: int, offnum: int) -> None:
    P.CTID.pack_into(page, off + P.T_CTID, (blkno >> 16) & 0xFFFF, blkno & 0xFFFF, offnum)


def heap_page_for_redo(ctx: RedoContext, blk: BlockRef, lsn: int, init: bool) -> bytearray | None:
    """The heap page a record redoes: with ``init`` (XLOG_HEAP_INIT_PAGE) XLogInitBufferForRedo + PageInit,
    redone even over a restored image as heap_xlog_insert, _multi_insert and _update do; otherwise
    :func:`.bufmgr.page_for_redo` (None: restored, or already past the record)."""
    if init:
        page = init_for_redo(ctx, blk, lsn)
        P.page_init(page)
        return page
    return page_for_redo(ctx, blk, lsn)
