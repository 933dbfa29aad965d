"""OnceCell semantics: one test per numbered semantic of the once-cell issue (the property test of random
interleavings is tests/test_oncecell_interleavings.py)."""

import asyncio
import gc
import weakref

import pytest

from forkserver import CellClosed, InitAborted, OnceCell
from forkserver.oncecell import CellState


class Value:
    """A distinct object per factory call (identity matters), weak-referenceable."""

    def __init__(self, n):
        self.n = n


class Boom(Exception):
    pass


class Gate:
    """A factory whose calls are counted and which completes only when the test says so."""

    def __init__(self):
        self.calls = 0
        self.release = asyncio.Event()
        self.fail_with = None

    async def __call__(self):
        self.calls += 1
        n = self.calls
        await self.release.wait()
        if self.fail_with is not None:
            raise self.fail_with
        return Value(n)


class SlowDispose:
    """A dispose that records each value it disposed, once the test sets ``release``."""

    def __init__(self):
        self.disposed = []
        self.release = asyncio.Event()

    async def __call__(self, v):
        await self.release.wait()
        self.disposed.append(v)


async def settle(rounds=5):
    for _ in range(rounds):
        await asyncio.sleep(0)


# 1 -------------------------------------------------------------------------------------------------------


async def test_1_one_factory_call_per_generation():
    cell = OnceCell()
    gate = Gate()
    tasks = [asyncio.create_task(cell.get_or_init(gate)) for _ in range(1000)]
    await settle()
    assert gate.calls == 1
    assert cell.waiters == 1000
    gate.release.set()
    values = await asyncio.gather(*tasks)
    assert gate.calls == 1
    assert all(v is values[0] for v in values)
    assert cell.get() is values[0]
    # a second generation after take(): exactly one more call
    cell.take()
    more = await asyncio.gather(*(cell.get_or_init(gate) for _ in range(10)))
    assert gate.calls == 2 and all(v is more[0] for v in more) and more[0] is not values[0]


# 2 -------------------------------------------------------------------------------------------------------


async def test_2_caller_cancellation_and_timeout_leave_attempt_running():
    cell = OnceCell()
    gate = Gate()
    cancelled = asyncio.create_task(cell.get_or_init(gate))
    await settle()
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            await cell.get_or_init(gate)
    assert cell.initializing and cell.waiters == 0
    # every caller has gone away; the attempt still completes and its value is stored
    gate.release.set()
    await settle()
    assert not cell.initializing
    assert isinstance(cell.get(), Value) and gate.calls == 1
    assert await cell.get_or_init(gate) is cell.get()
    assert gate.calls == 1


async def test_2_attempt_task_is_strongly_held():
    cell = OnceCell()
    gate = Gate()
    waiter = asyncio.create_task(cell.get_or_init(gate))
    await settle()
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    gc.collect()  # asyncio only holds weak references to tasks: the cell must hold the attempt
    gate.release.set()
    await settle()
    assert isinstance(cell.get(), Value)


# 3 -------------------------------------------------------------------------------------------------------


async def test_3_failure_reaches_every_waiter_and_cell_is_empty_first():
    cell = OnceCell()
    gate = Gate()
    err = Boom("factory failed")
    gate.fail_with = err
    seen_state = []

    async def caller():
        try:
            return await cell.get_or_init(gate)
        except Boom as exc:
            seen_state.append((exc, cell.state, cell.initializing))
            raise

    tasks = [asyncio.create_task(caller()) for _ in range(5)]
    await settle()
    gate.release.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(r is err for r in results)
    assert [s[1] for s in seen_state] == [CellState.EMPTY] * 5
    assert cell.get() is None and gate.calls == 1


async def test_3_retry_in_except_starts_a_new_attempt():
    cell = OnceCell()
    calls = 0

    async def flaky():
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.001)
        if calls == 1:
            raise Boom("first")
        return Value(calls)

    async def caller():
        try:
            return await cell.get_or_init(flaky)
        except Boom:
            return await cell.get_or_init(flaky)

    values = await asyncio.gather(*(caller() for _ in range(20)))
    assert calls == 2  # the failed attempt, then exactly one retry attempt shared by all 20
    assert all(v is values[0] for v in values) and values[0].n == 2


# 4 -------------------------------------------------------------------------------------------------------


async def test_4_factory_cancelled_gives_init_aborted():
    cell = OnceCell()

    async def cancels_itself():
        await asyncio.sleep(0)
        raise asyncio.CancelledError()

    tasks = [asyncio.create_task(cell.get_or_init(cancels_itself)) for _ in range(3)]
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, InitAborted) for r in results)
    assert not any(t.cancelled() for t in tasks)
    assert cell.state is CellState.EMPTY and cell.get() is None
    assert (await cell.get_or_init(Gate_done())).n == 1


