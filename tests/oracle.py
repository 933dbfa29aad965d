"""The oracle replay shared by tests/test_oracle.py, scripts/capture-wal and scripts/bench_redo.

Given the WAL records of a real PostgreSQL 15 run, it rebuilds every heap and visibility-map page with
``walredo_template.redo.apply_records``, one record at a time, the way a standby replays: each page starts
at its first record that initializes it or carries an image to apply, and from then on every record is
applied to the engine's own previous result. Whenever a record also carries PostgreSQL's consistency
image of the page (``wal_consistency_checking``; an image not to be applied), the engine's page and that
image are compared after masking (:mod:`walredo_template.pg.mask`).

Relation truncation (``Storage/TRUNCATE``, e.g. by VACUUM) is handled here, on the harness side, as
Neon's pageserver does at WAL ingest rather than in walredo: it references no block, yet on a standby its
redo clears the visibility-map bits of the cut-off heap blocks in the last remaining VM page
(``visibilitymap_prepare_truncate``; logged as an FPI only when hint bits are WAL-logged) and drops the
pages past the end. :func:`replay` applies that to its VM pages at the record's LSN.
"""

from __future__ import annotations

import struct

from collections import Counter
from dataclasses import dataclass, field

from walredo_template import BufferTag
from walredo_template.pg.errors import RedoError
from walredo_template.pg.mask import mask_heap_page, mask_vm_page
from walredo_template.pg.walreader import HEAPBLOCKS_PER_VM_PAGE, group_by_page
from walredo_template.pg.xlogrecord import RM_HEAP2_ID, RM_HEAP_ID, RM_XLOG_ID, decode_record
from walredo_template.redo import apply_records

VM_FORK = 2
RM_SMGR_ID = 2
XLOG_SMGR_TRUNCATE = 0x20
SMGR_TRUNCATE_VM = 0x0002
_SMGR_TRUNCATE = struct.Struct("<IIIIi")  # blkno, spcNode, dbNode, relNode, flags
HEAP_OPS = {0x00: "INSERT", 0x10: "DELETE", 0x20: "UPDATE", 0x30: "TRUNCATE", 0x40: "HOT_UPDATE",
            0x50: "CONFIRM", 0x60: "LOCK", 0x70: "INPLACE"}
HEAP2_OPS = {0x00: "REWRITE", 0x10: "PRUNE", 0x20: "VACUUM", 0x30: "FREEZE_PAGE", 0x40: "VISIBLE",
             0x50: "MULTI_INSERT", 0x60: "LOCK_UPDATED", 0x70: "NEW_CID"}
XLOG_OPS = {0xB0: "FPI", 0xA0: "FPI_FOR_HINT"}


def record_name(rmid: int, info: int) -> str:
    """``Heap/INSERT+INIT``-style name of a record type, as pg_waldump prints it."""
    if rmid == RM_HEAP_ID:
        name = "Heap/" + HEAP_OPS[info & 0x70]
    elif rmid == RM_HEAP2_ID:
        name = "Heap2/" + HEAP2_OPS[info & 0x70]
    elif rmid == RM_XLOG_ID:
        return "XLOG/" + XLOG_OPS.get(info & 0xF0, f"{info & 0xF0:#04x}")
    else:
        return f"rmgr{rmid}/{info:#04x}"
    return name + ("+INIT" if info & 0x80 else "")


def mask_page(tag: BufferTag, page: bytes) -> bytes:
    return mask_vm_page(page) if tag.forknum == VM_FORK else mask_heap_page(page, tag.blknum)


@dataclass
class OracleResult:
    compared: Counter = field(default_factory=Counter)  # record type -> consistency images compared
    mismatches: list = field(default_factory=list)  # (tag, lsn, record type, what)
    applied: int = 0  # records applied by the engine
    not_started: int = 0  # records before a page's first image / init (no known previous state)
    pages: dict = field(default_factory=dict)  # tag -> final reconstructed page
    last_check_image: dict = field(default_factory=dict)  # tag -> (end_lsn, last consistency image)

    @property
    def total_compared(self) -> int:
        return sum(self.compared.values())


def heap_tags(records) -> set[BufferTag]:
    """Pages of the heap and visibility-map forks that Heap/Heap2 records touch."""
    tags = set()
    for _s, _e, raw in records:
        rec = decode_record(raw, verify_crc=False)
        if rec.rmid in (RM_HEAP_ID, RM_HEAP2_ID):
            tags.update(b.tag for b in rec.blocks.values())
    return tags


