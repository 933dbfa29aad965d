"""Storms of cold tenants: the parent's per-spawn work is bounded per loop iteration (forkserver.session).

The bound is checked structurally, not timed: an event loop that counts its iterations, and counters of the
spawn sends (socketpair + ``spawn`` frame) and control-socket reads each iteration made.
"""

import asyncio
import collections
import os
import sys
import uuid

import pytest
from proc_guard import proc_guard  # noqa: F401  (fixture)

from forkserver import TemplateClient, TemplateUnavailable, WalRedoManager
from forkserver.session import Session

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # the launched template imports tests.echo_worker with our sys.path
    sys.path.append(REPO)

STORM = 300  # cold tenants at once (live children: keep it small)
HANG = 120.0  # seconds: a test that hangs fails instead of blocking the suite


class CountingLoop(asyncio.SelectorEventLoop):
    """An event loop that counts its iterations (``_run_once`` is one: poll, then the ready callbacks)."""

    iteration = 0

    def _run_once(self) -> None:
        self.iteration += 1
        super()._run_once()


def run(coro_fn, *args):
    with asyncio.Runner(loop_factory=CountingLoop) as runner:
        return runner.run(coro_fn(*args))


class Counters:
    """Per loop iteration: spawns sent, and control chunks read by one readable callback."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sends: collections.Counter[int] = collections.Counter()
        self.reads_per_callback: list[int] = []
        send, on_readable, read_once = Session._send_spawn, Session._on_readable, Session._read_once
        counters = self
        reads = [0]

        def counting_send(session, entry):
            counters.sends[session.loop.iteration] += 1
            return send(session, entry)

        def counting_read_once(session):
            reads[0] += 1
            return read_once(session)

        def counting_on_readable(session):
            reads[0] = 0
            try:
                return on_readable(session)
            finally:
                counters.reads_per_callback.append(reads[0])

        monkeypatch.setattr(Session, "_send_spawn", counting_send)
        monkeypatch.setattr(Session, "_read_once", counting_read_once)
        monkeypatch.setattr(Session, "_on_readable", counting_on_readable)


def open_fds() -> set[int]:
    return set(map(int, os.listdir("/proc/self/fd")))


def test_manager_storm_is_answered_and_sends_at_most_k_per_iteration(proc_guard, monkeypatch):  # noqa: F811
    counters = Counters(monkeypatch)
    k = 8

    async def main() -> None:
        async with asyncio.timeout(HANG):
            client = await TemplateClient.launch(pool_size=2, spawn_timeout=60.0)
            proc_guard.watch_dir(os.path.dirname(client.socket_path))
            try:
                client.spawns_per_iteration = k
                async with WalRedoManager(client, request_timeout=60.0) as mgr:
                    tenants = [uuid.uuid4().hex for _ in range(STORM)]
                    await asyncio.gather(*(mgr.ping(t) for t in tenants))  # every one answered
                    assert set(tenants) <= set(mgr.processes())
                    assert len({p.pid for p in mgr.processes().values()}) == STORM
            finally:
                await client.aclose()

    run(main)
    assert sum(counters.sends.values()) == STORM
    assert max(counters.sends.values()) <= k, counters.sends.most_common(3)
    assert len(counters.sends) >= STORM // k  # the bound bit: the storm went out over many iterations
    assert max(counters.reads_per_callback) <= k


def test_cancelled_while_waiting_its_turn_leaves_nothing(proc_guard):  # noqa: F811
    async def main() -> None:
        async with asyncio.timeout(HANG):
            async with TemplateClient.launch(worker="tests.echo_worker:main", pool_size=0) as client:
                proc_guard.watch_dir(os.path.dirname(client.socket_path))
                client.spawns_per_iteration = 1
                await client.stats()
                before_fds = open_fds()
                spawned_before = (await client.stats())["spawns"]
                session = client._session
                tasks = [asyncio.ensure_future(client.spawn(f"{i:032x}")) for i in range(20)]
                await asyncio.sleep(0)  # every first step ran: one went out, the rest wait their turn
                assert len(session.spawn_queue) == 19
                for t in tasks[5:]:
                    t.cancel()
                results = await asyncio.gather(*tasks, return_exceptions=True)
                handles = results[:5]
                assert all(isinstance(r, asyncio.CancelledError) for r in results[5:])
                stats = await client.stats()
                assert stats["spawns"] - spawned_before == 5  # the cancelled ones were never sent
                assert not session.spawn_queue and not session.pending
                for h in handles:
                    h.close()
                    assert await h.wait() is not None
                assert open_fds() == before_fds

    run(main)


def test_queued_spawns_fail_with_their_session(proc_guard):  # noqa: F811
    async def main() -> None:
        async with asyncio.timeout(HANG):
            async with TemplateClient.launch(worker="tests.echo_worker:main", pool_size=0) as client:
                proc_guard.watch_dir(os.path.dirname(client.socket_path))
                client.spawns_per_iteration = 1
                await client.stats()
                before_fds = open_fds()
                session = client._session
                tasks = [asyncio.ensure_future(client.spawn(f"{i:032x}")) for i in range(10)]
                await asyncio.sleep(0)
                assert len(session.spawn_queue) == 9
                session.fail(TemplateUnavailable("dropped by the test"))
                results = await asyncio.gather(*tasks, return_exceptions=True)
                assert all(isinstance(r, TemplateUnavailable) for r in results), results
                assert not session.spawn_queue and not session.pending
                # the one that went out: its parent end was closed, so a child forked for it exits
                assert open_fds() <= before_fds
                child = await client.spawn(f"{99:032x}")  # a new session serves
                child.close()

    run(main)


def test_a_spawn_on_an_idle_session_goes_out_in_the_same_iteration(proc_guard, monkeypatch):  # noqa: F811
    counters = Counters(monkeypatch)

    async def main() -> None:
        async with asyncio.timeout(HANG):
            async with TemplateClient.launch(worker="tests.echo_worker:main", pool_size=0) as client:
                proc_guard.watch_dir(os.path.dirname(client.socket_path))
                await client.stats()
                await asyncio.sleep(0)
                loop = asyncio.get_running_loop()
                asked = loop.iteration
                child = await client.spawn(f"{1:032x}")
                assert list(counters.sends) == [asked]  # no turn to wait for: sent by the call itself
                child.close()
                await child.wait()

    run(main)