def Gate_done():
    async def make():
        return Value(1)

    return make


# 5 -------------------------------------------------------------------------------------------------------


async def test_5_take_if_never_evicts_a_fresh_replacement():
    cell = OnceCell()
    counter = iter(range(100))

    async def factory():
        return Value(next(counter))

    stale = await cell.get_or_init(factory)
    # caller A sees stale die and replaces it
    assert cell.take_if(stale)
    fresh = await cell.get_or_init(factory)
    # caller B, also holding the stale value, tries to evict it late: must not touch the fresh one
    assert not cell.take_if(stale)
    assert cell.get() is fresh
    assert not cell.take_if(Value(0))  # equal-looking but not identical
    assert cell.take_if(fresh) and cell.get() is None
    assert not cell.take_if(fresh)


async def test_5_close_if_empty_closes_only_an_idle_cell():
    """An owner drops an idle cell from its map and closes it in one synchronous step; it must refuse while the
    cell holds a value, makes one, or a woken waiter has yet to resume (that waiter would get CellClosed
    instead of the attempt's outcome)."""
    cell = OnceCell()
    gate = Gate()
    waiter = asyncio.create_task(cell.get_or_init(gate))
    await settle()
    assert cell.state is CellState.INITIALIZING and not cell.close_if_empty()
    gate.fail_with = Boom()
    gate.release.set()
    while cell.initializing:  # the attempt failed: empty, but its waiter has not resumed yet
        await asyncio.sleep(0)
    assert cell.state is CellState.EMPTY and cell.waiters == 1 and not cell.close_if_empty()
    with pytest.raises(Boom):  # the waiter gets the attempt's own error, not CellClosed
        await waiter
    gate.fail_with = None
    value = await cell.get_or_init(gate)
    assert not cell.close_if_empty() and cell.get() is value  # holds a value
    assert cell.take_if(value)
    assert cell.close_if_empty() and cell.state is CellState.CLOSED
    assert not cell.close_if_empty()  # already closed
    with pytest.raises(CellClosed):
        await cell.get_or_init(gate)
    assert gate.calls == 2
    await cell.close()  # still idempotent


# 6 -------------------------------------------------------------------------------------------------------


async def test_6_waiter_never_returns_a_value_taken_before_it_ran():
    cell = OnceCell()
    gate = Gate()
    waiter = asyncio.create_task(cell.get_or_init(gate))
    await settle()
    gate.release.set()
    # Let the attempt finish, but take its value before the waiter task gets to run.
    while cell.initializing:
        await asyncio.sleep(0)
    first = cell.take()
    assert first is not None and first.n == 1
    result = await waiter
    assert result is not first  # it started over
    assert result is cell.get() and gate.calls == 2


# 7 -------------------------------------------------------------------------------------------------------


async def test_7_close_is_terminal_idempotent_and_disposes_once():
    disposed = []
    cell = OnceCell(dispose=disposed.append)
    gate = Gate()
    gate.release.set()
    value = await cell.get_or_init(gate)
    await cell.close()
    await cell.close()
    assert disposed == [value]
    assert cell.state is CellState.CLOSED and cell.get() is None
    with pytest.raises(CellClosed):
        await cell.get_or_init(gate)
    assert gate.calls == 1


async def test_7_close_wakes_waiters_and_disposes_late_value():
    disposed = []

    async def async_dispose(v):
        await asyncio.sleep(0)
        disposed.append(v)

    cell = OnceCell(dispose=async_dispose)
    gate = Gate()
    waiters = [asyncio.create_task(cell.get_or_init(gate)) for _ in range(3)]
    await settle()
    closer = asyncio.create_task(cell.close())
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert all(isinstance(r, CellClosed) for r in results)
    assert not closer.done()  # close waits for the in-flight attempt
    gate.release.set()
    await closer
    assert len(disposed) == 1 and disposed[0].n == 1
    await cell.close()
    assert len(disposed) == 1


async def test_7_close_can_cancel_the_attempt():
    cell = OnceCell(dispose=lambda v: pytest.fail("nothing to dispose"))
    gate = Gate()
    waiter = asyncio.create_task(cell.get_or_init(gate))
    await settle()
    await cell.close(cancel_attempt=True)
    assert not cell.initializing
    with pytest.raises(CellClosed):
        await waiter


