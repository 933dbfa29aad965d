"""Redo of PostgreSQL 15 GiST records (``access/gist/gistxlog.c``) for one page, and ``gist_mask``.

Each info code, and what it does to the page being rebuilt (``ctx.tag``; the record's other blocks are
left alone):

* ``PAGE_UPDATE`` (0x00) — block 0, the updated page: one-for-one replacement (exactly one offset to
  delete and one tuple to insert: PageIndexTupleOverwrite at that offset, as gistplacetopage does), or
  PageIndexMultiDelete of the listed offsets (marking a leaf F_TUPLES_DELETED) and then the new tuples
  appended after the last item. Block 1, the left half of a split whose downlink this record inserts:
  its NSN becomes the record's LSN and F_FOLLOW_RIGHT is cleared — also after restoring its image, since
  the primary changes the child only after taking the image.
* ``DELETE`` (0x10) — block 0, a leaf: PageIndexMultiDelete of the offsets in the main data (killed
  items removed before an insert), then F_HAS_GARBAGE cleared and F_TUPLES_DELETED set.
* ``PAGE_REUSE`` (0x20) — a standby snapshot-conflict point; no block references, no page touched.
* ``PAGE_SPLIT`` (0x30) — blocks 1..npage, the pages of the split (block 1 the original page, or the
  root in a root split): each re-initialised (F_LEAF when the split page was a leaf, except the root)
  and filled with the record's tuples; rightlinks chain the pages, the last gets the original rightlink
  (the root none); every page gets the original NSN; all but the last get F_FOLLOW_RIGHT when the record
  says so, unless it is a root split. Block 0, a left child whose downlink the split inserted: as
  PAGE_UPDATE's block 1.
* ``PAGE_DELETE`` (0x60) — block 0, an empty leaf: F_DELETED, the deleteXid (a FullTransactionId)
  stored after the page header and pd_lower set past it. Block 1, the parent: PageIndexTupleDelete of
  the downlink.
* ``ASSIGN_LSN`` (0x70) — a no-op record that only hands out an LSN; no block references.

Record layouts (``access/gistxlog.h`` of 15)::

    PAGE_UPDATE  main: u16 ntodelete, u16 ntoinsert
                 block 0 data: u16 todelete[ntodelete], then ntoinsert IndexTuples back to back
    DELETE       main: u32 latestRemovedXid, u16 ntodelete, u16 todelete[ntodelete]
    PAGE_REUSE   main: u32 spcNode, dbNode, relNode, u32 block, u64 latestRemovedFullXid
    PAGE_SPLIT   main: u32 origrlink, 4 pad, u64 orignsn, bool origleaf, pad, u16 npage,
                 bool markfollowright, 3 pad (24 bytes)
                 block i (1..npage, WILL_INIT) data: i32 ntuples, then the IndexTuples back to back
    PAGE_DELETE  main: u64 deleteXid, u16 downlinkOffset
    ASSIGN_LSN   main: i32 0

An IndexTuple's size is the low 13 bits of its u16 ``t_info`` at byte 6. The GiST special space
(GISTPageOpaqueData, 16 bytes at pd_special) is: u32 nsn xlogid, u32 nsn xrecoff, u32 rightlink,
u16 flags, u16 gist_page_id (0xFF81).

Where gistxlog.c only asserts (tuple counts matching ntoinsert, trailing bytes after a split page's
tuples, the page to delete being empty), this raises :class:`InvalidRecord`, so a malformed record never
yields a page PostgreSQL's debug build would refuse. Pages are refused (:class:`InvalidPage`) when their
pd_special is not GiST's (gistcheckpage's rule), when a page that came from outside has a line pointer
outside its tuple space (checked once per request and after an image restore), and when a record would
change the items of a deleted page (PostgreSQL never does; what pd_lower covers there is the deleteXid).
"""

from __future__ import annotations

import struct

from . import indexpage as IP
from . import page as P
from .bufmgr import (
    BLK_DONE,
    ItemCheck,
    RedoContext,
    finish,
    main_struct,
    page_for_redo,
    read_for_redo,
    referenced_block,
    unsupported,
)
from .errors import InvalidPage, InvalidRecord
from .mask import begin_index_mask, mask_lp_dead, mask_page_hint_bits, mask_unused_space
from .page import U16, U32, U64
from .xlogrecord import BlockRef, DecodedRecord

RM_ID = 14
NAME = "Gist"

