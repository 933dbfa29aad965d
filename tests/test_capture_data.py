"""The committed capture (tests/data/wal-small, made by scripts/capture-wal): fast checks without a
PostgreSQL server — every record decodes, the engine reproduces every consistency image (heap and every
index access method), and the final pages equal the pages PostgreSQL left on disk (masked by each page's
access method; sequence pages and the SP-GiST metapage change without WAL and are compared by image only)."""

from __future__ import annotations

import os

import pytest
from oracle import compare_disk, mask_page, replay
from pgcluster import ALL_RMGRS

from walredo_template import BufferTag
from walredo_template.pg.xlogrecord import decode_record
from walredo_tools.capture import disk_is_wal_state, load_capture

DATA = os.path.join(os.path.dirname(__file__), "data", "wal-small", "capture.msgpack")


@pytest.fixture(scope="module")
def capture():
    doc = load_capture(DATA)  # checks the format and PostgreSQL 15
    assert doc["format"] == 2
    return doc


def test_records_decode_in_order(capture):
    prev_end = 0
    for start, end, raw in capture["records"]:
        assert prev_end <= start < end
        rec = decode_record(raw)
        assert rec.tot_len == len(raw)
        prev_end = end
    assert len(capture["records"]) > 500


def test_engine_reproduces_every_consistency_image_and_disk_page(capture):
    records = [tuple(r) for r in capture["records"]]
    res = replay(records, wal_log_hints=capture["checksums"], keep_check_images=True, rmgrs=ALL_RMGRS)
    assert not res.mismatches, res.mismatches[:5]
    assert not res.errors, res.errors[:5]
    assert res.total_compared > 1000
    rmgrs = set()
    for p in capture["pages"]:
        tag = BufferTag(*p["tag"])
        rmgrs.add(p["rmgr"])
        if disk_is_wal_state(tag, p["rmgr"]):
            assert mask_page(tag, res.pages[tag], p["rmgr"]) == mask_page(tag, p["disk"], p["rmgr"])
        if p["check_image"] is not None:
            assert res.last_check_image[tag] == (p["check_lsn"], p["check_image"])
    assert len(capture["pages"]) >= 10
    assert rmgrs >= {10, 11, 12, 13, 14, 15, 16, 17, 20}, rmgrs  # heap and every index kind


def test_replay_from_the_middle_seeds_pages_from_consistency_images(capture):
    # Pages that predate the first replayed record are unknown; the oracle starts heap pages from the
    # first consistency image it meets, and the engine must match PostgreSQL from there on.
    records = [tuple(r) for r in capture["records"]]
    res = replay(records[len(records) // 2 :], wal_log_hints=capture["checksums"], rmgrs=ALL_RMGRS)
    assert not res.mismatches, res.mismatches[:5]
    assert not res.errors, res.errors[:5]
    assert res.seeded > 0
    assert res.total_compared > 100
    disk = compare_disk(res, {BufferTag(*p["tag"]): p["disk"] for p in capture["pages"]},
                        rel_rmgr={tuple(p["tag"][:3]): p["rmgr"] for p in capture["pages"]})
    assert not disk.mismatches and not disk.lsn_mismatches and not disk.missing
    assert disk.equal >= 10
