"""The oracle: replay a whole real-PostgreSQL 15 WAL capture through the engine and check every page.

Used by tests/test_oracle.py, tests/test_heapam.py, tests/test_redo.py, tests/test_capture_data.py,
scripts/capture-wal and scripts/bench_redo. Harness side only: nothing here runs in a walredo child.

:func:`replay` walks the records in WAL order the way a standby replays them, keeping the engine's own
state of every page of the relations the WAL touches through the rmgrs it is asked to follow (heap and
visibility-map pages by default; index, sequence and generic-WAL pages with ``pgcluster.ALL_RMGRS``). Each
record of those rmgrs is applied to every page it touches (its block references and the VM pages whose bits it clears
without referencing them, :func:`walredo_tools.walreader.pages_touched`), XLOG FPI / FPI_FOR_HINT to their
blocks, one ``apply_records`` call per record and page, each from the engine's previous result for that
page. Where a record carries PostgreSQL's consistency image of the page (``wal_consistency_checking``: an
image not flagged for apply), the engine's page and that image are compared masked by the record's rmgr
mask, as PostgreSQL does (``heap_mask``, ``btree_mask``…; LSN and checksum only for VM pages, stricter than
PostgreSQL's own check). The counts are
kept per record kind (:func:`record_kind`: ``Heap/UPDATE [block 1]``, ``Heap2/VISIBLE [vm page]``,
``Heap/DELETE [implicit vm clear]``…), and the LSN of every checked record is kept.

Where a page's state starts:

- a record that initializes it or carries an image to apply starts it;
- a page from before the capture (e.g. a catalog index page), first touched by a record without either, is *seeded*
  from that record's consistency image (counted in ``seeded``, not compared); without one it stays unknown
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
after its clean shutdown: masked by the page's access method, and ``pd_lsn`` exactly (no mask). Pages that
change without WAL (:func:`disk_exempt`: sequence pages, the SP-GiST metapage) are set aside in
``DiskCheck.exempt`` for their own tests. :func:`replay_capture` does both for a
:class:`pgcluster.WalCapture`. With ``keep_samples=N`` the replay also keeps up to N single-record redo
cases (page before, record) per :func:`sample_key`, for tests that mutate real records.
"""

from __future__ import annotations

import struct
from collections import Counter
from dataclasses import dataclass, field

from walredo_template import BufferTag
from walredo_template.pg.errors import RedoError
from walredo_template.pg.mask import mask_vm_page
from walredo_template.pg.xlogrecord import RM_HEAP2_ID, RM_HEAP_ID, RM_XLOG_ID, decode_record
from walredo_template.redo import RMGRS, apply_records
from walredo_template.redo import record_name as _record_name
from walredo_tools.walreader import HEAPBLOCKS_PER_VM_PAGE, pages_touched

MAIN_FORK = 0
VM_FORK = 2
RM_SMGR_ID = 2
XLOG_SMGR_TRUNCATE = 0x20
SMGR_TRUNCATE_HEAP = 0x0001
SMGR_TRUNCATE_VM = 0x0002
_SMGR_TRUNCATE = struct.Struct("<IIIIi")  # xl_smgr_truncate: blkno, spcNode, dbNode, relNode, flags
XLOG_OPS = {0xB0: "FPI", 0xA0: "FPI_FOR_HINT"}
HEAP_RMGRS = frozenset({RM_HEAP_ID, RM_HEAP2_ID})
RM_SEQ_ID = 15
RM_SPGIST_ID = 16


def record_name(rmid: int, info: int) -> str:
    """``Heap/INSERT+INIT``-style name of a record type, as pg_waldump prints it."""
    return _record_name(rmid, info)


def mask_page(tag: BufferTag, page: bytes, rmid: int = RM_HEAP_ID) -> bytes:
    """A masked copy of ``page`` by the mask of rmgr ``rmid`` (PostgreSQL's ``rm_mask``; the comparison of
    a consistency image uses the record's rmgr). Visibility-map pages: LSN and checksum only (stricter than
    PostgreSQL's heap_mask, which wipes the bitmap)."""
    if tag.forknum == VM_FORK:
        return mask_vm_page(page)
    buf = bytearray(page)
    RMGRS[rmid].mask(buf, tag.blknum)
    return bytes(buf)


