"""Redo of PostgreSQL 15 SP-GiST records (``access/spgist/spgxlog.c``) for one page.

Each record may touch several pages (a leaf page, the page its tuples move to, the inner page holding the
parent downlink…); only the page being rebuilt (``ctx.tag``) is replayed, in the role its block id gives
it, and the record's other blocks are left alone, as Neon's walredo does. A role PostgreSQL's redo does not
touch for the record at hand (e.g. block 1 of ADD_LEAF without a parent to update) leaves the page as it
is, image included. New pages are initialized as ``XLogInitBufferForRedo`` + ``SpGistInitBuffer`` do:
the block must carry WILL_INIT, and the redo runs on the fresh page even when the block also has an
image to apply (PostgreSQL ignores the restore there).

Info codes and their roles (block id: what happens to that page):

    ADD_LEAF         0: new leaf tuple — appended, over a placeholder, or replacing a DEAD chain head —
                        and the chain head's next link; new page (LEAF | NULLS) when newPage
                     1: parent downlink -> (block 0, offnumLeaf), when offnumParent is set
    MOVE_LEAFS       0: moved tuples become one REDIRECT (PLACEHOLDER in a build) + PLACEHOLDERs
                     1: the tuples land (new page when newPage)   2: parent downlink -> last tuple
    ADD_NODE         without block 1: the enlarged inner tuple replaces the old in place on block 0
                     else 1: the inner tuple is placed (new page when newPage); 0: the old one becomes a
                        REDIRECT (PLACEHOLDER in a build); the parent downlink is on block parentBlk
    SPLIT_TUPLE      0: prefix tuple replaces the old one (and the postfix lands too when postfixBlkSame)
                     1: postfix tuple (new page when newPage)
    PICKSPLIT        0: source leaf (re-initialized when initSrc; untouched in a root split): moved tuples
                        become REDIRECT + PLACEHOLDERs, then its share of the leaf tuples lands
                     1: destination leaf (new when initDest)   2: the new inner tuple (new when initInner;
                        also the parent when innerIsParent)   3: parent downlink -> the inner tuple
    VACUUM_LEAF      0: tuples become DEAD / PLACEHOLDER, live tuples move into chain-head slots, links
    VACUUM_ROOT      0: PageIndexMultiDelete of the listed tuples (a root that is a leaf)
    VACUUM_REDIRECT  0: listed REDIRECTs become PLACEHOLDERs; trailing placeholders are removed

Record layouts (``access/spgxlog.h`` of 15; main data, C struct alignment; state = u32 myXid, u8 isBuild,
3 pad; tuples unaligned, their size read from their own header)::

    ADD_LEAF (10)         u8 newPage, u8 storesNulls, u16 offnumLeaf, u16 offnumHeadLeaf,
                          u16 offnumParent, u16 nodeI; leaf tuple
    MOVE_LEAFS (20)       u16 nMoves, u8 newPage, u8 replaceDead, u8 storesNulls, pad, u16 offnumParent,
                          u16 nodeI, pad 2, state; u16 toDelete[nMoves], u16 toInsert[n], n leaf tuples
                          (n = 1 with replaceDead, else nMoves + 1)
    ADD_NODE (20)         u16 offnum, u16 offnumNew, u8 newPage, i8 parentBlk, u16 offnumParent,
                          u16 nodeI, pad 2, state; inner tuple
    SPLIT_TUPLE (6)       u16 offnumPrefix, u16 offnumPostfix, u8 newPage, u8 postfixBlkSame;
                          prefix inner tuple, postfix inner tuple
    PICKSPLIT (28)        u8 isRootSplit, pad, u16 nDelete, u16 nInsert, u8 initSrc, u8 initDest,
                          u16 offnumInner, u8 initInner, u8 storesNulls, u8 innerIsParent, pad,
                          u16 offnumParent, u16 nodeI, pad 2, state; u16 toDelete[nDelete],
                          u16 toInsert[nInsert], u8 leafPageSelect[nInsert], inner tuple, nInsert leaf tuples
    VACUUM_LEAF (16)      u16 nDead, nPlaceholder, nMove, nChain, state; u16 arrays: toDead,
                          toPlaceholder, moveSrc[nMove], moveDest[nMove], chainSrc[nChain], chainDest[nChain]
    VACUUM_ROOT (12)      u16 nDelete, pad 2, state; u16 offsets[nDelete]
    VACUUM_REDIRECT (8)   u16 nToPlaceholder, u16 firstPlaceholder, u32 newestRedirectXid;
                          u16 offsets[nToPlaceholder]

Where PostgreSQL's redo would PANIC or elog(ERROR) (a block id it looks up is missing, an item cannot be
placed at its offset, a replaced tuple is not a placeholder, a node is not in the inner tuple) this
raises :class:`InvalidRecord`; it also does, stricter than PostgreSQL, where PostgreSQL would read or
write past an item, the line pointer array or the record (an offset beyond the page, an item too short
for the field written, a truncated array or tuple), and for VACUUM_REDIRECT's firstPlaceholder beyond
one past the last item (PostgreSQL would then add to nPlaceholder and delete nothing). A page that did
not come from this module's own redo (the base image, a restored image) has its line pointers checked once
per request, before anything else (:func:`.spgist_page.check_items`: only normal items with storage,
MAXALIGNed, inside the tuple space, not overlapping; :class:`InvalidPage` otherwise), so a corrupt page is
never passed on as a valid one, not even by a record that leaves it alone.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from . import indexpage as IP
from . import spgist_page as S
from .bufmgr import ItemCheck, RedoContext, finish, init_for_redo, referenced_block, unsupported
from .errors import InvalidRecord
from .xlogrecord import BlockRef, DecodedRecord

RM_ID = 16
NAME = "SPGist"

XLOG_SPGIST_ADD_LEAF = 0x10
XLOG_SPGIST_MOVE_LEAFS = 0x20
XLOG_SPGIST_ADD_NODE = 0x30
XLOG_SPGIST_SPLIT_TUPLE = 0x40
XLOG_SPGIST_PICKSPLIT = 0x50
XLOG_SPGIST_VACUUM_LEAF = 0x60
XLOG_SPGIST_VACUUM_ROOT = 0x70
XLOG_SPGIST_VACUUM_REDIRECT = 0x80

OP_NAMES = {
    XLOG_SPGIST_ADD_LEAF: "ADD_LEAF", XLOG_SPGIST_MOVE_LEAFS: "MOVE_LEAFS", XLOG_SPGIST_ADD_NODE: "ADD_NODE",
    XLOG_SPGIST_SPLIT_TUPLE: "SPLIT_TUPLE", XLOG_SPGIST_PICKSPLIT: "PICKSPLIT",
    XLOG_SPGIST_VACUUM_LEAF: "VACUUM_LEAF", XLOG_SPGIST_VACUUM_ROOT: "VACUUM_ROOT",
    XLOG_SPGIST_VACUUM_REDIRECT: "VACUUM_REDIRECT",
}

_ADD_LEAF = struct.Struct("<BBHHHH")
_MOVE_LEAFS = struct.Struct("<HBBBxHH2xIB3x")
_ADD_NODE = struct.Struct("<HHBbHH2xIB3x")
_SPLIT_TUPLE = struct.Struct("<HHBB")
_PICKSPLIT = struct.Struct("<BxHHBBHBBBxHH2xIB3x")
_VACUUM_LEAF = struct.Struct("<HHHHIB3x")
_VACUUM_ROOT = struct.Struct("<H2xIB3x")
_VACUUM_REDIRECT = struct.Struct("<HHI")

_U16_ARRAYS: dict[int, struct.Struct] = {}


def _header(rec: DecodedRecord, st: struct.Struct, what: str) -> tuple[int, ...]:
    md = rec.main_data
    if len(md) < st.size:
        raise InvalidRecord(f"{what}: main data has {len(md)} bytes, expected at least {st.size}")
    return st.unpack_from(md)


def _offsets(md: bytes, pos: int, n: int, what: str) -> tuple[int, ...]:
    """``n`` u16 offset numbers at ``md[pos:]``."""
    if pos + 2 * n > len(md):
        raise InvalidRecord(f"{what}: {n} offsets at {pos} run past the main data's {len(md)} bytes")
    st = _U16_ARRAYS.get(n)
    if st is None:
        st = struct.Struct(f"<{n}H")
        if n <= 512:  # the sizes real records use; a malformed record must not grow the cache
            _U16_ARRAYS[n] = st
    return st.unpack_from(md, pos)


def _block(rec: DecodedRecord, block_id: int, what: str) -> BlockRef:
    """A block the redo looks up (XLogRecGetBlockTag errors out when it is missing)."""
    blk = rec.blocks.get(block_id)
    if blk is None:
        raise InvalidRecord(f"{what}: could not locate block {block_id} in the record")
    return blk


_ITEMS = ItemCheck(lambda page, _name: S.check_items(page))


def _init(ctx: RedoContext, blk: BlockRef, lsn: int, flags: int) -> bytearray:
    """XLogInitBufferForRedo + SpGistInitBuffer: the redo always runs on the fresh page, even when the
    block had an image to apply (PostgreSQL restores it and then re-initializes the page)."""
    page = init_for_redo(ctx, blk, lsn)
    S.init_page(page, flags)
    ctx.checked = True
    _ITEMS.done(ctx)  # a page built here has only the pointers redo adds
    return page


def _read(ctx: RedoContext, blk: BlockRef, lsn: int) -> bytearray | None:
    """page_for_redo (XLogReadBufferForRedo). The first time a request redoes its page, and after an image
    restore, every line pointer is checked (:func:`.spgist_page.check_items`): redo only checks the items
    it acts on, and must not pass on a corrupt base page as a valid one."""
    return _ITEMS.page_for_redo(ctx, blk, lsn)


def _leaf_flags(stores_nulls: int) -> int:
    return S.SPGIST_LEAF | (S.SPGIST_NULLS if stores_nulls else 0)


# --- ADD_LEAF, MOVE_LEAFS ------------------------------------------------------------------------

def _add_leaf(ctx: RedoContext, rec: DecodedRecord, blk: BlockRef, lsn: int) -> None:
    what = "SPGist/ADD_LEAF"
    new_page, nulls, off_leaf, off_head, off_parent, node = _header(rec, _ADD_LEAF, what)
    md = rec.main_data
    if blk.block_id == 0:
        page = _init(ctx, blk, lsn, _leaf_flags(nulls)) if new_page else _read(ctx, blk, lsn)
        if page is None:
            return
        size = S.leaf_size(md, _ADD_LEAF.size, what)
        tup = memoryview(md)[_ADD_LEAF.size:_ADD_LEAF.size + size]
        if off_leaf != off_head:
            S.add_or_replace(page, off_leaf, tup)
            if off_head:
                S.set_next_offset(page, off_head, off_leaf)
        else:
            S.replace_at(page, off_leaf, tup)  # the chain's head was DEAD: replaced in place
        finish(page, lsn)
    elif blk.block_id == 1 and off_parent:
        page = _read(ctx, blk, lsn)
        if page is not None:
            S.update_node_link(page, off_parent, node, _block(rec, 0, what).blkno, off_leaf)
            finish(page, lsn)


def _move_leafs(ctx: RedoContext, rec: DecodedRecord, blk: BlockRef, lsn: int) -> None:
    what = "SPGist/MOVE_LEAFS"
    nmoves, new_page, replace_dead, nulls, off_parent, node, xid, is_build = _header(rec, _MOVE_LEAFS, what)
    md = rec.main_data
    dst = _block(rec, 1, what).blkno
    ninsert = 1 if replace_dead else nmoves + 1
    pos = _MOVE_LEAFS.size
    to_delete = _offsets(md, pos, nmoves, what)
    pos += 2 * nmoves
    to_insert = _offsets(md, pos, ninsert, what)
    pos += 2 * ninsert
    if blk.block_id == 1:
        page = _init(ctx, blk, lsn, _leaf_flags(nulls)) if new_page else _read(ctx, blk, lsn)
        if page is None:
            return
        view = memoryview(md)
        for offnum in to_insert:
            size = S.leaf_size(md, pos, what)
            S.add_or_replace(page, offnum, view[pos:pos + size])
            pos += size
    elif blk.block_id == 0:
        page = _read(ctx, blk, lsn)
        if page is None:
            return
        first = S.SPGIST_PLACEHOLDER if is_build else S.SPGIST_REDIRECT
        S.multi_delete(page, to_delete, first, S.SPGIST_PLACEHOLDER, dst, to_insert[-1], xid)
    elif blk.block_id == 2:
        page = _read(ctx, blk, lsn)
        if page is None:
            return
        S.update_node_link(page, off_parent, node, dst, to_insert[-1])
    else:
        return
    finish(page, lsn)


# --- ADD_NODE, SPLIT_TUPLE -----------------------------------------------------------------------

def _add_node(ctx: RedoContext, rec: DecodedRecord, blk: BlockRef, lsn: int) -> None:
    what = "SPGist/ADD_NODE"
    offnum, off_new, new_page, parent_blk, off_parent, node, xid, is_build = _header(rec, _ADD_NODE, what)
    md = rec.main_data
    size = S.inner_size(md, _ADD_NODE.size, what)
    tup = memoryview(md)[_ADD_NODE.size:_ADD_NODE.size + size]
    if 1 not in rec.blocks:
        # the enlarged tuple fits where the old one was
        if blk.block_id == 0:
            page = _read(ctx, blk, lsn)
            if page is not None:
                S.replace_at(page, offnum, tup)
                finish(page, lsn)
        return
    _block(rec, 0, what)
    new_blkno = rec.blocks[1].blkno
    if blk.block_id == 1:
        # AddNode is never used on nulls pages: a new page is a plain inner page
        page = _init(ctx, blk, lsn, 0) if new_page else _read(ctx, blk, lsn)
        if page is None:
            return
        S.add_or_replace(page, off_new, tup)
    elif blk.block_id == 0:
        page = _read(ctx, blk, lsn)
        if page is None:
            return
        if is_build:
            S.replace_at(page, offnum, S.dead_tuple(S.SPGIST_PLACEHOLDER))
            S.add_counts(page, 0, 1)
        else:
            S.replace_at(page, offnum, S.dead_tuple(S.SPGIST_REDIRECT, new_blkno, off_new, xid))
            S.add_counts(page, 1, 0)
    elif blk.block_id == 2 and parent_blk == 2:
        page = _read(ctx, blk, lsn)
        if page is None:
            return
    else:
        return
    if parent_blk == blk.block_id:
        S.update_node_link(page, off_parent, node, new_blkno, off_new)
    finish(page, lsn)


def _split_tuple(ctx: RedoContext, rec: DecodedRecord, blk: BlockRef, lsn: int) -> None:
    what = "SPGist/SPLIT_TUPLE"
    off_prefix, off_postfix, new_page, same_blk = _header(rec, _SPLIT_TUPLE, what)
    md = rec.main_data
    view = memoryview(md)
    pos = _SPLIT_TUPLE.size
    prefix_size = S.inner_size(md, pos, what)
    prefix = view[pos:pos + prefix_size]
    pos += prefix_size
    postfix = view[pos:pos + S.inner_size(md, pos, what)]
    if blk.block_id == 1 and not same_blk:
        # SplitTuple is never used on nulls pages: a new page is a plain inner page
        page = _init(ctx, blk, lsn, 0) if new_page else _read(ctx, blk, lsn)
        if page is None:
            return
        S.add_or_replace(page, off_postfix, postfix)
    elif blk.block_id == 0:
        page = _read(ctx, blk, lsn)
        if page is None:
            return
        S.replace_at(page, off_prefix, prefix)
        if same_blk:
            S.add_or_replace(page, off_postfix, postfix)
    else:
        return
    finish(page, lsn)


# --- PICKSPLIT -----------------------------------------------------------------------------------

def _picksplit(ctx: RedoContext, rec: DecodedRecord, blk: BlockRef, lsn: int) -> None:
    what = "SPGist/PICKSPLIT"
    (root_split, ndelete, ninsert, init_src, init_dest, off_inner, init_inner, nulls, inner_is_parent,
     off_parent, node, xid, is_build) = _header(rec, _PICKSPLIT, what)
    md = rec.main_data
    inner_blkno = _block(rec, 2, what).blkno
    pos = _PICKSPLIT.size
    to_delete = _offsets(md, pos, ndelete, what)
    pos += 2 * ndelete
    to_insert = _offsets(md, pos, ninsert, what)
    pos += 2 * ninsert
    if pos + ninsert > len(md):
        raise InvalidRecord(f"{what}: page selectors at {pos} run past the main data's {len(md)} bytes")
    select = md[pos:pos + ninsert]
    pos += ninsert
    inner_size = S.inner_size(md, pos, what)
    view = memoryview(md)
    role = blk.block_id
    if role == 2:
        page = _init(ctx, blk, lsn, S.SPGIST_NULLS if nulls else 0) if init_inner else _read(ctx, blk, lsn)
        if page is None:
            return
        S.add_or_replace(page, off_inner, view[pos:pos + inner_size])
        if inner_is_parent:
            S.update_node_link(page, off_parent, node, inner_blkno, off_inner)
    elif role == 3:
        page = _read(ctx, blk, lsn)
        if page is None:
            return
        S.update_node_link(page, off_parent, node, inner_blkno, off_inner)
    elif role in (0, 1):
        if role == 0 and root_split:
            return  # a root split touches the root only as the new inner page
        init = init_src if role == 0 else init_dest
        page = _init(ctx, blk, lsn, _leaf_flags(nulls)) if init else _read(ctx, blk, lsn)
        if page is None:
            return
        if role == 0 and not init:
            if is_build:
                S.multi_delete(page, to_delete, S.SPGIST_PLACEHOLDER, S.SPGIST_PLACEHOLDER)
            else:
                S.multi_delete(page, to_delete, S.SPGIST_REDIRECT, S.SPGIST_PLACEHOLDER, inner_blkno, off_inner,
                               xid)
        pos += inner_size
        for i, offnum in enumerate(to_insert):
            size = S.leaf_size(md, pos, what)
            if (select[i] != 0) == (role == 1):
                S.add_or_replace(page, offnum, view[pos:pos + size])
            pos += size
    else:
        return
    finish(page, lsn)


# --- VACUUM_LEAF, VACUUM_ROOT, VACUUM_REDIRECT ---------------------------------------------------

def _vacuum_leaf(ctx: RedoContext, rec: DecodedRecord, blk: BlockRef, lsn: int) -> None:
    what = "SPGist/VACUUM_LEAF"
    ndead, nplaceholder, nmove, nchain, _xid, _build = _header(rec, _VACUUM_LEAF, what)
    if blk.block_id != 0:
        return
    md = rec.main_data
    pos = _VACUUM_LEAF.size
    arrays = []
    for n in (ndead, nplaceholder, nmove, nmove, nchain, nchain):
        arrays.append(_offsets(md, pos, n, what))
        pos += 2 * n
    to_dead, to_placeholder, move_src, move_dest, chain_src, chain_dest = arrays
    page = _read(ctx, blk, lsn)
    if page is None:
        return
    S.multi_delete(page, to_dead, S.SPGIST_DEAD, S.SPGIST_DEAD)
    S.multi_delete(page, to_placeholder, S.SPGIST_PLACEHOLDER, S.SPGIST_PLACEHOLDER)
    # a live tuple moves into the slot of a chain head by swapping line pointers; its old slot (now
    # holding the deleted head's pointer) becomes a placeholder
    S.check_offsets(page, move_src)
    S.check_offsets(page, move_dest)
    for a, b in zip(move_src, move_dest):
        S.swap_line_pointers(page, a, b)
    S.multi_delete(page, move_src, S.SPGIST_PLACEHOLDER, S.SPGIST_PLACEHOLDER)
    for a, b in zip(chain_src, chain_dest):
        S.set_next_offset(page, a, b)
    finish(page, lsn)


def _vacuum_root(ctx: RedoContext, rec: DecodedRecord, blk: BlockRef, lsn: int) -> None:
    what = "SPGist/VACUUM_ROOT"
    ndelete, _xid, _build = _header(rec, _VACUUM_ROOT, what)
    if blk.block_id != 0:
        return
    to_delete = _offsets(rec.main_data, _VACUUM_ROOT.size, ndelete, what)
    page = _read(ctx, blk, lsn)
    if page is None:
        return
    IP.multi_delete(page, to_delete)
    finish(page, lsn)


def _vacuum_redirect(ctx: RedoContext, rec: DecodedRecord, blk: BlockRef, lsn: int) -> None:
    what = "SPGist/VACUUM_REDIRECT"
    nto, first_placeholder, _newest_xid = _header(rec, _VACUUM_REDIRECT, what)
    if blk.block_id != 0:
        return
    offsets = _offsets(rec.main_data, _VACUUM_REDIRECT.size, nto, what)
    page = _read(ctx, blk, lsn)
    if page is None:
        return
    for offnum in offsets:
        S.redirect_to_placeholder(page, offnum)
    S.add_counts(page, -nto, nto)
    if first_placeholder:
        maxoff = IP.items(page)
        if first_placeholder > maxoff + 1:
            raise InvalidRecord(f"{what}: first placeholder {first_placeholder} beyond the {maxoff} items")
        S.add_counts(page, 0, -(maxoff - first_placeholder + 1))
        IP.multi_delete(page, range(first_placeholder, maxoff + 1))
    finish(page, lsn)


_REDO: dict[int, Callable[[RedoContext, DecodedRecord, BlockRef, int], None]] = {
    XLOG_SPGIST_ADD_LEAF: _add_leaf, XLOG_SPGIST_MOVE_LEAFS: _move_leafs, XLOG_SPGIST_ADD_NODE: _add_node,
    XLOG_SPGIST_SPLIT_TUPLE: _split_tuple, XLOG_SPGIST_PICKSPLIT: _picksplit,
    XLOG_SPGIST_VACUUM_LEAF: _vacuum_leaf, XLOG_SPGIST_VACUUM_ROOT: _vacuum_root,
    XLOG_SPGIST_VACUUM_REDIRECT: _vacuum_redirect,
}


def redo(ctx: RedoContext, rec: DecodedRecord, lsn: int) -> None:
    """Replay an SP-GiST record onto ``ctx.page`` (the page ``ctx.tag``), in the role of the record's
    block that names it. Raises :class:`UnsupportedRecord` for an unknown info code,
    :class:`BlockNotReferenced` when no block names the page, :class:`InvalidRecord` /
    :class:`InvalidPage` as the module docstring says."""
    fn = _REDO.get(rec.info & 0xF0)
    if fn is None:
        raise unsupported(rec, NAME)
    blk = referenced_block(ctx, rec, record_name(rec.info))
    page = ctx.page
    if page is not None and ctx.checked and _ITEMS.pending(ctx):
        # a base image (its header already checked): refuse a corrupt one even where this record leaves
        # the page alone
        _ITEMS.run(ctx, page)
    fn(ctx, rec, blk, lsn)


def mask(page: bytearray, blkno: int) -> None:
    """PostgreSQL 15's ``spg_mask`` in place: LSN and checksum, hint bits (pd_prune_xid, PD_PAGE_FULL,
    PD_HAS_FREE_LINES, PD_ALL_VISIBLE), and the hole between pd_lower and pd_upper when pd_lower >=
    SizeOfPageHeaderData (15's test; an all-zero page keeps its zero hole). Tuple bytes, their padding,
    the line pointers and the opaque counters are compared."""
    S.spg_mask(page)


def record_name(info: int) -> str:
    """``SPGist/ADD_LEAF``-style, as pg_waldump prints it (``SPGist/UNKNOWN (90)`` for unknown codes)."""
    op = info & 0xF0
    name = OP_NAMES.get(op)
    return f"{NAME}/{name}" if name is not None else f"{NAME}/UNKNOWN ({op:X})"
