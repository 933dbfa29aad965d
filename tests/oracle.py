"""The oracle: replay a whole real-PostgreSQL 15 WAL capture through the engine and check every page.

Used by tests/test_oracle.py, tests/test_heapam.py, tests/test_redo.py, tests/test_capture_data.py,
scripts/capture-wal and scripts/bench_redo. Harness side only: nothing here runs in a walredo child.

:func:`replay` walks the records in WAL order the way a standby replays them, keeping the engine's own
state of every heap and visibility-map page of the heap relations the WAL touches. Each Heap/Heap2 record
is applied to every page it touches (its block references and the VM pages whose bits it clears without
referencing them, :func:`walredo_template.pg.walreader.pages_touched`), XLOG FPI / FPI_FOR_HINT to their
blocks, one ``apply_records`` call per record and page, each from the engine's previous result for that
page. Where a record carries PostgreSQL's consistency image of the page (``wal_consistency_checking``: an
image not flagged for apply), the engine's page and that image are compared masked (``heap_mask`` for
heap pages; LSN and checksum only for VM pages, stricter than PostgreSQL's own check). The counts are
kept per record kind (:func:`record_kind`: ``Heap/UPDATE [block 1]``, ``Heap2/VISIBLE [vm page]``,
``Heap/DELETE [implicit vm clear]``…), and the LSN of every checked record is kept.

Where a page's state starts:

- a record that initializes it or carries an image to apply starts it;
- a heap page from before the capture, first touched by a record without either, is *seeded* from that
  record's consistency image (counted in ``seeded``, not compared); without one it stays unknown
  (``not_started``) until a later record supplies it;
- a VM page referenced by a block (Heap2/VISIBLE) with no known state is redone from no page, which the
  engine reads as an initialized empty VM page as PostgreSQL's visibility map code does, and then
  compared; a VM page only reached through an implicit clear stays unknown.

Relation truncation (``Storage/TRUNCATE``, e.g. by VACUUM) is applied here, on the harness side, as
Neon's pageserver does at WAL ingest rather than in walredo: it references no block, yet its redo drops
the heap pages past the new end and clears the VM bits of the cut-off heap blocks in the last remaining VM
page (``visibilitymap_prepare_truncate``; logged as an FPI only when hint bits are WAL-logged), dropping
the VM pages past the new end of the map.

:func:`compare_disk` then compares every page the engine followed with the page PostgreSQL left on disk
after its clean shutdown: masked, and ``pd_lsn`` exactly (no mask). :func:`replay_capture` does both for a
:class:`pgcluster.WalCapture`. With ``keep_samples=N`` the replay also keeps up to N single-record redo
cases (page before, record) per :func:`sample_key`, for tests that mutate real records.
"""

from __future__ import annotations

import struct
from collections import Counter
from dataclasses import dataclass, field

from walredo_template import BufferTag
from walredo_template.pg import heapam
from walredo_template.pg.capture import masked as mask_page  # the one masking rule the harnesses share
from walredo_template.pg.errors import RedoError
from walredo_template.pg.walreader import HEAPBLOCKS_PER_VM_PAGE, pages_touched
from walredo_template.pg.xlogrecord import RM_HEAP2_ID, RM_HEAP_ID, RM_XLOG_ID, decode_record
from walredo_template.redo import apply_records

MAIN_FORK = 0
VM_FORK = 2
RM_SMGR_ID = 2
XLOG_SMGR_TRUNCATE = 0x20
SMGR_TRUNCATE_HEAP = 0x0001
SMGR_TRUNCATE_VM = 0x0002
_SMGR_TRUNCATE = struct.Struct("<IIIIi")  # xl_smgr_truncate: blkno, spcNode, dbNode, relNode, flags
XLOG_OPS = {0xB0: "FPI", 0xA0: "FPI_FOR_HINT"}


def record_name(rmid: int, info: int) -> str:
    """``Heap/INSERT+INIT``-style name of a record type, as pg_waldump prints it."""
    if rmid in (RM_HEAP_ID, RM_HEAP2_ID):
        return heapam.record_name(rmid, info)
    if rmid == RM_XLOG_ID:
        return "XLOG/" + XLOG_OPS.get(info & 0xF0, f"{info & 0xF0:#04x}")
    return f"rmgr{rmid}/{info:#04x}"


def record_kind(rec, blk, tag: BufferTag) -> str:
    """The record's name plus which page of it: ``[block N]`` for a heap page that is not block 0,
    ``[vm page]`` for a referenced VM page, ``[implicit vm clear]`` for a VM page the record clears bits of
    without referencing it (``blk`` is None)."""
    name = record_name(rec.rmid, rec.info)
    if tag.forknum == VM_FORK:
        return name + (" [vm page]" if blk is not None else " [implicit vm clear]")
    if blk is not None and blk.block_id:
        return name + f" [block {blk.block_id}]"
    return name


def sample_key(rec, blk, tag: BufferTag) -> tuple:
    """How :func:`replay` tells redo cases apart for ``keep_samples``: (rmid, info & 0xF0, fork, block id
    or None for an implicit VM clear, number of block references)."""
    return (rec.rmid, rec.info & 0xF0, tag.forknum, blk.block_id if blk is not None else None, len(rec.blocks))


