"""WalRedoManager's operator features with real processes: status(), max_processes, dump_failed, log lines."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest
from proc_guard import proc_guard  # noqa: F401
from test_manager import blank_page, reaped, sample, tenant, tenant_children

from forkserver import BufferTag, WalRedoManager
from forkserver.dump import DEFAULT_MAX_FILES, DUMP_SUFFIX, load_dump
from forkserver.errors import ManagerClosed, RedoFailed, UsageError
from forkserver.manager import lru_idle_beyond
from forkserver.process import ProcessState
from forkserver.status import ManagerStatus
from walredo_template import worker
from walredo_template.pg.errors import RedoError
from walredo_template.redo import apply_records

pytestmark = pytest.mark.timeout(180)

REPO = Path(__file__).resolve().parent.parent
TAG = BufferTag(1663, 5, 16384, 0, 0)
BROKEN = [(0x1000, b"\x00" * 30)]  # an XLogRecord header of zeros: the engine refuses it (invalid-record)
ROOT = os.geteuid() == 0


def dumps(mgr, result: str) -> float:
    return sample(mgr, "pageserver_wal_redo_failed_request_dumps_total", result=result)


async def until(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    return bool(predicate())


# ------------------------------------------------------------------ status


async def test_status_lists_every_live_tenant_with_its_memory(proc_guard):  # noqa: F811
    ts = [tenant() for _ in range(4)]
    async with WalRedoManager() as mgr:
        await asyncio.gather(*(mgr.ping(t) for t in ts))
        await mgr.ping(ts[0])
        status = await mgr.status()
        assert isinstance(status, ManagerStatus)
        assert set(status.tenants) == set(ts)
        pids = {t: info.pid for t, info in mgr.processes().items()}
        for t in ts:
            s = status.tenants[t]
            assert s.tenant_id == t and s.pid == pids[t]
            assert s.requests_served == (2 if t == ts[0] else 1) and s.in_flight == 0
            assert s.uptime >= 0 and s.last_request_age is not None and 0 <= s.last_request_age <= s.uptime
            assert s.rss is not None and s.rss > 0
            if ROOT:  # root may read a non-dumpable child's smaps
                assert s.memory_source == "smaps"
                assert s.uss is not None and s.pss is not None and 0 < s.uss <= s.pss <= s.rss
            else:
                assert s.memory_source == "statm" and s.uss is None and s.pss is None
        tpl = status.template
        stats = await mgr.template.stats()
        assert tpl is not None and tpl.pid == stats["pid"] == mgr.template.template_pid
        assert tpl.spawns >= len(ts) and tpl.live == len(ts) and tpl.idle >= 0
        assert tpl.counters["spawns"] == tpl.spawns
        assert tpl.rss is not None and tpl.rss > 0
        assert tpl.memory_source == "smaps" and tpl.uss is not None and tpl.uss > 0  # our own child
        table = status.table().splitlines()
        assert table[0].split()[:2] == ["tenant_id", "pid"] and len(table) == 1 + len(ts)


async def test_status_needs_a_running_manager(proc_guard):  # noqa: F811
    mgr = WalRedoManager()
    with pytest.raises(UsageError):
        await mgr.status()
    async with mgr:
        assert (await mgr.status()).tenants == {}
    with pytest.raises(ManagerClosed):
        await mgr.status()


async def test_status_without_an_answer_from_the_template_still_lists_the_tenants(proc_guard):  # noqa: F811
    t = tenant()
    async with WalRedoManager() as mgr:
        await mgr.ping(t)
        template_pid = mgr.template.template_pid
        assert template_pid is not None
        os.kill(template_pid, signal.SIGSTOP)  # alive but silent
        try:
            status = await mgr.status(template_timeout=0.3)
        finally:
            os.kill(template_pid, signal.SIGCONT)
        assert status.template is None and set(status.tenants) == {t}
        assert (await mgr.status()).template is not None


# ------------------------------------------------------------------ max_processes


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "10"])
def test_max_processes_must_be_none_or_a_positive_int(bad):
    with pytest.raises(ValueError, match="max_processes"):
        WalRedoManager(max_processes=bad)


def _fake(last: float | None, in_flight: int = 0, state: ProcessState = ProcessState.RUNNING) -> SimpleNamespace:
    return SimpleNamespace(last_request_at=last, in_flight=in_flight, state=state)


def test_lru_idle_beyond_picks_the_least_recently_used_idle_ones():
    a, b, c = _fake(1.0), _fake(2.0), _fake(3.0)
    busy, unused, broken = _fake(0.5, in_flight=1), _fake(None), _fake(0.1, state=ProcessState.BROKEN)
    live = [c, busy, a, unused, b, broken]
    assert lru_idle_beyond(live, 6) == []
    assert lru_idle_beyond(live, 4) == [a, b]
    assert lru_idle_beyond(live, 0) == [a, b, c]  # never the busy, unused or broken ones
    assert lru_idle_beyond(live, -3) == [a, b, c]


async def test_50_tenants_with_max_processes_10_keep_at_most_10_live(proc_guard):  # noqa: F811
    ts = [tenant() for _ in range(50)]
    async with WalRedoManager(max_processes=10) as mgr:
        for i, t in enumerate(ts):
            if i % 2:
                await mgr.ping(t)
            else:
                assert len(await mgr.request_redo(t, TAG, 0x1000, blank_page(), [])) == 8192
            await reaped(mgr)  # every retired child is reaped (so gone from the process table)
            assert mgr.statistics().live_processes <= 10
            assert len(tenant_children(ts)) <= 10, f"step {i}"
        assert len(mgr.processes()) == 10
        assert set(mgr.processes()) == set(ts[-10:])  # the most recently used ones stayed
        # the earliest tenants come back on a fresh process, and the limit still holds
        await mgr.ping(ts[0])
        await reaped(mgr)
        assert ts[0] in mgr.processes() and len(tenant_children(ts)) <= 10
        assert sample(mgr, "pageserver_wal_redo_processes_evicted_total") == 41
        assert sample(mgr, "pageserver_wal_redo_processes_stopped_total", cause="idle") == 41


async def test_concurrent_burst_is_answered_and_settles_within_the_limit(proc_guard):  # noqa: F811
    ts = [tenant() for _ in range(50)]
    async with WalRedoManager(max_processes=10) as mgr:
        async with asyncio.timeout(60):
            await asyncio.gather(*(mgr.ping(t) for t in ts for _ in range(3)))
        # Spawned and busy at once they may exceed the limit; once their requests end, idle ones are retired.
        assert mgr.statistics().live_processes <= 10
        await reaped(mgr)
        assert len(tenant_children(ts)) <= 10


async def test_a_busy_process_is_never_retired(proc_guard):  # noqa: F811
    a, b = tenant(), tenant()
    async with WalRedoManager(max_processes=1) as mgr:
        await mgr.ping(a)
        pid_a = mgr.processes()[a].pid
        os.kill(pid_a, signal.SIGSTOP)  # hold a request in flight on a
        try:
            held = asyncio.create_task(mgr.ping(a))
            assert await until(lambda: mgr.processes()[a].in_flight == 1)
            # Over the limit: a is busy, so b's process is spawned beside it, and retired as soon as its
            # request ends (the only idle one while a stays busy).
            await mgr.ping(b)
            assert set(mgr.processes()) == {a} and mgr.processes()[a].pid == pid_a
            assert sample(mgr, "pageserver_wal_redo_processes_evicted_total") == 1
        finally:
            os.kill(pid_a, signal.SIGCONT)
        await held  # answered by the same process
        assert set(mgr.processes()) == {a} and mgr.processes()[a].pid == pid_a
        await mgr.ping(b)  # a is idle now: it goes to make room for b
        await reaped(mgr)
        assert set(mgr.processes()) == {b} and not psutil.pid_exists(pid_a)


# ------------------------------------------------------------------ dump_failed


async def test_failed_request_is_dumped_and_replays_to_the_same_error(proc_guard, tmp_path):  # noqa: F811
    d = tmp_path / "dumps"
    t = tenant()
    async with WalRedoManager(dump_failed=d) as mgr:
        with pytest.raises(RedoFailed) as info:
            await mgr.request_redo(t, TAG, 0x1000, None, BROKEN)
        assert await until(lambda: dumps(mgr, "written") == 1)
        await mgr.ping(t)  # the process was kept
    files = [p for p in d.iterdir() if p.name.endswith(DUMP_SUFFIX)]
    assert len(files) == 1 and files[0].name.startswith(t)
    got = load_dump(str(files[0]))
    assert (got.tenant_id, got.tag, got.lsn, got.base_image, got.records) == (t, TAG, 0x1000, None, BROKEN)
    assert got.error == str(info.value)
    with pytest.raises(RedoError) as here:
        apply_records(got.tag, got.base_image, got.records, wal_log_hints=got.wal_log_hints)
    assert worker.redo_error_code(here.value) == info.value.code  # the same error class as the child's
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "replay-dump"), str(d)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert f"child: {info.value}" in out.stdout and f"here:  {type(here.value).__name__}:" in out.stdout


async def test_a_dump_that_cannot_be_written_leaves_the_outcome_unchanged(proc_guard, tmp_path, caplog):  # noqa: F811
    not_a_dir = tmp_path / "file"
    not_a_dir.write_bytes(b"x")
    t = tenant()
    async with WalRedoManager(dump_failed=not_a_dir) as mgr:
        with caplog.at_level(logging.WARNING, logger="forkserver.dump"):
            with pytest.raises(RedoFailed):
                await mgr.request_redo(t, TAG, 0x1000, None, BROKEN)
            assert await until(lambda: dumps(mgr, "error") == 1)
        assert len(await mgr.request_redo(t, TAG, 0x1000, blank_page(), [])) == 8192
        pid = mgr.processes()[t].pid
    assert not_a_dir.read_bytes() == b"x"
    assert any(t in r.getMessage() and str(pid) in r.getMessage() for r in caplog.records)


async def test_dumps_stop_at_the_file_limit(proc_guard, tmp_path):  # noqa: F811
    d = tmp_path / "dumps"
    d.mkdir()
    for i in range(DEFAULT_MAX_FILES - 1):  # one short of the limit
        (d / f"old-{i}{DUMP_SUFFIX}").write_bytes(b"")
    t = tenant()
    async with WalRedoManager(dump_failed=d) as mgr:
        for n in range(1, 4):
            with pytest.raises(RedoFailed):
                await mgr.request_redo(t, TAG, 0x1000, None, BROKEN)
            assert await until(lambda n=n: dumps(mgr, "written") + dumps(mgr, "skipped") == n)
        assert (dumps(mgr, "written"), dumps(mgr, "skipped"), dumps(mgr, "error")) == (1, 2, 0)
    assert len([p for p in d.iterdir() if p.name.endswith(DUMP_SUFFIX)]) == DEFAULT_MAX_FILES


# ------------------------------------------------------------------ logs


async def test_lifecycle_lines_name_the_tenant_and_the_pid(proc_guard, caplog):  # noqa: F811
    t = tenant()
    with caplog.at_level(logging.INFO, logger="forkserver"):
        async with WalRedoManager(max_processes=1) as mgr:
            await mgr.ping(t)
            pid = mgr.processes()[t].pid
            await mgr.ping(tenant())  # retires t's process
            await reaped(mgr)
    lines = [r.getMessage() for r in caplog.records if r.name in ("forkserver.manager", "forkserver.process")]
    mine = [line for line in lines if line.startswith(f"tenant {t} pid {pid}: ")]
    assert any("started" in line for line in mine), lines
    assert any("retired" in line for line in mine), lines
    assert any("stopped: idle" in line for line in mine), lines
    assert not any("tenant None" in line for line in lines)


async def test_template_killed_is_no_traceback_and_no_error(proc_guard, caplog):  # noqa: F811
    old, new = tenant(), tenant()
    with caplog.at_level(logging.DEBUG, logger="forkserver"):
        async with WalRedoManager() as mgr:
            await mgr.ping(old)
            template_pid = mgr.template.template_pid
            assert template_pid is not None
            os.kill(template_pid, signal.SIGKILL)
            assert await until(lambda: mgr.template.template_pid not in (None, template_pid), timeout=30)
            await mgr.ping(old)  # the child outlived its template
            await mgr.ping(new)  # the restarted template serves new tenants
    records = [r for r in caplog.records if r.name.startswith("forkserver")]
    assert not [r for r in records if r.levelno >= logging.ERROR or r.exc_info], \
        [(r.name, r.getMessage()) for r in records if r.levelno >= logging.ERROR or r.exc_info]
    ours = [r for r in records if r.name in ("forkserver.manager", "forkserver.process")
            and r.levelno >= logging.WARNING]
    assert not ours, [r.getMessage() for r in ours]
    # the loss itself is reported by the client, as warnings
    assert any(r.levelno == logging.WARNING for r in records)


@pytest.mark.parametrize("bad", [-1, 257, True, 2.0])
def test_pool_size_is_validated_before_anything_starts(bad):
    with pytest.raises(ValueError, match="pool_size"):
        WalRedoManager(pool_size=bad)


async def test_pool_size_reaches_the_launched_template(proc_guard):  # noqa: F811
    async with WalRedoManager(pool_size=3) as mgr:
        for _ in range(200):
            stats = await mgr.template.stats()
            if stats.get("idle") == 3:
                break
            await asyncio.sleep(0.02)
        assert stats.get("pool_size") == 3 and stats.get("idle") == 3


async def test_live_processes_gauge(proc_guard):  # noqa: F811
    async with WalRedoManager() as mgr:
        ts = [tenant() for _ in range(3)]
        await asyncio.gather(*(mgr.ping(t) for t in ts))
        assert mgr.metrics.registry.get_sample_value("pageserver_wal_redo_processes_live") == 3
        assert mgr.metrics.registry.get_sample_value("pageserver_wal_redo_processes_spawning") == 0
        mgr.quiesce_idle(now=time.time() + 10 * mgr.idle_timeout)
        assert mgr.metrics.registry.get_sample_value("pageserver_wal_redo_processes_live") == 0