XLOG_GIST_PAGE_UPDATE = 0x00
XLOG_GIST_DELETE = 0x10
XLOG_GIST_PAGE_REUSE = 0x20
XLOG_GIST_PAGE_SPLIT = 0x30
XLOG_GIST_PAGE_DELETE = 0x60
XLOG_GIST_ASSIGN_LSN = 0x70

OP_NAMES = {
    XLOG_GIST_PAGE_UPDATE: "PAGE_UPDATE",
    XLOG_GIST_DELETE: "DELETE",
    XLOG_GIST_PAGE_REUSE: "PAGE_REUSE",
    XLOG_GIST_PAGE_SPLIT: "PAGE_SPLIT",
    XLOG_GIST_PAGE_DELETE: "PAGE_DELETE",
    XLOG_GIST_ASSIGN_LSN: "ASSIGN_LSN",
}

_RECORD_NAMES = {op: f"{NAME}/{name}" for op, name in OP_NAMES.items()}

# GISTPageOpaqueData flags
F_LEAF = 1 << 0
F_DELETED = 1 << 1
F_TUPLES_DELETED = 1 << 2
F_FOLLOW_RIGHT = 1 << 3
F_HAS_GARBAGE = 1 << 4
GIST_PAGE_ID = 0xFF81
GIST_ROOT_BLKNO = 0
INVALID_BLOCK = 0xFFFFFFFF
SIZEOF_OPAQUE = 16
MAX_SPECIAL = P.BLCKSZ - SIZEOF_OPAQUE
INDEX_SIZE_MASK = 0x1FFF
SIZEOF_INDEX_TUPLE = 8  # IndexTupleData: ItemPointerData + t_info; every tuple is at least this long
DELETED_CONTENTS_END = P.SIZE_OF_PAGE_HEADER + 8  # pd_lower of a deleted page: header + FullTransactionId

_UPDATE = struct.Struct("<HH")
_DELETE = struct.Struct("<IH")  # SizeOfGistxlogDelete = 6: the offsets follow without padding
_SPLIT = struct.Struct("<I4xQBxHB3x")
_PAGE_DELETE = struct.Struct("<QH")  # SizeOfGistxlogPageDelete = 10
_OPAQUE = struct.Struct("<IIIHH")
_LU = struct.Struct("<HH")  # pd_lower, pd_upper
_LP_NORMAL_BITS = P.LP_NORMAL << 15
_NSN = struct.Struct("<II")
_FLAGS_AT = 12  # offset of flags inside the special space
_I32 = struct.Struct("<i")


def record_name(info: int) -> str:
    """``Gist/OPERATION`` as pg_waldump prints it (``Gist/0x40`` for an info code 15 does not know)."""
    op = info & 0xF0
    return f"{NAME}/{OP_NAMES.get(op, f'{op:#04x}')}"


# --- page helpers --------------------------------------------------------------------------------

def _special(page: bytearray) -> int:
    """pd_special, which must leave exactly GISTPageOpaqueData's 16 bytes (gistcheckpage's rule; the
    special space is where the redo writes flags, NSN and rightlink)."""
    special: int = P.U16.unpack_from(page, P.OFF_SPECIAL)[0]
    if special != MAX_SPECIAL:
        raise InvalidPage(f"not a GiST page: pd_special {special}, expected {MAX_SPECIAL}")
    return special


def _flags(page: bytearray, special: int) -> int:
    flags: int = U16.unpack_from(page, special + _FLAGS_AT)[0]
    return flags


def _set_flags(page: bytearray, special: int, flags: int) -> None:
    U16.pack_into(page, special + _FLAGS_AT, flags)


def _set_nsn(page: bytearray, special: int, nsn: int) -> None:
    _NSN.pack_into(page, special, (nsn >> 32) & 0xFFFFFFFF, nsn & 0xFFFFFFFF)


def init_page(page: bytearray, flags: int) -> None:
    """gistinitpage: an empty page with the GiST special space (no rightlink, NSN 0, the given flags)."""
    P.page_init(page, SIZEOF_OPAQUE)
    _OPAQUE.pack_into(page, MAX_SPECIAL, 0, 0, INVALID_BLOCK, flags, GIST_PAGE_ID)


def _check_items(page: bytearray, name: str) -> None:
    """Every line pointer with storage must lie inside pd_upper..pd_special. PostgreSQL's item operations
    only check the items they act on, so a corrupt page that came from outside (a base image, a restored
    image) would otherwise pass its bad pointers on. A deleted page has no items: what pd_lower covers
    is its deleteXid, and nothing more."""
    lower = P.get_lower(page)
    if _flags(page, _special(page)) & F_DELETED:
        if lower > DELETED_CONTENTS_END:
            raise InvalidPage(f"{name}: deleted GiST page with pd_lower {lower}")
        return
    IP.check_line_pointers(page, name)


