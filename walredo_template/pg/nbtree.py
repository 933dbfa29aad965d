"""Redo of PostgreSQL 15 Btree records (``access/nbtree/nbtxlog.c``) for one page.

A walredo request rebuilds one page, ``ctx.tag``; each record's redo replays only what the record does to
that page, chosen by the block id the page has in the record (its role), and leaves the other blocks alone.
Page and tuple operations live in :mod:`.nbtree_page`. Every info code:

    INSERT_LEAF/UPPER/META  block 0: PageAddItem of the new tuple at offnum; block 1 (UPPER, META): the
                            child whose split this finishes, BTP_INCOMPLETE_SPLIT cleared; block 2 (META):
                            the metapage rebuilt (_bt_restore_meta)
    INSERT_POST             block 0: posting list split (_bt_swap_posting) of the tuple at offnum - 1, the
                            post-split list written over it, the final new item added at offnum
    SPLIT_L / SPLIT_R       block 0: the left page rebuilt in a temp page (high key from the record, items
                            before firstrightoff, the new item if it went left, the post-split posting
                            list); flags := INCOMPLETE_SPLIT (| LEAF), next := the right page, cycle id 0.
                            block 1: the right page initialized from the record's items (_bt_restore_page),
                            prev = block 0, next = block 2 or P_NONE, flags LEAF or 0, cycle id 0 (redo never
                            sets BTP_SPLIT_END); block 2: btpo_prev := block 1; block 3 (upper levels): the
                            child's incomplete split cleared
    DEDUP                   block 0: the page rebuilt by replaying the record's intervals through the
                            pending-posting-list logic of _bt_dedup_pass; BTP_HAS_GARBAGE cleared
    DELETE / VACUUM         block 0: updated posting lists rewritten (_bt_update_posting +
                            PageIndexTupleOverwrite), then PageIndexMultiDelete; BTP_HAS_GARBAGE cleared
    MARK_PAGE_HALFDEAD      block 0: the leaf re-created half-dead with a dummy high key (top parent);
                            block 1: in the parent, the downlink at poffset takes the next one's, which goes
    UNLINK_PAGE(_META)      block 0: the target re-created deleted (safexid, BTP_HAS_FULLXID); block 1 (only
                            if leftsib is not P_NONE): btpo_next := rightsib; block 2: btpo_prev := leftsib;
                            block 3: the leaf re-created half-dead; block 4 (META): the metapage
    NEWROOT                 block 0: the root initialized (ROOT, LEAF at level 0; its items at upper
                            levels); block 1 (level > 0): incomplete split cleared; block 2: the metapage
    REUSE_PAGE              a hot-standby snapshot conflict: no block references, so any page asked for is
                            BlockNotReferenced (a hand-made one with blocks leaves them unchanged)
    META_CLEANUP            block 0: the metapage

Record layouts (``access/nbtxlog.h`` of 15; main data unless said otherwise)::

    INSERT_*     u16 offnum           block 0 data: [u16 postingoff (INSERT_POST)] index tuple
    SPLIT_*      u32 level, u16 firstrightoff, u16 newitemoff, u16 postingoff
                 block 0 data: [new item, MAXALIGNed, if SPLIT_L or postingoff] left high key (MAXALIGNed)
                 block 1 data: the right page's pd_upper..pd_special
    DEDUP        u16 nintervals       block 0 data: nintervals x (u16 baseoff, u16 nitems)
    DELETE       u32 latestRemovedXid, u16 ndeleted, u16 nupdated
    VACUUM       u16 ndeleted, u16 nupdated
                 block 0 data (both): u16 deleted[ndeleted], u16 updated[nupdated], then per updated tuple
                 u16 ndeletedtids, u16 posting-list positions[ndeletedtids]
    MARK_PAGE_HALFDEAD  u16 poffset, 2 pad, u32 leafblk, leftblk, rightblk, topparent
    UNLINK_PAGE  u32 leftsib, rightsib, level, 4 pad, u64 safexid, u32 leafleftsib, leafrightsib, leaftopparent
    NEWROOT      u32 rootblk, level   block 0 data: the root's items (level > 0)
    REUSE_PAGE   RelFileNode, u32 block, u64 latestRemovedFullXid
    metapage block data (INSERT_META, UNLINK_PAGE_META, NEWROOT, META_CLEANUP): xl_btree_metadata, 28 bytes:
                 u32 version, root, level, fastroot, fastlevel, last_cleanup_num_delpages, u8 allequalimage

Where PostgreSQL would PANIC or ERROR (item does not fit, bad posting split offset, a block the redo needs
is missing) this raises :class:`InvalidRecord`; where it would read past a tuple, a page or the record on
bad input (assertions only in PostgreSQL) this raises :class:`InvalidRecord` / :class:`InvalidPage` too.
Assertions that guard nothing (DEDUP's final interval count, data left over after a split's high key) are not
enforced, as in a production build. A page that came from outside (base or restored image) has its line
pointers checked once per request before the first redo reads it (:func:`.nbtree_page.check_items`).
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from . import indexpage as IP
from . import nbtree_page as B
from .bufmgr import ItemCheck, RedoContext, block_data, finish, main_struct, referenced_block, unsupported
from .errors import InvalidPage, InvalidRecord
from .page import U16, U32, U64
from .xlogrecord import BlockRef, DecodedRecord

RM_ID = 11
NAME = "Btree"

XLOG_BTREE_INSERT_LEAF = 0x00
XLOG_BTREE_INSERT_UPPER = 0x10
XLOG_BTREE_INSERT_META = 0x20
XLOG_BTREE_SPLIT_L = 0x30
XLOG_BTREE_SPLIT_R = 0x40
XLOG_BTREE_INSERT_POST = 0x50
XLOG_BTREE_DEDUP = 0x60
XLOG_BTREE_DELETE = 0x70
XLOG_BTREE_UNLINK_PAGE = 0x80
XLOG_BTREE_UNLINK_PAGE_META = 0x90
XLOG_BTREE_NEWROOT = 0xA0
XLOG_BTREE_MARK_PAGE_HALFDEAD = 0xB0
XLOG_BTREE_VACUUM = 0xC0
XLOG_BTREE_REUSE_PAGE = 0xD0
XLOG_BTREE_META_CLEANUP = 0xE0

OP_NAMES = {
    0x00: "INSERT_LEAF", 0x10: "INSERT_UPPER", 0x20: "INSERT_META", 0x30: "SPLIT_L", 0x40: "SPLIT_R",
    0x50: "INSERT_POST", 0x60: "DEDUP", 0x70: "DELETE", 0x80: "UNLINK_PAGE", 0x90: "UNLINK_PAGE_META",
    0xA0: "NEWROOT", 0xB0: "MARK_PAGE_HALFDEAD", 0xC0: "VACUUM", 0xD0: "REUSE_PAGE", 0xE0: "META_CLEANUP",
}
_FULL_NAMES = {info: f"{NAME}/{op}" for info, op in OP_NAMES.items()}

_INSERT = struct.Struct("<H")
_SPLIT = struct.Struct("<IHHH")
_DEDUP = struct.Struct("<H")
_DELETE = struct.Struct("<IHH")
_VACUUM = struct.Struct("<HH")
_HALFDEAD = struct.Struct("<H2xIIII")
_UNLINK = struct.Struct("<III4xQIII")
_NEWROOT = struct.Struct("<II")
_INTERVAL = struct.Struct("<HH")


# page_for_redo (XLogReadBufferForRedo), plus :func:`.nbtree_page.check_items` the first time a request
# redoes its page and after an image restore
_page = ItemCheck(lambda page, _name: B.check_items(page)).page_for_redo


def _require(rec: DecodedRecord, block_id: int, name: str) -> BlockRef:
    """A block the redo reads (PostgreSQL PANICs when the record lacks it)."""
    blk = rec.blocks.get(block_id)
    if blk is None:
        raise InvalidRecord(f"{name}: record has no block {block_id}")
    return blk


def _clear_incomplete_split(ctx: RedoContext, blk: BlockRef, lsn: int) -> None:
    """_bt_clear_incomplete_split: the child whose downlink the record inserts."""
    page = _page(ctx, blk, lsn)
    if page is not None:
        B.clear_flags(page, B.BTP_INCOMPLETE_SPLIT)
        finish(page, lsn)


# --- inserts ----------------------------------------------------------------------------------

def _insert(ctx: RedoContext, rec: DecodedRecord, lsn: int) -> None:
    info = rec.info & 0xF0
    name = _FULL_NAMES[info]
    blk = referenced_block(ctx, rec, name)
    bid = blk.block_id
    if bid == 0:
        (offnum,) = main_struct(rec, _INSERT, name)
        if info == XLOG_BTREE_INSERT_UPPER or info == XLOG_BTREE_INSERT_META:
            _require(rec, 1, name)  # PostgreSQL clears the child's flag first
        page = _page(ctx, blk, lsn)
        if page is None:
            return
        data = block_data(blk, name)
        if info == XLOG_BTREE_INSERT_POST:
            _insert_post(page, data, offnum)
        else:
            IP.add_item(page, data, offnum)
        finish(page, lsn)
    elif bid == 1 and info in (XLOG_BTREE_INSERT_UPPER, XLOG_BTREE_INSERT_META):
        _clear_incomplete_split(ctx, blk, lsn)
    elif bid == 2 and info == XLOG_BTREE_INSERT_META:
        B.restore_meta(ctx, blk, lsn)


def _insert_post(page: bytearray, data: bytes, offnum: int) -> None:
    """The posting list split of INSERT_POST: the record carries the original new item; the page gets the
    post-split posting list at offnum - 1 and the final new item at offnum."""
    if len(data) < 2:
        raise InvalidRecord("Btree/INSERT_POST: block data has no posting split offset")
    postingoff = U16.unpack_from(data)[0]
    newitem = data[2:]
    if B.tuple_size(newitem, 0, "Btree/INSERT_POST") != len(newitem):
        raise InvalidRecord("Btree/INSERT_POST: new item size does not match the record data")
    words = B.item_words(page)
    if not 1 <= offnum - 1 <= len(words):
        raise InvalidRecord(f"Btree/INSERT_POST: no posting list at offset {offnum - 1}")
    off, oposting = B.tuple_at(page, words[offnum - 2], offnum - 1)
    nposting, final = B.swap_posting(newitem, oposting, postingoff, "Btree/INSERT_POST")
    size = B.maxalign(len(nposting))
    if size > words[offnum - 2] >> 17:
        raise InvalidRecord("Btree/INSERT_POST: posting list does not fit its item")
    IP.add_item(page, final, offnum)  # moves line pointers only, so ``off`` still holds the posting list
    page[off:off + size] = nposting + bytes(size - len(nposting))


# --- splits -----------------------------------------------------------------------------------

def _split(ctx: RedoContext, rec: DecodedRecord, lsn: int) -> None:
    info = rec.info & 0xF0
    name = _FULL_NAMES[info]
    blk = referenced_block(ctx, rec, name)
    level, firstright, newitemoff, postingoff = main_struct(rec, _SPLIT, name)
    left = _require(rec, 0, name)
    right = _require(rec, 1, name)
    sib = rec.blocks.get(2)
    if level != 0:
        _require(rec, 3, name)
    bid = blk.block_id
    if bid == 0:
        _split_left(ctx, blk, lsn, name, info == XLOG_BTREE_SPLIT_L, level, firstright, newitemoff,
                    postingoff, right.blkno)
    elif bid == 1:
        page = B.init_page(ctx, blk, lsn)
        B.OPAQUE.pack_into(page, B.BT_SPECIAL, left.blkno, sib.blkno if sib is not None else B.P_NONE, level,
                           B.BTP_LEAF if level == 0 else 0, 0)
        B.restore_items(page, blk.data or b"")
        finish(page, lsn)
    elif bid == 2:
        spage = _page(ctx, blk, lsn)
        if spage is not None:
            U32.pack_into(spage, B.special(spage), right.blkno)  # btpo_prev
            finish(spage, lsn)
    elif bid == 3 and level != 0:
        _clear_incomplete_split(ctx, blk, lsn)


def _split_left(ctx: RedoContext, blk: BlockRef, lsn: int, name: str, onleft: bool, level: int,
                firstright: int, newitemoff: int, postingoff: int, rightblk: int) -> None:
    """The left half of a split, rebuilt in a temp page in item order as _bt_split builds it."""
    page = _page(ctx, blk, lsn)
    if page is None:
        return
    sp = B.special(page)
    opaque = bytes(page[sp:sp + 16])
    prev, nxt, olevel, _flags, _cycle = B.OPAQUE.unpack_from(opaque)
    data = block_data(blk, name)
    words = B.item_words(page)
    maxoff = len(words)
    pos = 0
    newitem = b""
    nposting = b""
    replace = 0
    if onleft or postingoff:
        size = B.maxalign(B.tuple_size(data, 0, name))
        if size > len(data):
            raise InvalidRecord(f"{name}: new item runs past the record data")
        newitem = data[:size]
        pos = size
        if postingoff:
            replace = newitemoff - 1
            if not 1 <= replace <= maxoff:
                raise InvalidRecord(f"{name}: no posting list at offset {replace}")
            _off, oposting = B.tuple_at(page, words[replace - 1], replace)
            nposting, newitem = B.swap_posting(newitem, oposting, postingoff, name)
            nposting += bytes(B.maxalign(len(nposting)) - len(nposting))
    hsize = B.maxalign(B.tuple_size(data, pos, name))
    if pos + hsize > len(data):
        raise InvalidRecord(f"{name}: left high key runs past the record data")
    items: list[bytes | bytearray | memoryview] = [data[pos:pos + hsize]]
    first = 1 if nxt == B.P_NONE else 2
    if firstright - 1 > maxoff:
        raise InvalidRecord(f"{name}: first right item {firstright} beyond the page's {maxoff} items")
    mv = memoryview(page)
    for off in range(first, firstright):
        if off == replace:
            items.append(nposting)
            continue
        if onleft and off == newitemoff:
            items.append(newitem)
        o, length = B.stored(page, words[off - 1], off)
        items.append(mv[o:o + length])
    if onleft and max(first, firstright) == newitemoff:
        items.append(newitem)
    try:
        B.build_page(page, items, opaque)
    finally:
        mv.release()
    B.OPAQUE.pack_into(page, sp, prev, rightblk, olevel,
                       B.BTP_INCOMPLETE_SPLIT | (B.BTP_LEAF if level == 0 else 0), 0)
    finish(page, lsn)


# --- deduplication, deletion ------------------------------------------------------------------------

def _dedup(ctx: RedoContext, rec: DecodedRecord, lsn: int) -> None:
    name = "Btree/DEDUP"
    blk = referenced_block(ctx, rec, name)
    (nintervals,) = main_struct(rec, _DEDUP, name)
    if blk.block_id != 0:
        return
    page = _page(ctx, blk, lsn)
    if page is None:
        return
    data = blk.data or b""
    if len(data) < 4 * nintervals:
        raise InvalidRecord(f"{name}: {nintervals} intervals need {4 * nintervals} bytes, block has {len(data)}")
    intervals = [_INTERVAL.unpack_from(data, 4 * i) for i in range(nintervals)]
    sp = B.special(page)
    opaque = bytearray(page[sp:sp + 16])
    flags = B.FLAGS.unpack_from(opaque, 12)[0]
    words = B.item_words(page)
    out: list[bytes] = []
    minoff = 1
    if B.OPAQUE.unpack_from(opaque)[1] != B.P_NONE:  # not rightmost: keep the high key
        minoff = 2
        if not words:
            raise InvalidPage("Btree/DEDUP: page has no high key")
        o, length = B.stored(page, words[0], 1)
        out.append(bytes(page[o:o + length]))
    state = B.Dedup(out)
    for offnum in range(minoff, len(words) + 1):
        _o, tup = B.tuple_at(page, words[offnum - 1], offnum)
        if offnum == minoff:
            state.start(tup, offnum)
            continue
        n = state.nintervals
        if n < nintervals and state.baseoff == intervals[n][0] and state.nitems < intervals[n][1]:
            state.save(tup)
        else:
            state.finish()
            state.start(tup, offnum)
    if not state.nitems:  # PostgreSQL would form a posting list from no base tuple
        raise InvalidRecord(f"{name}: the page has no items to deduplicate")
    state.finish()
    B.FLAGS.pack_into(opaque, 12, flags & ~B.BTP_HAS_GARBAGE)
    B.build_page(page, out, bytes(opaque))
    finish(page, lsn)


def _delete(ctx: RedoContext, rec: DecodedRecord, lsn: int) -> None:
    """DELETE and VACUUM: same block 0 data, same steps (VACUUM takes a cleanup lock, moot here)."""
    info = rec.info & 0xF0
    name = _FULL_NAMES[info]
    blk = referenced_block(ctx, rec, name)
    if info == XLOG_BTREE_DELETE:
        _xid, ndeleted, nupdated = main_struct(rec, _DELETE, name)
    else:
        ndeleted, nupdated = main_struct(rec, _VACUUM, name)
    if blk.block_id != 0:
        return
    page = _page(ctx, blk, lsn)
    if page is None:
        return
    data = blk.data or b""
    head = 2 * (ndeleted + nupdated)
    if len(data) < head:
        raise InvalidRecord(f"{name}: block data has {len(data)} bytes, offsets need {head}")
    offsets = struct.unpack_from(f"<{ndeleted + nupdated}H", data)
    B.special(page)
    if nupdated:
        pos = head
        for updoff in offsets[ndeleted:]:
            if pos + 2 > len(data):
                raise InvalidRecord(f"{name}: block data ends inside the updates")
            ntids = U16.unpack_from(data, pos)[0]
            end = pos + 2 + 2 * ntids
            if end > len(data):
                raise InvalidRecord(f"{name}: block data ends inside the updates")
            tids = struct.unpack_from(f"<{ntids}H", data, pos + 2)
            pos = end
            words = B.item_words(page)
            if not 1 <= updoff <= len(words):
                raise InvalidRecord(f"{name}: updated item {updoff} beyond the page's {len(words)} items")
            _o, orig = B.tuple_at(page, words[updoff - 1], updoff)
            IP.overwrite_item(page, updoff, B.update_posting(orig, tids, name))
    if ndeleted:
        IP.multi_delete(page, offsets[:ndeleted])
    B.clear_flags(page, B.BTP_HAS_GARBAGE)
    finish(page, lsn)


# --- page deletion ---------------------------------------------------------------------------

def _halfdead(ctx: RedoContext, rec: DecodedRecord, lsn: int) -> None:
    name = "Btree/MARK_PAGE_HALFDEAD"
    blk = referenced_block(ctx, rec, name)
    poffset, _leafblk, leftblk, rightblk, topparent = main_struct(rec, _HALFDEAD, name)
    _require(rec, 0, name)
    _require(rec, 1, name)
    if blk.block_id == 1:
        page = _page(ctx, blk, lsn)
        if page is None:
            return
        words = B.item_words(page)
        nxt = poffset + 1
        if not 1 <= poffset or nxt > len(words):
            raise InvalidRecord(f"{name}: parent has no items {poffset} and {nxt}")
        o_next, len_next = B.stored(page, words[nxt - 1], nxt)
        o_this, len_this = B.stored(page, words[poffset - 1], poffset)
        if len_next < 8 or len_this < 8:
            raise InvalidRecord(f"{name}: parent items {poffset}, {nxt} are too short for a downlink")
        page[o_this:o_this + 4] = page[o_next:o_next + 4]  # BTreeTupleSetDownLink(itup, rightsib)
        IP.delete_item(page, nxt)
        finish(page, lsn)
    elif blk.block_id == 0:
        _halfdead_leaf(ctx, blk, lsn, leftblk, rightblk, topparent)


def _halfdead_leaf(ctx: RedoContext, blk: BlockRef, lsn: int, left: int, right: int, topparent: int) -> None:
    page = B.init_page(ctx, blk, lsn)
    B.OPAQUE.pack_into(page, B.BT_SPECIAL, left, right, 0, B.BTP_HALF_DEAD | B.BTP_LEAF, 0)
    IP.add_item(page, B.dummy_hikey(topparent), B.P_HIKEY)
    finish(page, lsn)


def _unlink(ctx: RedoContext, rec: DecodedRecord, lsn: int) -> None:
    info = rec.info & 0xF0
    name = _FULL_NAMES[info]
    blk = referenced_block(ctx, rec, name)
    leftsib, rightsib, level, safexid, leafleft, leafright, leaftop = main_struct(rec, _UNLINK, name)
    _require(rec, 0, name)
    _require(rec, 2, name)
    if leftsib != B.P_NONE:
        _require(rec, 1, name)
    if info == XLOG_BTREE_UNLINK_PAGE_META:
        _require(rec, 4, name)
    bid = blk.block_id
    if bid == 0:
        page = B.init_page(ctx, blk, lsn)
        flags = B.BTP_DELETED | B.BTP_HAS_FULLXID | (B.BTP_LEAF if level == 0 else 0)
        B.OPAQUE.pack_into(page, B.BT_SPECIAL, leftsib, rightsib, level, flags, 0)
        U64.pack_into(page, 24, safexid)  # BTPageSetDeleted: safexid, pd_lower past it
        U16.pack_into(page, 12, 32)
        finish(page, lsn)
    elif bid in (1, 2):
        if bid == 1 and leftsib == B.P_NONE:
            return  # PostgreSQL reads block 1 only when there is a left sibling
        spage = _page(ctx, blk, lsn)
        if spage is not None:
            sp = B.special(spage)
            if bid == 1:
                U32.pack_into(spage, sp + 4, rightsib)  # btpo_next
            else:
                U32.pack_into(spage, sp, leftsib)  # btpo_prev
            finish(spage, lsn)
    elif bid == 3:
        _halfdead_leaf(ctx, blk, lsn, leafleft, leafright, leaftop)
    elif bid == 4 and info == XLOG_BTREE_UNLINK_PAGE_META:
        B.restore_meta(ctx, blk, lsn)


# --- root and metapage ------------------------------------------------------------------------

def _newroot(ctx: RedoContext, rec: DecodedRecord, lsn: int) -> None:
    name = "Btree/NEWROOT"
    blk = referenced_block(ctx, rec, name)
    _rootblk, level = main_struct(rec, _NEWROOT, name)
    _require(rec, 0, name)
    _require(rec, 2, name)
    if level > 0:
        _require(rec, 1, name)
    bid = blk.block_id
    if bid == 0:
        page = B.init_page(ctx, blk, lsn)
        B.OPAQUE.pack_into(page, B.BT_SPECIAL, B.P_NONE, B.P_NONE, level,
                           B.BTP_ROOT | (B.BTP_LEAF if level == 0 else 0), 0)
        if level > 0:
            B.restore_items(page, blk.data or b"")
        finish(page, lsn)
    elif bid == 1 and level > 0:
        _clear_incomplete_split(ctx, blk, lsn)
    elif bid == 2:
        B.restore_meta(ctx, blk, lsn)


def _meta_cleanup(ctx: RedoContext, rec: DecodedRecord, lsn: int) -> None:
    blk = referenced_block(ctx, rec, "Btree/META_CLEANUP")
    if blk.block_id == 0:
        B.restore_meta(ctx, blk, lsn)


def _reuse_page(ctx: RedoContext, rec: DecodedRecord, lsn: int) -> None:
    # Only a recovery conflict in PostgreSQL; its records have no block, so this raises BlockNotReferenced.
    referenced_block(ctx, rec, "Btree/REUSE_PAGE")


_REDO: dict[int, Callable[[RedoContext, DecodedRecord, int], None]] = {
    XLOG_BTREE_INSERT_LEAF: _insert, XLOG_BTREE_INSERT_UPPER: _insert, XLOG_BTREE_INSERT_META: _insert,
    XLOG_BTREE_INSERT_POST: _insert, XLOG_BTREE_SPLIT_L: _split, XLOG_BTREE_SPLIT_R: _split,
    XLOG_BTREE_DEDUP: _dedup, XLOG_BTREE_DELETE: _delete, XLOG_BTREE_VACUUM: _delete,
    XLOG_BTREE_MARK_PAGE_HALFDEAD: _halfdead, XLOG_BTREE_UNLINK_PAGE: _unlink,
    XLOG_BTREE_UNLINK_PAGE_META: _unlink, XLOG_BTREE_NEWROOT: _newroot, XLOG_BTREE_REUSE_PAGE: _reuse_page,
    XLOG_BTREE_META_CLEANUP: _meta_cleanup,
}


def redo(ctx: RedoContext, rec: DecodedRecord, lsn: int) -> None:
    """Replay a Btree record onto the page ``ctx.tag`` (see the module docstring for each info code).

    Raises :class:`BlockNotReferenced` when the record does not reference the page,
    :class:`UnsupportedRecord` for an unknown info code, :class:`InvalidRecord` / :class:`InvalidPage`
    for a record that does not fit the page or a corrupt page.
    """
    fn = _REDO.get(rec.info & 0xF0)
    if fn is None:
        raise unsupported(rec, NAME)
    fn(ctx, rec, lsn)


def mask(page: bytearray, blkno: int) -> None:
    """PostgreSQL's ``btree_mask`` in place: LSN and checksum, the hole between pd_lower and pd_upper,
    BTP_HAS_GARBAGE, BTP_SPLIT_END and btpo_cycleid, and on leaf pages the line pointers' LP_DEAD state.

    Stricter than PostgreSQL where btree pages leave no room for a legitimate difference: pd_flags and
    pd_prune_xid are compared (``mask_page_hint_bits`` is not applied: btree never sets PD_PAGE_FULL,
    PD_ALL_VISIBLE, PD_HAS_FREE_LINES or a prune xid); on leaf pages only LP_DEAD is folded into LP_NORMAL
    (``mask_lp_flags`` folds every used state into LP_UNUSED, but btree pages hold only those two); and on a
    deleted page the safexid PostgreSQL's mask_lp_flags would treat as two line pointers is compared whole.
    An all-zero page is masked like a heap page (LSN and checksum only). Raises :class:`InvalidPage` for a
    page without the btree special space.
    """
    B.btree_mask(page)


def record_name(info: int) -> str:
    """``Btree/OPERATION`` as pg_waldump prints it (``Btree/UNKNOWN (XX)`` for an unknown info code)."""
    name = _FULL_NAMES.get(info & 0xF0)
    return name if name is not None else f"{NAME}/UNKNOWN ({info & 0xF0:X})"
