"""Replay a whole real-PostgreSQL WAL capture page by page through ``apply_records`` and check it.

Used by the redo engine's tests. Every record is applied to every page it touches (block references and
the implicit VM clears), each time from the engine's own previous state of that page, one record per
``apply_records`` call. Where the record carries PostgreSQL's after-image (``wal_consistency_checking``:
an image not flagged for apply), the engine's page and that image are compared masked (``heap_mask`` for
heap pages; LSN and checksum only for VM pages, a stricter check than PostgreSQL's own). At the end,
every page the engine followed is compared masked with the page on disk after the clean shutdown.

Pages that existed before the capture started are unknown until a record supplies an image; a heap page
first touched by a record without one is seeded from its consistency image (counted, not compared).
"""

from __future__ import annotations

import collections
import struct
from dataclasses import dataclass, field

from walredo_template.pg.errors import RedoError
from walredo_template.pg.heapam import record_name
from walredo_template.pg.mask import mask_heap_page, mask_vm_page
from walredo_template.pg.walreader import pages_touched
from walredo_template.pg.xlogrecord import decode_record
from walredo_template.redo import apply_records

VM_FORKNUM = 2
RM_SMGR_ID = 2
XLOG_SMGR_TRUNCATE = 0x20


@dataclass
class ChainResult:
    compared: collections.Counter = field(default_factory=collections.Counter)  # record kind -> matches
    mismatches: list = field(default_factory=list)  # (kind, start_lsn, tag, first differing offsets)
    errors: list = field(default_factory=list)  # (kind, start_lsn, tag, exception)
    applied: collections.Counter = field(default_factory=collections.Counter)  # kind -> applications
    seeded: int = 0
    disk_equal: int = 0
    disk_mismatches: list = field(default_factory=list)
    lsn_equal: int = 0  # pages whose pd_lsn equals the on-disk page's exactly (no mask)
    lsn_mismatches: list = field(default_factory=list)
    states: dict = field(default_factory=dict)


def record_kind(rec, blk, tag) -> str:
    if rec.rmid == 0:
        name = "XLOG/FPI" if rec.info & 0xF0 == 0xB0 else "XLOG/FPI_FOR_HINT"
    else:
        name = record_name(rec.rmid, rec.info)
    if tag.forknum == VM_FORKNUM:
        return name + (" [vm page]" if blk is not None else " [implicit vm clear]")
    if blk is not None and blk.block_id:
        return name + f" [block {blk.block_id}]"
    return name


def _masked(tag, page):
    return mask_vm_page(page) if tag.forknum == VM_FORKNUM else mask_heap_page(page, tag.blknum)


def replay_capture(cap) -> ChainResult:
    res = ChainResult()
    state = res.states
    for start, end, raw in cap.records:
        rec = decode_record(raw)
        if rec.rmid == RM_SMGR_ID and rec.info & 0xF0 == XLOG_SMGR_TRUNCATE:
            _forget_truncated(state, rec.main_data)
            continue
        if rec.rmid not in (0, 9, 10):
            continue
        if rec.rmid == 0 and rec.info & 0xF0 not in (0xA0, 0xB0):
            continue
        for tag in pages_touched(raw):
            blk = next((b for b in rec.blocks.values() if b.tag == tag), None)
            base = state.get(tag)
            kind = record_kind(rec, blk, tag)
            if base is None:
                if tag.forknum == VM_FORKNUM and blk is None:
                    continue  # a VM page from before the capture: its bits are unknown
                if tag.forknum != VM_FORKNUM and not (blk is not None and (blk.will_init or blk.apply_image)):
                    if blk is not None and blk.has_image:
                        state[tag] = blk.image()
                        res.seeded += 1
                    continue
            try:
                out = apply_records(tag, base, [(end, raw)], wal_log_hints=cap.config.checksums)
            except RedoError as e:
                res.errors.append((kind, start, tag, e))
                if blk is not None and blk.has_image:
                    state[tag] = blk.image()
                continue
            res.applied[kind] += 1
            state[tag] = out
            if blk is not None and blk.has_image and not blk.apply_image:
                img = blk.image()
                a, b = _masked(tag, out), _masked(tag, img)
                if a == b:
                    res.compared[kind] += 1
                else:
                    diffs = [i for i in range(len(a)) if a[i] != b[i]][:16]
                    res.mismatches.append((kind, start, tag, diffs))
                    state[tag] = img  # carry on from PostgreSQL's page so one bug is reported once
    for tag, page in cap.disk_pages.items():
        ours = state.get(tag)
        if ours is None:
            continue
        if ours[:8] == page[:8]:
            res.lsn_equal += 1
        else:
            res.lsn_mismatches.append(tag)
        if _masked(tag, ours) == _masked(tag, page):
            res.disk_equal += 1
        else:
            a, b = _masked(tag, ours), _masked(tag, page)
            res.disk_mismatches.append((tag, [i for i in range(len(a)) if a[i] != b[i]][:16]))
    return res


def _forget_truncated(state: dict, main_data: bytes) -> None:
    """SMGR TRUNCATE (not a heap record, not redone by the engine) cuts the heap and clears VM bits past
    the new end: stop following the pages it changes rather than compare them."""
    blkno, spc, db, rel, _flags = struct.unpack_from("<IIIIi", main_data)
    for tag in list(state):
        if (tag.spcnode, tag.dbnode, tag.relnode) == (spc, db, rel) and (tag.forknum != 0 or tag.blknum >= blkno):
            del state[tag]