def vm_truncations(records) -> dict[tuple[int, int, int], list[tuple[int, int]]]:
    """(spc, db, rel) -> [(end_lsn, new heap nblocks), ...] of the Storage/TRUNCATE records that cut a
    relation's visibility map."""
    out: dict = {}
    for _s, end, raw in records:
        if raw[17] == RM_SMGR_ID and raw[16] & 0xF0 == XLOG_SMGR_TRUNCATE:
            rec = decode_record(raw, verify_crc=False)
            if len(rec.main_data) >= _SMGR_TRUNCATE.size:
                blkno, spc, db, rel, flags = _SMGR_TRUNCATE.unpack_from(rec.main_data)
                if flags & SMGR_TRUNCATE_VM:
                    out.setdefault((spc, db, rel), []).append((end, blkno))
    return out


def truncate_vm_page(tag: BufferTag, page: bytes | None, nheapblocks: int) -> bytes | None:
    """The VM page ``tag`` after its relation's heap was cut to ``nheapblocks``: None when the page is
    past the new end of the map, else the page with the bits of the cut-off blocks cleared (exactly
    ``visibilitymap_prepare_truncate``'s rule; the page LSN is left alone, as in recovery)."""
    first = tag.blknum * HEAPBLOCKS_PER_VM_PAGE
    if nheapblocks <= first:
        return None
    if page is None or nheapblocks >= first + HEAPBLOCKS_PER_VM_PAGE:
        return page
    keep = nheapblocks - first
    byte, offset = 24 + keep // 4, (keep % 4) * 2
    buf = bytearray(page)
    buf[byte] &= (1 << offset) - 1
    buf[byte + 1 :] = bytes(len(buf) - byte - 1)
    return bytes(buf)


def replay(records, *, wal_log_hints: bool, keep_check_images: bool = False,
           max_mismatches: int = 50) -> OracleResult:
    """Replay ``(start_lsn, end_lsn, raw)`` records page by page; see the module docstring."""
    res = OracleResult()
    groups = group_by_page(records)
    wanted = heap_tags(records)
    truncs = vm_truncations(records)
    for tag, recs in groups.items():
        if tag not in wanted and tag.forknum != VM_FORK:
            continue  # index pages and the like (VM pages are here through implicit clears)
        state = None
        pending = list(truncs.get(tag[:3], ())) if tag.forknum == VM_FORK else []
        for end, raw in recs:
            while pending and pending[0][0] <= end:
                state = truncate_vm_page(tag, state, pending.pop(0)[1])
            rec = decode_record(raw, verify_crc=False)
            blk = None
            for b in rec.blocks.values():
                if b.tag == tag:
                    blk = b
                    break
            if state is None and (blk is None or not (blk.will_init or (blk.has_image and blk.apply_image))):
                res.not_started += 1
                continue
            name = record_name(rec.rmid, rec.info)
            try:
                state = apply_records(tag, state, [(end, raw)], wal_log_hints=wal_log_hints)
                res.applied += 1
            except RedoError as e:
                res.mismatches.append((tag, end, name, f"redo failed: {type(e).__name__}: {e}"))
                state = None
                if blk is not None and blk.has_image and not blk.apply_image:
                    state = blk.image()  # resynchronize on PostgreSQL's page
                if len(res.mismatches) >= max_mismatches:
                    return res
                continue
            if blk is not None and blk.has_image and not blk.apply_image:
                want = blk.image()
                if keep_check_images:
                    res.last_check_image[tag] = (end, want)
                res.compared[name] += 1
                if mask_page(tag, state) != mask_page(tag, want):
                    res.mismatches.append((tag, end, name, first_difference(state, want)))
                    state = want  # go on from PostgreSQL's page so one bug is reported once
                    if len(res.mismatches) >= max_mismatches:
                        return res
        for _lsn, nblocks in pending:
            state = truncate_vm_page(tag, state, nblocks)
        if state is not None:
            res.pages[tag] = state
    return res


def first_difference(a: bytes, b: bytes) -> str:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f"first difference at byte {i}: engine {a[i:i+8].hex()} postgres {b[i:i+8].hex()}"
    return "equal"
