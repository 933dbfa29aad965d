"""Redo of PostgreSQL 15 GIN records (``access/gin/ginxlog.c``) for one page, and ``gin_mask``.

Every GIN page ends with an 8-byte special space (``GinPageOpaqueData``: u32 rightlink, u16 maxoff, u16
flags — GIN_DATA 0x01, LEAF 0x02, DELETED 0x04, META 0x08, LIST 0x10, LIST_FULLROW 0x20,
INCOMPLETE_SPLIT 0x40, COMPRESSED 0x80). Entry-tree and pending-list pages hold index tuples behind line
pointers; posting-tree (data) pages keep their content from offset 32 (after a 6-byte right bound): leaf
pages compressed posting lists (:mod:`.gin_posting`), internal pages an array of 10-byte PostingItems
(u16 child bi_hi, u16 child bi_lo, 6-byte key item pointer), ``maxoff`` of them; on both pd_lower marks the
end of the content. The metapage (block 0) holds ``GinMetaPageData`` (56 bytes) at offset 24, pd_lower 80.

Records (main data ``M``, block data ``B<n>``), and what is done to the page when it is block n:

    CREATE_PTREE 0x10   M: u32 size, a posting list of that size. Block 0 (WILL_INIT): a compressed data
                        leaf with that list.
    INSERT 0x20         M: u16 flags (ISDATA 0x01, ISLEAF 0x02); when not a leaf, two BlockIdData (left
                        and right child whose split this insert finishes). Block 0: entry tree — B0 is u16
                        offset, u8 isDelete, pad, an index tuple: on an internal page the downlink of the
                        tuple at offset becomes the right child, with isDelete the tuple at offset is
                        removed, then the tuple is added at offset; data leaf — B0 is recompression actions;
                        data internal — B0 is u16 offset, a PostingItem: the item at offset gets the right
                        child's block, the new item is inserted there. Block 1 (only when not a leaf): the
                        child's INCOMPLETE_SPLIT flag is cleared.
    SPLIT 0x30          M: RelFileNode, rrlink, left/right child, u16 flags (ISDATA, ISLEAF, ROOT 0x04).
                        Blocks 0 and 1 (left, right) and 2 (root split) must carry images, which are
                        restored; block 3 (not a leaf) gets INCOMPLETE_SPLIT cleared.
    VACUUM_PAGE 0x40    Block 0 must carry an image, which is restored.
    DELETE_PAGE 0x50    M: u16 parentOffset, pad, u32 rightLink, u32 deleteXid. Block 0 (deleted page):
                        flags |= DELETED, pd_prune_xid = deleteXid; block 1 (parent, data internal): the
                        PostingItem at parentOffset is removed; block 2 (left sibling): rightlink =
                        rightLink.
    UPDATE_META_PAGE 0x60 M: RelFileNode, pad, GinMetaPageData, u32 prevTail, u32 newRightlink,
                        i32 ntuples. Block 0 (WILL_INIT): a fresh metapage with that metadata. Block 1:
                        with ntuples > 0 the pending list's tail page gets the ntuples index tuples of B1
                        appended and maxoff (its heap tuple count) + 1; else, when prevTail is valid, the
                        old tail's rightlink becomes newRightlink.
    INSERT_LISTPAGE 0x70 M: u32 rightlink, i32 ntuples. Block 0 (WILL_INIT): a fresh list page with that
                        rightlink (none: LIST_FULLROW and maxoff 1, else maxoff 0) and the tuples of B0.
    VACUUM_DATA_LEAF_PAGE 0x90 Block 0: B0 is recompression actions for the data leaf.
    DELETE_LISTPAGE 0x80 M: GinMetaPageData, i32 ndeleted. Block 0 (WILL_INIT): a fresh metapage with that
                        metadata; blocks 1..ndeleted (WILL_INIT): empty DELETED pages.

As in PostgreSQL, the metapage and list-page initializations ignore the page's LSN, SPLIT and VACUUM_PAGE
only restore images, and a block the record's flags say is not used (block 1 of a leaf INSERT, block 3 of
a leaf SPLIT, block 1 of UPDATE_META_PAGE without tuples or previous tail, blocks past ndeleted) is left
alone. Where PostgreSQL only asserts (the page type a record expects, offsets, order of segment actions),
this refuses the record, and the line pointers of an entry or list page are checked before each redo, so
a bad record or page never yields a page with out-of-place content.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from . import gin_posting as GP
from .bufmgr import (
    BLK_RESTORED,
    RedoContext,
    finish,
    init_for_redo,
    main_struct,
    page_for_redo,
    read_for_redo,
    referenced_block,
    unsupported,
)
from .errors import InvalidPage, InvalidRecord
from .indexpage import add_item, check_line_pointers, delete_item, item_span
from .mask import mask_page_hint_bits, mask_page_lsn_and_checksum, mask_unused_space
from .page import BLCKSZ, OFF_LOWER, OFF_PRUNE_XID, OFF_SPECIAL, OFF_UPPER, SIZE_OF_PAGE_HEADER, U16, U32, page_init
from .xlogrecord import BlockRef, DecodedRecord

RM_ID = 13
NAME = "Gin"

XLOG_GIN_CREATE_PTREE = 0x10
XLOG_GIN_INSERT = 0x20
XLOG_GIN_SPLIT = 0x30
XLOG_GIN_VACUUM_PAGE = 0x40
XLOG_GIN_DELETE_PAGE = 0x50
XLOG_GIN_UPDATE_META_PAGE = 0x60
XLOG_GIN_INSERT_LISTPAGE = 0x70
XLOG_GIN_DELETE_LISTPAGE = 0x80
XLOG_GIN_VACUUM_DATA_LEAF_PAGE = 0x90
OP_NAMES = {
    XLOG_GIN_CREATE_PTREE: "CREATE_PTREE", XLOG_GIN_INSERT: "INSERT", XLOG_GIN_SPLIT: "SPLIT",
    XLOG_GIN_VACUUM_PAGE: "VACUUM_PAGE", XLOG_GIN_VACUUM_DATA_LEAF_PAGE: "VACUUM_DATA_LEAF_PAGE",
    XLOG_GIN_DELETE_PAGE: "DELETE_PAGE", XLOG_GIN_UPDATE_META_PAGE: "UPDATE_META_PAGE",
    XLOG_GIN_INSERT_LISTPAGE: "INSERT_LISTPAGE", XLOG_GIN_DELETE_LISTPAGE: "DELETE_LISTPAGE",
}

GIN_DATA = 0x01
GIN_LEAF = 0x02
GIN_DELETED = 0x04
GIN_META = 0x08
GIN_LIST = 0x10
GIN_LIST_FULLROW = 0x20
GIN_INCOMPLETE_SPLIT = 0x40
GIN_COMPRESSED = 0x80

GIN_INSERT_ISDATA = 0x01
GIN_INSERT_ISLEAF = 0x02
GIN_SPLIT_ROOT = 0x04

INVALID_BLOCK = 0xFFFFFFFF
OPAQUE_SIZE = 8
SPECIAL = BLCKSZ - OPAQUE_SIZE  # where GinInitPage puts the special space
META_SIZE = 56  # sizeof(GinMetaPageData)
META_LOWER = SIZE_OF_PAGE_HEADER + META_SIZE
DATA_START = GP.DATA_START
POSTING_ITEM = 10  # sizeof(PostingItem)
INDEX_SIZE_MASK = 0x1FFF

OPAQUE = GP.OPAQUE  # rightlink, maxoff, flags
_FLAGS = struct.Struct("<H")
_INSERT_MAIN = struct.Struct("<H")
_INSERT_CHILDREN = struct.Struct("<HHHHH")  # flags, left child bi_hi/bi_lo, right child bi_hi/bi_lo
_ENTRY_HEAD = struct.Struct("<HB")  # offset, isDelete (the tuple follows at 4)
_DATA_INTERNAL = struct.Struct("<H")  # offset (the 10-byte PostingItem follows)
_BLOCKID = struct.Struct("<HH")
_SPLIT_MAIN = struct.Struct("<12xIIIH")  # node, rrlink, left child, right child, flags
_CREATE_PTREE = struct.Struct("<I")
_DELETE_PAGE = struct.Struct("<H2xII")
_UPDATE_META = struct.Struct(f"<12x4x{META_SIZE}sIIi")  # node, pad, metadata, prevTail, newRightlink, ntuples
_INSERT_LISTPAGE = struct.Struct("<Ii")
_DELETE_LISTPAGE = struct.Struct(f"<{META_SIZE}si")
# GinInitMetabuffer's metadata: no pending list, no statistics, GIN_CURRENT_VERSION 2


# --- page helpers --------------------------------------------------------------------------------

def _special(page: bytearray) -> int:
    """Where the GIN opaque data is (pd_special), checked to hold 8 bytes inside the page."""
    special: int = U16.unpack_from(page, OFF_SPECIAL)[0]
    if special > SPECIAL:
        raise InvalidPage(f"GIN page has pd_special {special}: no room for its opaque data")
    return special


def _init_page(page: bytearray, flags: int) -> None:
    """GinInitPage: an empty page with an 8-byte special space, the flags, no right link, maxoff 0."""
    page_init(page, OPAQUE_SIZE)
    OPAQUE.pack_into(page, SPECIAL, INVALID_BLOCK, 0, flags)


def _init_for_redo(ctx: RedoContext, blk: BlockRef, lsn: int) -> bytearray:
    """XLogInitBufferForRedo: the page to initialize, whatever its LSN (an image, if any, is restored first
    and then overwritten, as in PostgreSQL)."""
    page = init_for_redo(ctx, blk, lsn)
    ctx.checked = True  # the caller initializes it
    return page


def _init_metapage(page: bytearray, metadata: bytes) -> None:
    """GinInitMetabuffer, then the record's metadata copied over."""
    _init_page(page, GIN_META)
    page[SIZE_OF_PAGE_HEADER:META_LOWER] = metadata
    U16.pack_into(page, OFF_LOWER, META_LOWER)


