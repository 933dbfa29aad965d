"""WalRedoManager with real processes: a launched template, forked tenant children, the real worker.

Retirement and stop causes are tests/test_manager_retire.py, start and shutdown tests/test_manager_shutdown.py;
both use the helpers defined here."""

import asyncio
import gc
import os
import signal
import sys
import threading
import time

import psutil
import pytest

from forkserver import BufferTag, WalRedoManager
from forkserver.errors import RedoFailed, RedoProcessFailed, RedoTimeout

pytestmark = pytest.mark.timeout(120)

_counter = iter(range(1, 1 << 30))


def tenant(n: int | None = None) -> str:
    """A fresh valid tenant id, unique within the test session (so leak checks can find our children)."""
    return f"{os.getpid():08x}{n if n is not None else next(_counter):024x}"


def tenant_children(tenant_ids):
    """Live processes titled 'walredo <tenant>' for the given tenants (zombies count: they are leaks too)."""
    wanted = {f"walredo {t}" for t in tenant_ids}
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        try:
            cmdline = " ".join(proc.info["cmdline"] or [])
        except psutil.Error:
            continue
        if cmdline.strip() in wanted:
            found.append(proc)
    return found


def pid_alive(pid: int) -> bool:
    # The pid can vanish between any two psutil calls (reaped by the template meanwhile): that is "gone".
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def assert_gone(pids, timeout=5.0):
    deadline = time.monotonic() + timeout
    while True:
        alive = [p for p in pids if pid_alive(p)]
        if not alive or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.02)
    assert not alive, f"processes still alive: {alive}"


@pytest.fixture
async def mgr():
    used = []
    async with WalRedoManager(request_timeout=10.0) as manager:
        manager._test_tenants = used
        yield manager
        pids = [info.pid for info in manager.processes().values()]
    await assert_gone(pids)
    assert not psutil.Process().children(recursive=True), "template or children left behind"


async def spawns(manager) -> int:
    return (await manager.template.stats())["spawns"]


def sample(mgr, name: str, **labels: str) -> float:
    """A metric of ``mgr`` through the registry's public reader (0 if never counted)."""
    value = mgr.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def stopped(mgr, cause: str) -> float:
    return sample(mgr, "pageserver_wal_redo_processes_stopped_total", cause=cause)


async def reaped(mgr, timeout: float = 10.0) -> None:
    """Wait until every process the manager stopped is reaped (and so its stop counted)."""
    deadline = time.monotonic() + timeout
    while mgr.statistics().reaping and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert not mgr.statistics().reaping, "stopped processes still being reaped"


def blank_page() -> bytes:
    """An empty PostgreSQL 15 heap page (PageInit), as a base image."""
    from walredo_template.pg import page as pg_page

    buf = bytearray(8192)
    pg_page.page_init(buf)
    return bytes(buf)


# ------------------------------------------------------------------ coalescing


async def test_1000_concurrent_cold_requests_spawn_once(mgr):
    t = tenant()
    before = await spawns(mgr)
    await asyncio.gather(*(mgr.ping(t) for _ in range(1000)))
    assert await spawns(mgr) - before == 1
    assert list(mgr.processes()) == [t]
    assert sample(mgr, "pageserver_wal_redo_processes_started_total") == 1
    assert len(tenant_children([t])) == 1


async def test_processes_reports_each_tenant(mgr):
    ts = [tenant() for _ in range(5)]
    await asyncio.gather(*(mgr.ping(t) for t in ts for _ in range(3)))
    infos = mgr.processes()
    assert set(infos) == set(ts)
    for t in ts:
        info = infos[t]
        assert info.requests_served == 3 and info.in_flight == 0
        assert info.last_request_at is not None and info.started_at <= info.last_request_at
        assert psutil.Process(info.pid).cmdline()[0].startswith(f"walredo {t}")


# ------------------------------------------------------------------ failures


async def stopped_count(mgr, cause: str, want: int, timeout: float = 10.0) -> float:
    """``pageserver_wal_redo_processes_stopped_total{cause}`` once it reached ``want`` (or the timeout)."""
    deadline = time.monotonic() + timeout
    while (value := stopped(mgr, cause)) < want and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    return value


async def test_child_killed_with_requests_in_flight_retries_on_a_new_process(mgr):
    t = tenant()
    await mgr.ping(t)
    old = mgr.processes()[t].pid
    os.kill(old, signal.SIGSTOP)  # hold the requests in flight
    pending = [asyncio.create_task(mgr.ping(t)) for _ in range(20)]
    while mgr.processes()[t].in_flight < 20:
        await asyncio.sleep(0.005)
    os.kill(old, signal.SIGKILL)
    async with asyncio.timeout(30):
        await asyncio.gather(*pending)
    new = mgr.processes()[t].pid
    assert new != old
    await assert_gone([old])
    # A broken process is counted once reaped (its exit status tells a crash from a sandbox kill).
    assert await stopped_count(mgr, "broken", 1) == 1


