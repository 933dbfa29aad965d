"""The committed capture (tests/data/wal-small, made by scripts/capture-wal): fast checks without a
PostgreSQL server — every record decodes, the engine reproduces every consistency image, and the final
pages equal the pages PostgreSQL left on disk (masked)."""

from __future__ import annotations

import os

import pytest

from oracle import compare_disk, mask_page, replay
from walredo_template import BufferTag
from walredo_template.pg.capture import load_capture
from walredo_template.pg.xlogrecord import decode_record

DATA = os.path.join(os.path.dirname(__file__), "data", "wal-small", "capture.msgpack")


@pytest.fixture(scope="module")
def capture():
    return load_capture(DATA)  # checks format 1, PostgreSQL 15


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
    res = replay(records, wal_log_hints=capture["checksums"], keep_check_images=True)
    assert not res.mismatches, res.mismatches[:5]
    assert not res.errors, res.errors[:5]
    assert res.total_compared > 1000
    for p in capture["pages"]:
        tag = BufferTag(*p["tag"])
        assert mask_page(tag, res.pages[tag]) == mask_page(tag, p["disk"])
        if p["check_image"] is not None:
            assert res.last_check_image[tag] == (p["check_lsn"], p["check_image"])
    assert len(capture["pages"]) >= 10


def test_replay_from_the_middle_seeds_pages_from_consistency_images(capture):
    # Pages that predate the first replayed record are unknown; the oracle starts heap pages from the
    # first consistency image it meets, and the engine must match PostgreSQL from there on.
    records = [tuple(r) for r in capture["records"]]
    res = replay(records[len(records) // 2 :], wal_log_hints=capture["checksums"])
    assert not res.mismatches, res.mismatches[:5]
    assert not res.errors, res.errors[:5]
    assert res.seeded > 0
    assert res.total_compared > 100
    disk = compare_disk(res, {BufferTag(*p["tag"]): p["disk"] for p in capture["pages"]})
    assert not disk.mismatches and not disk.lsn_mismatches and not disk.missing
    assert disk.equal >= 10