def first_difference(a: bytes, b: bytes) -> str:
    n = sum(1 for x, y in zip(a, b) if x != y)
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f"{n} bytes differ, first at {i}: engine {a[i:i+8].hex()} postgres {b[i:i+8].hex()}"
    return "equal"


@dataclass
class DiskCheck:
    """The engine's final pages against the pages on disk after the clean shutdown."""

    equal: int = 0  # pages equal after masking
    mismatches: list = field(default_factory=list)  # (tag, what)
    lsn_equal: int = 0  # pages whose pd_lsn equals the disk page's exactly (no mask)
    lsn_mismatches: list = field(default_factory=list)  # (tag, engine lsn, disk lsn)
    gone: int = 0  # pages of relations with no page on disk at all (dropped or rewritten since)
    missing: list = field(default_factory=list)  # pages rebuilt past the end of a relation still on disk
    not_rebuilt: list = field(default_factory=list)  # used pages of the workload's tables the WAL never built


@dataclass
class OracleResult:
    compared: Counter = field(default_factory=Counter)  # record kind -> consistency images compared
    applied: Counter = field(default_factory=Counter)  # record kind -> records applied by the engine
    compared_at: set = field(default_factory=set)  # end LSNs of the records whose images were compared
    mismatches: list = field(default_factory=list)  # (tag, end_lsn, kind, what): engine page != image
    errors: list = field(default_factory=list)  # (tag, end_lsn, kind, exception): the engine raised
    not_started: int = 0  # record applications skipped: the page's state was not known yet
    seeded: int = 0  # heap pages whose state started from a consistency image (not compared)
    truncated: int = 0  # pages dropped by Storage/TRUNCATE
    pages: dict = field(default_factory=dict)  # tag -> final reconstructed page
    last_check_image: dict = field(default_factory=dict)  # tag -> (end_lsn, last consistency image)
    samples: list = field(default_factory=list)  # (tag, page before, end_lsn, record, sample_key)
    disk: DiskCheck | None = None  # set by compare_disk / replay_capture

    @property
    def total_compared(self) -> int:
        return sum(self.compared.values())

    @property
    def total_applied(self) -> int:
        return sum(self.applied.values())


def heap_relations(records) -> set[tuple[int, int, int]]:
    """(spc, db, rel) of every relation a Heap/Heap2 record references."""
    rels = set()
    for _s, _e, raw in records:
        if raw[17] in (RM_HEAP_ID, RM_HEAP2_ID):
            for b in decode_record(raw, verify_crc=False).blocks.values():
                rels.add((b.spcnode, b.dbnode, b.relnode))
    return rels


def heap_tags(records) -> set[BufferTag]:
    """Pages of the heap and visibility-map forks that Heap/Heap2 records reference."""
    tags = set()
    for _s, _e, raw in records:
        if raw[17] in (RM_HEAP_ID, RM_HEAP2_ID):
            tags.update(b.tag for b in decode_record(raw, verify_crc=False).blocks.values())
    return tags


def vm_truncations(records) -> dict[tuple[int, int, int], list[tuple[int, int]]]:
    """(spc, db, rel) -> [(end_lsn, new heap nblocks), ...] of the Storage/TRUNCATE records that cut a
    relation's visibility map."""
    out: dict = {}
    for _s, end, raw in records:
        trunc = _smgr_truncate(raw)
        if trunc is not None and trunc[2] & SMGR_TRUNCATE_VM:
            out.setdefault(trunc[0], []).append((end, trunc[1]))
    return out


def _smgr_truncate(raw: bytes) -> tuple[tuple[int, int, int], int, int] | None:
    """((spc, db, rel), new nblocks, flags) of a Storage/TRUNCATE record, else None."""
    if raw[17] != RM_SMGR_ID or raw[16] & 0xF0 != XLOG_SMGR_TRUNCATE:
        return None
    main = decode_record(raw, verify_crc=False).main_data
    if len(main) < _SMGR_TRUNCATE.size:
        return None
    blkno, spc, db, rel, flags = _SMGR_TRUNCATE.unpack_from(main)
    return (spc, db, rel), blkno, flags


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


def _truncate(state: dict, rel: tuple[int, int, int], nblocks: int, flags: int) -> int:
    """Apply a Storage/TRUNCATE to the followed pages; returns how many pages it dropped."""
    dropped = 0
    for tag in [t for t in state if t[:3] == rel]:
        if tag.forknum == VM_FORK and flags & SMGR_TRUNCATE_VM:
            page = truncate_vm_page(tag, state[tag], nblocks)
        elif tag.forknum == MAIN_FORK and flags & SMGR_TRUNCATE_HEAP and tag.blknum >= nblocks:
            page = None
        else:
            continue
        if page is None:
            del state[tag]
            dropped += 1
        else:
            state[tag] = page
    return dropped


