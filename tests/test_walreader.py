"""WAL reading against real PostgreSQL 15 WAL, cross-checked with pg_waldump, plus corrupted copies."""

from __future__ import annotations

import os
import re
import shutil
import struct

import pytest

from walredo_template import BufferTag
from walredo_template.pg.errors import InvalidWal
from walredo_template.pg.xlogrecord import decode_record
from walredo_tools.walreader import (
    WalReader,
    format_lsn,
    group_by_page,
    pages_touched,
    parse_lsn,
)

_LSN = re.compile(r"lsn: ([0-9A-F]+/[0-9A-F]+), prev ([0-9A-F]+/[0-9A-F]+)")


def _waldump_lsns(lines):
    return [parse_lsn(m.group(1)) for m in map(_LSN.search, lines) if m]


def test_lsn_format_roundtrip():
    for lsn in (0, 0x16D3F08, 0x1_0000_0028, 0xFFFFFFFF_FFFFFFF8):
        assert parse_lsn(format_lsn(lsn)) == lsn
    assert format_lsn(0x100600808) == "1/600808"


def test_reads_every_record_pg_waldump_sees(default_capture):
    cap = default_capture
    starts = [s for s, _e, _r in cap.records]
    assert starts == _waldump_lsns(cap.waldump)
    assert len(starts) > 10_000
    # WAL ends at zeros: a zero record length, or a zeroed page if the last record filled its page.
    assert cap.end_reason.startswith(("zero record length", "zeroed page")), cap.end_reason


def test_end_lsns_chain_and_are_aligned(default_capture):
    recs = default_capture.records
    ps, ss = default_capture.page_size, default_capture.segment_size
    crossing_pages = crossing_segments = 0
    for (s, e, _raw), (s2, _e2, _r2) in zip(recs, recs[1:]):
        assert e % 8 == 0 and e > s
        # The next record starts at our end, or just past the page header if we ended on a page boundary.
        if e % ps == 0:
            assert s2 == e + (40 if e % ss == 0 else 24)
        else:
            assert s2 == e
        if s // ps != (e - 1) // ps:
            crossing_pages += 1
        if s // ss != (e - 1) // ss:
            crossing_segments += 1
        assert struct.unpack_from("<Q", _r2, 8)[0] == s  # xl_prev links
    assert crossing_pages > 100 and crossing_segments > 10


def test_group_by_page_matches_block_refs(default_capture):
    recs = default_capture.records[:5000]
    groups = group_by_page(recs)
    total_refs = 0
    for _s, e, raw in recs:
        rec = decode_record(raw)
        for b in rec.blocks.values():
            assert (e, raw) in groups[b.tag]
            total_refs += 1
    assert sum(len(v) for v in groups.values()) >= total_refs
    # The visibility-map pages get the heap records that clear their bits implicitly.
    t = default_capture.tables["t"]
    vm0 = BufferTag(*t, 2, 0)
    assert vm0 in group_by_page(default_capture.records)


