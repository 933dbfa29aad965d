"""Shared fixtures. Other engineers may add fixtures here (additively).

``wal_captures`` (session): ``wal_captures.get(name)`` runs the standard workload on a real PostgreSQL 15
cluster of the configuration ``name`` (see ``pgcluster.CONFIGS``: default, checksums, pglz, lz4, zstd)
(or an access-method configuration: ``pgcluster.INDEX_CONFIG_NAMES``, every tests/workloads script)
once per test session, then returns the :class:`pgcluster.WalCapture` (WAL records, on-disk heap pages,
pg_waldump output); the cluster itself is stopped and removed right after capture. Missing PostgreSQL
binaries make the tests fail (never skip): ``scripts/test`` installs them.

``oracle_results`` (session): ``oracle_results.get(name)`` is :func:`oracle.replay_capture` of that
capture, also once per session, so every test that judges the engine against a configuration shares one
replay (with ``SAMPLES_PER_KIND`` redo cases per kind kept for tests that mutate real records).
"""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import oracle  # noqa: E402
import pgcluster  # noqa: E402

SAMPLES_PER_KIND = 25


class _PerConfig:
    """``get(name)``: ``make(name)``, computed on first use and then kept for the session."""

    def __init__(self, make) -> None:
        self._make = make
        self._cache: dict = {}

    def get(self, name: str):
        if name not in self._cache:
            self._cache[name] = self._make(name)
        return self._cache[name]


@pytest.fixture(scope="session")
def wal_captures() -> _PerConfig:
    """Lazily captured real-PostgreSQL WAL per configuration (cluster already cleaned up):
    ``get(name)`` -> :class:`pgcluster.WalCapture`."""
    pgcluster.pg_bin("postgres")  # fail loudly, not skip, when PostgreSQL 15 is missing
    return _PerConfig(lambda name: pgcluster.capture(pgcluster.CONFIGS[name]))


@pytest.fixture(scope="session")
def oracle_results(wal_captures) -> _PerConfig:
    """Lazily replayed and checked captures, one per configuration: ``get(name)`` ->
    :class:`oracle.OracleResult` of :func:`oracle.replay_capture`."""
    return _PerConfig(lambda name: oracle.replay_capture(wal_captures.get(name), keep_samples=SAMPLES_PER_KIND,
                                                         max_failures=100_000))


@pytest.fixture(scope="session")
def default_capture(wal_captures) -> pgcluster.WalCapture:
    return wal_captures.get("default")


@pytest.fixture(scope="session")
def small_wal(tmp_path_factory):
    """A copy of a small real pg_wal (1 MiB segments; cluster removed): (wal_dir, start_lsn, waldump lines).

    Tests may copy it and corrupt the copy; they must not modify this directory.
    """
    import shutil
    import subprocess

    from walredo_tools.walreader import format_lsn

    dest = tmp_path_factory.mktemp("small_wal") / "pg_wal"
    cluster = pgcluster.PgCluster(wal_segsize_mb=1)
    try:
        cluster.start()
        start = cluster.current_lsn()
        cluster.psql(
            "CREATE TABLE s (id int, v text);"
            "INSERT INTO s SELECT g, repeat('s', 100 + g % 300) FROM generate_series(1, 4000) g;"
            "CHECKPOINT; UPDATE s SET v = v || 'u' WHERE id % 3 = 0;"
            "SELECT pg_switch_wal();"  # an XLOG_SWITCH record: the rest of its segment is skipped
            "DELETE FROM s WHERE id % 5 = 0; VACUUM s;"
        )
        cluster.stop()
        shutil.copytree(cluster.wal_dir, dest, ignore=shutil.ignore_patterns("archive_status", "*.partial"))
        res = subprocess.run([pgcluster.pg_bin("pg_waldump"), "-p", str(dest), "-s", format_lsn(start)],
                             capture_output=True, text=True)
    finally:
        cluster.cleanup()
    return dest, start, res.stdout.splitlines()