def replay(records, *, wal_log_hints: bool, keep_check_images: bool = False, keep_samples: int = 0,
           max_failures: int = 50) -> OracleResult:
    """Replay ``(start_lsn, end_lsn, raw)`` records in WAL order and compare; see the module docstring.

    ``wal_log_hints``: the cluster had data checksums or wal_log_hints on (passed to ``apply_records``).
    ``keep_check_images``: fill ``last_check_image``. ``keep_samples``: keep up to that many redo cases
    per :func:`sample_key` in ``samples``. Stops early after ``max_failures`` mismatches and errors.
    Never raises for the engine's :class:`RedoError` (recorded in ``errors``, and the page is
    resynchronized on PostgreSQL's image when the record has one); a record that does not decode raises
    ``InvalidRecord``.
    """
    res = OracleResult()
    rels = heap_relations(records)
    state = res.pages
    per_key: Counter = Counter()
    for _start, end, raw in records:
        rmid = raw[17]
        if rmid == RM_SMGR_ID:
            trunc = _smgr_truncate(raw)
            if trunc is not None and trunc[0] in rels:
                res.truncated += _truncate(state, *trunc)
            continue
        if not (rmid in (RM_HEAP_ID, RM_HEAP2_ID) or (rmid == RM_XLOG_ID and raw[16] & 0xF0 in XLOG_OPS)):
            continue
        rec = decode_record(raw, verify_crc=False)
        for tag in pages_touched(raw):
            if tag[:3] not in rels or tag.forknum not in (MAIN_FORK, VM_FORK):
                continue  # index pages, FSM pages
            blk = None
            for b in rec.blocks.values():
                if b.tag == tag:
                    blk = b
                    break
            check = blk is not None and blk.has_image and not blk.apply_image
            base = state.get(tag)
            if base is None and not (blk is not None and (blk.will_init or (blk.has_image and blk.apply_image))):
                if tag.forknum == MAIN_FORK and check:
                    state[tag] = blk.image()
                    res.seeded += 1
                    continue
                if tag.forknum == MAIN_FORK or blk is None:
                    res.not_started += 1
                    continue
            kind = record_kind(rec, blk, tag)
            if keep_samples:
                key = sample_key(rec, blk, tag)
                if per_key[key] < keep_samples:
                    per_key[key] += 1
                    res.samples.append((tag, base, end, raw, key))
            try:
                page = apply_records(tag, base, [(end, raw)], wal_log_hints=wal_log_hints)
            except RedoError as e:
                res.errors.append((tag, end, kind, e))
                if check:
                    state[tag] = blk.image()  # resynchronize on PostgreSQL's page
                else:
                    state.pop(tag, None)
                if len(res.errors) + len(res.mismatches) >= max_failures:
                    return res
                continue
            res.applied[kind] += 1
            state[tag] = page
            if check:
                want = blk.image()
                if keep_check_images:
                    res.last_check_image[tag] = (end, want)
                res.compared[kind] += 1
                res.compared_at.add(end)
                a, b = mask_page(tag, page), mask_page(tag, want)
                if a != b:
                    res.mismatches.append((tag, end, kind, first_difference(a, b)))
                    state[tag] = want  # go on from PostgreSQL's page so one bug is reported once
                    if len(res.errors) + len(res.mismatches) >= max_failures:
                        return res
    return res


def compare_disk(res: OracleResult, disk_pages: dict, tables: dict | None = None) -> DiskCheck:
    """Compare ``res.pages`` with ``disk_pages`` (tag -> page after the clean shutdown), store and return
    the :class:`DiskCheck`. ``tables`` (name -> (spc, db, rel)): relations whose every used page on disk
    must have been rebuilt (a heap page that is all zeros, from a bulk extension that is not logged, and a
    VM page without bits may lack WAL)."""
    out = DiskCheck()
    on_disk = {tag[:3] for tag in disk_pages}
    for tag, page in res.pages.items():
        disk = disk_pages.get(tag)
        if disk is None:
            if tag[:3] in on_disk:
                out.missing.append(tag)
            else:
                out.gone += 1
            continue
        a, b = mask_page(tag, page), mask_page(tag, disk)
        if a == b:
            out.equal += 1
        else:
            out.mismatches.append((tag, first_difference(a, b)))
        if page[:8] == disk[:8]:
            out.lsn_equal += 1
        else:
            out.lsn_mismatches.append((tag, page[:8].hex(), disk[:8].hex()))
    wanted = set((tables or {}).values())
    for tag, disk in disk_pages.items():
        if tag[:3] in wanted and tag not in res.pages:
            if any(disk) if tag.forknum == MAIN_FORK else any(disk[24:]):
                out.not_rebuilt.append(tag)
    res.disk = out
    return out


def replay_capture(cap, **kwargs) -> OracleResult:
    """:func:`replay` of a :class:`pgcluster.WalCapture` (``wal_log_hints`` from its configuration), then
    :func:`compare_disk` with its disk pages and tables. ``kwargs`` go to :func:`replay`."""
    res = replay(cap.records, wal_log_hints=cap.config.checksums, **kwargs)
    compare_disk(res, cap.disk_pages, cap.tables)
    return res