def _data_page(page: bytearray, leaf: bool, name: str) -> int:
    """The special offset of a posting-tree page of the kind the record expects. Raises
    :class:`InvalidRecord` when the page is of another kind (PostgreSQL asserts it)."""
    special = _special(page)
    flags = OPAQUE.unpack_from(page, special)[2]
    if not flags & GIN_DATA or bool(flags & GIN_LEAF) != leaf:
        raise InvalidRecord(f"{name}: page flags {flags:#06x} are not those of a posting tree "
                            f"{'leaf' if leaf else 'internal'} page")
    return special


def _any_data_page(page: bytearray, name: str) -> int:
    """The special offset of a posting-tree page, leaf or not (PostgreSQL asserts GinPageIsData)."""
    special = _special(page)
    flags = OPAQUE.unpack_from(page, special)[2]
    if not flags & GIN_DATA:
        raise InvalidRecord(f"{name}: page flags {flags:#06x} are not those of a posting tree page")
    return special


def _add_tuples(page: bytearray, payload: bytes, ntuples: int, off: int, name: str) -> None:
    """Add ``ntuples`` index tuples laid end to end in ``payload`` at offsets off, off+1, …"""
    pos = 0
    n = len(payload)
    for _ in range(ntuples):
        if pos + 8 > n:
            raise InvalidRecord(f"{name}: tuple data is truncated")
        size = U16.unpack_from(payload, pos + 6)[0] & INDEX_SIZE_MASK
        if size < 8 or pos + size > n:
            raise InvalidRecord(f"{name}: tuple of {size} bytes does not fit the record data")
        add_item(page, payload[pos:pos + size], off)
        pos += size
        off += 1
    if pos != n:
        raise InvalidRecord(f"{name}: {n - pos} bytes of tuple data left over")


