"""Redo of PostgreSQL 15 Gin records (``access/gin/ginxlog.c``) for one page — not written yet.

Every Gin record is refused as :class:`UnsupportedRecord` until this module implements it.
"""

from __future__ import annotations

from .bufmgr import RedoContext, unsupported
from .mask import mask_page_lsn_and_checksum
from .xlogrecord import DecodedRecord

RM_ID = 13
NAME = "Gin"


def redo(ctx: RedoContext, rec: DecodedRecord, lsn: int) -> None:
    """Replay a Gin record onto ``ctx.page``. Raises :class:`UnsupportedRecord` (not written yet)."""
    raise unsupported(rec, NAME)


def mask(page: bytearray, blkno: int) -> None:
    """PostgreSQL's ``gin_mask`` in place (so far only the LSN and checksum)."""
    mask_page_lsn_and_checksum(page)


def record_name(info: int) -> str:
    """``Rmgr/OPERATION`` as pg_waldump prints it (so far the raw info code)."""
    return f"{NAME}/{info & 0xF0:#04x}"
