"""The oracle: the engine's redo against a real PostgreSQL 15, byte for byte after PostgreSQL's masks.

For each configuration (default; data checksums; wal_compression pglz, lz4, zstd) a real cluster runs the
standard workload with ``wal_consistency_checking = 'heap,heap2'``. Every heap/VM page is replayed record
by record from its first image or initializing record (:mod:`oracle`), and every consistency image
PostgreSQL attached is compared with the engine's page. After the clean shutdown every heap and VM page
on disk must equal the engine's final reconstruction. Counts per record type are printed (``pytest -s``).
"""

from __future__ import annotations

import pytest

from oracle import VM_FORK, first_difference, mask_page, replay, truncate_vm_page
from walredo_template import BufferTag
from walredo_template.pg.walreader import HEAPBLOCKS_PER_VM_PAGE, format_lsn

CONFIG_NAMES = ["default", "checksums", "pglz", "lz4", "zstd"]
TOTALS: dict[str, int] = {}


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_oracle(wal_captures, name):
    cap = wal_captures.get(name)
    res = replay(cap.records, wal_log_hints=cap.config.checksums)
    print(f"\n[oracle {name}] {res.total_compared} consistency images compared, {res.applied} records applied, "
          f"{res.not_started} records before a page's first image skipped, {len(res.mismatches)} mismatches")
    for kind, n in sorted(res.compared.items()):
        print(f"    {kind:28} {n:7}")
    for tag, lsn, kind, what in res.mismatches[:20]:
        print(f"    MISMATCH {kind} at {format_lsn(lsn)} on {tuple(tag)}: {what}")
    assert not res.mismatches, f"{len(res.mismatches)} mismatches in {name}"
    assert res.total_compared > 5000
    TOTALS[name] = res.total_compared

    # After the clean shutdown: every page on disk that the WAL built equals the engine's page.
    nblocks: dict[tuple, int] = {}
    for tag in cap.disk_pages:
        if tag.forknum == 0:
            key = (tag.spcnode, tag.dbnode, tag.relnode)
            nblocks[key] = max(nblocks.get(key, 0), tag.blknum + 1)
    compared = truncated = 0
    bad = []
    for tag, page in res.pages.items():
        disk = cap.disk_pages.get(tag)
        if disk is None:
            # Only pages cut off by a VACUUM truncation may be missing on disk.
            rel = (tag.spcnode, tag.dbnode, tag.relnode)
            limit = nblocks.get(rel, 0)
            if tag.forknum == VM_FORK:
                limit = (limit + HEAPBLOCKS_PER_VM_PAGE - 1) // HEAPBLOCKS_PER_VM_PAGE
            assert tag.blknum >= limit, f"page {tuple(tag)} reconstructed but missing on disk"
            truncated += 1
            continue
        ok = mask_page(tag, page) == mask_page(tag, disk)
        compared += 1
        if not ok:
            bad.append((tag, first_difference(page, disk)))
    # Every page of the workload's own tables (created during the run) must have been rebuilt.
    missing = []
    for rel in cap.tables.values():
        for tag in cap.disk_pages:
            if (tag.spcnode, tag.dbnode, tag.relnode) == rel and tag not in res.pages:
                # Only never-used pages may lack WAL: all-zero heap pages from a bulk extension
                # (RelationAddExtraBlocks under contention; not logged) and VM pages without bits.
                disk = cap.disk_pages[tag]
                if any(disk) if tag.forknum == 0 else any(disk[24:]):
                    missing.append(tag)
    print(f"[oracle {name}] on disk: {compared} pages compared, {truncated} truncated away, "
          f"{len(bad)} differ, {len(missing)} workload pages not rebuilt")
    for tag, what in bad[:10]:
        print(f"    DISK MISMATCH {tuple(tag)}: {what}")
    assert not bad
    assert not missing, missing[:10]
    assert compared > 100


def test_oracle_total():
    """Runs after the per-configuration tests (file order): at least 20,000 images compared in all."""
    print(f"\n[oracle] total consistency images compared: {sum(TOTALS.values())} {TOTALS}")
    assert set(TOTALS) == set(CONFIG_NAMES), "run the whole file: the total needs every configuration"
    assert sum(TOTALS.values()) >= 20_000


def test_truncate_vm_page_clears_cut_off_blocks():
    page = bytearray(8192)
    page[24] = 0b11_10_01_11  # heap blocks 0..3
    page[25] = 0xFF
    page[8000] = 0xFF
    tag = BufferTag(1, 2, 3, VM_FORK, 0)
    cut = truncate_vm_page(tag, bytes(page), 3)
    assert cut[24] == 0b00_10_01_11 and not any(cut[25:])
    assert truncate_vm_page(tag, bytes(page), 8)[24:26] == bytes(page[24:26])
    assert truncate_vm_page(tag, bytes(page), 0) is None
    assert truncate_vm_page(tag, bytes(page), 32672) == bytes(page)
    assert truncate_vm_page(tag._replace(blknum=1), bytes(page), 32672) is None
    assert truncate_vm_page(tag, None, 5) is None
