"""Heap and Heap2 redo checked record by record against a real PostgreSQL 15.

The ``default`` capture runs with ``wal_consistency_checking = 'heap,heap2'``, so every heap record carries
PostgreSQL's own page after the record; :func:`oracle.replay_capture` replays the WAL through the engine
and compares (the ``oracle_results`` session fixture: one replay per configuration, shared with
tests/test_oracle.py). The ``checksums`` capture adds FPI_FOR_HINT records and VISIBLE stamping the heap
page's LSN. The default workload includes partition moves and TOAST tables (``pgcluster.EXTRA_SQL``).
"""

from __future__ import annotations

import pytest
from oracle import replay

from walredo_template.pg import heapam
from walredo_template.pg.mask import mask_heap_page
from walredo_template.pg.xlogrecord import decode_record
from walredo_template.redo import apply_records
from walredo_tools.walreader import pages_touched

# Every record kind the engine must handle, as oracle.record_kind names them.
REQUIRED_KINDS = [
    "Heap/INSERT", "Heap/INSERT+INIT", "Heap/DELETE", "Heap/UPDATE", "Heap/UPDATE [block 1]",
    "Heap/UPDATE+INIT", "Heap/UPDATE+INIT [block 1]", "Heap/HOT_UPDATE", "Heap/LOCK", "Heap/CONFIRM",
    "Heap/INPLACE", "Heap2/PRUNE", "Heap2/VACUUM", "Heap2/FREEZE_PAGE", "Heap2/VISIBLE [block 1]",
    "Heap2/VISIBLE [vm page]", "Heap2/MULTI_INSERT", "Heap2/MULTI_INSERT+INIT", "Heap2/LOCK_UPDATED",
]


@pytest.fixture(scope="module")
def default_chain(oracle_results):
    return oracle_results.get("default")


def test_every_heap_record_matches_postgres_consistency_image(default_chain):
    res = default_chain
    assert res.errors == []
    assert res.mismatches == []
    for kind in REQUIRED_KINDS:
        assert res.compared[kind] > 0, f"no {kind} compared: {dict(res.compared)}"
    total = sum(res.compared.values())
    print(f"\ncompared {total} images, 0 mismatches: {dict(sorted(res.compared.items()))}")
    assert total > 10_000


def test_pages_on_disk_equal_the_replayed_pages(default_chain):
    disk = default_chain.disk
    assert disk.mismatches == [] and disk.missing == [] and disk.not_rebuilt == []
    assert disk.equal > 1000
    # pd_lsn is not masked here: each page's LSN is exactly the one PostgreSQL wrote
    assert disk.lsn_mismatches == [] and disk.lsn_equal == disk.equal
    vm_pages = sum(1 for tag in default_chain.pages if tag.forknum == 2)
    assert vm_pages > 0


def test_implicit_vm_clears_were_replayed(default_chain):
    # The VM pages reached through heap records (no VM block reference) were applied, and the disk
    # comparison above then covers their bits.
    implicit = {k: v for k, v in default_chain.applied.items() if k.endswith("[implicit vm clear]")}
    assert sum(implicit.values()) > 0, dict(default_chain.applied)
    for kind in ("Heap/UPDATE", "Heap/DELETE", "Heap/LOCK"):
        assert implicit.get(kind + " [implicit vm clear]", 0) > 0, implicit


def test_prefix_and_suffix_compressed_updates_were_compared(default_capture, default_chain):
    flags = [(decode_record(r).main_data[7], e) for _s, e, r in default_capture.records
             if r[17] == 10 and r[16] & 0x70 in (0x20, 0x40)]
    for bit in (heapam.XLH_UPDATE_PREFIX_FROM_OLD, heapam.XLH_UPDATE_SUFFIX_FROM_OLD):
        assert any(f & bit and e in default_chain.compared_at for f, e in flags)