async def test_retries_exhausted_gives_typed_error_and_never_hangs():
    t = tenant()
    async with WalRedoManager(retries=0) as mgr:
        await mgr.ping(t)
        pid = mgr.processes()[t].pid
        os.kill(pid, signal.SIGSTOP)
        pending = asyncio.create_task(mgr.ping(t))
        while mgr.processes()[t].in_flight < 1:
            await asyncio.sleep(0.005)
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(RedoProcessFailed):
            async with asyncio.timeout(30):
                await pending
        await mgr.ping(t)  # the next request gets a fresh process
        assert mgr.processes()[t].pid != pid
    await assert_gone([pid])


async def test_stale_take_if_does_not_kill_the_replacement(mgr):
    t = tenant()
    await mgr.ping(t)
    cell = mgr._tenants.cells[t]
    stale = cell.get()
    os.kill(stale.pid, signal.SIGKILL)
    await mgr.ping(t)  # caller A: sees it broken, replaces it
    cell = mgr._tenants.cells[t]  # the dead process's cell was dropped once empty: the tenant's current one
    fresh = cell.get()
    assert fresh is not None and fresh is not stale
    # caller B, late, holding the stale process, retires it: the fresh one must survive and keep serving
    mgr._tenants.retire(cell, stale, __import__("forkserver.metrics").metrics.StopCause.BROKEN)
    await asyncio.sleep(0.1)
    assert cell.get() is fresh
    await mgr.ping(t)
    assert mgr.processes()[t].pid == fresh.pid


async def test_sigstopped_child_times_out_is_killed_and_replaced():
    t = tenant()
    async with WalRedoManager(request_timeout=0.5) as mgr:
        await mgr.ping(t)
        pid = mgr.processes()[t].pid
        os.kill(pid, signal.SIGSTOP)
        with pytest.raises(RedoTimeout):
            await mgr.ping(t)
        assert t not in mgr.processes()
        await assert_gone([pid])
        await mgr.ping(t)
        assert mgr.processes()[t].pid != pid
        assert await stopped_count(mgr, "timeout", 1) == 1


@pytest.mark.parametrize("retries", [0, 2])
async def test_timeout_fails_only_the_expired_request_younger_ones_retry(retries):
    """Even with retries=0: the younger request's process was killed for another request's sake."""
    t = tenant()
    async with WalRedoManager(request_timeout=0.6, retries=retries) as mgr:
        await mgr.ping(t)
        pid = mgr.processes()[t].pid
        os.kill(pid, signal.SIGSTOP)
        old = asyncio.create_task(mgr.ping(t))
        await asyncio.sleep(0.4)
        young = asyncio.create_task(mgr.ping(t))  # same stuck process, sent 0.4 s later
        with pytest.raises(RedoTimeout):
            await old
        await young  # its process was killed for the old one's sake: retried on a fresh process
        assert mgr.processes()[t].pid != pid
        assert await stopped_count(mgr, "timeout", 1) == 1
    await assert_gone([pid])


async def test_deterministic_redo_error_is_not_retried_and_keeps_the_process(mgr):
    t = tenant()
    await mgr.ping(t)
    pid = mgr.processes()[t].pid
    before = await spawns(mgr)
    with pytest.raises(RedoFailed) as info:
        await mgr.request_redo(t, BufferTag(1663, 5, 16384, 0, 0), 0x1000, None, [(0x1000, b"\x00" * 30)])
    assert info.value.code == "invalid-record"
    assert mgr.processes()[t].pid == pid and await spawns(mgr) == before
    await mgr.ping(t)


# ------------------------------------------------------------------ pipelining


async def test_cancelling_one_of_100_pipelined_requests_leaves_the_others_correct(mgr):
    t = tenant()
    await mgr.ping(t)
    pid = mgr.processes()[t].pid
    tag = BufferTag(1663, 5, 16384, 0, 0)
    pages = []
    for i in range(100):
        page = bytearray(blank_page())
        page[8000:8004] = i.to_bytes(4, "little")  # free space: distinct, still a valid page
        pages.append(bytes(page))
    os.kill(pid, signal.SIGSTOP)  # queue all 100 on the stream before any answer
    tasks = [asyncio.create_task(mgr.request_redo(t, tag, 0, p, [])) for p in pages]
    while mgr.processes()[t].in_flight < 100:
        await asyncio.sleep(0.005)
    tasks[37].cancel()
    os.kill(pid, signal.SIGCONT)
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(results[37], asyncio.CancelledError)
    for i, result in enumerate(results):
        if i != 37:
            assert result == pages[i], f"request {i} got another request's page"
    assert mgr.processes()[t].pid == pid and mgr.processes()[t].in_flight == 0
    await mgr.ping(t)


