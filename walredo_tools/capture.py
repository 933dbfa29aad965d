"""Turn a committed WAL capture (``scripts/capture-wal``) into page requests with known answers.

Harness side (demo, tests, benchmarks); nothing here runs in a walredo child. The capture format is
described in ``tests/data/wal-small/README.md``. Two kinds of expected pages come out of it:

- **consistency images**: with ``wal_consistency_checking`` every heap record carries PostgreSQL's own
  image of the page right after the record. A request for the page at that record's end LSN must give
  that image (masked). Requests are built the way a pageserver serves reads: from the nearest materialized
  image at or before the LSN (here: PostgreSQL's image every ``image_every`` records of that page) plus the
  records since, so no request carries more than ``image_every`` records;
- **disk pages**: the page PostgreSQL wrote at its clean shutdown, requested from the page's very first
  record (no base image), i.e. the whole history of the page in one request.

Comparisons are masked with PostgreSQL's own rules: each page by its access method's mask (the ``rmgr`` a
format-2 capture records per page: heap, btree, GIN…, through ``walredo_template.redo.RMGRS``). Pages that
change without WAL (sequences, the SP-GiST metapage) get no disk request.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

from walredo_template import BufferTag
from walredo_template.pg.mask import mask_vm_page
from walredo_template.pg.xlogrecord import BlockRef, decode_record
from walredo_tools.walreader import group_by_page

VM_FORKNUM = 2
RM_HEAP_ID = 10
RM_SEQ_ID = 15
RM_SPGIST_ID = 16
FORMAT = 2
RM_SMGR_ID = 2
XLOG_SMGR_TRUNCATE = 0x20


@dataclass(frozen=True)
class PageRequest:
    """One ``request_redo`` call and the page it must return (compare with :func:`pages_match`)."""

    tag: BufferTag
    lsn: int
    base_image: bytes | None
    records: list[tuple[int, bytes]]
    expected: bytes
    source: str  # "consistency-image" or "disk"
    rmgr: int = RM_HEAP_ID  # the rmgr whose mask compares the page (its access method's)


def load_capture(path: str) -> dict[str, Any]:
    """Read a ``capture.msgpack``; raises ``ValueError`` if it is not a format-1 or 2 PostgreSQL 15 capture
    (format 1 has heap and visibility-map pages only, and no ``rmgr`` per page). The document is msgpack's
    map as it decoded (its layout: ``tests/data/wal-small/README.md``)."""
    with open(path, "rb") as f:
        doc: object = msgpack.unpackb(f.read(), raw=False)
    if not isinstance(doc, dict) or doc.get("format") not in (1, FORMAT) or doc.get("pg_version") != 15:
        raise ValueError(f"{path}: not a format-1 or {FORMAT} PostgreSQL 15 WAL capture")
    return doc


def masked(tag: BufferTag, page: bytes, rmgr: int = RM_HEAP_ID) -> bytes:
    """A copy of ``page`` masked by rmgr ``rmgr``'s mask (PostgreSQL's ``rm_mask``); visibility-map pages
    by LSN and checksum only (stricter than PostgreSQL's heap_mask, which wipes the bitmap)."""
    if tag.forknum == VM_FORKNUM:
        return mask_vm_page(page)
    from walredo_template.redo import RMGRS  # the engine's table (harness side: imported on first use)

    buf = bytearray(page)
    RMGRS[rmgr].mask(buf, tag.blknum)
    return bytes(buf)


def pages_match(tag: BufferTag, got: bytes, expected: bytes, rmgr: int = RM_HEAP_ID) -> bool:
    return masked(tag, got, rmgr) == masked(tag, expected, rmgr)


def disk_is_wal_state(tag: BufferTag, rmgr: int) -> bool:
    """False for pages PostgreSQL changes without WAL (sequence pages, the SP-GiST metapage's cache of
    last-used pages): their page on disk is not the result of their records."""
    return not (rmgr == RM_SEQ_ID or (rmgr == RM_SPGIST_ID and tag.blknum == 0))


def page_requests(doc: dict[str, Any], *, image_every: int = 16) -> list[PageRequest]:
    """Every request the capture can check: one per consistency image, one per page on disk."""
    records = [tuple(r) for r in doc["records"]]
    groups = group_by_page(records)
    truncated = _truncated_relations(records)
    out: list[PageRequest] = []
    for page in doc["pages"]:
        tag = BufferTag(*page["tag"])
        rmgr = page.get("rmgr", RM_HEAP_ID)
        chain = groups.get(tag, [])
        out.extend(_image_requests(tag, chain, image_every, rmgr))
        start = _first_self_contained(tag, chain)
        if start is None or not disk_is_wal_state(tag, rmgr):
            continue
        if tag.forknum == VM_FORKNUM and tag[:3] in truncated:
            # A truncation clears the VM bits of cut-off heap blocks with no block reference to this page
            # (the pageserver applies it at ingest); the disk page is not a pure function of `chain`.
            continue
        history = chain[start:]
        out.append(PageRequest(tag, history[-1][0], None, history, page["disk"], "disk", rmgr))
    return out


def _image_requests(tag: BufferTag, chain: Sequence[tuple[int, bytes]], image_every: int,
                    rmgr: int) -> list[PageRequest]:
    out = []
    base: bytes | None = None  # the last materialized image (PostgreSQL's), and the records since it
    since: list[tuple[int, bytes]] = []
    started = False
    for end_lsn, raw in chain:
        block = _block_for(tag, raw)
        if not started:
            if block is None or not (block.will_init or (block.has_image and block.apply_image)):
                # The page predates the capture and no image of it has been seen yet: unknown so far.
                if block is not None and block.has_image and not block.apply_image:
                    base, since, started = block.image(), [], True
                continue
            started = True
        since.append((end_lsn, raw))
        if block is not None and block.has_image and not block.apply_image:
            image = block.image()
            out.append(PageRequest(tag, end_lsn, base, list(since), image, "consistency-image", rmgr))
            if len(since) >= image_every:
                base, since = image, []
    return out


def _first_self_contained(tag: BufferTag, chain: Sequence[tuple[int, bytes]]) -> int | None:
    for i, (_end, raw) in enumerate(chain):
        block = _block_for(tag, raw)
        if block is not None and (block.will_init or (block.has_image and block.apply_image)):
            return i
    return None


def _block_for(tag: BufferTag, raw: bytes) -> BlockRef | None:
    for block in decode_record(raw, verify_crc=False).blocks.values():
        if block.tag == tag:
            return block
    return None


_SMGR_TRUNCATE_RNODE = struct.Struct("<4xIII")  # xl_smgr_truncate: blkno, then RelFileNode


def _truncated_relations(records: Iterable[tuple[int, int, bytes]]) -> set[tuple[int, int, int]]:
    out: set[tuple[int, int, int]] = set()
    for _start, _end, raw in records:
        rec = decode_record(raw, verify_crc=False)
        if rec.rmid == RM_SMGR_ID and rec.info & 0xF0 == XLOG_SMGR_TRUNCATE and len(rec.main_data) >= 16:
            out.add(_SMGR_TRUNCATE_RNODE.unpack_from(rec.main_data))
    return out