def test_pages_touched_includes_vm_page_for_cleared_bits(default_capture):
    found = 0
    for _s, _e, raw in default_capture.records:
        rec = decode_record(raw)
        if rec.rmid == 10 and rec.info & 0x70 == 0x10 and rec.main_data[7] & 0x01:  # DELETE, VM cleared
            b = rec.blocks[0]
            tags = pages_touched(raw)
            assert BufferTag(b.spcnode, b.dbnode, b.relnode, 2, b.blkno // 32672) in tags
            assert pages_touched(raw, include_vm_clears=False) == [b.tag]
            found += 1
    assert found > 0


# -- the small directory, and corrupted copies of it ---------------------------------------------------

def _copy(small_wal, tmp_path):
    src, start, lines = small_wal
    dst = tmp_path / "pg_wal"
    shutil.copytree(src, dst)
    return dst, start, lines


def _segment_of(wal_dir, lsn, segsize=1 << 20):
    segno = lsn // segsize
    name = f"{1:08X}{segno // (0x100000000 // segsize):08X}{segno % (0x100000000 // segsize):08X}"
    return os.path.join(wal_dir, name), lsn % segsize


def test_small_wal_matches_waldump(small_wal):
    wal_dir, start, lines = small_wal
    reader = WalReader(wal_dir, start_lsn=start)
    recs = list(reader)
    assert [s for s, _e, _r in recs] == _waldump_lsns(lines)
    assert reader.segment_size == 1 << 20 and reader.page_size == 8192
    # Default start: the first record of the oldest segment; must reach the same end.
    reader2 = WalReader(wal_dir)
    recs2 = list(reader2)
    assert recs2[-1] == recs[-1] and len(recs2) > len(recs)


def test_other_version_magic_is_named(small_wal, tmp_path):
    wal_dir, start, _ = _copy(small_wal, tmp_path)
    for name in sorted(os.listdir(wal_dir)):
        if len(name) == 24:
            with open(wal_dir / name, "r+b") as f:
                f.write(struct.pack("<H", 0xD113))  # PostgreSQL 16's magic
    with pytest.raises(InvalidWal, match="PostgreSQL 16"):
        list(WalReader(wal_dir, start_lsn=start))


def test_corrupt_record_ends_wal_or_raises_when_strict(small_wal, tmp_path):
    wal_dir, start, _ = _copy(small_wal, tmp_path)
    good = list(WalReader(wal_dir, start_lsn=start))
    victim = next(i for i in range(len(good) // 2, len(good)) if len(good[i][2]) > 40
                  and good[i][0] // 8192 == (good[i][0] + 31) // 8192)  # byte 30 on the record's first page
    victim_start, _e, raw = good[victim]
    path, off = _segment_of(wal_dir, victim_start)
    with open(path, "r+b") as f:
        f.seek(off + 30)
        b = f.read(1)
        f.seek(off + 30)
        f.write(bytes([b[0] ^ 0xFF]))
    reader = WalReader(wal_dir, start_lsn=start)
    got = list(reader)
    assert got == good[:victim]
    assert "checksum" in reader.end_reason and reader.end_lsn == victim_start
    with pytest.raises(InvalidWal, match="checksum"):
        list(WalReader(wal_dir, start_lsn=start, strict=True))


def test_missing_segment_ends_wal(small_wal, tmp_path):
    wal_dir, start, _ = _copy(small_wal, tmp_path)
    good = list(WalReader(wal_dir, start_lsn=start))
    last_seg = good[-1][0] // (1 << 20)
    path, _ = _segment_of(wal_dir, last_seg << 20)
    os.unlink(path)
    reader = WalReader(wal_dir, start_lsn=start)
    got = list(reader)
    assert got and got == good[: len(got)] and len(got) < len(good)
    assert "not present" in reader.end_reason


def test_recycled_page_address_ends_wal(small_wal, tmp_path):
    wal_dir, start, _ = _copy(small_wal, tmp_path)
    good = list(WalReader(wal_dir, start_lsn=start))
    # Find a page boundary crossed by a record in the middle and give that page a stale address.
    ps = 8192
    for s, e, _raw in good[len(good) // 2 :]:
        if s // ps != (e - 1) // ps:
            page = (s // ps + 1) * ps
            break
    path, off = _segment_of(wal_dir, page)
    with open(path, "r+b") as f:
        f.seek(off + 8)
        f.write(struct.pack("<Q", page - (1 << 20)))
    reader = WalReader(wal_dir, start_lsn=start)
    got = list(reader)
    assert got == [r for r in good if r[0] < s]
    assert "address" in reader.end_reason
    with pytest.raises(InvalidWal):
        # strict mode still treats a recycled page as the end (that is how WAL ends), so force an invalid
        # continuation flag instead
        with open(path, "r+b") as f:
            f.seek(off + 8)
            f.write(struct.pack("<Q", page))
            f.seek(off + 2)
            f.write(struct.pack("<H", 0))  # clear XLP_FIRST_IS_CONTRECORD
        list(WalReader(wal_dir, start_lsn=start, strict=True))


def test_no_segments_is_invalid_wal(tmp_path):
    with pytest.raises(InvalidWal, match="no WAL segment"):
        WalReader(tmp_path)


def test_truncated_segment_is_invalid_wal(small_wal, tmp_path):
    wal_dir, start, _ = _copy(small_wal, tmp_path)
    path, _ = _segment_of(wal_dir, start)
    with open(path, "r+b") as f:
        f.truncate(100_000)
    with pytest.raises(InvalidWal, match="segment size"):
        list(WalReader(wal_dir, start_lsn=start))


def test_random_corruption_yields_a_prefix_or_invalid_wal(small_wal, tmp_path):
    """Flipped bytes anywhere in the WAL in use: the reader yields a prefix of the good records and stops
    (or raises InvalidWal); never another exception, never a record that was not in the WAL."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    wal_dir, start, _ = _copy(small_wal, tmp_path)
    good = list(WalReader(wal_dir, start_lsn=start))
    end = good[-1][1]

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(st.tuples(st.integers(start, end - 1), st.integers(1, 255)), min_size=1, max_size=3))
    def check(flips):
        saved = []
        try:
            for lsn, xor in flips:
                path, off = _segment_of(wal_dir, lsn)
                with open(path, "r+b") as f:
                    f.seek(off)
                    old = f.read(1)
                    saved.append((path, off, old))
                    f.seek(off)
                    f.write(bytes([old[0] ^ xor]))
            for strict in (False, True):
                try:
                    got = list(WalReader(wal_dir, start_lsn=start, strict=strict))
                except InvalidWal:
                    continue
                assert got == good[: len(got)]
        finally:
            for path, off, old in reversed(saved):
                with open(path, "r+b") as f:
                    f.seek(off)
                    f.write(old)

    check()


def test_xlog_switch_ends_at_the_segment_boundary(small_wal):
    wal_dir, start, _ = small_wal
    recs = list(WalReader(wal_dir, start_lsn=start))
    switches = [i for i, (_s, _e, raw) in enumerate(recs) if raw[17] == 0 and raw[16] & 0xF0 == 0x40]
    assert len(switches) == 1
    i = switches[0]
    s, e, _raw = recs[i]
    assert e % (1 << 20) == 0 and e > s
    assert recs[i + 1][0] == e + 40  # first record of the next segment, after its long page header