def _page(ctx: RedoContext, blk: BlockRef, lsn: int) -> bytearray | None:
    """page_for_redo; on a page with line pointers (an entry or list page) they are checked first: redo
    passes the pointers it does not move through unchanged, so a bad one would survive into the result.
    Raises :class:`InvalidPage` for a pointer outside the tuple space."""
    page = page_for_redo(ctx, blk, lsn)
    if page is not None and not OPAQUE.unpack_from(page, _special(page))[2] & (GIN_DATA | GIN_META):
        check_line_pointers(page, "GIN page")
    return page


def _clear_incomplete_split(ctx: RedoContext, blk: BlockRef, lsn: int) -> None:
    page = _page(ctx, blk, lsn)
    if page is None:
        return
    special = _special(page)
    flags = OPAQUE.unpack_from(page, special)[2]
    _FLAGS.pack_into(page, special + 6, flags & ~GIN_INCOMPLETE_SPLIT)
    finish(page, lsn)


def _require(rec: DecodedRecord, ids: range | tuple[int, ...], name: str) -> None:
    """PostgreSQL reads these blocks; a record without them is refused whichever page is rebuilt."""
    for i in ids:
        if i not in rec.blocks:
            raise InvalidRecord(f"{name}: block {i} is missing")


# --- the records -----------------------------------------------------------------------------------

