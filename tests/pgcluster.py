"""A real PostgreSQL 15 cluster for tests: the oracle the redo engine is judged against.

:class:`PgCluster` runs ``initdb`` and ``postgres`` as an unprivileged user (PostgreSQL refuses root; we
run as root, so ``runuser -u walredo_pg --``), with its own data directory and unix-socket directory under
a fresh temporary directory, a free port, ``listen_addresses = ''`` (no TCP), WAL kept in full
(``wal_keep_size``/``max_wal_size`` large) and ``wal_consistency_checking = 'heap,heap2'`` so that every
heap record carries PostgreSQL's own image of each page after the record.

:func:`run_workload` drives SQL through ``psql`` over the unix socket and ``pgbench``, covering the heap
record types the engine redoes. :meth:`PgCluster.stop` shuts the server down cleanly (so every page is on
disk), :meth:`PgCluster.relation_pages` reads a relation fork from disk, and :meth:`PgCluster.cleanup`
stops the server if needed and removes everything.

Errors: :class:`PgUnavailable` when the PostgreSQL 15 binaries are missing (tests must fail, not skip);
:class:`subprocess.CalledProcessError` (with the output) when a PostgreSQL command fails.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field

PG_BIN = os.environ.get("WALREDO_PG_BIN", "/usr/lib/postgresql/15/bin")
PG_USER = "walredo_pg"
BLCKSZ = 8192
HEAP_RMGRS = frozenset({9, 10})  # Heap2, Heap
ALL_RMGRS = HEAP_RMGRS | {11, 12, 13, 14, 15, 16, 17, 20}  # + Btree, Hash, Gin, Gist, Seq, SPGist, BRIN, Generic
FORK_SUFFIX = {0: "", 1: "_fsm", 2: "_vm", 3: "_init"}


class PgUnavailable(RuntimeError):
    """PostgreSQL 15 binaries are not installed (``scripts/setup-env`` installs them with apt)."""


def pg_bin(name: str) -> str:
    """Path of a PostgreSQL 15 binary. Raises :class:`PgUnavailable` if it is missing."""
    path = os.path.join(PG_BIN, name)
    if not os.access(path, os.X_OK):
        raise PgUnavailable(f"{path} not found: install postgresql-15 (scripts/test does it with apt)")
    return path


def ensure_user(name: str = PG_USER) -> pwd.struct_passwd:
    """The unprivileged account PostgreSQL runs as; created (system user, no login) when missing."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    if os.geteuid() != 0:
        raise PgUnavailable(f"user {name!r} is missing and we are not root to create it")
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
        check=True, capture_output=True,
    )
    return pwd.getpwnam(name)


