"""The engine's rmgr table against PostgreSQL 15's (``access/rmgrlist.h``): every rmgr whose records
touch relation pages is redone; every other one is refused as :class:`UnsupportedRecord`, deliberately,
for the reason listed here; and no record PostgreSQL wrote in the captures is refused for a page."""

from __future__ import annotations

import pytest
from pgcluster import INDEX_CONFIG_NAMES
from recordbuilder import Block, build_record

from walredo_template import BufferTag
from walredo_template.pg.errors import UnsupportedRecord
from walredo_template.pg.xlogrecord import decode_record
from walredo_template.redo import RMGRS, apply_records

# rmgrlist.h of PostgreSQL 15: id -> name
PG15_RMGRS = {
    0: "XLOG", 1: "Transaction", 2: "Storage", 3: "CLOG", 4: "Database", 5: "Tablespace", 6: "MultiXact",
    7: "RelMap", 8: "Standby", 9: "Heap2", 10: "Heap", 11: "Btree", 12: "Hash", 13: "Gin", 14: "Gist",
    15: "Sequence", 16: "SPGist", 17: "BRIN", 18: "CommitTs", 19: "ReplicationOrigin", 20: "Generic",
    21: "LogicalMessage",
}
# Refused on purpose: none of these writes a relation page, so a page request never needs them.
REFUSED = {
    1: "commit/abort/prepare: CLOG and subtransaction state, no relation page",
    2: "relation file create/truncate: file-level; the pageserver applies truncation at ingest",
    3: "commit-log (SLRU) pages, not relation pages",
    4: "CREATE/DROP DATABASE: directory copy and removal",
    5: "tablespace directories",
    6: "multixact SLRU pages",
    7: "the relation mapper file (pg_filenode.map), not a relation page",
    8: "hot-standby lock and running-xacts records: no page",
    18: "commit timestamp SLRU pages",
    19: "replication origin progress: no page",
    21: "logical decoding messages: no page",
}


def test_every_pg15_rmgr_is_redone_or_refused_for_a_reason():
    for rmid, name in PG15_RMGRS.items():
        if rmid in REFUSED:
            assert rmid not in RMGRS, f"{name} is in the table and in REFUSED"
        else:
            assert rmid in RMGRS, f"{name} ({rmid}) writes relation pages but has no redo"
            assert RMGRS[rmid].name == name
    assert set(RMGRS) | set(REFUSED) == set(PG15_RMGRS)


@pytest.mark.parametrize("rmid", sorted(REFUSED))
def test_refused_rmgrs_raise_unsupported_naming_rmgr_and_info(rmid):
    tag = BufferTag(1663, 5, 16384, 0, 0)
    raw = build_record(rmid, 0x10, [Block(0, tag, data=b"x")], main_data=b"\0" * 16)
    with pytest.raises(UnsupportedRecord) as ei:
        apply_records(tag, None, [(0x2000000, raw)])
    assert ei.value.rmid == rmid and ei.value.info == 0x10
    assert f"rmgr {rmid}" in str(ei.value)


@pytest.mark.parametrize("name", ["default", *INDEX_CONFIG_NAMES])
def test_no_record_postgresql_wrote_for_a_page_is_unsupported(wal_captures, oracle_results, name):
    """Every record with a block reference belongs to a redone rmgr, and the replay of the capture (every
    rmgr in the index configurations) refused none of them."""
    cap = wal_captures.get(name)
    for _s, _e, raw in cap.records:
        rec = decode_record(raw, verify_crc=False)
        if rec.blocks:
            assert rec.rmid in RMGRS, f"{PG15_RMGRS.get(rec.rmid, rec.rmid)} record with block references"
    refused = [e for e in oracle_results.get(name).errors if isinstance(e[3], UnsupportedRecord)]
    assert not refused, refused[:5]
