"""The oracle: the engine's redo against a real PostgreSQL 15, byte for byte after PostgreSQL's masks.

For each configuration (default; data checksums; wal_compression pglz, lz4, zstd) a real cluster runs the
standard workload with ``wal_consistency_checking = 'heap,heap2'``. Every heap/VM page is replayed record
by record in WAL order (:mod:`oracle`; the replay is shared with tests/test_heapam.py and
tests/test_redo.py through the ``oracle_results`` fixture), and every consistency image PostgreSQL attached
is compared with the engine's page. After the clean shutdown every heap and VM page on disk must equal the
engine's final reconstruction, with the same LSN. Counts per record kind are printed (``pytest -s``).
"""

from __future__ import annotations

import pytest
from oracle import VM_FORK, truncate_vm_page

from walredo_template import BufferTag
from walredo_tools.walreader import format_lsn

CONFIG_NAMES = ["default", "checksums", "pglz", "lz4", "zstd"]
TOTALS: dict[str, int] = {}


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_oracle(oracle_results, name):
    res = oracle_results.get(name)
    print(f"\n[oracle {name}] {res.total_compared} consistency images compared, {res.total_applied} records "
          f"applied, {res.seeded} pages seeded from a consistency image, {res.not_started} applications "
          f"before a page's first image skipped, {res.truncated} pages truncated, "
          f"{len(res.mismatches)} mismatches, {len(res.errors)} errors")
    for kind, n in sorted(res.compared.items()):
        print(f"    {kind:36} {n:7}")
    for tag, lsn, kind, what in res.mismatches[:20]:
        print(f"    MISMATCH {kind} at {format_lsn(lsn)} on {tuple(tag)}: {what}")
    for tag, lsn, kind, exc in res.errors[:20]:
        print(f"    ERROR {kind} at {format_lsn(lsn)} on {tuple(tag)}: {type(exc).__name__}: {exc}")
    assert not res.mismatches, f"{len(res.mismatches)} mismatches in {name}"
    assert not res.errors, f"{len(res.errors)} redo errors in {name}"
    assert res.total_compared > 5000
    TOTALS[name] = res.total_compared

    # After the clean shutdown: every page on disk that the WAL built equals the engine's page, masked,
    # and carries exactly the LSN the engine stamped.
    disk = res.disk
    print(f"[oracle {name}] on disk: {disk.equal} pages equal, {disk.lsn_equal} with the same LSN, "
          f"{len(disk.mismatches)} differ, {disk.gone} of relations no longer on disk, "
          f"{len(disk.missing)} past a relation's end, {len(disk.not_rebuilt)} workload pages not rebuilt")
    for tag, what in disk.mismatches[:10]:
        print(f"    DISK MISMATCH {tuple(tag)}: {what}")
    assert not disk.mismatches
    assert not disk.lsn_mismatches, disk.lsn_mismatches[:10]
    assert not disk.missing, disk.missing[:10]  # truncations are applied: nothing is rebuilt past the end
    assert not disk.not_rebuilt, disk.not_rebuilt[:10]  # every used page of the workload's tables
    assert disk.equal > 100
    assert any(tag.forknum == VM_FORK for tag in res.pages)


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
