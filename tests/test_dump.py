"""forkserver.dump: failed-request dumps round-trip, stay bounded and private, and replay offline."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from forkserver.dump import DUMP_SUFFIX, MAX_PENDING, DumpWriter, load_dump, write_dump
from walredo_template import BufferTag

REPO = Path(__file__).resolve().parent.parent
TENANT = "0123456789abcdef0123456789abcdef"
TAG = BufferTag(1663, 5, 16384, 0, 3)


def test_round_trip_private_and_bounded(tmp_path):
    d = str(tmp_path / "dumps")
    records = [(0x100, b"\x01" * 30), (0x200, b"\x02" * 40)]
    path = write_dump(d, TENANT, TAG, 0x200, bytes(8192), records, 15, True, "InvalidRecord: broken")
    assert path is not None and path.endswith(DUMP_SUFFIX)
    assert os.stat(d).st_mode & 0o777 == 0o700 and os.stat(path).st_mode & 0o777 == 0o600
    got = load_dump(path)
    assert (got.tenant_id, got.tag, got.lsn, got.base_image, got.records) == (TENANT, TAG, 0x200, bytes(8192), records)
    assert (got.pg_version, got.wal_log_hints, got.error) == (15, True, "InvalidRecord: broken")
    for _ in range(2):
        assert write_dump(d, TENANT, TAG, 1, None, records, 15, False, "x", max_files=3) is not None
    assert write_dump(d, TENANT, TAG, 1, None, records, 15, False, "x", max_files=3) is None
    assert sorted(os.listdir(d)) == sorted(n for n in os.listdir(d) if n.endswith(DUMP_SUFFIX))  # no temp files


def test_not_a_dump(tmp_path):
    p = tmp_path / ("junk" + DUMP_SUFFIX)
    p.write_bytes(b"\xc1 not msgpack")
    with pytest.raises(ValueError, match="not a walredo dump"):
        load_dump(str(p))


def test_replay_script_reproduces_the_error(tmp_path):
    d = str(tmp_path)
    write_dump(d, TENANT, TAG, 0x200, None, [(0x200, b"\x00" * 24)], 15, False, "InvalidRecord: from the child")
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "replay-dump"), d], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "child: InvalidRecord: from the child" in out.stdout
    assert "here:  InvalidRecord" in out.stdout


async def test_writer_bounds_writes_in_flight_and_counts_each_result(tmp_path):
    counts: list[str] = []
    writer = DumpWriter(tmp_path / "dumps", counts.append)
    records = [(0x200, b"\x00" * 24)]
    for _ in range(MAX_PENDING + 2):  # in one loop iteration: none of them is written yet
        writer.submit(TENANT, 1234, TAG, 0x200, None, records, 15, False, "invalid-record: x")
    assert counts == ["skipped", "skipped"] and writer.pending == MAX_PENDING
    await writer.aclose()
    assert sorted(counts) == ["skipped"] * 2 + ["written"] * MAX_PENDING and writer.pending == 0
    assert len(os.listdir(tmp_path / "dumps")) == MAX_PENDING

    (tmp_path / "file").write_bytes(b"")
    bad = DumpWriter(tmp_path / "file", counts.append)  # not a directory: the write fails, counted
    bad.submit(TENANT, 1234, TAG, 0x200, None, records, 15, False, "x")
    await bad.aclose()
    assert counts[-1] == "error"
