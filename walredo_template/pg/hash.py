"""Redo of PostgreSQL 15 Hash records (``access/hash/hash_xlog.c``) for one page.

Page layouts and initialisation are in :mod:`.hash_page`. Each record is replayed only for the page being
rebuilt (``ctx.tag``), by the role its block id gives it. Block reads are ``XLogReadBufferForRedo``
(:func:`.bufmgr.read_for_redo`: a restored image or a page already past the record is left alone) unless
said otherwise; "init" blocks are ``XLogInitBufferForRedo`` (the block must carry WILL_INIT, the page is
built from nothing even if an image came with it). Main data layouts (``access/hash_xlog.h``)::

    INIT_META_PAGE 0x00     double num_tuples, u32 procid, u16 ffactor
        block 0 (init): the metapage, as _hash_init_metabuffer computes it from those fields
    INIT_BITMAP_PAGE 0x10   u16 bmsize
        block 0 (init): a bitmap page with bmsize bytes of set bits; block 1: metapage,
        mapp[nmaps++] = maxbucket + 2
    INSERT 0x20             u16 offnum
        block 0: PageAddItem(block data = the index tuple, offnum); block 1: metapage, ntuples += 1
    ADD_OVFL_PAGE 0x30      u16 bmsize, u8 bmpage_found
        block 0 (init): the new overflow page (block data: u32 bucket), its prev link = block 1's number;
        block 1: the chain's last page, next link = block 0's number; block 2 (optional, data u32 bit):
        the bitmap page, bit set; block 3 (optional, init): a new bitmap page; block 4 (data u32
        firstfree): metapage firstfree, and unless bmpage_found spares[ovflpoint] += 1, plus mapp/nmaps and
        another spare when block 3 exists
    SPLIT_ALLOCATE_PAGE 0x40 u32 new_bucket, u16 old_bucket_flag, u16 new_bucket_flag, u8 flags
        block 0 (cleanup lock; redone even after an image restore): old bucket flag, prev = new_bucket;
        block 1 (zero + cleanup lock, always initialised): new bucket page;
        block 2: metapage maxbucket = new_bucket, then from its data [u32 lowmask, u32 highmask] when
        flags & 1 (XLH_SPLIT_META_UPDATE_MASKS), [u32 ovflpoint, u32 spares value] when flags & 2
    SPLIT_PAGE 0x50         block 0 must carry a full-page image: restored, nothing else
    SPLIT_COMPLETE 0x60     u16 old_bucket_flag, u16 new_bucket_flag
        blocks 0 and 1 (redone even after an image restore): the two buckets' flags
    MOVE_PAGE_CONTENTS 0x70 u16 ntups, u8 is_prim_bucket_same_wrt
        block 0 (unless same_wrt): the primary bucket page, read for its cleanup lock only;
        block 1: the write page, block data u16 offsets[ntups] then ntups MAXALIGNed tuples, each added
        at its offset; block 2: the read page, block data u16 offsets deleted (PageIndexMultiDelete)
    SQUEEZE_PAGE 0x80       u32 prevblkno, u32 nextblkno, u16 ntups, u8 is_prim_bucket_same_wrt,
                            u8 is_prev_bucket_same_wrt
        block 0 as in MOVE_PAGE_CONTENTS; block 1: the write page, tuples as in MOVE_PAGE_CONTENTS, and
        next link = nextblkno when prev_same_wrt; block 2: the freed overflow page, re-initialised as
        LH_UNUSED (an ordinary read, not an init); block 3 (unless prev_same_wrt): next link = nextblkno;
        block 4 (optional): prev link = prevblkno; block 5 (data u32 bit): bitmap bit cleared; block 6
        (optional, data u32): metapage firstfree
    DELETE 0x90             u8 clear_dead_marking, u8 is_primary_bucket_page
        block 0 (unless primary): the primary bucket page, cleanup lock only; block 1 (cleanup lock when
        primary): PageIndexMultiDelete of block data u16 offsets, LH_PAGE_HAS_DEAD_TUPLES cleared when
        clear_dead_marking
    SPLIT_CLEANUP 0xA0      block 0: LH_BUCKET_NEEDS_SPLIT_CLEANUP cleared
    UPDATE_META_PAGE 0xB0   double ntuples; block 0: metapage ntuples
    VACUUM_ONE_PAGE 0xC0    u32 latestRemovedXid, i32 ntuples, then u16 offsets[ntuples]
        block 0 (cleanup lock): offsets deleted (when present), LH_PAGE_HAS_DEAD_TUPLES cleared;
        block 1: metapage ntuples -= ntuples

The "cleanup lock only" reads restore an image flagged for apply (and set its LSN) but otherwise leave
the page alone, pd_lsn included. Where PostgreSQL trusts the record or page blindly (bit numbers,
splitpoint and bitmap indexes, tuple lengths, offset counts), this raises :class:`InvalidRecord` or
:class:`InvalidPage` instead of writing outside the structure.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from . import hash_page as H
from . import indexpage as IP
from . import page as P
from .bufmgr import (
    BLK_DONE,
    BLK_NEEDS_REDO,
    BLK_RESTORED,
    ItemCheck,
    RedoContext,
    block_data,
    finish,
    init_for_redo,
    main_struct,
    read_for_redo,
    referenced_block,
    unsupported,
)
from .errors import InvalidRecord
from .page import U16, U32
from .xlogrecord import BlockRef, DecodedRecord

RM_ID = 12
NAME = "Hash"

XLOG_HASH_INIT_META_PAGE = 0x00
XLOG_HASH_INIT_BITMAP_PAGE = 0x10
XLOG_HASH_INSERT = 0x20
XLOG_HASH_ADD_OVFL_PAGE = 0x30
XLOG_HASH_SPLIT_ALLOCATE_PAGE = 0x40
XLOG_HASH_SPLIT_PAGE = 0x50
XLOG_HASH_SPLIT_COMPLETE = 0x60
XLOG_HASH_MOVE_PAGE_CONTENTS = 0x70
XLOG_HASH_SQUEEZE_PAGE = 0x80
XLOG_HASH_DELETE = 0x90
XLOG_HASH_SPLIT_CLEANUP = 0xA0
XLOG_HASH_UPDATE_META_PAGE = 0xB0
XLOG_HASH_VACUUM_ONE_PAGE = 0xC0
XLH_SPLIT_META_UPDATE_MASKS = 1 << 0
XLH_SPLIT_META_UPDATE_SPLITPOINT = 1 << 1

OP_NAMES = {
    0x00: "INIT_META_PAGE", 0x10: "INIT_BITMAP_PAGE", 0x20: "INSERT", 0x30: "ADD_OVFL_PAGE",
    0x40: "SPLIT_ALLOCATE_PAGE", 0x50: "SPLIT_PAGE", 0x60: "SPLIT_COMPLETE", 0x70: "MOVE_PAGE_CONTENTS",
    0x80: "SQUEEZE_PAGE", 0x90: "DELETE", 0xA0: "SPLIT_CLEANUP", 0xB0: "UPDATE_META_PAGE",
    0xC0: "VACUUM_ONE_PAGE",
}

_INIT_META = struct.Struct("<dIH")
_TWO_U32 = struct.Struct("<II")
_ADD_OVFL = struct.Struct("<HB")
_SPLIT_ALLOC = struct.Struct("<IHHB")
_SPLIT_COMPLETE = struct.Struct("<HH")
_MOVE = struct.Struct("<HB")
_SQUEEZE = struct.Struct("<IIHBB")
_DELETE = struct.Struct("<BB")
_VACUUM_ONE = struct.Struct("<Ii")


def record_name(info: int) -> str:
    """``Hash/OPERATION`` as pg_waldump prints it (``Hash/UNKNOWN (d0)`` for codes it does not know)."""
    op = OP_NAMES.get(info & 0xF0)
    return f"{NAME}/{op}" if op is not None else f"{NAME}/UNKNOWN ({info & 0xF0:x})"


# --- helpers -------------------------------------------------------------------------------------

def _u32_data(blk: BlockRef, name: str) -> int:
    data = block_data(blk, name)
    if len(data) < 4:
        raise InvalidRecord(f"{name}: block {blk.block_id} data has {len(data)} bytes, expected 4")
    return int(U32.unpack_from(data)[0])


def _init_block(ctx: RedoContext, blk: BlockRef, lsn: int) -> bytearray:
    """XLogInitBufferForRedo: a zeroed page to build (an image that came along is overwritten anyway)."""
    page = init_for_redo(ctx, blk, lsn)
    ctx.checked = True
    return page


_ITEMS = ItemCheck(lambda page, _name: H.check_items(page))


def _read(ctx: RedoContext, blk: BlockRef, lsn: int) -> int:
    """XLogReadBufferForRedo(Extended, RBM_NORMAL). The first time a request redoes its page, and after an
    image restore, the page's line pointers are checked too (:func:`.hash_page.check_items`): records that
    leave the items alone must not pass a corrupt base image on as a page of theirs."""
    fresh = _ITEMS.pending(ctx)
    action = read_for_redo(ctx, blk, lsn)
    if action == BLK_NEEDS_REDO and fresh:
        assert ctx.page is not None
        _ITEMS.run(ctx, ctx.page)
    return action


def _page(ctx: RedoContext, blk: BlockRef, lsn: int) -> bytearray | None:
    """The page to redo, or None when the block was restored from its image or is already past the record."""
    return ctx.page if _read(ctx, blk, lsn) == BLK_NEEDS_REDO else None


def _page_even_if_restored(ctx: RedoContext, blk: BlockRef, lsn: int) -> bytearray | None:
    """The page to redo when the redo also runs after an image restore (BLK_NEEDS_REDO or BLK_RESTORED)."""
    action = _read(ctx, blk, lsn)
    if action == BLK_DONE:
        return None
    page = ctx.page
    assert page is not None
    if action == BLK_RESTORED:
        P.check_page(page)
        H.check_items(page)
        ctx.checked = True
    return page


def _meta_page(ctx: RedoContext, blk: BlockRef, lsn: int) -> bytearray | None:
    page = _page(ctx, blk, lsn)
    if page is not None:
        H.require(page, H.LH_META_PAGE, "hash metapage")
    return page


def _cleanup_lock_only(ctx: RedoContext, blk: BlockRef, lsn: int) -> None:
    """A read PostgreSQL makes only to hold the primary bucket's cleanup lock: an image is restored, the
    page is otherwise untouched."""
    _read(ctx, blk, lsn)


# --- redo per record type ------------------------------------------------------------------------

def _init_meta_page(ctx: RedoContext, rec: DecodedRecord, blk: BlockRef, lsn: int) -> None:
    name = "Hash/INIT_META_PAGE"
    num_tuples, procid, ffactor = main_struct(rec, _INIT_META, name)
    page = _init_block(ctx, blk, lsn)
    H.init_metapage(page, num_tuples, procid, ffactor)
    finish(page, lsn)


def _init_bitmap_page(ctx: RedoContext, rec: DecodedRecord, blk: BlockRef, lsn: int) -> None:
    (bmsize,) = main_struct(rec, U16, "Hash/INIT_BITMAP_PAGE")
    if blk.block_id == 0:
        page = _init_block(ctx, blk, lsn)
        H.init_bitmap_page(page, bmsize)
        finish(page, lsn)
    elif blk.block_id == 1:
        meta = _meta_page(ctx, blk, lsn)
        if meta is not None:
            H.add_bitmap(meta, H.meta_u32(meta, H.M_MAXBUCKET) + 2)
            finish(meta, lsn)


def _insert(ctx: RedoContext, rec: DecodedRecord, blk: BlockRef, lsn: int) -> None:
    name = "Hash/INSERT"
    (offnum,) = main_struct(rec, U16, name)
    if blk.block_id == 0:
        page = _page(ctx, blk, lsn)
        if page is not None:
            IP.add_item(page, block_data(blk, name), offnum)
            finish(page, lsn)
    elif blk.block_id == 1:
        meta = _meta_page(ctx, blk, lsn)
        if meta is not None:
            H.add_ntuples(meta, 1)
            finish(meta, lsn)


def _add_ovfl_page(ctx: RedoContext, rec: DecodedRecord, blk: BlockRef, lsn: int) -> None:
    name = "Hash/ADD_OVFL_PAGE"
    bmsize, bmpage_found = main_struct(rec, _ADD_OVFL, name)
    bid = blk.block_id
    blocks = rec.blocks
    if bid == 0:
        left = blocks.get(1)
        if left is None:
            raise InvalidRecord(f"{name}: no block 1 (the page before the new overflow page)")
        bucket = _u32_data(blk, name)
        ovfl = _init_block(ctx, blk, lsn)
        H.init_page(ovfl, left.blkno, H.INVALID_BLOCK, bucket, H.LH_OVERFLOW_PAGE)
        finish(ovfl, lsn)
    elif bid == 1:
        right = blocks.get(0)
        if right is None:
            raise InvalidRecord(f"{name}: no block 0 (the new overflow page)")
        page = _page(ctx, blk, lsn)
        if page is not None:
            H.set_link(page, H.OFF_NEXTBLKNO, right.blkno)
            finish(page, lsn)
    elif bid == 2:
        page = _page(ctx, blk, lsn)
        if page is not None:
            H.change_bit(page, _u32_data(blk, name), True)
            finish(page, lsn)
    elif bid == 3:
        newmap = _init_block(ctx, blk, lsn)
        H.init_bitmap_page(newmap, bmsize)
        finish(newmap, lsn)
    elif bid == 4:
        meta = _meta_page(ctx, blk, lsn)
        if meta is not None:
            firstfree = _u32_data(blk, name)
            H.set_meta_u32(meta, H.M_FIRSTFREE, firstfree)
            if not bmpage_found:
                spare = H.spare_offset(H.meta_u32(meta, H.M_OVFLPOINT), "page")
                H.set_meta_u32(meta, spare, H.meta_u32(meta, spare) + 1)
                newmap_blk = blocks.get(3)
                if newmap_blk is not None:
                    H.add_bitmap(meta, newmap_blk.blkno)
                    H.set_meta_u32(meta, spare, H.meta_u32(meta, spare) + 1)
            finish(meta, lsn)


def _split_allocate_page(ctx: RedoContext, rec: DecodedRecord, blk: BlockRef, lsn: int) -> None:
    name = "Hash/SPLIT_ALLOCATE_PAGE"
    new_bucket, old_flag, new_flag, flags = main_struct(rec, _SPLIT_ALLOC, name)
    bid = blk.block_id
    if bid == 0:
        # redone after an image restore too, as PostgreSQL does
        old = _page_even_if_restored(ctx, blk, lsn)
        if old is not None:
            H.set_flag(old, old_flag)
            H.set_link(old, H.OFF_PREVBLKNO, new_bucket)
            finish(old, lsn)
    elif bid == 1:
        new = _init_block(ctx, blk, lsn)
        H.init_page(new, new_bucket, H.INVALID_BLOCK, new_bucket, new_flag)
        finish(new, lsn)
    elif bid == 2:
        meta = _meta_page(ctx, blk, lsn)
        if meta is None:
            return
        data = blk.data or b""
        masks = bool(flags & XLH_SPLIT_META_UPDATE_MASKS)
        splitpoint = bool(flags & XLH_SPLIT_META_UPDATE_SPLITPOINT)
        if len(data) < 8 * (masks + splitpoint):
            raise InvalidRecord(f"{name}: metapage data has {len(data)} bytes, expected {8 * (masks + splitpoint)}")
        if splitpoint:  # checked before anything is written
            ovflpoint, ovflpages = _TWO_U32.unpack_from(data, 8 if masks else 0)
            spare = H.spare_offset(ovflpoint, "record")
        H.set_meta_u32(meta, H.M_MAXBUCKET, new_bucket)
        if masks:
            lowmask, highmask = _TWO_U32.unpack_from(data, 0)
            H.set_meta_u32(meta, H.M_LOWMASK, lowmask)
            H.set_meta_u32(meta, H.M_HIGHMASK, highmask)
        if splitpoint:
            H.set_meta_u32(meta, spare, ovflpages)
            H.set_meta_u32(meta, H.M_OVFLPOINT, ovflpoint)
        finish(meta, lsn)


def _split_page(ctx: RedoContext, rec: DecodedRecord, blk: BlockRef, lsn: int) -> None:
    if blk.block_id == 0:
        if not blk.apply_image:
            raise InvalidRecord("Hash split record did not contain a full-page image")
        read_for_redo(ctx, blk, lsn)


def _split_complete(ctx: RedoContext, rec: DecodedRecord, blk: BlockRef, lsn: int) -> None:
    old_flag, new_flag = main_struct(rec, _SPLIT_COMPLETE, "Hash/SPLIT_COMPLETE")
    if blk.block_id in (0, 1):
        page = _page_even_if_restored(ctx, blk, lsn)
        if page is not None:
            H.set_flag(page, old_flag if blk.block_id == 0 else new_flag)
            finish(page, lsn)


def _move_page_contents(ctx: RedoContext, rec: DecodedRecord, blk: BlockRef, lsn: int) -> None:
    name = "Hash/MOVE_PAGE_CONTENTS"
    ntups, same_wrt = main_struct(rec, _MOVE, name)
    bid = blk.block_id
    if bid == 0:
        if not same_wrt:
            _cleanup_lock_only(ctx, blk, lsn)
    elif bid == 1:
        page = _page(ctx, blk, lsn)
        if page is not None:
            H.add_moved_tuples(page, blk.data, ntups, name)
            finish(page, lsn)
    elif bid == 2:
        page = _page(ctx, blk, lsn)
        if page is not None:
            H.delete_listed(page, blk.data, name)
            finish(page, lsn)


def _squeeze_page(ctx: RedoContext, rec: DecodedRecord, blk: BlockRef, lsn: int) -> None:
    name = "Hash/SQUEEZE_PAGE"
    prevblkno, nextblkno, ntups, prim_same_wrt, prev_same_wrt = main_struct(rec, _SQUEEZE, name)
    bid = blk.block_id
    if bid == 0:
        if not prim_same_wrt:
            _cleanup_lock_only(ctx, blk, lsn)
        return
    if bid == 3 and prev_same_wrt:
        return  # PostgreSQL does not read block 3 then
    page = _page(ctx, blk, lsn)
    if page is None:
        return
    if bid == 1:
        H.add_moved_tuples(page, blk.data, ntups, name)
        if prev_same_wrt:
            H.set_link(page, H.OFF_NEXTBLKNO, nextblkno)
    elif bid == 2:
        H.init_page(page, H.INVALID_BLOCK, H.INVALID_BLOCK, H.INVALID_BUCKET, H.LH_UNUSED_PAGE)
    elif bid == 3:
        H.set_link(page, H.OFF_NEXTBLKNO, nextblkno)
    elif bid == 4:
        H.set_link(page, H.OFF_PREVBLKNO, prevblkno)
    elif bid == 5:
        H.change_bit(page, _u32_data(blk, name), False)
    else:
        H.require(page, H.LH_META_PAGE, "hash metapage")
        H.set_meta_u32(page, H.M_FIRSTFREE, _u32_data(blk, name))
    finish(page, lsn)


def _delete(ctx: RedoContext, rec: DecodedRecord, blk: BlockRef, lsn: int) -> None:
    name = "Hash/DELETE"
    clear_dead, is_primary = main_struct(rec, _DELETE, name)
    if blk.block_id == 0:
        if not is_primary:
            _cleanup_lock_only(ctx, blk, lsn)
    elif blk.block_id == 1:
        page = _page(ctx, blk, lsn)
        if page is not None:
            H.delete_listed(page, blk.data, name)
            if clear_dead:
                H.set_flag(page, H.flag(page) & ~H.LH_PAGE_HAS_DEAD_TUPLES)
            finish(page, lsn)


def _split_cleanup(ctx: RedoContext, rec: DecodedRecord, blk: BlockRef, lsn: int) -> None:
    if blk.block_id == 0:
        page = _page(ctx, blk, lsn)
        if page is not None:
            H.set_flag(page, H.flag(page) & ~H.LH_BUCKET_NEEDS_SPLIT_CLEANUP)
            finish(page, lsn)


def _update_meta_page(ctx: RedoContext, rec: DecodedRecord, blk: BlockRef, lsn: int) -> None:
    md = rec.main_data
    if len(md) < 8:
        raise InvalidRecord(f"Hash/UPDATE_META_PAGE: main data has {len(md)} bytes, expected 8")
    if blk.block_id == 0:
        meta = _meta_page(ctx, blk, lsn)
        if meta is not None:
            meta[H.M_NTUPLES:H.M_NTUPLES + 8] = md[:8]  # the double's bytes as logged
            finish(meta, lsn)


def _vacuum_one_page(ctx: RedoContext, rec: DecodedRecord, blk: BlockRef, lsn: int) -> None:
    name = "Hash/VACUUM_ONE_PAGE"
    _xid, ntuples = main_struct(rec, _VACUUM_ONE, name)
    if ntuples < 0:
        raise InvalidRecord(f"{name}: negative ntuples {ntuples}")
    if blk.block_id == 0:
        page = _page(ctx, blk, lsn)
        if page is not None:
            md = rec.main_data
            if len(md) > _VACUUM_ONE.size:
                offnums = H.offsets(md, _VACUUM_ONE.size, ntuples, name)
                if offnums:
                    IP.multi_delete(page, offnums)
            H.set_flag(page, H.flag(page) & ~H.LH_PAGE_HAS_DEAD_TUPLES)
            finish(page, lsn)
    elif blk.block_id == 1:
        meta = _meta_page(ctx, blk, lsn)
        if meta is not None:
            H.add_ntuples(meta, -ntuples)
            finish(meta, lsn)


# info code -> (redo, the highest block id PostgreSQL registers for it)
_REDO: dict[int, tuple[Callable[[RedoContext, DecodedRecord, BlockRef, int], None], int]] = {
    XLOG_HASH_INIT_META_PAGE: (_init_meta_page, 0),
    XLOG_HASH_INIT_BITMAP_PAGE: (_init_bitmap_page, 1),
    XLOG_HASH_INSERT: (_insert, 1),
    XLOG_HASH_ADD_OVFL_PAGE: (_add_ovfl_page, 4),
    XLOG_HASH_SPLIT_ALLOCATE_PAGE: (_split_allocate_page, 2),
    XLOG_HASH_SPLIT_PAGE: (_split_page, 0),
    XLOG_HASH_SPLIT_COMPLETE: (_split_complete, 1),
    XLOG_HASH_MOVE_PAGE_CONTENTS: (_move_page_contents, 2),
    XLOG_HASH_SQUEEZE_PAGE: (_squeeze_page, 6),
    XLOG_HASH_DELETE: (_delete, 1),
    XLOG_HASH_SPLIT_CLEANUP: (_split_cleanup, 0),
    XLOG_HASH_UPDATE_META_PAGE: (_update_meta_page, 0),
    XLOG_HASH_VACUUM_ONE_PAGE: (_vacuum_one_page, 1),
}
_FULL_NAMES = {op: f"{NAME}/{name}" for op, name in OP_NAMES.items()}


def redo(ctx: RedoContext, rec: DecodedRecord, lsn: int) -> None:
    """Replay a Hash record onto ``ctx.page`` (see the module docstring). Raises :class:`UnsupportedRecord`
    for an unknown info code, :class:`BlockNotReferenced` when the record does not touch ``ctx.tag``, and
    :class:`InvalidRecord` / :class:`InvalidPage` where the record and the page do not fit together (a
    block id PostgreSQL never registers for the record type included). A block PostgreSQL registers only
    in some cases and whose redo skips it otherwise (block 0 of MOVE_PAGE_CONTENTS / SQUEEZE_PAGE / DELETE
    when the primary bucket page is the page written, block 3 of SQUEEZE_PAGE when the write page is the
    freed page's predecessor) is left as it is, as PostgreSQL's redo does."""
    op = rec.info & 0xF0
    entry = _REDO.get(op)
    if entry is None:
        raise unsupported(rec, NAME)
    fn, max_block = entry
    blk = referenced_block(ctx, rec, _FULL_NAMES[op])
    if blk.block_id > max_block:
        raise InvalidRecord(f"{_FULL_NAMES[op]}: block {blk.block_id} has no role in this record")
    fn(ctx, rec, blk, lsn)


def mask(page: bytearray, blkno: int) -> None:
    """PostgreSQL's ``hash_mask`` in place, stricter on line pointer flags: see :func:`.hash_page.hash_mask`
    (only LP_DEAD is equated with LP_NORMAL, where PostgreSQL clears every used pointer's flags)."""
    H.hash_mask(page, blkno)