_ITEMS = ItemCheck(_check_items)


def _page(ctx: RedoContext, blk: BlockRef, lsn: int, name: str) -> tuple[bytearray, int] | None:
    """XLogReadBufferForRedo for a redo that changes items: the page and its pd_special, or None (restored,
    or already past the record). The first time a request redoes its page its line pointers are checked
    (:func:`_check_items`). A deleted page is refused: PostgreSQL never changes the items of one (inserts
    and VACUUM skip it), and its "line pointers" are its deleteXid."""
    page = _ITEMS.page_for_redo(ctx, blk, lsn, name)
    if page is None:
        return None
    special = _special(page)
    if _flags(page, special) & F_DELETED:
        raise InvalidPage(f"{name}: block {blk.block_id} is a deleted GiST page")
    return page, special


def _tuples(data: bytes | memoryview, pos: int, count: int | None, name: str) -> list[memoryview]:
    """The IndexTuples of ``data`` from ``pos``: exactly ``count`` of them that end the data, or (None)
    as many as fill it. Raises :class:`InvalidRecord` for a size that is too small or runs past the
    data, or a count that does not match."""
    view = memoryview(data)
    end = len(view)
    out: list[memoryview] = []
    while pos < end and (count is None or len(out) < count):
        if pos + SIZEOF_INDEX_TUPLE > end:
            raise InvalidRecord(f"{name}: truncated index tuple at byte {pos} of {end}")
        size = U16.unpack_from(view, pos + 6)[0] & INDEX_SIZE_MASK
        if size < SIZEOF_INDEX_TUPLE or pos + size > end:
            raise InvalidRecord(f"{name}: index tuple of {size} bytes at byte {pos} of {end}")
        out.append(view[pos:pos + size])
        pos += size
    if pos != end or (count is not None and len(out) != count):
        raise InvalidRecord(f"{name}: {len(out)} index tuples in {end} bytes, expected {count}"
                            f" (stopped at byte {pos})")
    return out


def _offsets(data: bytes | memoryview, pos: int, n: int, name: str) -> tuple[int, ...]:
    if pos + 2 * n > len(data):
        raise InvalidRecord(f"{name}: {n} offsets do not fit in {len(data)} bytes")
    offs: tuple[int, ...] = struct.unpack_from(f"<{n}H", data, pos)
    return offs


def _append(page: bytearray, tuples: list[memoryview]) -> None:
    """gistfillbuffer from the end of the item array: PageAddItem at successive offsets."""
    off = IP.items(page) + 1
    for tup in tuples:
        IP.add_item(page, tup, off)
        off += 1


def _fill_new(page: bytearray, tuples: list[memoryview], name: str) -> None:
    """gistfillbuffer on a page just initialised: what PageAddItem at offsets 1, 2, … would write (each
    tuple below the previous one, MAXALIGNed, its padding left zero), placed in one pass."""
    n = len(tuples)
    if not n:
        return
    lower = P.SIZE_OF_PAGE_HEADER + P.SIZEOF_ITEMID * n
    upper = MAX_SPECIAL - sum((len(t) + 7) & ~7 for t in tuples)
    if upper < lower:
        raise InvalidRecord(f"{name}: {n} index tuples do not fit on a page")
    words = []
    pos = MAX_SPECIAL
    for tup in tuples:
        size = len(tup)
        pos -= (size + 7) & ~7
        page[pos:pos + size] = tup
        words.append(pos | _LP_NORMAL_BITS | size << 17)
    P.lp_array(n).pack_into(page, P.SIZE_OF_PAGE_HEADER, *words)
    _LU.pack_into(page, P.OFF_LOWER, lower, upper)


# --- redo ----------------------------------------------------------------------------------------

def _clear_follow_right(ctx: RedoContext, blk: BlockRef, lsn: int, name: str) -> None:
    """gistRedoClearFollowRight: NSN := LSN and F_FOLLOW_RIGHT cleared, on the page redone or restored."""
    fresh = _ITEMS.pending(ctx)
    if read_for_redo(ctx, blk, lsn) == BLK_DONE:
        return
    page = ctx.page
    assert page is not None
    if not ctx.checked:  # a restored image
        P.check_page(page)
        ctx.checked = True
    if fresh or blk.apply_image:
        _ITEMS.run(ctx, page, name)
    special = _special(page)
    _set_nsn(page, special, lsn)
    _set_flags(page, special, _flags(page, special) & ~F_FOLLOW_RIGHT)
    finish(page, lsn)