def test_checksums_cluster_matches_too(oracle_results):
    res = oracle_results.get("checksums")
    assert res.errors == []
    assert res.mismatches == []
    assert res.disk.mismatches == []
    assert res.disk.lsn_mismatches == []  # VISIBLE stamps the heap page's LSN here (wal_log_hints)
    print(f"\nchecksums: compared {sum(res.compared.values())} images, 0 mismatches")
    assert sum(res.compared.values()) > 10_000
    assert res.applied["XLOG/FPI_FOR_HINT"] + res.applied["XLOG/FPI"] > 0


def _find(cap, rmid, op, pred=lambda rec: True):
    for s, e, raw in cap.records:
        rec = decode_record(raw)
        if rec.rmid == rmid and rec.info & 0x70 == op and pred(rec):
            yield s, e, raw, rec


def test_update_redoes_only_the_requested_page(default_capture, default_chain):
    # A cross-page UPDATE: asking for the old page must leave the new tuple out, and vice versa.
    s, e, raw, rec = next(_find(default_capture, 10, heapam.XLOG_HEAP_UPDATE,
                                lambda r: 1 in r.blocks and not r.blocks[1].apply_image
                                and not r.blocks[0].apply_image and not r.info & 0x80))
    old_blk, new_blk = rec.blocks[1], rec.blocks[0]
    old_after = old_blk.image()
    new_after = new_blk.image()
    # Rebuild each page's state before the record: replay the records of these two pages up to it.
    tags = {old_blk.tag, new_blk.tag}
    st = replay([r for r in default_capture.records if r[0] < s and tags.intersection(pages_touched(r[2]))],
                wal_log_hints=False).pages
    out_old = apply_records(old_blk.tag, st[old_blk.tag], [(e, raw)])
    out_new = apply_records(new_blk.tag, st[new_blk.tag], [(e, raw)])
    assert mask_heap_page(out_old, old_blk.blkno) == mask_heap_page(old_after, old_blk.blkno)
    assert mask_heap_page(out_new, new_blk.blkno) == mask_heap_page(new_after, new_blk.blkno)
    assert out_old != st[old_blk.tag] and out_new != st[new_blk.tag]


def test_vm_block_is_derived_from_the_heap_block():
    from walredo_template.pg import visibilitymap as vm

    assert vm.HEAPBLOCKS_PER_PAGE == 32672
    assert vm.vm_block_of(32671) == 0 and vm.vm_block_of(32672) == 1
    page = bytearray(8192)
    from walredo_template.pg.page import page_init

    page_init(page)
    assert vm.set_bits(page, 32672 + 5, 3)
    assert page[24 + 1] == 0b11 << 2
    assert not vm.set_bits(page, 32672 + 5, 3)  # already set: no change, no LSN bump
    assert vm.clear_bits(page, 32672 + 5, vm.VISIBILITYMAP_ALL_FROZEN)
    assert vm.get_bits(page, 5) == vm.VISIBILITYMAP_ALL_VISIBLE
    assert not vm.clear_bits(page, 6, 3)


def test_partition_move_toast_and_vm_workload(default_capture, default_chain):
    """DELETE with XLH_DELETE_IS_PARTITION_MOVE (a row moving partitions), TOAST tables, VM clears after
    VACUUM (FREEZE) (``pgcluster.EXTRA_SQL``, part of the default workload): each partition-move DELETE's
    consistency image was compared, and the tables' pages on disk equal the engine's (checked above)."""
    moves = []
    for _s, e, raw in default_capture.records:
        if raw[17] == 10 and raw[16] & 0x70 == heapam.XLOG_HEAP_DELETE:
            if decode_record(raw).main_data[7] & heapam.XLH_DELETE_IS_PARTITION_MOVE:
                moves.append(e)
    assert len(moves) >= 60
    assert all(e in default_chain.compared_at for e in moves)
    for name in ("p1", "p2", "big"):
        rel = default_capture.tables[name]
        assert any(tag[:3] == rel for tag in default_chain.pages), name