def _create_ptree(ctx: RedoContext, rec: DecodedRecord, blk: BlockRef, lsn: int, name: str) -> None:
    if blk.block_id != 0:
        return
    (size,) = main_struct(rec, _CREATE_PTREE, name)
    md = rec.main_data
    if size > SPECIAL - DATA_START or 4 + size > len(md):
        raise InvalidRecord(f"{name}: posting list of {size} bytes does not fit the record or a page")
    page = _init_for_redo(ctx, blk, lsn)
    _init_page(page, GIN_DATA | GIN_LEAF | GIN_COMPRESSED)
    page[DATA_START:DATA_START + size] = md[4:4 + size]
    U16.pack_into(page, OFF_LOWER, DATA_START + size)
    finish(page, lsn)


def _insert_entry(page: bytearray, payload: bytes, rightblkno: int) -> None:
    if len(payload) < 4 + 8:
        raise InvalidRecord("Gin/INSERT: entry insert data is truncated")
    offset, is_delete = _ENTRY_HEAD.unpack_from(payload)
    flags = OPAQUE.unpack_from(page, _special(page))[2]
    if flags & GIN_DATA:
        raise InvalidRecord(f"Gin/INSERT: entry insert into a posting tree page (flags {flags:#06x})")
    if rightblkno != INVALID_BLOCK:
        off, length = item_span(page, offset)
        if length < 6:
            raise InvalidPage(f"GIN entry tuple {offset} is too short for a downlink")
        struct.pack_into("<HHH", page, off, rightblkno >> 16, rightblkno & 0xFFFF, 0)
    if is_delete:
        delete_item(page, offset)
    size = U16.unpack_from(payload, 4 + 6)[0] & INDEX_SIZE_MASK
    if size < 8 or 4 + size > len(payload):
        raise InvalidRecord(f"Gin/INSERT: entry tuple of {size} bytes does not fit the record data")
    add_item(page, payload[4:4 + size], offset)


