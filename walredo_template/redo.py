"""Entry point of the PostgreSQL 15 redo engine: rebuild one page from a base image and WAL records.

:func:`apply_records` is what a walredo child runs for each request. It decodes each record
(:mod:`.pg.xlogrecord`), replays it onto the one requested page (:mod:`.pg.heapam` for Heap/Heap2, the
image restore here for XLOG FPI / FPI_FOR_HINT) and returns the page. Supported records:

    XLOG   FPI, FPI_FOR_HINT (restore the image of the requested block)
    Heap   INSERT, DELETE, UPDATE, HOT_UPDATE (each +INIT_PAGE where PostgreSQL allows it), LOCK,
           CONFIRM, INPLACE
    Heap2  PRUNE, VACUUM, FREEZE_PAGE, VISIBLE (heap page and VM page), MULTI_INSERT(+INIT), LOCK_UPDATED
    plus the implicit visibility-map clears of INSERT/MULTI_INSERT/UPDATE/DELETE/LOCK/LOCK_UPDATED when
    the requested page is the VM page covering the heap block.
"""

from __future__ import annotations

from collections.abc import Sequence

from . import BufferTag
from .pg import page as P
from .pg.errors import BlockNotReferenced, InvalidPage, InvalidRecord, RedoError, UnsupportedRecord
from .pg.heapam import RedoContext, find_block, redo_heap_record, restore_image
from .pg.xlogrecord import RM_HEAP2_ID, RM_HEAP_ID, RM_XLOG_ID, decode_record

XLOG_FPI_FOR_HINT = 0xA0
XLOG_FPI = 0xB0
XLR_RMGR_INFO_MASK = 0xF0
_ZERO_PAGE = bytes(P.BLCKSZ)


def _redo_xlog(ctx: RedoContext, rec, lsn: int) -> None:
    info = rec.info & XLR_RMGR_INFO_MASK
    if info not in (XLOG_FPI, XLOG_FPI_FOR_HINT):
        raise UnsupportedRecord(
            f"unsupported record XLOG info {rec.info:#04x} (rmgr {RM_XLOG_ID})", rmid=rec.rmid, info=rec.info
        )
    name = "XLOG/FPI" if info == XLOG_FPI else "XLOG/FPI_FOR_HINT"
    block_id = find_block(rec, ctx.tag)
    if block_id is None:
        raise BlockNotReferenced(f"{name} does not reference page {tuple(ctx.tag)}")
    blk = rec.blocks[block_id]
    if not blk.has_image:
        if info == XLOG_FPI:
            raise InvalidRecord("XLOG_FPI record did not contain a full-page image")
        return  # FPI_FOR_HINT without an image (full_page_writes off): nothing to do
    if not blk.apply_image:
        raise InvalidRecord(f"{name}: block image is not marked to be applied")
    restore_image(ctx, blk, lsn)


def apply_records(
    tag: BufferTag,
    base_image: bytes | None,
    records: Sequence[tuple[int, bytes]],
    *,
    wal_log_hints: bool = False,
    verify_crc: bool = True,
) -> bytes:
    """Replay ``records`` onto the page ``tag`` starting from ``base_image``; return the 8192-byte page.

    ``records`` are ``(end_lsn, raw_record)`` in WAL order; pd_lsn is set to each record's end LSN as
    PostgreSQL's redo does. ``base_image`` is the page before the first record, or None when the first
    record initializes the page or carries an image to apply (a missing visibility-map page reads as an
    initialized empty page, as PostgreSQL's visibility map code does). ``wal_log_hints`` tells whether the
    cluster had data checksums or wal_log_hints on, which decides whether Heap2 VISIBLE stamps the heap
    page's LSN. ``verify_crc`` (default True) checks each record's CRC-32C; False skips it, for a caller
    that has verified the records itself (the WAL reader does) — about 0.4 us of a small record's cost.
    The walredo child keeps the default: it costs little, and it turns a record damaged on its way from
    the WAL reader to the child into an error instead of a wrong page.

    Raises (all :class:`RedoError`): :class:`InvalidRecord` for malformed record bytes or a record that
    does not fit the page; :class:`InvalidPage` for a base image that is not a PostgreSQL 15 page or a
    missing one; :class:`BlockNotReferenced` when a record does not touch the page;
    :class:`UnsupportedRecord` (with ``rmid`` and ``info``) for record types outside the supported set;
    :class:`MissingCompressionLibrary` for an lz4/zstd image without the package.
    """
    if base_image is not None:
        if len(base_image) != P.BLCKSZ:
            raise InvalidPage(f"base image has {len(base_image)} bytes, expected {P.BLCKSZ}")
        page = bytearray(base_image)
        checked = False
        if not P.is_new(page) or page != _ZERO_PAGE:  # memcmp, not a Python-level scan of 8192 bytes
            P.check_page(page)
            checked = True
    else:
        page = None
        checked = False
    ctx = RedoContext(tag, page, wal_log_hints, checked)
    for end_lsn, raw in records:
        if not isinstance(end_lsn, int) or not 0 <= end_lsn < 1 << 64:
            raise InvalidRecord(f"invalid end LSN {end_lsn!r}")
        rec = decode_record(raw, verify_crc=verify_crc)
        rmid = rec.rmid
        if rmid == RM_HEAP_ID or rmid == RM_HEAP2_ID:
            redo_heap_record(ctx, rec, end_lsn)
        elif rmid == RM_XLOG_ID:
            _redo_xlog(ctx, rec, end_lsn)
        else:
            raise UnsupportedRecord(
                f"unsupported record: rmgr {rmid}, info {rec.info:#04x}", rmid=rmid, info=rec.info
            )
    if ctx.page is None:
        raise InvalidPage("no base image and no records to build the page from")
    return bytes(ctx.page)


__all__ = ["apply_records", "RedoError"]
