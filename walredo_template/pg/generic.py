"""Redo of PostgreSQL 15 Generic WAL records (``generic_redo`` in ``access/transam/generic_xlog.c``) for one page.

Generic WAL is how extensions (contrib's ``bloom``) log page changes without an rmgr of their own: the
backend edits a copy of each page, and ``GenericXLogFinish`` logs, per page, either the whole page or the
byte ranges that changed. One record type (info 0x00), up to MAX_GENERIC_XLOG_PAGES (4) blocks, no main
data::

    block N, GENERIC_XLOG_FULL_IMAGE   registered REGBUF_FORCE_IMAGE: a block image flagged for apply,
                                       no data
    block N, delta                     block data: fragments, each u16 offset | u16 length | length bytes,
                                       written at page + offset (the regions below pd_lower and above
                                       pd_upper that changed; none for the hole between them)

Redo per block is ``XLogReadBufferForRedo`` (RBM_NORMAL): an image flagged for apply — a full-image
block, or a delta block that got a full-page write after a checkpoint — is restored and the delta, if
any, is not applied (BLK_RESTORED); a page already at or past the record is left alone (BLK_DONE);
otherwise the fragments are copied onto the page in order, the hole between the resulting pd_lower and
pd_upper is zeroed (the delta says nothing about it, and GenericXLogFinish zeroed it on the primary),
and pd_lsn := the record's end. A block without data is an empty delta (only the hole and the LSN). No
generic block is ever registered WILL_INIT: one that is would make PostgreSQL PANIC (RBM_NORMAL with
WILL_INIT) and is :class:`InvalidRecord` here. A delta needs an initialized page to apply to (bufmgr's
rule: a missing or never-initialized page is :class:`InvalidPage`); bloom logs every new page as a full
image.

Stricter than PostgreSQL, which trusts the record: a fragment whose header or bytes run past the block
data, or whose range runs past the page, a delta that leaves the page without a valid header (bounds out
of order, another page size or layout version), and a block id >= 4 (past generic_redo's buffer array)
are :class:`InvalidRecord`; an info code other than 0x00 (generic_redo ignores the info byte; no
PostgreSQL 15 code writes another) is :class:`UnsupportedRecord`.
"""

from __future__ import annotations

import struct

from . import page as P
from .bufmgr import RedoContext, page_for_redo, referenced_block, unsupported
from .errors import InvalidPage, InvalidRecord
from .mask import mask_lsn_and_hole
from .xlogrecord import DecodedRecord

RM_ID = 20
NAME = "Generic"
RECORD_NAME = "Generic/Generic"  # generic_identify names every record "Generic"
MAX_GENERIC_XLOG_PAGES = 4  # XLR_NORMAL_MAX_BLOCK_ID
FRAGMENT_HEADER = struct.Struct("<HH")  # offset, length
_ZEROS = memoryview(P.ZERO_PAGE)


def redo(ctx: RedoContext, rec: DecodedRecord, lsn: int) -> None:
    """Replay a Generic record's block for ``ctx.tag`` (see the module docstring).

    Raises :class:`UnsupportedRecord` for an info code other than 0x00, :class:`BlockNotReferenced` when
    the record does not reference the page, :class:`InvalidRecord` for a bad block id, a WILL_INIT block,
    a malformed or out-of-page fragment, a delta that breaks the page header or a corrupt image,
    :class:`InvalidPage` when the page to apply a delta to is missing or not a valid page.
    """
    if rec.info & 0xF0:
        raise unsupported(rec, NAME)
    blk = referenced_block(ctx, rec, RECORD_NAME)
    if blk.block_id >= MAX_GENERIC_XLOG_PAGES:
        raise InvalidRecord(f"{RECORD_NAME}: block id {blk.block_id}, at most {MAX_GENERIC_XLOG_PAGES} pages")
    page = page_for_redo(ctx, blk, lsn)
    if page is None:
        return
    delta = blk.data
    if delta:
        _apply_delta(page, delta)
    lower = P.get_lower(page)
    upper = P.get_upper(page)
    if upper < lower:  # cannot happen on a checked page; a negative slice would resize the buffer
        raise InvalidPage(f"corrupted page pointers: lower = {lower}, upper = {upper}")
    page[lower:upper] = _ZEROS[:upper - lower]
    P.set_lsn(page, lsn)


def _apply_delta(page: bytearray, delta: bytes) -> None:
    """Copy the fragments of ``delta`` onto ``page`` in order, each checked before it is written, then
    check the page header they leave. On an error the page may be partly written: the request fails and
    the buffer is dropped with it (apply_records returns no page)."""
    end = len(delta)
    unpack = FRAGMENT_HEADER.unpack_from
    src = memoryview(delta)
    pos = 0
    while pos < end:
        if pos + 4 > end:
            raise InvalidRecord(f"{RECORD_NAME}: truncated fragment header at delta offset {pos} of {end}")
        offset, length = unpack(delta, pos)
        pos += 4
        stop = pos + length
        if stop > end:
            raise InvalidRecord(f"{RECORD_NAME}: fragment of {length} bytes at delta offset {pos} runs past "
                                f"the {end}-byte delta")
        if offset + length > P.BLCKSZ:
            raise InvalidRecord(f"{RECORD_NAME}: fragment {offset}+{length} runs past the page")
        page[offset:offset + length] = src[pos:stop]
        pos = stop
    try:
        P.check_page(page)
    except InvalidPage as e:
        raise InvalidRecord(f"{RECORD_NAME}: the delta leaves an invalid page: {e}") from None


def mask(page: bytearray, blkno: int) -> None:
    """PostgreSQL's ``generic_mask`` in place (:func:`.mask.mask_lsn_and_hole`)."""
    mask_lsn_and_hole(page)


def record_name(info: int) -> str:
    """``Generic/Generic`` whatever the info byte, as pg_waldump prints it (generic_identify has one name)."""
    return RECORD_NAME