def _insert_data_internal(page: bytearray, payload: bytes, rightblkno: int) -> None:
    special = _data_page(page, False, "Gin/INSERT")
    if len(payload) < 2 + POSTING_ITEM:
        raise InvalidRecord("Gin/INSERT: posting item insert data is truncated")
    (offset,) = _DATA_INTERNAL.unpack_from(payload)
    rightlink, maxoff, flags = OPAQUE.unpack_from(page, special)
    if offset < 1 or offset > maxoff + 1:
        raise InvalidRecord(f"Gin/INSERT: posting item offset {offset} outside 1..{maxoff + 1}")
    end = DATA_START + (maxoff + 1) * POSTING_ITEM
    if end > U16.unpack_from(page, OFF_UPPER)[0] or end > special:
        raise InvalidRecord(f"Gin/INSERT: no room for posting item {maxoff + 1}")
    pos = DATA_START + (offset - 1) * POSTING_ITEM
    _BLOCKID.pack_into(page, pos, rightblkno >> 16, rightblkno & 0xFFFF)
    if offset <= maxoff:
        page[pos + POSTING_ITEM:end] = page[pos:end - POSTING_ITEM]
    page[pos:pos + POSTING_ITEM] = payload[2:2 + POSTING_ITEM]
    OPAQUE.pack_into(page, special, rightlink, maxoff + 1, flags)
    U16.pack_into(page, OFF_LOWER, end)


def _insert(ctx: RedoContext, rec: DecodedRecord, blk: BlockRef, lsn: int, name: str) -> None:
    (flags,) = main_struct(rec, _INSERT_MAIN, name)
    leaf = bool(flags & GIN_INSERT_ISLEAF)
    rightblkno = INVALID_BLOCK
    if not leaf:
        _f, _lhi, _llo, rhi, rlo = main_struct(rec, _INSERT_CHILDREN, name)
        rightblkno = rhi << 16 | rlo
        _require(rec, (0, 1), name)
    if blk.block_id == 1:
        if not leaf:
            _clear_incomplete_split(ctx, blk, lsn)
        return
    if blk.block_id != 0:
        return
    page = _page(ctx, blk, lsn)
    if page is None:
        return
    payload = blk.data or b""
    if flags & GIN_INSERT_ISDATA:
        if leaf:
            _data_page(page, True, name)
            GP.recompress(page, payload, 0)
        else:
            _insert_data_internal(page, payload, rightblkno)
    else:
        _insert_entry(page, payload, rightblkno)
    finish(page, lsn)


def _split(ctx: RedoContext, rec: DecodedRecord, blk: BlockRef, lsn: int, name: str) -> None:
    _rrlink, _lchild, _rchild, flags = main_struct(rec, _SPLIT_MAIN, name)
    images = (0, 1, 2) if flags & GIN_SPLIT_ROOT else (0, 1)
    leaf = bool(flags & GIN_INSERT_ISLEAF)
    _require(rec, images if leaf else images + (3,), name)
    for i in images:
        if not rec.blocks[i].apply_image:
            raise InvalidRecord(f"GIN split record did not contain a full-page image of block {i}")
    if blk.block_id == 3:
        if not leaf:
            _clear_incomplete_split(ctx, blk, lsn)
    elif blk.block_id in images:
        read_for_redo(ctx, blk, lsn)


def _vacuum_page(ctx: RedoContext, rec: DecodedRecord, blk: BlockRef, lsn: int, name: str) -> None:
    if blk.block_id != 0:
        return
    if read_for_redo(ctx, blk, lsn) != BLK_RESTORED:
        raise InvalidRecord("replay of gin entry tree page vacuum did not restore the page")


def _vacuum_data_leaf(ctx: RedoContext, rec: DecodedRecord, blk: BlockRef, lsn: int, name: str) -> None:
    if blk.block_id != 0:
        return
    page = _page(ctx, blk, lsn)
    if page is None:
        return
    _data_page(page, True, name)
    GP.recompress(page, blk.data or b"", 0)
    finish(page, lsn)