def disk_exempt(tag: BufferTag, rmid: int | None) -> str | None:
    """Why a page on disk is not a WAL state and is not compared with the engine's last page, or None.

    Sequence pages: ``nextval`` logs ahead (SEQ_LOG_VALS) and then updates the page without WAL. The
    SP-GiST metapage: its cache of last-used pages is updated without WAL.
    """
    if rmid == RM_SEQ_ID:
        return "sequence page (nextval changes it between WAL records)"
    if rmid == RM_SPGIST_ID and tag.blknum == 0:
        return "SP-GiST metapage (unlogged last-used-page cache)"
    return None


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
    exempt: list = field(default_factory=list)  # (tag, engine page, disk page, why): see disk_exempt
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
    page_rmgr: dict = field(default_factory=dict)  # tag -> rmid of the last non-XLOG record applied to it
    last_check_image: dict = field(default_factory=dict)  # tag -> (end_lsn, last consistency image)
    samples: list = field(default_factory=list)  # (tag, page before, end_lsn, record, sample_key)
    disk: DiskCheck | None = None  # set by compare_disk / replay_capture

    @property
    def total_compared(self) -> int:
        return sum(self.compared.values())

    @property
    def total_applied(self) -> int:
        return sum(self.applied.values())

    def rmgr_kinds(self, prefix: str) -> tuple[dict[str, int], dict[str, int]]:
        """``(compared, applied)`` for the record kinds of one rmgr (``prefix``, e.g. ``"Btree/"``), sorted by
        kind, after asserting that none of its records mismatched PostgreSQL's image or failed."""
        mismatches = [m for m in self.mismatches if m[2].startswith(prefix)]
        errors = [e for e in self.errors if e[2].startswith(prefix)]
        assert not mismatches, mismatches[:5]
        assert not errors, errors[:5]
        return ({k: v for k, v in sorted(self.compared.items()) if k.startswith(prefix)},
                {k: v for k, v in sorted(self.applied.items()) if k.startswith(prefix)})


def heap_relations(records, rmgrs=HEAP_RMGRS) -> set[tuple[int, int, int]]:
    """(spc, db, rel) of every relation a record of ``rmgrs`` (default Heap/Heap2) references."""
    rels = set()
    for _s, _e, raw in records:
        if raw[17] in rmgrs:
            for b in decode_record(raw, verify_crc=False).blocks.values():
                rels.add((b.spcnode, b.dbnode, b.relnode))
    return rels


def heap_tags(records, rmgrs=HEAP_RMGRS) -> set[BufferTag]:
    """Pages that records of ``rmgrs`` (default Heap/Heap2: heap and visibility-map pages) reference."""
    tags = set()
    for _s, _e, raw in records:
        if raw[17] in rmgrs:
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
           max_failures: int = 50, rmgrs=HEAP_RMGRS) -> OracleResult:
    """Replay ``(start_lsn, end_lsn, raw)`` records in WAL order and compare; see the module docstring.

    ``rmgrs``: the rmgrs whose records are replayed (default Heap/Heap2; ``pgcluster.ALL_RMGRS`` for
    every relation page), with the XLOG FPIs of the relations they reference.

    ``wal_log_hints``: the cluster had data checksums or wal_log_hints on (passed to ``apply_records``).
    ``keep_check_images``: fill ``last_check_image``. ``keep_samples``: keep up to that many redo cases
    per :func:`sample_key` in ``samples``. Stops early after ``max_failures`` mismatches and errors.
    Never raises for the engine's :class:`RedoError` (recorded in ``errors``, and the page is
    resynchronized on PostgreSQL's image when the record has one); a record that does not decode raises
    ``InvalidRecord``.
    """
    res = OracleResult()
    rels = heap_relations(records, rmgrs)
    state = res.pages
    page_rmgr = res.page_rmgr
    per_key: Counter = Counter()
    for _start, end, raw in records:
        rmid = raw[17]
        if rmid == RM_SMGR_ID:
            trunc = _smgr_truncate(raw)
            if trunc is not None and trunc[0] in rels:
                res.truncated += _truncate(state, *trunc)
            continue
        if not (rmid in rmgrs or (rmid == RM_XLOG_ID and raw[16] & 0xF0 in XLOG_OPS)):
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
            if rmid != RM_XLOG_ID:
                page_rmgr[tag] = rmid
            if check:
                want = blk.image()
                if keep_check_images:
                    res.last_check_image[tag] = (end, want)
                res.compared[kind] += 1
                res.compared_at.add(end)
                a, b = mask_page(tag, page, rmid), mask_page(tag, want, rmid)
                if a != b:
                    res.mismatches.append((tag, end, kind, first_difference(a, b)))
                    state[tag] = want  # go on from PostgreSQL's page so one bug is reported once
                    if len(res.errors) + len(res.mismatches) >= max_failures:
                        return res
    return res