async def test_7_cancelled_close_still_disposes_the_stored_value():
    """close() takes the value out of the cell before disposing it; cancelling close() used to cancel the
    dispose itself, so the value was neither in the cell nor disposed (a walredo child never reaped)."""
    dispose = SlowDispose()
    disposed, release = dispose.disposed, dispose.release
    cell = OnceCell(dispose=dispose)
    gate = Gate()
    gate.release.set()
    value = await cell.get_or_init(gate)
    closer = asyncio.create_task(cell.close())
    await settle()
    closer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closer
    release.set()
    await cell.close()  # a later close waits for the dispose still in flight
    assert disposed == [value]


async def test_7_close_raises_what_dispose_raised_for_a_late_value():
    """The docstring says a dispose error propagates from close(); for the value of an attempt that ended
    after close() it used to end the attempt task unretrieved ("Task exception was never retrieved")."""

    def dispose(v):
        raise Boom("dispose failed")

    cell = OnceCell(dispose=dispose)
    gate = Gate()
    waiter = asyncio.create_task(cell.get_or_init(gate))
    await settle()
    closer = asyncio.create_task(cell.close())
    await settle()
    gate.release.set()
    with pytest.raises(Boom):
        await closer
    with pytest.raises(CellClosed):
        await waiter


async def test_7_second_close_waits_for_the_late_value_dispose():
    """The attempt dropped its handle before disposing a value that arrived after close(), so a second
    close() (e.g. a concurrent shutdown path) returned while that dispose was still running."""
    dispose = SlowDispose()
    disposed, release = dispose.disposed, dispose.release
    cell = OnceCell(dispose=dispose)
    gate = Gate()
    waiter = asyncio.create_task(cell.get_or_init(gate))
    await settle()
    first = asyncio.create_task(cell.close())
    await settle()
    gate.release.set()
    await settle()  # the attempt has its value and is disposing it
    second = asyncio.create_task(cell.close())
    await settle()
    assert not second.done(), "close() returned before the late value was disposed"
    release.set()
    await asyncio.gather(first, second)
    assert len(disposed) == 1 and not cell.initializing
    with pytest.raises(CellClosed):
        await waiter


# 8 -------------------------------------------------------------------------------------------------------


async def test_8_reentrant_factory_gets_runtime_error():
    cell = OnceCell()

    async def reentrant():
        return await cell.get_or_init(reentrant)

    with pytest.raises(RuntimeError, match="own factory"):
        async with asyncio.timeout(5):
            await cell.get_or_init(reentrant)
    assert cell.state is CellState.EMPTY


# 9 -------------------------------------------------------------------------------------------------------


async def test_9_nothing_retained():
    cell = OnceCell()
    gate = Gate()
    err = Boom("x")
    gate.fail_with = err
    exc_ref = weakref.ref(err)
    del err
    tasks = [asyncio.create_task(cell.get_or_init(gate)) for _ in range(10)]
    await settle()
    gate.release.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, Boom) for r in results)
    del results, tasks
    gate.fail_with = None
    gate.release = asyncio.Event()
    gate.release.set()
    await settle()  # let the loop drop the handle that woke us (it references gather's future)
    gc.collect()
    assert exc_ref() is None
    # values: taken and dropped → gone
    value = await cell.get_or_init(gate)
    value_ref = weakref.ref(value)
    assert cell.take() is value
    del value
    gc.collect()
    assert value_ref() is None


async def test_9_waiters_return_to_zero_after_mass_timeouts():
    cell = OnceCell()
    gate = Gate()

    async def impatient():
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.005):
                await cell.get_or_init(gate)

    await asyncio.gather(*(impatient() for _ in range(3000)))
    assert cell.waiters == 0 and cell.initializing
    gate.release.set()
    await settle()
    assert cell.get() is not None and gate.calls == 1


# 10 ------------------------------------------------------------------------------------------------------


async def test_10_initializing_and_waiters_are_exact():
    cell = OnceCell()
    gate = Gate()
    assert (cell.initializing, cell.waiters) == (False, 0)
    tasks = [asyncio.create_task(cell.get_or_init(gate)) for _ in range(7)]
    await settle()
    assert (cell.initializing, cell.waiters) == (True, 7)
    tasks[0].cancel()
    await asyncio.gather(tasks[0], return_exceptions=True)
    assert (cell.initializing, cell.waiters) == (True, 6)
    gate.release.set()
    await asyncio.gather(*tasks[1:])
    assert (cell.initializing, cell.waiters) == (False, 0)
    assert cell.state is CellState.SET
