"""Redo of the XLOG rmgr's page records: FPI and FPI_FOR_HINT (``xlog_redo`` in ``xlog.c``).

Both carry whole-page images of any kind of page (``log_newpage`` writes an index built on a full table
this way, ``MarkBufferDirtyHint`` a page whose hint bits changed): redo restores the image of the
requested block. Every other XLOG record (checkpoints, switches, parameter changes…) touches no relation
page and is refused as unsupported.
"""

from __future__ import annotations

from .bufmgr import RedoContext, referenced_block, restore_image, unsupported
from .errors import InvalidRecord
from .xlogrecord import DecodedRecord

RM_ID = 0
NAME = "XLOG"
XLOG_FPI_FOR_HINT = 0xA0
XLOG_FPI = 0xB0
OP_NAMES = {XLOG_FPI: "FPI", XLOG_FPI_FOR_HINT: "FPI_FOR_HINT"}


def redo(ctx: RedoContext, rec: DecodedRecord, lsn: int) -> None:
    """Restore the requested block's image from an FPI / FPI_FOR_HINT record.

    Raises :class:`UnsupportedRecord` for other XLOG records, :class:`BlockNotReferenced` when the record
    has no image of the page, :class:`InvalidRecord` for an FPI without an image or with an image not
    flagged for apply.
    """
    info = rec.info & 0xF0
    if info not in OP_NAMES:
        raise unsupported(rec, NAME)
    name = f"XLOG/{OP_NAMES[info]}"
    blk = referenced_block(ctx, rec, name)
    if not blk.has_image:
        if info == XLOG_FPI:
            raise InvalidRecord("XLOG_FPI record did not contain a full-page image")
        return  # FPI_FOR_HINT without an image (full_page_writes off): nothing to do
    if not blk.apply_image:
        raise InvalidRecord(f"{name}: block image is not marked to be applied")
    restore_image(ctx, blk, lsn)


def record_name(info: int) -> str:
    return "XLOG/" + OP_NAMES.get(info & 0xF0, f"{info & 0xF0:#04x}")