def free_port() -> int:
    """A TCP port number nobody listens on now. The server only uses it to name its unix socket."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PgCluster:
    """One PostgreSQL 15 cluster in a temporary directory. Use as a context manager or call
    :meth:`start` / :meth:`stop` / :meth:`cleanup` (idempotent)."""

    checksums: bool = False
    wal_compression: str = "off"  # off | pglz | lz4 | zstd
    wal_segsize_mb: int = 16
    extra_conf: dict[str, str] = field(default_factory=dict)
    user: str = PG_USER
    consistency: str = "heap,heap2"  # wal_consistency_checking

    def __post_init__(self) -> None:
        self.base = None
        self.running = False
        self.port = None

    # -- paths ------------------------------------------------------------------------------------
    @property
    def data_dir(self) -> str:
        return os.path.join(self.base, "data")

    @property
    def wal_dir(self) -> str:
        return os.path.join(self.data_dir, "pg_wal")

    @property
    def socket_dir(self) -> str:
        return os.path.join(self.base, "sock")

    # -- running commands -------------------------------------------------------------------------
    def _as_user(self, argv: list[str], *, input: str | None = None, check: bool = True,
                 timeout: float = 300) -> subprocess.CompletedProcess:
        env = dict(os.environ, PGHOST=self.socket_dir, PGPORT=str(self.port), PGUSER="postgres",
                   PGDATABASE="postgres", LC_ALL="C")
        res = subprocess.run(["runuser", "-u", self.user, "--", *argv], input=input, text=True,
                             capture_output=True, env=env, cwd=self.base, timeout=timeout)
        if check and res.returncode != 0:
            raise subprocess.CalledProcessError(res.returncode, argv, res.stdout, res.stderr)
        return res

    def initdb(self) -> None:
        """Create the temp dir, the data dir and the configuration. Raises PgUnavailable/CalledProcessError."""
        pg_bin("postgres")
        pw = ensure_user(self.user)
        self.base = tempfile.mkdtemp(prefix="walredo-pg-")
        os.chmod(self.base, 0o755)
        os.mkdir(self.socket_dir, 0o700)
        os.chown(self.base, pw.pw_uid, pw.pw_gid)
        os.chown(self.socket_dir, pw.pw_uid, pw.pw_gid)
        self.port = free_port()
        argv = [pg_bin("initdb"), "-D", self.data_dir, "-U", "postgres", "-A", "trust", "-E", "UTF8",
                "--locale=C", "--no-sync", f"--wal-segsize={self.wal_segsize_mb}"]
        if self.checksums:
            argv.append("-k")
        self._as_user(argv)
        conf = {
            "listen_addresses": "''",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.socket_dir}'",
            "wal_level": "replica",
            "wal_keep_size": "'8GB'",
            "max_wal_size": "'8GB'",
            "min_wal_size": "'64MB'",
            "checkpoint_timeout": "'1h'",
            "wal_consistency_checking": f"'{self.consistency}'",
            "full_page_writes": "on",
            "wal_compression": self.wal_compression,
            "fsync": "off",  # a clean shutdown still writes every page; we only skip the flushes
            "autovacuum": "off",  # the workload vacuums when it wants to, so runs are repeatable
            "shared_buffers": "'64MB'",
            "max_connections": "20",
            "logging_collector": "off",
        }
        conf.update(self.extra_conf)
        with open(os.path.join(self.data_dir, "postgresql.conf"), "a") as f:
            f.write("\n# walredo test harness\n")
            for k, v in conf.items():
                f.write(f"{k} = {v}\n")

    def start(self) -> None:
        """initdb if needed, then start the server and wait until it accepts connections."""
        if self.base is None:
            self.initdb()
        self._as_user([pg_bin("pg_ctl"), "-D", self.data_dir, "-l", os.path.join(self.base, "server.log"),
                       "-w", "-t", "60", "start"])
        self.running = True

    def stop(self) -> None:
        """Clean (``fast``) shutdown: a shutdown checkpoint writes every dirty page. Idempotent."""
        if self.running:
            self._as_user([pg_bin("pg_ctl"), "-D", self.data_dir, "-m", "fast", "-w", "-t", "120", "stop"])
            self.running = False

    def cleanup(self) -> None:
        """Stop the server (immediate if the clean stop fails) and remove the temp dir. Idempotent."""
        try:
            self.stop()
        except Exception:
            self._as_user([pg_bin("pg_ctl"), "-D", self.data_dir, "-m", "immediate", "-w", "stop"],
                          check=False)
            self.running = False
        if self.base is not None:
            shutil.rmtree(self.base, ignore_errors=True)
            self.base = None

    def __enter__(self) -> PgCluster:
        try:
            self.start()
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.cleanup()

    def server_log(self) -> str:
        try:
            with open(os.path.join(self.base, "server.log")) as f:
                return f.read()
        except OSError:
            return ""

    # -- SQL --------------------------------------------------------------------------------------
    def psql(self, sql: str, db: str = "postgres") -> str:
        """Run SQL (one script, stops at the first error) and return the unaligned tuples-only output."""
        res = self._as_user([pg_bin("psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", db, "-f", "-"],
                            input=sql)
        return res.stdout

    def pgbench(self, *args: str, db: str = "postgres") -> str:
        return self._as_user([pg_bin("pgbench"), *args, db]).stdout

    def current_lsn(self) -> int:
        hi, lo = self.psql("SELECT pg_current_wal_insert_lsn()").strip().split("/")
        return (int(hi, 16) << 32) | int(lo, 16)

    def relation(self, table: str, db: str = "postgres") -> tuple[int, int, int, str]:
        """(spcnode, dbnode, relnode, path relative to the data dir) of a table's main fork. Raises
        CalledProcessError if there is no such table."""
        return self._relations(f"oid = '{table}'::regclass", db)[0]

    def relation_pages(self, relpath: str, forknum: int = 0) -> list[bytes]:
        """The pages of a relation fork as they are on disk (call after :meth:`stop`); [] if no file.
        Follows 1 GiB segment files (``.1``, ``.2``…)."""
        pages: list[bytes] = []
        path = os.path.join(self.data_dir, relpath + FORK_SUFFIX[forknum])
        segno = 0
        while True:
            p = path if segno == 0 else f"{path}.{segno}"
            try:
                with open(p, "rb") as f:
                    data = f.read()
            except FileNotFoundError:
                return pages
            pages.extend(data[i : i + BLCKSZ] for i in range(0, len(data), BLCKSZ))
            segno += 1

    def heap_relations(self, db: str = "postgres") -> list[tuple[int, int, int, str]]:
        """Every plain table and materialized view / TOAST table with storage in ``db`` (catalogs too)."""
        return self._relations("relkind IN ('r', 't', 'm') AND pg_relation_filenode(oid) IS NOT NULL "
                               "AND relpersistence = 'p'", db)

    def all_relations(self, db: str = "postgres") -> list[tuple[int, int, int, str, str]]:
        """Every permanent relation with storage in ``db`` (tables, indexes, sequences, catalogs too) as
        (spc, db, rel, path, access method): pg_am.amname, or 'sequence' for a sequence."""
        rels = self._relations("pg_relation_filenode(oid) IS NOT NULL AND relpersistence = 'p'", db,
                               extra="CASE WHEN relkind = 'S' THEN 'sequence' ELSE "
                                     "coalesce((SELECT amname FROM pg_am WHERE pg_am.oid = relam), '') END")
        return rels  # type: ignore[return-value]

    def _relations(self, where: str, db: str, extra: str = "") -> list:
        # A relation's RelFileNode as WAL names it: tablespace 0 means the database's default, and
        # shared catalogs live in database 0.
        out = self.psql(
            "SELECT CASE WHEN reltablespace = 0 THEN (SELECT dattablespace FROM pg_database "
            "WHERE datname = current_database()) ELSE reltablespace END::oid::int8, "
            "CASE WHEN relisshared THEN 0 ELSE (SELECT oid FROM pg_database "
            "WHERE datname = current_database()) END::int8, "
            f"pg_relation_filenode(oid)::int8, pg_relation_filepath(oid){', ' + extra if extra else ''} "
            f"FROM pg_class WHERE {where}", db)
        rels = []
        for line in out.splitlines():
            if line.strip():
                spc, dbn, rel, path, *more = line.split("|")
                rels.append((int(spc), int(dbn), int(rel), path, *more))
        return rels


WORKLOAD_SQL = r"""
CREATE EXTENSION IF NOT EXISTS dblink;
CREATE TABLE t (id int PRIMARY KEY, k int, v text, pad text) WITH (fillfactor = 70);
CREATE INDEX t_k ON t (k);
CREATE TABLE nokey (id int, v text);
-- INSERT ... SELECT: one INSERT record per row, INIT_PAGE on every new page
INSERT INTO t SELECT g, g % 97, 'v' || g, repeat('x', g % 50) FROM generate_series(1, @N@) g;
INSERT INTO nokey SELECT g, repeat('n', 20 + g % 200) FROM generate_series(1, @N@ * 2 / 3) g;
CHECKPOINT;
-- COPY: heap2 MULTI_INSERT (with and without INIT_PAGE)
COPY t FROM PROGRAM 'seq @N1@ @N2@ | sed -e "s/.*/&\t1\tc&\tpad/"';
COPY nokey FROM PROGRAM 'seq 1 @N@ | sed -e "s/.*/&\tcopied-&/"';
-- HOT updates (non-indexed column; fillfactor leaves room) and non-HOT updates (indexed column)
UPDATE t SET v = v || '+' WHERE id % 3 = 0;
UPDATE t SET k = k + 1 WHERE id % 7 = 0;
-- updates that grow tuples so they move to other pages; prefix/suffix compression on same-page updates
UPDATE nokey SET v = v || repeat('y', 300) WHERE id % 11 = 0;
UPDATE nokey SET v = 'pfx' || v WHERE id % 13 = 0;
UPDATE nokey SET v = v || 'sfx' WHERE id % 17 = 0;
CHECKPOINT;
DELETE FROM t WHERE id % 5 = 0;
DELETE FROM nokey WHERE id % 4 = 0;
-- row locks: heap LOCK records
BEGIN; SELECT count(*) FROM (SELECT * FROM t WHERE id < 400 FOR UPDATE) s; COMMIT;
BEGIN; SELECT count(*) FROM (SELECT * FROM t WHERE id BETWEEN 400 AND 800 FOR SHARE) s; COMMIT;
BEGIN; SELECT count(*) FROM (SELECT * FROM t WHERE id BETWEEN 800 AND 900 FOR NO KEY UPDATE) s; COMMIT;
-- LOCK_UPDATED: lock a row whose (non-key) update by another open transaction is in progress
SELECT dblink_connect('other', 'dbname=postgres user=postgres');
SELECT dblink_exec('other', 'BEGIN');
SELECT dblink_exec('other', 'UPDATE t SET v = v || ''!'' WHERE id BETWEEN 1001 AND 1060');
BEGIN; SELECT count(*) FROM (SELECT * FROM t WHERE id BETWEEN 1001 AND 1060 FOR KEY SHARE) s; COMMIT;
SELECT dblink_exec('other', 'COMMIT');
SELECT dblink_disconnect('other');
-- speculative insertion: INSERT ... ON CONFLICT (heap CONFIRM, and super-deletion is not triggered here)
INSERT INTO t VALUES (@N3@, 1, 'a', 'b'), (@N4@, 2, 'c', 'd') ON CONFLICT (id) DO NOTHING;
INSERT INTO t VALUES (@N3@, 1, 'a', 'b') ON CONFLICT (id) DO UPDATE SET v = 'upserted';
CHECKPOINT;
-- VACUUM: PRUNE, VACUUM, VISIBLE (+ VM page), INPLACE on pg_class
VACUUM t;
VACUUM nokey;
UPDATE t SET v = v || '#' WHERE id % 10 = 1;
DELETE FROM nokey WHERE id % 9 = 0;
CHECKPOINT;
VACUUM (FREEZE) t;
VACUUM (FREEZE) nokey;
-- after VACUUM: inserts/updates/deletes/locks that clear all-visible / all-frozen bits
INSERT INTO t SELECT g, g, 'late', 'p' FROM generate_series(@N5@, @N5@ + 100) g;
UPDATE t SET v = 'after-freeze' WHERE id % 50 = 2;
DELETE FROM t WHERE id % 50 = 3;
BEGIN; SELECT count(*) FROM (SELECT * FROM t WHERE id % 50 = 4 FOR SHARE) s; COMMIT;
DELETE FROM nokey WHERE id > @N@ * 5 / 6;
VACUUM nokey;
-- relation truncation: VACUUM empties the tail pages and cuts them off (heap and visibility map)
CREATE TABLE trunc (id int, v text);
INSERT INTO trunc SELECT g, repeat('t', 200) FROM generate_series(1, @N@) g;
VACUUM trunc;
DELETE FROM trunc WHERE id > @N@ / 10;
VACUUM trunc;
INSERT INTO trunc SELECT g, 'again' FROM generate_series(1, 50) g;
"""


# Partition moves (DELETE with XLH_DELETE_IS_PARTITION_MOVE), out-of-line TOAST values and VM clears after
# VACUUM (FREEZE): run after the standard workload by the default configuration.
EXTRA_SQL = r"""
CREATE TABLE p (id int, v text) PARTITION BY RANGE (id);
CREATE TABLE p1 PARTITION OF p FOR VALUES FROM (0) TO (1000);
CREATE TABLE p2 PARTITION OF p FOR VALUES FROM (1000) TO (2000);
INSERT INTO p SELECT g, 'x' || g FROM generate_series(1, 600) g;
UPDATE p SET id = id + 1000 WHERE id % 10 = 0;
CREATE TABLE big (id int, v text);
ALTER TABLE big ALTER v SET STORAGE EXTERNAL;
INSERT INTO big SELECT g, repeat(md5(g::text), 100 + g) FROM generate_series(1, 60) g;
UPDATE big SET v = v || 'z' WHERE id % 3 = 0;
CHECKPOINT;
VACUUM (FREEZE) p1, big;
UPDATE p1 SET v = 'after' WHERE id < 40;
DELETE FROM big WHERE id % 4 = 0;
VACUUM p1, big;
"""


def workload_sql(rows: int = 3000) -> str:
    """The SQL phase of the workload with tables of about ``rows`` rows."""
    sub = {"@N1@": rows + 1, "@N2@": 2 * rows, "@N3@": 2 * rows + 1, "@N4@": 2 * rows + 2,
           "@N5@": 2 * rows + 1000, "@N@": rows}
    sql = WORKLOAD_SQL
    for k, v in sub.items():
        sql = sql.replace(k, str(v))
    return sql


def run_workload(cluster: PgCluster, *, rows: int = 3000, pgbench_scale: int = 1,
                 pgbench_transactions: int = 400, pgbench_init_steps: str = "dtgvp",
                 vacuum_accounts: bool = True) -> None:
    """The standard workload: the SQL above, then ``pgbench -i`` and a short ``pgbench`` run, with a
    CHECKPOINT between phases. Raises CalledProcessError if a step fails."""
    cluster.psql(workload_sql(rows))
    cluster.psql("CHECKPOINT")
    cluster.pgbench("-i", "-q", "-I", pgbench_init_steps, "-s", str(pgbench_scale))
    cluster.psql("CHECKPOINT")
    cluster.pgbench("-n", "-c", "2", "-j", "1", "-t", str(pgbench_transactions))
    cluster.psql("CHECKPOINT; VACUUM pgbench_branches, pgbench_tellers, pgbench_history;")
    if vacuum_accounts:
        cluster.psql("UPDATE pgbench_accounts SET filler = 'x' WHERE aid % 997 = 0; VACUUM pgbench_accounts;")
    cluster.pgbench("-n", "-c", "1", "-t", str(max(1, pgbench_transactions // 4)))


# -- captures: run a cluster, keep what the tests need in memory, remove the cluster ------------------

@dataclass
class ClusterConfig:
    """One oracle configuration."""

    name: str
    checksums: bool = False
    wal_compression: str = "off"
    wal_segsize_mb: int = 16
    # workload size (see run_workload); the lighter configurations keep the whole oracle within minutes
    rows: int = 1000
    pgbench_transactions: int = 150
    pgbench_init_steps: str = "dtgp"
    vacuum_accounts: bool = False
    extra_sql: str = ""  # run after the standard workload (in the same cluster run: no extra cluster)
    consistency: str = "heap,heap2"  # wal_consistency_checking
    rmgrs: frozenset[int] = HEAP_RMGRS  # the rmgrs the oracle replays (oracle.replay's ``rmgrs``)
    standard_workload: bool = True  # run_workload first
    # tests/workloads/<name>.sql run after it, in this order; None: every one there, sorted by name
    index_workloads: tuple[str, ...] | None = ()

    def run(self, cluster: PgCluster) -> None:
        if self.standard_workload:
            run_workload(cluster, rows=self.rows, pgbench_transactions=self.pgbench_transactions,
                         pgbench_init_steps=self.pgbench_init_steps, vacuum_accounts=self.vacuum_accounts)
        if self.extra_sql:
            cluster.psql(self.extra_sql)
        names = index_workload_names() if self.index_workloads is None else self.index_workloads
        for name in names:
            run_index_workload(cluster, name)


WORKLOADS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "workloads")


def index_workload_names() -> tuple[str, ...]:
    """The access-method workloads in tests/workloads (``<name>.sql``), sorted by name."""
    return tuple(sorted(f[:-4] for f in os.listdir(WORKLOADS_DIR) if f.endswith(".sql")))


def run_index_workload(cluster: PgCluster, name: str) -> None:
    """Run tests/workloads/<name>.sql (psql, stops at the first error) and then a CHECKPOINT."""
    with open(os.path.join(WORKLOADS_DIR, name + ".sql")) as f:
        cluster.psql(f.read())
    cluster.psql("CHECKPOINT")


def index_config(name: str, *, workloads: tuple[str, ...] | None = None, **kw: object) -> ClusterConfig:
    """A configuration that runs only access-method workloads (all of tests/workloads by default) with
    ``wal_consistency_checking = 'all'`` and replays every rmgr."""
    return ClusterConfig(name, consistency="all", rmgrs=ALL_RMGRS, standard_workload=False,
                         index_workloads=workloads, **kw)  # type: ignore[arg-type]


# pg_am.amname (or 'sequence') -> the rmgr whose mask fits the relation's pages (bloom writes generic WAL)
AM_RMGR = {"heap": 10, "btree": 11, "hash": 12, "gin": 13, "gist": 14, "sequence": 15, "spgist": 16, "brin": 17,
           "bloom": 20}

CONFIGS = {
    # the full workload; 1 MiB segments so that many records cross segment boundaries
    "default": ClusterConfig("default", wal_segsize_mb=1, rows=3000, pgbench_transactions=400,
                             pgbench_init_steps="dtgvp", vacuum_accounts=True, extra_sql=EXTRA_SQL),
    "checksums": ClusterConfig("checksums", checksums=True),
    "pglz": ClusterConfig("pglz", wal_compression="pglz"),
    "lz4": ClusterConfig("lz4", wal_compression="lz4"),
    "zstd": ClusterConfig("zstd", wal_compression="zstd", wal_segsize_mb=4),
    "indexes": index_config("indexes"),
    "indexes-checksums": index_config("indexes-checksums", checksums=True),
    "indexes-lz4": index_config("indexes-lz4", wal_compression="lz4"),
}
# every access method's workload, in the default configuration, with checksums, and with lz4 images
INDEX_CONFIG_NAMES = ["indexes", "indexes-checksums", "indexes-lz4"]


@dataclass
class WalCapture:
    """What a cluster run leaves behind, held in memory after the cluster is gone.

    ``records``: every WAL record from ``start_lsn`` (just before the workload) to the end of WAL, as
    ``(start_lsn, end_lsn, record_bytes)``. ``disk_pages``: every page of the main and VM forks of every
    heap relation (catalogs included) as on disk after the clean shutdown. ``tables``: name → (spc, db,
    rel) of the workload's tables. ``waldump``: pg_waldump's output lines for the same range.
    """

    config: ClusterConfig
    start_lsn: int
    records: list
    end_reason: str | None
    end_lsn: int | None
    disk_pages: dict
    tables: dict
    waldump: list
    page_size: int = 8192
    segment_size: int = 0
    rel_rmgr: dict = field(default_factory=dict)  # (spc, db, rel) -> rmid whose mask fits its pages


def capture(config: ClusterConfig, workload=None, *, waldump: bool = True) -> WalCapture:
    """Run ``workload(cluster)`` (default :func:`run_workload`) on a fresh cluster of ``config``, stop it
    cleanly, read its WAL and heap pages, remove it. Raises PgUnavailable / CalledProcessError /
    InvalidWal; the cluster is removed in every case."""
    from walredo_template import BufferTag
    from walredo_tools.walreader import WalReader, format_lsn

    workload = workload or config.run
    cluster = PgCluster(checksums=config.checksums, wal_compression=config.wal_compression,
                        wal_segsize_mb=config.wal_segsize_mb, consistency=config.consistency)
    try:
        cluster.start()
        start_lsn = cluster.current_lsn()
        workload(cluster)
        rels = cluster.all_relations()
        rel_rmgr = {(spc, dbn, rel): AM_RMGR[am] for spc, dbn, rel, _p, am in rels if am in AM_RMGR}
        tables = {}
        for name in ("t", "nokey", "trunc", "pgbench_accounts", "pgbench_branches", "pgbench_tellers",
                     "pgbench_history", "p1", "p2", "big"):
            try:
                spc, dbn, rel, _path = cluster.relation(name)
            except subprocess.CalledProcessError:
                continue  # not created by this workload
            tables[name] = (spc, dbn, rel)
        cluster.stop()
        disk_pages = {}
        for spc, dbn, rel, path, _am in rels:
            for fork in (0, 2):
                for blkno, page in enumerate(cluster.relation_pages(path, fork)):
                    disk_pages[BufferTag(spc, dbn, rel, fork, blkno)] = page
        reader = WalReader(cluster.wal_dir, start_lsn=start_lsn)
        records = list(reader)
        lines = []
        if waldump:
            res = subprocess.run([pg_bin("pg_waldump"), "-p", cluster.wal_dir, "-s", format_lsn(start_lsn)],
                                 capture_output=True, text=True)
            lines = res.stdout.splitlines()
        return WalCapture(config, start_lsn, records, reader.end_reason, reader.end_lsn, disk_pages, tables,
                          lines, reader.page_size, reader.segment_size, rel_rmgr)
    except subprocess.CalledProcessError as e:
        raise RuntimeError(f"PostgreSQL step failed: {e.cmd}: {e.stderr}\n{cluster.server_log()[-3000:]}") from e
    finally:
        cluster.cleanup()
