"""WalRedoManager start and shutdown: aclose fails the waiters and leaves no process, even when cancelled
twice, called concurrently or during start's launch; a second concurrent start is a UsageError.
"""

import asyncio
import os
import signal

import psutil
import pytest
from test_manager import assert_gone, tenant, tenant_children

from forkserver import WalRedoManager
from forkserver.errors import ManagerClosed, UsageError
from forkserver.manager import ManagerState

pytestmark = pytest.mark.timeout(120)


async def test_shutdown_fails_waiters_and_leaves_no_process():
    ts = [tenant() for _ in range(4)]
    mgr = WalRedoManager()
    with pytest.raises(UsageError):
        await mgr.ping(ts[0])
    await mgr.start()
    await asyncio.gather(*(mgr.ping(t) for t in ts))
    pids = [info.pid for info in mgr.processes().values()]
    template_pid = mgr.template.template_pid
    os.kill(pids[0], signal.SIGSTOP)
    stuck = [asyncio.create_task(mgr.ping(ts[0])) for _ in range(5)]
    await asyncio.sleep(0.05)
    await mgr.aclose()
    results = await asyncio.gather(*stuck, return_exceptions=True)
    assert all(isinstance(r, ManagerClosed) for r in results), results
    assert mgr.state is ManagerState.CLOSED
    await assert_gone(pids + [template_pid])
    assert not tenant_children(ts)
    with pytest.raises(ManagerClosed):
        await mgr.ping(ts[1])
    await mgr.aclose()  # idempotent


async def _force_cleanup(mgr, pids):
    """Last-resort cleanup for a manager whose shutdown was interrupted: kill what it left behind."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if mgr._template is not None:
        await mgr._template.aclose()


async def test_aclose_cancelled_twice_still_completes_the_shutdown():
    """aclose promises the shutdown is shielded. A second cancellation (asyncio.timeout plus a TaskGroup, or
    asyncio.run's final cancel) used to land while aclose awaited the shutdown task directly, which cancelled
    that task: children and the template were left running and the manager stuck in CLOSING."""
    t = tenant()
    mgr = WalRedoManager()
    await mgr.start()
    await mgr.ping(t)
    pids = [info.pid for info in mgr.processes().values()]
    template_pid = mgr.template.template_pid
    closer = asyncio.create_task(mgr.aclose())
    try:
        await asyncio.sleep(0)  # closer is awaiting the shielded shutdown
        closer.cancel()
        await asyncio.sleep(0)  # closer has seen the first cancellation and waits for the shutdown to end
        closer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await closer
        assert mgr.state is ManagerState.CLOSED
        await assert_gone(pids + [template_pid])
        assert not tenant_children([t])
    finally:
        await _force_cleanup(mgr, pids)


async def test_concurrent_aclose_returns_only_after_the_shutdown_is_done():
    """aclose's docstring says every child is killed and reaped when it returns; a second concurrent call
    (e.g. a service's own stop path racing ``async with`` exit) used to return at once, mid-shutdown."""
    t = tenant()
    mgr = WalRedoManager()
    await mgr.start()
    await mgr.ping(t)
    process = mgr._tenants.cells[t].get()
    pids = [process.pid]
    first = asyncio.create_task(mgr.aclose())
    try:
        await asyncio.sleep(0)
        assert mgr.state is ManagerState.CLOSING
        await mgr.aclose()
        assert mgr.state is ManagerState.CLOSED
        assert process.exit_status is not None, "second aclose returned before the child was reaped"
        await first
    finally:
        await first
        await _force_cleanup(mgr, pids)
    await assert_gone(pids)


async def test_aclose_while_start_launches_leaves_no_template():
    """aclose() during start()'s template launch used to mark the manager CLOSED, after which start() set it
    back to RUNNING with a live template and background tasks: a closed manager came back to life."""
    mgr = WalRedoManager()
    starter = asyncio.create_task(mgr.start())
    try:
        await asyncio.sleep(0)  # start is launching the template (off the loop)
        while not starter.done() and not psutil.Process().children():
            await asyncio.sleep(0.001)  # until the template process exists
        await mgr.aclose()
        # aclose returns only once the template that start() was launching is stopped again
        assert not psutil.Process().children(recursive=True), "aclose returned with the template running"
        with pytest.raises(ManagerClosed):
            await starter
        assert mgr.state is ManagerState.CLOSED
        assert not psutil.Process().children(recursive=True), "template left behind"
    finally:
        if not starter.done():
            starter.cancel()
        await asyncio.gather(starter, return_exceptions=True)
        if mgr._template is not None:
            await mgr._template.aclose()


async def test_concurrent_start_raises_usage_error_and_launches_no_second_template():
    mgr = WalRedoManager()
    starts = [asyncio.create_task(mgr.start()) for _ in range(2)]
    try:
        results = await asyncio.gather(*starts, return_exceptions=True)
        assert sum(r is None for r in results) == 1, results
        assert sum(isinstance(r, UsageError) for r in results) == 1, results
    finally:
        await mgr.aclose()
    assert not psutil.Process().children(recursive=True), "template left behind"