def compare_disk(res: OracleResult, disk_pages: dict, tables: dict | None = None,
                 rel_rmgr: dict | None = None) -> DiskCheck:
    """Compare ``res.pages`` with ``disk_pages`` (tag -> page after the clean shutdown), store and return
    the :class:`DiskCheck`. ``tables`` (name -> (spc, db, rel)): relations whose every used page on disk
    must have been rebuilt (a heap page that is all zeros, from a bulk extension that is not logged, and a
    VM page without bits may lack WAL). Each page is masked by the rmgr of the last record that changed it,
    else by ``rel_rmgr`` ((spc, db, rel) -> rmid, for pages only XLOG FPIs wrote), else as a heap page;
    pages :func:`disk_exempt` names are kept in ``exempt`` instead of compared."""
    out = DiskCheck()
    on_disk = {tag[:3] for tag in disk_pages}
    rel_rmgr = rel_rmgr or {}
    for tag, page in res.pages.items():
        disk = disk_pages.get(tag)
        if disk is None:
            if tag[:3] in on_disk:
                out.missing.append(tag)
            else:
                out.gone += 1
            continue
        rmid = res.page_rmgr.get(tag, rel_rmgr.get(tag[:3], RM_HEAP_ID))
        why = disk_exempt(tag, rmid)
        if why is not None:
            out.exempt.append((tag, page, disk, why))
            continue
        a, b = mask_page(tag, page, rmid), mask_page(tag, disk, rmid)
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
    kwargs.setdefault("rmgrs", cap.config.rmgrs)
    res = replay(cap.records, wal_log_hints=cap.config.checksums, **kwargs)
    compare_disk(res, cap.disk_pages, cap.tables, cap.rel_rmgr)
    return res


def report(name: str, res: OracleResult, *, limit: int = 20) -> str:
    """A readable summary of a replay: counts per record kind (compared / applied), every failure (up to
    ``limit`` each), and the disk check when there is one."""
    from walredo_tools.walreader import format_lsn

    lines = [f"[oracle {name}] {res.total_compared} consistency images compared, {res.total_applied} records "
             f"applied, {res.seeded} pages seeded, {res.not_started} applications before a page's start "
             f"skipped, {res.truncated} pages truncated, {len(res.mismatches)} mismatches, "
             f"{len(res.errors)} errors"]
    lines.append(f"    {'record kind':44} {'compared':>8} {'applied':>8}")
    for kind in sorted(set(res.compared) | set(res.applied)):
        lines.append(f"    {kind:44} {res.compared[kind]:8} {res.applied[kind]:8}")
    for tag, lsn, kind, what in res.mismatches[:limit]:
        lines.append(f"    MISMATCH {kind} at {format_lsn(lsn)} on {tuple(tag)}: {what}")
    for tag, lsn, kind, exc in res.errors[:limit]:
        lines.append(f"    ERROR {kind} at {format_lsn(lsn)} on {tuple(tag)}: {type(exc).__name__}: {exc}")
    disk = res.disk
    if disk is not None:
        lines.append(f"[oracle {name}] on disk: {disk.equal} pages equal, {disk.lsn_equal} with the same LSN, "
                     f"{len(disk.mismatches)} differ, {len(disk.lsn_mismatches)} LSNs differ, {len(disk.exempt)} "
                     f"exempt, {disk.gone} of relations no longer on disk, {len(disk.missing)} past a "
                     f"relation's end, {len(disk.not_rebuilt)} workload pages not rebuilt")
        for tag, what in disk.mismatches[:limit]:
            rmgr = record_name(res.page_rmgr.get(tag, RM_HEAP_ID), 0).split("/")[0]
            lines.append(f"    DISK MISMATCH {tuple(tag)} ({rmgr}): {what}")
        for tag, a, b in disk.lsn_mismatches[:limit]:
            lines.append(f"    DISK LSN {tuple(tag)}: engine {a} disk {b}")
    return "\n".join(lines)
