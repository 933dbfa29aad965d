"""Buffer handling shared by every rmgr's redo: ``XLogReadBufferForRedoExtended`` for the one page rebuilt.

A walredo request rebuilds a single page (``RedoContext.tag``). Every rmgr module (heap, btree, BRIN, …)
reaches that page through the functions here, so the rules PostgreSQL's ``xlogutils.c`` applies to every
block of every record live in one place:

* a block image flagged "apply" is restored and its pd_lsn set to the record's end (unless the image is
  of a new, all-zero page), and the record's own redo for that block is skipped (BLK_RESTORED);
* a block the redo initializes (RBM_ZERO_AND_LOCK) must carry BKPBLOCK_WILL_INIT, and vice versa;
* a page whose pd_lsn is already at or past the record is left alone (BLK_DONE);
* otherwise the page must exist and be a valid PostgreSQL 15 page, the redo runs on it, and the caller
  stamps pd_lsn with the record's end LSN (:func:`finish`).

:func:`page_for_redo` returns the page to redo, or None when there is nothing to do;
:func:`init_for_redo` is XLogInitBufferForRedo (the page to initialize, whatever the outcome);
:func:`read_for_redo` returns PostgreSQL's XLogRedoAction code instead, for the redo routines that must
tell a restored page from one already done.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from .. import BufferTag
from . import page as P
from .errors import BlockNotReferenced, InvalidPage, InvalidRecord, UnsupportedRecord
from .xlogrecord import BlockRef, DecodedRecord

# Outcome of reading a block for redo (XLogRedoAction)
BLK_NEEDS_REDO = 0
BLK_DONE = 1
BLK_RESTORED = 2


class RedoContext:
    """The page being reconstructed and what a redo function needs besides the record.

    ``page`` is the buffer (a ``bytearray`` replayed in place) or None while no image or initializing
    record has supplied it. ``wal_log_hints`` says whether the cluster had data checksums or
    wal_log_hints on (PostgreSQL's XLogHintBitIsNeeded): only then does VISIBLE stamp the heap page's LSN.
    """

    __slots__ = ("tag", "page", "wal_log_hints", "checked")

    def __init__(self, tag: BufferTag, page: bytearray | None, wal_log_hints: bool = False,
                 checked: bool = False):
        self.tag = tag
        self.page = page
        self.wal_log_hints = wal_log_hints
        # True while ``page`` is known to pass P.check_page: our own redo keeps the bounds valid, so only
        # a base image or a restored image needs checking, once, before the first redo touches it.
        self.checked = checked


def block_matches(blk: BlockRef, tag: BufferTag) -> bool:
    """Whether the block reference names the page ``tag``."""
    return (
        blk.blkno == tag.blknum
        and blk.relnode == tag.relnode
        and blk.forknum == tag.forknum
        and blk.dbnode == tag.dbnode
        and blk.spcnode == tag.spcnode
    )


def referenced_block(ctx: RedoContext, rec: DecodedRecord, name: str) -> BlockRef:
    """The block reference of ``rec`` naming the page being rebuilt. Raises :class:`BlockNotReferenced`
    (``name`` is the record's name, e.g. ``Btree/INSERT_LEAF``) when the record does not touch it."""
    tag = ctx.tag
    for blk in rec.blocks.values():
        if block_matches(blk, tag):
            return blk
    raise BlockNotReferenced(f"{name} does not reference page {tuple(tag)}")


def restore_image(ctx: RedoContext, blk: BlockRef, lsn: int) -> None:
    """Restore a block image into the buffer as RestoreBlockImage + PageSetLSN (unless the page is new)."""
    img = blk.image()
    ctx.checked = False
    if ctx.page is None:
        ctx.page = bytearray(img)
    else:
        ctx.page[:] = img
    if not P.is_new(ctx.page):
        P.set_lsn(ctx.page, lsn)


def _init_mismatch(blk: BlockRef) -> InvalidRecord:
    return InvalidRecord(
        "block with WILL_INIT flag must be zeroed by redo" if blk.will_init
        else "block to be initialized in redo must be marked WILL_INIT"
    )


def page_for_redo(ctx: RedoContext, blk: BlockRef, lsn: int, *, zero: bool = False) -> bytearray | None:
    """XLogReadBufferForRedoExtended for the requested page: the page to redo, or None when there is nothing
    to do (its image was restored, or it is already at or past the record).

    ``zero`` is RBM_ZERO_AND_LOCK (the redo initializes the page): it must agree with the block's
    WILL_INIT flag, as PostgreSQL insists; the returned page is then all zeros for the caller to initialize
    (e.g. :func:`.page.page_init` with the access method's special size). Raises :class:`InvalidRecord`
    when they disagree, :class:`InvalidPage` when the redo needs an existing page and there is none or it
    is not a valid PostgreSQL 15 page.
    """
    if zero:
        fresh = init_for_redo(ctx, blk, lsn)
        if blk.apply_image:
            return None
        fresh[:] = P.ZERO_PAGE
        return fresh
    # The common case, without a nested call: every heap and index record goes through here.
    if blk.will_init:
        raise _init_mismatch(blk)
    if blk.apply_image:
        restore_image(ctx, blk, lsn)
        return None
    page = ctx.page
    if page is None:
        raise InvalidPage(
            "no base image, and the first record for the page neither initializes it nor carries an image"
        )
    hi, lo = P.LSN.unpack_from(page)
    if (hi << 32 | lo) >= lsn:
        return None
    if not ctx.checked:
        P.check_page(page)
        ctx.checked = True
    return page


def init_for_redo(ctx: RedoContext, blk: BlockRef, lsn: int) -> bytearray:
    """XLogInitBufferForRedo for the requested page: the buffer the caller initializes, whatever the outcome.

    The block must be marked WILL_INIT (:class:`InvalidRecord` otherwise). An image flagged "apply" is
    restored first and then overwritten by the caller, as PostgreSQL's redo routines that ignore the
    outcome do; otherwise the page is returned as it is (zeros when there was none).
    """
    if not blk.will_init:
        raise _init_mismatch(blk)
    if blk.apply_image:
        restore_image(ctx, blk, lsn)
    elif ctx.page is None:
        ctx.page = bytearray(P.BLCKSZ)
        ctx.checked = True
    else:
        ctx.checked = True  # the caller PageInits it
    page = ctx.page
    assert page is not None  # restore_image and the branch above always leave a buffer
    return page


def read_for_redo(ctx: RedoContext, blk: BlockRef, lsn: int) -> int:
    """:func:`page_for_redo`, returning PostgreSQL's XLogRedoAction code instead of the page: BLK_NEEDS_REDO,
    BLK_DONE or BLK_RESTORED. Same errors. For redo that also runs after an image restore, or that must tell
    a restored page from one already done.
    """
    if page_for_redo(ctx, blk, lsn) is not None:
        return BLK_NEEDS_REDO
    return BLK_RESTORED if blk.apply_image else BLK_DONE


class ItemCheck:
    """An access method's check of every line pointer of the page it redoes, run once per request: the first
    time the request redoes the page, and again after an image restore (``ctx.checked`` is False then).

    PostgreSQL's item operations only check the items they act on, so a corrupt page that came from outside
    (a base image, a restored image) would otherwise pass its bad pointers on; a page the redo built itself
    needs no check (:meth:`done`). One instance per access method: each holds the request whose page it
    checked last (a reference, so its id cannot be reused by a later request).
    """

    __slots__ = ("_check", "_last")

    def __init__(self, check: Callable[[bytearray, str], None]):
        self._check = check
        self._last: RedoContext | None = None

    def pending(self, ctx: RedoContext) -> bool:
        """Whether the page of ``ctx`` still needs the check (before reading it for redo)."""
        return not ctx.checked or self._last is not ctx

    def run(self, ctx: RedoContext, page: bytearray, name: str = "") -> None:
        """Check ``page`` (raises :class:`InvalidPage`, naming the record ``name``) and remember that ``ctx``
        passed."""
        self._check(page, name)
        self._last = ctx

    def done(self, ctx: RedoContext) -> None:
        """The page of ``ctx`` needs no check: the redo just built it."""
        self._last = ctx

    def page_for_redo(self, ctx: RedoContext, blk: BlockRef, lsn: int, name: str = "") -> bytearray | None:
        """:func:`page_for_redo`, plus the check when it is pending."""
        fresh = self.pending(ctx)
        page = page_for_redo(ctx, blk, lsn)
        if page is not None and fresh:
            self.run(ctx, page, name)
        return page


def finish(page: bytearray, lsn: int) -> None:
    """PageSetLSN after a redo step (MarkBufferDirty has no counterpart here)."""
    P.set_lsn(page, lsn)


def main_struct(rec: DecodedRecord, st: struct.Struct, name: str) -> tuple[Any, ...]:
    """Unpack the fixed part of the record's main data. Raises :class:`InvalidRecord` when it is short."""
    md = rec.main_data
    if len(md) < st.size:
        raise InvalidRecord(f"{name}: main data has {len(md)} bytes, expected at least {st.size}")
    return st.unpack_from(md)


def block_data(blk: BlockRef, name: str) -> bytes:
    """The block's data. Raises :class:`InvalidRecord` when the block carries none."""
    data = blk.data
    if data is None:
        raise InvalidRecord(f"{name}: block {blk.block_id} carries no data")
    return data


def unsupported(rec: DecodedRecord, rmgr_name: str) -> UnsupportedRecord:
    """The typed error for an info code an rmgr does not know (names rmgr and info)."""
    return UnsupportedRecord(
        f"unsupported record {rmgr_name} info {rec.info:#04x} (rmgr {rec.rmid})", rmid=rec.rmid, info=rec.info
    )
