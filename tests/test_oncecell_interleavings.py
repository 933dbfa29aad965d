"""OnceCell under random interleavings: hypothesis programs of get_or_init calls, cancellations, factory
outcomes (value, failure, abort), take_if and take, run against a scripted factory, keep the cell's
invariants (tests/test_oncecell.py has one test per numbered semantic and the helpers used here).
"""

import asyncio

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_oncecell import Boom, Value, settle

from forkserver import InitAborted, OnceCell

# property-based interleaving ------------------------------------------------------------------------------

OPS = st.lists(
    st.one_of(
        st.tuples(st.just("call"), st.integers(0, 0)),
        st.tuples(st.just("cancel"), st.integers(0, 30)),
        st.tuples(st.just("finish"), st.sampled_from(["ok", "fail", "abort"])),
        st.tuples(st.just("take_if"), st.integers(0, 30)),
        st.tuples(st.just("take"), st.integers(0, 0)),
        st.tuples(st.just("step"), st.integers(1, 3)),
    ),
    max_size=40,
)


class Scripted:
    """Factory whose pending calls the property test resolves one by one."""

    def __init__(self):
        self.pending = []  # futures, one per factory call
        self.calls = 0

    async def __call__(self):
        self.calls += 1
        fut = asyncio.get_running_loop().create_future()
        self.pending.append(fut)
        outcome = await fut
        if outcome == "fail":
            raise Boom()
        if outcome == "abort":
            raise asyncio.CancelledError()
        return Value(self.calls)


async def run_program(ops):
    cell = OnceCell()
    factory = Scripted()
    callers = []
    returned = []  # (value, was current at return)

    async def caller():
        value = await cell.get_or_init(factory)
        returned.append((value, cell.get() is value))
        return value

    for op, arg in ops:
        if op == "call":
            callers.append(asyncio.create_task(caller()))
        elif op == "cancel" and callers:
            callers[arg % len(callers)].cancel()
        elif op == "finish":
            open_futs = [f for f in factory.pending if not f.done()]
            if open_futs:
                open_futs[0].set_result(arg)
        elif op == "take_if" and returned:
            cell.take_if(returned[arg % len(returned)][0])
        elif op == "take":
            cell.take()
        elif op == "step":
            await settle(arg)
        # invariants at every step
        # at most one attempt in flight; a started attempt may not have called its factory yet
        assert cell.generation - 1 <= factory.calls <= cell.generation
        open_calls = sum(not f.done() for f in factory.pending)
        assert open_calls <= 1 and (cell.initializing or open_calls == 0)
        assert not (cell.initializing and cell.get() is not None)
        assert cell.waiters <= len(callers)
    # drain: finish everything successfully
    for _ in range(100):
        await settle()
        open_futs = [f for f in factory.pending if not f.done()]
        if not open_futs and all(t.done() for t in callers):
            break
        for f in open_futs:
            f.set_result("ok")
    results = await asyncio.gather(*callers, return_exceptions=True)
    for r in results:
        assert isinstance(r, (Value, Boom, InitAborted, asyncio.CancelledError)), r
    assert all(current for _, current in returned), "returned a value that was not current"
    assert cell.waiters == 0 and not cell.initializing
    assert factory.calls == cell.generation  # exactly one factory call per generation
    await cell.close()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(OPS)
def test_property_interleavings_keep_invariants(ops):
    asyncio.run(run_program(ops))
