"""The oracle for every access method: the workloads of tests/workloads on a real PostgreSQL 15 with
``wal_consistency_checking = 'all'``, in the default configuration, with data checksums and with lz4 images
(``pgcluster.INDEX_CONFIG_NAMES``). Every record of every rmgr is replayed through the engine; every
consistency image is compared masked by the record's rmgr mask; after the clean shutdown every page the
engine followed equals the page on disk (masked by its access method's mask, pd_lsn exactly), except the
pages that change without WAL (sequences, the SP-GiST metapage: tested in their own modules). The counts
per record kind are printed (``pytest -s``); the access methods' own tests assert which kinds must appear.
"""

from __future__ import annotations

import pytest
from oracle import report
from pgcluster import INDEX_CONFIG_NAMES


@pytest.mark.parametrize("name", INDEX_CONFIG_NAMES)
def test_index_oracle(oracle_results, name):
    res = oracle_results.get(name)
    print("\n" + report(name, res))
    assert not res.mismatches, f"{len(res.mismatches)} mismatches in {name}"
    assert not res.errors, f"{len(res.errors)} redo errors in {name}"
    assert res.total_compared > 5000
    disk = res.disk
    assert not disk.mismatches, disk.mismatches[:10]
    assert not disk.lsn_mismatches, disk.lsn_mismatches[:10]
    assert not disk.missing, disk.missing[:10]
    assert disk.equal > 100
    assert {why for _t, _a, _b, why in disk.exempt} <= {
        "sequence page (nextval changes it between WAL records)",
        "SP-GiST metapage (unlogged last-used-page cache)",
    }