def _delete_page(ctx: RedoContext, rec: DecodedRecord, blk: BlockRef, lsn: int, name: str) -> None:
    parent_offset, right_link, delete_xid = main_struct(rec, _DELETE_PAGE, name)
    _require(rec, (0, 1, 2), name)
    if blk.block_id > 2:
        return
    page = _page(ctx, blk, lsn)
    if page is None:
        return
    if blk.block_id == 2:
        special = _any_data_page(page, name)
        U32.pack_into(page, special, right_link)
    elif blk.block_id == 0:
        special = _any_data_page(page, name)
        flags = OPAQUE.unpack_from(page, special)[2]
        _FLAGS.pack_into(page, special + 6, flags | GIN_DELETED)
        U32.pack_into(page, OFF_PRUNE_XID, delete_xid)
    else:
        special = _data_page(page, False, name)
        rightlink, maxoff, flags = OPAQUE.unpack_from(page, special)
        if parent_offset < 1 or parent_offset > maxoff:
            raise InvalidRecord(f"{name}: posting item {parent_offset} outside 1..{maxoff}")
        end = DATA_START + maxoff * POSTING_ITEM
        if end > special:
            raise InvalidPage(f"GIN internal data page claims {maxoff} posting items, more than fit")
        pos = DATA_START + (parent_offset - 1) * POSTING_ITEM
        page[pos:end - POSTING_ITEM] = page[pos + POSTING_ITEM:end]
        OPAQUE.pack_into(page, special, rightlink, maxoff - 1, flags)
        U16.pack_into(page, OFF_LOWER, end - POSTING_ITEM)
    finish(page, lsn)


def _update_meta(ctx: RedoContext, rec: DecodedRecord, blk: BlockRef, lsn: int, name: str) -> None:
    metadata, prev_tail, new_rightlink, ntuples = main_struct(rec, _UPDATE_META, name)
    uses_tail = ntuples > 0 or prev_tail != INVALID_BLOCK
    _require(rec, (0, 1) if uses_tail else (0,), name)
    if blk.block_id == 0:
        meta = _init_for_redo(ctx, blk, lsn)
        _init_metapage(meta, metadata)
        finish(meta, lsn)
        return
    if blk.block_id != 1 or not uses_tail:
        return
    page = _page(ctx, blk, lsn)
    if page is None:
        return
    special = _special(page)
    if ntuples > 0:
        if OPAQUE.unpack_from(page, special)[2] & GIN_DATA:
            raise InvalidRecord(f"{name}: the pending list's tail is a posting tree page")
        lower = U16.unpack_from(page, OFF_LOWER)[0]
        off = 1 if lower <= SIZE_OF_PAGE_HEADER else ((lower - SIZE_OF_PAGE_HEADER) >> 2) + 1
        _add_tuples(page, blk.data or b"", ntuples, off, name)
        rightlink, maxoff, flags = OPAQUE.unpack_from(page, special)
        OPAQUE.pack_into(page, special, rightlink, (maxoff + 1) & 0xFFFF, flags)
    else:
        U32.pack_into(page, special, new_rightlink)
    finish(page, lsn)


def _insert_listpage(ctx: RedoContext, rec: DecodedRecord, blk: BlockRef, lsn: int, name: str) -> None:
    if blk.block_id != 0:
        return
    rightlink, ntuples = main_struct(rec, _INSERT_LISTPAGE, name)
    page = _init_for_redo(ctx, blk, lsn)
    if rightlink == INVALID_BLOCK:
        _init_page(page, GIN_LIST | GIN_LIST_FULLROW)
        OPAQUE.pack_into(page, SPECIAL, rightlink, 1, GIN_LIST | GIN_LIST_FULLROW)
    else:
        _init_page(page, GIN_LIST)
        OPAQUE.pack_into(page, SPECIAL, rightlink, 0, GIN_LIST)
    _add_tuples(page, blk.data or b"", ntuples, 1, name)
    finish(page, lsn)