def _redo_page_update(ctx: RedoContext, rec: DecodedRecord, blk: BlockRef, lsn: int) -> None:
    name = f"{NAME}/PAGE_UPDATE"
    if blk.block_id == 1:
        _clear_follow_right(ctx, blk, lsn, name)
        return
    if blk.block_id != 0:
        return  # gistxlog.c reads only blocks 0 and 1
    got = _page(ctx, blk, lsn, name)
    if got is None:
        return
    page, special = got
    ntodelete, ntoinsert = main_struct(rec, _UPDATE, name)
    data = blk.data or b""
    if ntodelete == 1 and ntoinsert == 1:
        offnum = _offsets(data, 0, 1, name)[0]
        tuples = _tuples(data, 2, ntoinsert, name)
        IP.overwrite_item(page, offnum, tuples[0])
    else:
        todelete = _offsets(data, 0, ntodelete, name)
        tuples = _tuples(data, 2 * ntodelete, ntoinsert, name)
        if ntodelete:
            IP.multi_delete(page, todelete)
            flags = _flags(page, special)
            if flags & F_LEAF:
                _set_flags(page, special, flags | F_TUPLES_DELETED)
        _append(page, tuples)
    finish(page, lsn)


def _redo_delete(ctx: RedoContext, rec: DecodedRecord, blk: BlockRef, lsn: int) -> None:
    name = f"{NAME}/DELETE"
    if blk.block_id != 0:
        return
    got = _page(ctx, blk, lsn, name)
    if got is None:
        return
    page, special = got
    _xid, ntodelete = main_struct(rec, _DELETE, name)
    md = rec.main_data
    if len(md) > _DELETE.size:  # the offsets are in the main data, so they survive a full-page image
        IP.multi_delete(page, _offsets(md, _DELETE.size, ntodelete, name))
    _set_flags(page, special, (_flags(page, special) & ~F_HAS_GARBAGE) | F_TUPLES_DELETED)
    finish(page, lsn)


def _redo_page_split(ctx: RedoContext, rec: DecodedRecord, blk: BlockRef, lsn: int) -> None:
    name = f"{NAME}/PAGE_SPLIT"
    if blk.block_id == 0:
        _clear_follow_right(ctx, blk, lsn, name)
        return
    origrlink, orignsn, origleaf, npage, markfollowright = main_struct(rec, _SPLIT, name)
    i = blk.block_id - 1  # position of this page in the split
    if i >= npage:
        return  # not one of the pages the record lists: gistxlog.c never reads it
    blocks = rec.blocks
    # a root split is known once the loop reaches the root, which PostgreSQL always lists first
    rootsplit = False
    for j in range(1, i + 2):
        other = blocks.get(j)
        if other is None:
            raise InvalidRecord(f"{name}: page {j} of {npage} has no block reference")
        if other.blkno == GIST_ROOT_BLKNO:
            rootsplit = True
    if i < npage - 1:
        nxt = blocks.get(i + 2)
        if nxt is None:
            raise InvalidRecord(f"{name}: page {i + 2} of {npage} has no block reference")
        rightlink = nxt.blkno
    else:
        rightlink = origrlink
    data = blk.data or b""
    if len(data) < 4:
        raise InvalidRecord(f"{name}: block {blk.block_id} data has {len(data)} bytes, no tuple count")
    num = _I32.unpack_from(data)[0]
    if num < 0:
        raise InvalidRecord(f"{name}: block {blk.block_id} has {num} tuples")
    tuples = _tuples(data, 4, num, name)
    # XLogInitBufferForRedo: even a restored image is overwritten, as gistxlog.c ignores the outcome
    page = page_for_redo(ctx, blk, lsn, zero=True)
    if page is None:
        page = ctx.page
        assert page is not None
    isroot = blk.blkno == GIST_ROOT_BLKNO
    init_page(page, F_LEAF if origleaf and not isroot else 0)
    _fill_new(page, tuples, name)
    ctx.checked = True
    _ITEMS.done(ctx)  # a page built here has only the pointers just added
    flags = _flags(page, MAX_SPECIAL)
    if isroot:
        rightlink = INVALID_BLOCK
        flags &= ~F_FOLLOW_RIGHT
    elif i < npage - 1 and not rootsplit and markfollowright:
        flags |= F_FOLLOW_RIGHT
    else:
        flags &= ~F_FOLLOW_RIGHT
    _set_nsn(page, MAX_SPECIAL, orignsn)
    U32.pack_into(page, MAX_SPECIAL + 8, rightlink)
    _set_flags(page, MAX_SPECIAL, flags)
    finish(page, lsn)