# ------------------------------------------------------------------ input validation and lifecycle


@pytest.mark.parametrize(
    "args",
    [
        ("not-a-tenant", BufferTag(1, 2, 3, 0, 0), 0, None, [(1, b"x")]),
        (None, BufferTag(1, 2, 3, 0, 0), 0, b"short", []),
        (None, BufferTag(1, 2, 3, 0, 0), 0, None, [(1, "not bytes")]),
        (None, BufferTag(1, 2, 3, 0, 0), 0, None, []),
        (None, (1, 2, 3), 0, None, [(1, b"x")]),
        (None, BufferTag(1, 2, 3, 0, 0), -1, None, [(1, b"x")]),
        # records must be in ascending end-LSN order and end at or before the request's LSN
        (None, BufferTag(1, 2, 3, 0, 0), 5, None, [(10, b"x")]),
        (None, BufferTag(1, 2, 3, 0, 0), 100, None, [(20, b"x"), (10, b"y")]),
        (None, BufferTag(1, 2, 3, 0, 0), 100, None, [(10, b"x"), (10, b"y")]),
        (None, BufferTag(1, 2, 3, 0, 0), 0, blank_page(), [(1, b"x")]),
    ],
)
async def test_bad_input_is_value_error_before_any_spawn(mgr, args):
    t = args[0] if args[0] is not None else tenant()
    before = await spawns(mgr)
    with pytest.raises(ValueError):
        await mgr.request_redo(t, *args[1:])
    assert await spawns(mgr) == before and not mgr.processes()


async def test_event_loop_never_forks_or_spawns_during_200_cold_spawns(mgr):
    """The loop thread makes no fork/exec/spawn call during 200 cold spawns (audited) and every tenant is
    served. The loop's gaps and its thread's CPU time per gap are printed, not asserted: timing belongs to
    ``scripts/bench_loop_stall`` (a shared 2-core machine measures the scheduler as much as us).
    """
    loop_thread = threading.get_ident()
    watching = True
    offending = []

    def audit(event, args):
        if watching and threading.get_ident() == loop_thread and event in (
            "os.fork", "os.forkpty", "os.posix_spawn", "os.exec", "subprocess.Popen", "os.system",
        ):
            offending.append(event)

    sys.addaudithook(audit)  # hooks cannot be removed: it stops recording when `watching` is cleared
    gaps, cpu = [], []

    async def ticker(stop):
        last, last_cpu = time.perf_counter(), time.thread_time()
        while not stop.is_set():
            await asyncio.sleep(0.001)
            now, now_cpu = time.perf_counter(), time.thread_time()
            gaps.append(now - last)
            cpu.append(now_cpu - last_cpu)
            last, last_cpu = now, now_cpu

    gc.collect()
    gc.freeze()  # a full collection of the test process's heap is not what this test is about
    try:
        stop = asyncio.Event()
        probe = asyncio.create_task(ticker(stop))
        await asyncio.sleep(0.3)
        idle_gaps, idle_cpu = sorted(gaps), max(cpu)
        gaps.clear()
        cpu.clear()
        ts = [tenant() for _ in range(200)]
        for chunk in range(0, 200, 10):  # 10 cold tenants at a time
            await asyncio.gather(*(mgr.ping(t) for t in ts[chunk : chunk + 10]))
        stop.set()
        await probe
    finally:
        watching = False
        gc.unfreeze()
    busy = sorted(gaps)
    assert len(mgr.processes()) == 200
    assert offending == []
    print(
        f"\nloop gaps: idle max {idle_gaps[-1] * 1e3:.2f} ms p99 {idle_gaps[int(len(idle_gaps) * 0.99)] * 1e3:.2f} ms;"
        f" during 200 spawns max {busy[-1] * 1e3:.2f} ms p99 {busy[int(len(busy) * 0.99)] * 1e3:.2f} ms;"
        f" loop-thread CPU per gap: idle max {idle_cpu * 1e3:.2f} ms, spawning max {max(cpu) * 1e3:.2f} ms"
    )


# ------------------------------------------------------------------ real WAL


