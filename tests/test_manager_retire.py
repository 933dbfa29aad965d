"""WalRedoManager retiring processes: idle quiesce, the tenant cells it forgets (and the races of a removal
against new requests), and the cause each stop is counted under. Real processes, as tests/test_manager.py.
"""

import asyncio
import os
import signal
import time

import pytest
from test_manager import assert_gone, pid_alive, reaped, stopped, stopped_count, tenant, tenant_children

from forkserver import WalRedoManager
from forkserver.errors import CellClosed
from forkserver.manager import ManagerStatistics
from forkserver.oncecell import CellState
from forkserver.process import ProcessState

pytestmark = pytest.mark.timeout(120)


async def test_idle_quiesce_stops_and_next_request_respawns():
    t = tenant()
    async with WalRedoManager(idle_timeout=0.2, quiesce_period=0.05) as mgr:
        await mgr.ping(t)
        pid = mgr.processes()[t].pid
        deadline = time.monotonic() + 10
        while t in mgr.processes() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert t not in mgr.processes()
        await assert_gone([pid])
        await mgr.ping(t)
        assert mgr.processes()[t].pid != pid
        assert await stopped_count(mgr, "idle", 1) == 1


# ------------------------------------------------------------------ forgetting tenants


def cells(mgr) -> int:
    return mgr.statistics().tenants


async def test_retired_tenants_leave_no_cell_and_the_ticks_walk_only_live_processes():
    """After 3,000 tenants were quiesced, 3,001 cells remained and every tick walked them all."""
    ts = [tenant() for _ in range(40)]
    async with WalRedoManager(idle_timeout=60.0, quiesce_period=60.0) as mgr:
        for chunk in range(0, len(ts), 10):
            await asyncio.gather(*(mgr.ping(t) for t in ts[chunk : chunk + 10]))
        pids = [info.pid for info in mgr.processes().values()]
        assert cells(mgr) == len(ts)
        assert sorted(mgr.quiesce_idle(now=time.time() + 120)) == sorted(ts)
        await reaped(mgr)
        assert cells(mgr) == 0
        assert mgr.statistics() == ManagerStatistics(tenants=0, live_processes=0, reaping=0)
        assert stopped(mgr, "idle") == len(ts)
        assert mgr.quiesce_idle(now=time.time() + 120) == [] and mgr.expire_requests(time.monotonic() + 120) == 0
        await assert_gone(pids)
        await mgr.ping(ts[0])  # a retired tenant comes back: a new process, one cell
        assert cells(mgr) == 1 and mgr.processes()[ts[0]].pid not in pids


async def test_cell_removal_raced_against_new_requests_loses_none_and_leaves_one_process():
    """Idle retirement drops the tenant's cell while requests for the tenant arrive around it: none is lost,
    the tenant never has two processes, and a dropped cell never starts a spawn."""
    t = tenant()

    async def must_not_spawn():
        raise AssertionError("a dropped cell started a spawn")

    async with WalRedoManager(idle_timeout=60.0, quiesce_period=60.0) as mgr:
        retired_rounds = 0
        for round_ in range(12):  # bounded: at most one spawn per round
            await mgr.ping(t)
            old_cell, old_process = mgr._tenants.cells[t], mgr._tenants.cells[t].get()
            early = [asyncio.create_task(mgr.ping(t)) for _ in range(round_ % 3)]  # queued before the removal
            for _ in range(round_ // 6):  # ... and, in later rounds, already sent (then nothing is retired)
                await asyncio.sleep(0)
            retired = mgr.quiesce_idle(now=time.time() + 120)
            late = [asyncio.create_task(mgr.ping(t)) for _ in range(3)]
            await asyncio.sleep(0)  # the late requests start: a new cell with its spawn in flight
            if retired:
                retired_rounds += 1
                assert old_cell.state is CellState.CLOSED and mgr._tenants.cells[t] is not old_cell
                with pytest.raises(CellClosed):
                    await old_cell.get_or_init(must_not_spawn)
                mgr._tenants.forget(t, mgr._tenants.cells[t])  # a cell with a spawn in flight is never dropped
                assert mgr._tenants.cells[t].state is CellState.INITIALIZING
            results = await asyncio.gather(*early, *late, return_exceptions=True)
            assert all(r is None for r in results), results  # no request lost
            assert list(mgr._tenants.cells) == [t] and mgr.statistics().live_processes == 1
            current = mgr._tenants.cells[t].get()
            assert current is not None and (current is old_process) == (not retired)
            await reaped(mgr)
            live = [p.pid for p in tenant_children([t]) if pid_alive(p.pid)]
            assert live == [current.pid], f"round {round_}: tenant processes {live}"
        assert retired_rounds >= 4


# ------------------------------------------------------------------ stop causes


async def _kill_idle_child(mgr, t: str, *, let_the_loop_see_it: bool):
    await mgr.ping(t)
    process = mgr._tenants.cells[t].get()
    os.kill(process.pid, signal.SIGKILL)
    if let_the_loop_see_it:
        async with asyncio.timeout(30):
            while process.state is ProcessState.RUNNING:  # the reader sees the EOF
                await asyncio.sleep(0.01)
    else:
        # Block, so that the loop does not read the EOF: the retirement below comes before it.
        deadline = time.monotonic() + 10
        while pid_alive(process.pid) and time.monotonic() < deadline:
            time.sleep(0.002)
        assert not pid_alive(process.pid) and process.state is ProcessState.RUNNING
    return process


@pytest.mark.parametrize("let_the_loop_see_it", [True, False])
async def test_child_killed_while_idle_is_counted_broken_not_idle(let_the_loop_see_it):
    """A soak counted 62 broken stops for 88 broken children: a child killed while idle was counted as an
    idle stop when the quiesce tick retired it."""
    t = tenant()
    async with WalRedoManager(idle_timeout=60.0, quiesce_period=60.0) as mgr:
        process = await _kill_idle_child(mgr, t, let_the_loop_see_it=let_the_loop_see_it)
        mgr.quiesce_idle(now=time.time() + 120)
        await reaped(mgr)
        assert (stopped(mgr, "broken"), stopped(mgr, "idle")) == (1, 0)
        assert process.exit_status == -signal.SIGKILL and cells(mgr) == 0
        # an idle child we stop ourselves is still an idle stop
        await mgr.ping(t)
        mgr.quiesce_idle(now=time.time() + 120)
        await reaped(mgr)
        assert (stopped(mgr, "broken"), stopped(mgr, "idle")) == (1, 1)
    await assert_gone([process.pid])


async def test_child_killed_while_idle_is_counted_broken_at_shutdown_too():
    t, other = tenant(), tenant()
    mgr = WalRedoManager(idle_timeout=60.0, quiesce_period=60.0)
    await mgr.start()
    try:
        await mgr.ping(other)
        process = await _kill_idle_child(mgr, t, let_the_loop_see_it=False)
    finally:
        await mgr.aclose()
    assert (stopped(mgr, "broken"), stopped(mgr, "shutdown")) == (1, 1)
    await assert_gone([process.pid])
