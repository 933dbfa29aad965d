"""Entry point of the PostgreSQL 15 redo engine: rebuild one page from a base image and WAL records.

:func:`apply_records` is what a walredo child runs for each request. It decodes each record
(:mod:`.pg.xlogrecord`) and hands it to its resource manager's redo through :data:`RMGRS`, one table keyed
by rmgr id as PostgreSQL's ``RmgrTable``: each entry names the module that replays that rmgr's records onto
the one requested page (all of them share :mod:`.pg.bufmgr`'s buffer rules) and PostgreSQL's mask for its
pages (``rm_mask``, used by consistency comparisons). Rmgrs not in the table (transactions, storage,
CLOG, databases, …) never touch a relation page; their records are refused as :class:`UnsupportedRecord`.

    XLOG     FPI, FPI_FOR_HINT (restore the image of the requested block)          pg/xlog.py
    Heap     INSERT, DELETE, UPDATE, HOT_UPDATE (each +INIT_PAGE where PostgreSQL allows it), LOCK,
             CONFIRM, INPLACE                                                       pg/heapam.py
    Heap2    PRUNE, VACUUM, FREEZE_PAGE, VISIBLE (heap page and VM page), MULTI_INSERT(+INIT),
             LOCK_UPDATED, plus the implicit visibility-map clears of INSERT/MULTI_INSERT/UPDATE/DELETE/
             LOCK/LOCK_UPDATED when the requested page is the VM page covering the heap block:
             pg/heapam2.py, heapam_vm.py (both heap rmgrs enter through pg/heapam.py; record layouts,
             opcodes and flags: pg/heapam_xlog.py)
    Btree, Hash, Gin, Gist, Sequence, SPGist, BRIN, Generic: pg/nbtree.py, hash.py, gin.py, gist.py,
             sequence.py, spgist.py, brin.py, generic.py (each module's docstring lists what it redoes)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

from . import BufferTag
from .pg import brin, generic, gin, gist, hash, heapam, heapam_xlog, nbtree, sequence, spgist, xlog
from .pg import page as P
from .pg.bufmgr import RedoContext
from .pg.errors import InvalidPage, InvalidRecord, RedoError, UnsupportedRecord
from .pg.mask import heap_mask
from .pg.pagecheck import page_problem
from .pg.xlogrecord import RM_HEAP2_ID, RM_HEAP_ID, DecodedRecord, decode_record


class Rmgr(NamedTuple):
    """One resource manager: its name, its redo for one page, PostgreSQL's mask for its pages, and the
    ``Rmgr/OPERATION`` name of a record's info byte."""

    name: str
    redo: Callable[[RedoContext, DecodedRecord, int], None]
    mask: Callable[[bytearray, int], None]
    record_name: Callable[[int], str]


def _heap_name(rmid: int) -> Callable[[int], str]:
    return lambda info: heapam_xlog.record_name(rmid, info)


def _xlog_mask(page: bytearray, blkno: int) -> None:
    raise RedoError("XLOG pages have no mask of their own: mask by the page's access method")


RMGRS: dict[int, Rmgr] = {
    xlog.RM_ID: Rmgr(xlog.NAME, xlog.redo, _xlog_mask, xlog.record_name),
    RM_HEAP2_ID: Rmgr("Heap2", heapam.redo_heap_record, heap_mask, _heap_name(RM_HEAP2_ID)),
    RM_HEAP_ID: Rmgr("Heap", heapam.redo_heap_record, heap_mask, _heap_name(RM_HEAP_ID)),
    **{m.RM_ID: Rmgr(m.NAME, m.redo, m.mask, m.record_name)
       for m in (nbtree, hash, gin, gist, sequence, spgist, brin, generic)},
}

# rmgr id -> redo, the one lookup per record on the hot path
_REDO: dict[int, Callable[[RedoContext, DecodedRecord, int], None]] = {k: v.redo for k, v in RMGRS.items()}


def record_name(rmid: int, info: int) -> str:
    """``Rmgr/OPERATION`` of a record, as pg_waldump prints it (``rmgrN/0xII`` outside :data:`RMGRS`)."""
    rmgr = RMGRS.get(rmid)
    return rmgr.record_name(info) if rmgr is not None else f"rmgr{rmid}/{info:#04x}"


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
    :class:`InvalidPage` as well when the page to be returned is not structurally valid for its kind (header
    bounds, every line pointer with storage inside the tuple space: :mod:`.pg.pagecheck`), so no answer is
    a page PostgreSQL could not read;
    :class:`MissingCompressionLibrary` for an lz4/zstd image without the package.
    """
    if base_image is not None:
        if len(base_image) != P.BLCKSZ:
            raise InvalidPage(f"base image has {len(base_image)} bytes, expected {P.BLCKSZ}")
        page: bytearray | None = bytearray(base_image)
        checked = False
        if not P.is_new(base_image) or base_image != P.ZERO_PAGE:  # memcmp, not a Python-level scan
            P.check_page(base_image)
            checked = True
    else:
        page = None
        checked = False
    ctx = RedoContext(tag, page, wal_log_hints, checked)
    redo_table = _REDO
    rmgr = -1  # the rmgr of the last record that was not an XLOG FPI: it tells the page's kind
    for end_lsn, raw in records:
        if not isinstance(end_lsn, int) or not 0 <= end_lsn < 1 << 64:
            raise InvalidRecord(f"invalid end LSN {end_lsn!r}")
        rec = decode_record(raw, verify_crc=verify_crc)
        redo = redo_table.get(rec.rmid)
        if redo is None:
            raise UnsupportedRecord(
                f"unsupported record: rmgr {rec.rmid}, info {rec.info:#04x}", rmid=rec.rmid, info=rec.info
            )
        redo(ctx, rec, end_lsn)
        if rec.rmid:
            rmgr = rec.rmid
    if ctx.page is None:
        raise InvalidPage("no base image and no records to build the page from")
    out = bytes(ctx.page)
    # Never answer with a page PostgreSQL could not read: a corrupt base image no record touched, or a
    # CRC-valid full-page image that is not a valid page, ends here as an error (pg/pagecheck.py; the kind of
    # a page that only XLOG FPIs wrote, or no record, is read from its special space).
    problem = page_problem(out, tag.forknum, rmgr)
    if problem is not None:
        raise InvalidPage(f"the rebuilt page is not valid: {problem}")
    return out


__all__ = ["apply_records", "record_name", "RMGRS", "Rmgr", "RedoError"]
