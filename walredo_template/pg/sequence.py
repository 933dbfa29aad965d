"""Redo of PostgreSQL 15 Sequence records (``seq_redo`` in ``commands/sequence.c``) for one page.

A sequence relation has a single page (block 0 of its main fork, or of its init fork for an unlogged
sequence) holding one heap tuple, the sequence's state: ``last_value`` int8, ``log_cnt`` int8,
``is_called`` bool. The rmgr has one record, written by CREATE/ALTER SEQUENCE (a new relfilenode),
``setval``, ``nextval`` when it logs ahead, and TRUNCATE … RESTART IDENTITY::

    LOG (0x00)   main data: xl_seq_rec = RelFileNode (u32 spcNode, u32 dbNode, u32 relNode),
                 then the whole sequence tuple (heap tuple header + data) as the page is to hold it;
                 block 0: the sequence page, registered WILL_INIT, no data

Redo rebuilds the page from the record alone, whatever the page held before: PageInit with a special
space of ``sizeof(sequence_magic)`` (4 bytes, MAXALIGNed to 8) holding ``SEQ_MAGIC`` 0x1717, the tuple
added as item 1 (bufpage's PageAddItem without overwrite on an empty page), pd_lsn := the record's end.
The tuple bytes are copied as logged: frozen xmin, invalid xmax and ctid (0,1) were set by the backend
before it logged the tuple, not by redo. Buffer handling is ``XLogInitBufferForRedo``'s, and its result
is ignored as ``seq_redo`` ignores it: the block must carry WILL_INIT (else :class:`InvalidRecord`, where
PostgreSQL PANICs); an image flagged for apply is restored and then overwritten by the rebuilt page; the
page's old LSN is not consulted (the page is rebuilt even when it is newer than the record).

``nextval`` logs the state it will reach after SEQ_LOG_VALS (32) more values and then updates the tuple
in place without WAL until those are used up, so the page on disk is generally *not* the last logged
state (tests/test_sequence.py asserts the relation between the two).

Choices where PostgreSQL does not decide: the RelFileNode in the main data is not compared with block
0's (redo ignores it too); an empty tuple (PostgreSQL would add a zero-length item) is refused as
:class:`InvalidRecord`, as is a record whose page is referenced by a block other than 0 (``seq_redo``
only ever touches block 0, so such a page would never be redone).
"""

from __future__ import annotations

import struct

from . import page as P
from .bufmgr import RedoContext, init_for_redo, referenced_block, unsupported
from .errors import InvalidRecord
from .mask import mask_lsn_and_hole
from .xlogrecord import DecodedRecord

RM_ID = 15
NAME = "Sequence"
XLOG_SEQ_LOG = 0x00
SEQ_MAGIC = 0x1717
SIZEOF_SEQUENCE_MAGIC = 4
SIZEOF_XL_SEQ_REC = 12  # RelFileNode
_SPECIAL = P.BLCKSZ - P.maxalign(SIZEOF_SEQUENCE_MAGIC)  # pd_special of a sequence page: 8184
# The largest tuple PageAddItem can place on the empty page: MAXALIGN(size) <= pd_upper - (pd_lower + lp)
MAX_TUPLE_SIZE = (_SPECIAL - P.SIZE_OF_PAGE_HEADER - P.SIZEOF_ITEMID) & ~(P.MAXALIGN - 1)  # 8152
_MAGIC = struct.Struct("<I")
# Offsets of the sequence data inside the tuple's data part (after t_hoff): FormData_pg_sequence_data
SEQ_LAST_VALUE = 0
SEQ_LOG_CNT = 8
SEQ_IS_CALLED = 16
SEQ_DATA = struct.Struct("<qq?")  # last_value, log_cnt, is_called


def redo(ctx: RedoContext, rec: DecodedRecord, lsn: int) -> None:
    """Rebuild the sequence page ``ctx.tag`` from a Sequence/LOG record (see the module docstring).

    Raises :class:`UnsupportedRecord` for another info code, :class:`BlockNotReferenced` when the record
    does not reference the page, :class:`InvalidRecord` when the page is not block 0, the block lacks
    WILL_INIT, the main data is shorter than xl_seq_rec or its tuple is empty or does not fit the page,
    or an image to restore is corrupt.
    """
    if rec.info & 0xF0 != XLOG_SEQ_LOG:
        raise unsupported(rec, NAME)
    blk = referenced_block(ctx, rec, "Sequence/LOG")
    if blk.block_id != 0:
        raise InvalidRecord(f"Sequence/LOG references the page as block {blk.block_id}; redo only touches block 0")
    md = rec.main_data
    itemsz = len(md) - SIZEOF_XL_SEQ_REC
    if itemsz <= 0:
        raise InvalidRecord(f"Sequence/LOG: main data has {len(md)} bytes, expected xl_seq_rec and a tuple")
    if itemsz > MAX_TUPLE_SIZE:
        raise InvalidRecord(f"Sequence/LOG: tuple of {itemsz} bytes does not fit a sequence page")
    page = init_for_redo(ctx, blk, lsn)  # WILL_INIT check; an apply image is restored, then replaced
    P.page_init(page, SIZEOF_SEQUENCE_MAGIC)
    _MAGIC.pack_into(page, _SPECIAL, SEQ_MAGIC)
    P.add_item(page, memoryview(md)[SIZEOF_XL_SEQ_REC:], 1, is_heap=False)
    P.set_lsn(page, lsn)
    ctx.checked = True


def mask(page: bytearray, blkno: int) -> None:
    """PostgreSQL's ``seq_mask`` in place (:func:`.mask.mask_lsn_and_hole`)."""
    mask_lsn_and_hole(page)


def record_name(info: int) -> str:
    """``Sequence/LOG``, or ``Sequence/UNKNOWN (x)`` for another info code, as pg_waldump prints them."""
    op = info & 0xF0
    return f"{NAME}/LOG" if op == XLOG_SEQ_LOG else f"{NAME}/UNKNOWN ({op:x})"