def _delete_listpage(ctx: RedoContext, rec: DecodedRecord, blk: BlockRef, lsn: int, name: str) -> None:
    metadata, ndeleted = main_struct(rec, _DELETE_LISTPAGE, name)
    _require(rec, range(max(ndeleted, 0) + 1), name)
    if blk.block_id == 0:
        page = _init_for_redo(ctx, blk, lsn)
        _init_metapage(page, metadata)
    elif blk.block_id <= ndeleted:
        page = _init_for_redo(ctx, blk, lsn)
        _init_page(page, GIN_DELETED)
    else:
        return
    finish(page, lsn)


_Handler = Callable[[RedoContext, DecodedRecord, BlockRef, int, str], None]
_HANDLERS: dict[int, _Handler] = {
    XLOG_GIN_CREATE_PTREE: _create_ptree, XLOG_GIN_INSERT: _insert, XLOG_GIN_SPLIT: _split,
    XLOG_GIN_VACUUM_PAGE: _vacuum_page, XLOG_GIN_VACUUM_DATA_LEAF_PAGE: _vacuum_data_leaf,
    XLOG_GIN_DELETE_PAGE: _delete_page, XLOG_GIN_UPDATE_META_PAGE: _update_meta,
    XLOG_GIN_INSERT_LISTPAGE: _insert_listpage, XLOG_GIN_DELETE_LISTPAGE: _delete_listpage,
}


def redo(ctx: RedoContext, rec: DecodedRecord, lsn: int) -> None:
    """Replay a GIN record onto the requested page (see the module docstring). Raises
    :class:`UnsupportedRecord` for an unknown info code, :class:`BlockNotReferenced` when the record does
    not touch the page, :class:`InvalidRecord` / :class:`InvalidPage` when record and page disagree."""
    op = rec.info & 0xF0
    handler = _HANDLERS.get(op)
    if handler is None:
        raise unsupported(rec, NAME)
    name = f"{NAME}/{OP_NAMES[op]}"
    blk = referenced_block(ctx, rec, name)
    if 0 not in rec.blocks:
        raise InvalidRecord(f"{name}: block 0 is missing")  # every GIN redo reads block 0
    handler(ctx, rec, blk, lsn, name)


def mask(page: bytearray, blkno: int) -> None:
    """PostgreSQL's ``gin_mask`` in place: LSN and checksum, the page hint bits, then for a DELETED page
    everything after the page header (pd_lower and pd_upper too), else the hole when pd_lower is past the
    header.

    Stricter than PostgreSQL in two places, where GIN leaves no room for an unlogged change: pd_prune_xid
    (GIN uses it only for a deleted page's deleteXid, which DELETE_PAGE logs) is compared, and so are the
    opaque flags of a deleted page (both the primary and redo set exactly GIN_DELETED, or add it to the
    data page's flags); the rest of a deleted page is masked as PostgreSQL does, because the primary keeps a
    deleted list page's old tuples and links while redo empties it.
    """
    mask_page_lsn_and_checksum(page)
    prune_xid = U32.unpack_from(page, OFF_PRUNE_XID)[0]
    mask_page_hint_bits(page)
    U32.pack_into(page, OFF_PRUNE_XID, prune_xid)
    special = U16.unpack_from(page, OFF_SPECIAL)[0]
    if special > SPECIAL:
        raise InvalidPage(f"GIN page has pd_special {special}: no room for its opaque data")
    flags = _FLAGS.unpack_from(page, special + 6)[0]
    if flags & GIN_DELETED:
        page[SIZE_OF_PAGE_HEADER:] = bytes(BLCKSZ - SIZE_OF_PAGE_HEADER)
        U32.pack_into(page, OFF_LOWER, 0)  # pd_lower and pd_upper
        _FLAGS.pack_into(page, special + 6, flags)
    elif U16.unpack_from(page, OFF_LOWER)[0] > SIZE_OF_PAGE_HEADER:
        mask_unused_space(page)


def record_name(info: int) -> str:
    """``Gin/OPERATION`` as pg_waldump prints it (GIN records carry no flags in their info byte)."""
    op = info & 0xF0
    return f"{NAME}/" + OP_NAMES.get(op, f"UNKNOWN ({op:x})")