async def test_50_tenants_mixed_requests_against_the_wal_capture(mgr):
    """Every tenant gets a different slice of the capture's requests plus pings, all concurrently."""
    from walredo_tools.capture import load_capture, page_requests, pages_match

    capture = os.path.join(os.path.dirname(__file__), "data", "wal-small", "capture.msgpack")
    doc = load_capture(capture)
    requests = page_requests(doc)
    assert len(requests) > 1000 and {r.source for r in requests} == {"consistency-image", "disk"}
    ts = [tenant() for _ in range(50)]
    checked = 0

    async def tenant_work(i, t):
        nonlocal checked
        mine = requests[i::50] + [r for r in requests if r.source == "disk"][i % 3 :: 3]
        jobs = []
        for j, req in enumerate(mine):
            if j % 5 == 0:
                jobs.append(mgr.ping(t))
            jobs.append(mgr.request_redo(t, req.tag, req.lsn, req.base_image, req.records,
                                         wal_log_hints=doc["checksums"]))
        results = await asyncio.gather(*jobs)
        pages = [r for r in results if r is not None]
        assert len(pages) == len(mine)
        for req, page in zip(mine, pages):
            assert pages_match(req.tag, page, req.expected, req.rmgr), (t, req.tag, req.lsn, req.source)
            checked += 1

    await asyncio.gather(*(tenant_work(i, t) for i, t in enumerate(ts)))
    assert checked >= len(requests)
    assert set(mgr.processes()) == set(ts)


async def test_process_that_died_while_idle_is_replaced_without_spending_a_retry():
    """A child that died between requests sits BROKEN in its cell until the next request finds it. That
    request never reached any child, so replacing the dead process must not cost a retry: with retries=0 it
    used to fail with RedoProcessFailed although a fresh process would have served it."""
    t = tenant()
    async with WalRedoManager(retries=0) as mgr:
        await mgr.ping(t)
        process = mgr._tenants.cells[t].get()
        os.kill(process.pid, signal.SIGKILL)
        async with asyncio.timeout(30):
            while process.state.value == "running":  # the reader sees EOF
                await asyncio.sleep(0.01)
        await mgr.ping(t)
        assert mgr.processes()[t].pid != process.pid
        pids = [info.pid for info in mgr.processes().values()]
    await assert_gone(pids + [process.pid])


async def test_oversized_request_and_bad_wal_log_hints_are_value_error_before_any_spawn(mgr):
    """Both used to pass the manager's checks, spawn the tenant's process, and only then fail in the
    encoder: FrameTooLarge after a spawn, and a bare TypeError for wal_log_hints."""
    from walredo_template.protocol import MAX_FRAME_SIZE, FrameTooLarge

    t = tenant()
    before = await spawns(mgr)
    chunk = b"x" * (1 << 20)
    too_big = [(i + 1, chunk) for i in range(MAX_FRAME_SIZE // len(chunk) + 1)]
    with pytest.raises(FrameTooLarge):  # the frame bound, not the LSN check
        await mgr.request_redo(t, BufferTag(1, 2, 3, 0, 0), len(too_big), blank_page(), too_big)
    with pytest.raises(ValueError):
        await mgr.request_redo(t, BufferTag(1, 2, 3, 0, 0), 10, blank_page(), [(1, b"x")], wal_log_hints="yes")
    assert await spawns(mgr) == before and not mgr.processes()


async def test_out_of_fds_at_spawn_is_a_typed_error(mgr):
    """With the fd table full, the spawn's socketpair raises OSError (EMFILE), which used to escape
    request_redo/ping untyped instead of failing the request with RedoProcessFailed."""
    import resource

    t = tenant()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    fillers = []
    try:
        highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
        resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 1, hard))
        while True:  # fill every hole below the limit too
            try:
                fillers.append(os.dup(0))
            except OSError:
                break
        with pytest.raises(RedoProcessFailed):
            await mgr.ping(t)
        assert mgr.statistics().tenants == 0  # the failed spawn left no cell behind
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    await mgr.ping(t)  # fds available again: the tenant is served


# ------------------------------------------------------------------ record LSNs


async def test_real_records_at_a_wrong_lsn_or_out_of_order_are_value_error_before_any_spawn(mgr):
    """LSN 1 used to give the same page as the right LSN, and swapped records went unnoticed."""
    from walredo_tools.capture import load_capture, page_requests, pages_match

    doc = load_capture(os.path.join(os.path.dirname(__file__), "data", "wal-small", "capture.msgpack"))
    req = next(r for r in page_requests(doc) if len(r.records) >= 2)
    t = tenant()
    before = await spawns(mgr)
    swapped = [req.records[1], req.records[0], *req.records[2:]]
    for lsn, records in ((1, req.records), (req.records[-1][0] - 1, req.records), (req.lsn, swapped)):
        with pytest.raises(ValueError, match="LSN"):
            await mgr.request_redo(t, req.tag, lsn, req.base_image, records, wal_log_hints=doc["checksums"])
    assert await spawns(mgr) == before and not mgr.processes()
    page = await mgr.request_redo(t, req.tag, req.lsn, req.base_image, req.records, wal_log_hints=doc["checksums"])
    assert pages_match(req.tag, page, req.expected, req.rmgr)