def _redo_page_delete(ctx: RedoContext, rec: DecodedRecord, blk: BlockRef, lsn: int) -> None:
    name = f"{NAME}/PAGE_DELETE"
    if blk.block_id > 1:
        return
    got = _page(ctx, blk, lsn, name)
    if got is None:
        return
    page, special = got
    delete_xid, downlink = main_struct(rec, _PAGE_DELETE, name)
    if blk.block_id == 1:
        IP.delete_item(page, downlink)
        finish(page, lsn)
        return
    lower, upper = P.get_lower(page), P.get_upper(page)
    # GistPageSetDeleted asserts an empty page; on one that is not, it would write over line pointers
    if lower > P.SIZE_OF_PAGE_HEADER or upper < DELETED_CONTENTS_END:
        raise InvalidRecord(f"{name}: page to delete is not empty (pd_lower {lower}, pd_upper {upper})")
    _set_flags(page, special, _flags(page, special) | F_DELETED)
    U16.pack_into(page, P.OFF_LOWER, DELETED_CONTENTS_END)
    U64.pack_into(page, P.SIZE_OF_PAGE_HEADER, delete_xid)
    finish(page, lsn)


def redo(ctx: RedoContext, rec: DecodedRecord, lsn: int) -> None:
    """Replay a GiST record onto the page ``ctx.tag`` (see the module docstring).

    Raises :class:`UnsupportedRecord` for an info code 15 does not have, :class:`BlockNotReferenced` when
    the record does not reference the page (always for PAGE_REUSE and ASSIGN_LSN, which have no block
    references), :class:`InvalidRecord` / :class:`InvalidPage` when record and page do not fit.
    """
    op = rec.info & 0xF0
    if op not in OP_NAMES:
        raise unsupported(rec, NAME)
    blk = referenced_block(ctx, rec, _RECORD_NAMES[op])
    if op == XLOG_GIST_PAGE_UPDATE:
        _redo_page_update(ctx, rec, blk, lsn)
    elif op == XLOG_GIST_PAGE_SPLIT:
        _redo_page_split(ctx, rec, blk, lsn)
    elif op == XLOG_GIST_DELETE:
        _redo_delete(ctx, rec, blk, lsn)
    elif op == XLOG_GIST_PAGE_DELETE:
        _redo_page_delete(ctx, rec, blk, lsn)
    # PAGE_REUSE and ASSIGN_LSN change no page, even a (malformed) one they reference


# --- mask ----------------------------------------------------------------------------------------

def mask(page: bytearray, blkno: int) -> None:
    """PostgreSQL's ``gist_mask`` in place, slightly stricter.

    Masked as PostgreSQL does: pd_lsn and checksum, the page hint bits, the unused space, the NSN and
    F_FOLLOW_RIGHT (the primary sets both on a split's left child after the record's image is taken),
    F_HAS_GARBAGE (set by scans without WAL, never by redo).

    Less strict than PostgreSQL in one bit: F_TUPLES_DELETED on leaf pages. DELETE's redo sets it but the
    primary's gistprunepage does not (nothing in 15 reads the flag), so PostgreSQL's own redo differs from
    the primary's image there; redo here does what gistxlog.c does, and the bit is not compared on leaves
    (on inner pages, where nothing sets it, it still is).

    Stricter than PostgreSQL elsewhere: leaf line pointer flags, which scans change
    without WAL (LP_DEAD), PostgreSQL masks to LP_UNUSED whatever they are; here only LP_DEAD is read as
    LP_NORMAL, so an item that is unused or a redirect on one side only still differs. On a deleted page
    the "line pointers" are the deleteXid, which PostgreSQL's mask_lp_flags would partly wipe; here they
    are compared. An all-zero page is left as it is. Raises :class:`InvalidPage` for bounds it cannot
    mask or a special space that is not GiST's 16 bytes.
    """
    if not begin_index_mask(page):
        return
    mask_page_hint_bits(page)
    mask_unused_space(page)
    special = _special(page)
    _set_nsn(page, special, 0)
    flags = (_flags(page, special) | F_FOLLOW_RIGHT) & ~F_HAS_GARBAGE
    if flags & F_LEAF:
        flags &= ~F_TUPLES_DELETED
    _set_flags(page, special, flags)
    if flags & F_LEAF and not flags & F_DELETED:
        mask_lp_dead(page)
