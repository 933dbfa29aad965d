"""forkserver.pool: the size bounds, the refill decision, and the pool inside a real template.

Not timed: the bounds below (5 s for a SIGTERM, 10 s for a replacement) only catch a template that ignores
the signal or never refills. Every process a test starts is stopped and reaped (``proc_guard`` fails the test
otherwise); every loop that waits for one is bounded.
"""

import asyncio
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
from proc_guard import proc_guard  # noqa: F401  (fixture)
from test_client import ping

from forkserver import TemplateClient, pool
from forkserver.pool import MAX_POOL_SIZE, REFILL_WAIT, TOPUP_AFTER, Pool
from forkserver.template import Template

POOL_ENV = "WALREDO_TEMPLATE_POOL"

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = "tests.echo_worker:main"
if REPO not in sys.path:
    sys.path.append(REPO)


def _worker(sock, tenant):  # never run: the templates built here never serve
    raise AssertionError("not reached")


def _never(chan_fd):  # Pool's run_idle in tests that never fork
    raise AssertionError("not reached")


def tenant(i: int) -> str:
    return f"{i:032x}"


# ---------------------------------------------------------------------------------------------- size bounds


@pytest.mark.parametrize("size", [-1, MAX_POOL_SIZE + 1])
def test_template_refuses_a_pool_size_out_of_bounds(tmp_path, size):
    with pytest.raises(ValueError, match=f"between 0 and {MAX_POOL_SIZE}"):
        Template(str(tmp_path / "ctl.sock"), _worker, os.urandom(32), pool_size=size)


@pytest.mark.parametrize("raw", ["-1", str(MAX_POOL_SIZE + 1), "four", ""])
def test_template_refuses_a_pool_size_out_of_bounds_from_the_environment(tmp_path, monkeypatch, raw):
    monkeypatch.setenv(POOL_ENV, raw)
    with pytest.raises(ValueError, match=POOL_ENV):
        Template(str(tmp_path / "ctl.sock"), _worker, os.urandom(32))


@pytest.mark.parametrize("size", [0, 1, MAX_POOL_SIZE])
def test_pool_sizes_at_the_bounds_are_accepted(tmp_path, monkeypatch, size):
    assert Template(str(tmp_path / "ctl.sock"), _worker, os.urandom(32), pool_size=size).pool_size == size
    monkeypatch.setenv(POOL_ENV, str(size))
    assert Template(str(tmp_path / "ctl.sock"), _worker, os.urandom(32)).pool_size == size


def test_the_default_pool_absorbs_a_burst(tmp_path, monkeypatch):
    monkeypatch.delenv(POOL_ENV, raising=False)
    size = Template(str(tmp_path / "ctl.sock"), _worker, os.urandom(32)).pool_size
    assert size == pool.DEFAULT_POOL_SIZE >= 4


@pytest.mark.parametrize("size,low", [(4, 0), (4, 5)])
def test_pool_refuses_a_threshold_outside_its_size(size, low):
    with pytest.raises(ValueError, match="threshold"):
        Pool(size, _never, print, low=low)


def test_pool_refuses_a_size_that_is_no_int():
    with pytest.raises(ValueError):
        Pool(True, _never, print)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- the decision


def test_a_full_or_empty_sized_pool_wants_no_refill():
    assert Pool(0, _never, print).refill_timeout(time.monotonic()) is None


def test_refill_waits_for_quiet_after_the_loop_was_busy():
    p = Pool(4, _never, print)
    assert p.low == 2
    now = 100.0
    assert p.refill_timeout(now) == 0.0  # empty and never busy: fill at once
    p.busy(now)
    assert p.refill_timeout(now) == pytest.approx(REFILL_WAIT)  # even empty: the spawn's round trips go first
    p._idle = {1: None}  # type: ignore[dict-item]  # a stand-in: the decision only counts them
    assert p.refill_timeout(now) == pytest.approx(REFILL_WAIT)
    assert p.refill_timeout(now + REFILL_WAIT / 2) == pytest.approx(REFILL_WAIT / 2)
    assert p.refill_timeout(now + 1) == 0.0


def test_a_pool_short_by_less_than_a_batch_tops_up_after_a_while_even_when_busy(monkeypatch):
    p = Pool(4, _never, print)
    # Three children waiting (stand-ins: the decision only counts them) and no batch in progress.
    monkeypatch.setattr(p, "_idle", {1: None, 2: None, 3: None})
    p._batch = False
    p.busy(100.0)
    assert p.refill_timeout(100.0) == pytest.approx(TOPUP_AFTER)  # short from now on
    for t in (100.05, 100.09):
        p.busy(t)  # a steady trickle of events does not push the top-up back ...
        assert p.refill_timeout(t) == pytest.approx(100.0 + TOPUP_AFTER - t)
    p.busy(100.0 + TOPUP_AFTER)
    assert p.refill_timeout(100.0 + TOPUP_AFTER) == pytest.approx(REFILL_WAIT)  # ... it only waits for quiet
    monkeypatch.setattr(p, "_idle", {1: None, 2: None, 3: None, 4: None})
    assert p.refill_timeout(101.0) is None  # full: the batch is over


def test_below_the_threshold_the_pool_refills_to_full(monkeypatch):
    p = Pool(4, _never, print)
    p._batch = False
    monkeypatch.setattr(p, "_idle", {1: None})
    p.busy(100.0)
    assert p.refill_timeout(100.0) == pytest.approx(REFILL_WAIT)
    monkeypatch.setattr(p, "_idle", {1: None, 2: None, 3: None})  # above the threshold again: the batch goes on
    assert p.refill_timeout(100.0) == pytest.approx(REFILL_WAIT)
    monkeypatch.setattr(p, "_idle", {1: None, 2: None, 3: None, 4: None})
    assert p.refill_timeout(100.0) is None
    monkeypatch.setattr(p, "_idle", {1: None, 2: None, 3: None})
    assert p.refill_timeout(100.0) == pytest.approx(TOPUP_AFTER)  # a new shortfall, not a batch


# ---------------------------------------------------------------------------------------------- real templates


def _children(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children()
    except psutil.NoSuchProcess:
        return []


def test_sigterm_during_a_refill_of_256_exits_promptly_and_leaves_nothing(tmp_path, proc_guard):  # noqa: F811
    sockdir = proc_guard.watch_dir(str(tmp_path / "tpl"))
    path = os.path.join(sockdir, "ctl.sock")
    proc = subprocess.Popen(
        [os.path.join(REPO, "scripts", "walredo-template"), "--socket", path, "--worker", WORKER,
         "--pool", str(MAX_POOL_SIZE), "--no-sandbox"],
        stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, cwd=REPO,
    )
    seen: set[int] = set()
    try:
        line = proc.stdout.readline().decode()
        assert line.startswith("walredo-template ready "), line
        deadline = time.monotonic() + 10
        while len(seen) < 8 and time.monotonic() < deadline:  # the refill is under way
            seen.update(c.pid for c in _children(proc.pid))
            time.sleep(0.005)
        assert seen, "the template pre-forked nothing"
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=5)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        proc.stdout.close()
    assert rc == 0
    assert took < 5, took
    # It drained (killed and reaped) every pool child before exiting: none is left running or orphaned.
    alive = [pid for pid in seen if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    assert alive == []
    assert not os.path.exists(path)


@pytest.fixture
async def small_pool(proc_guard):  # noqa: F811
    c = await TemplateClient.launch(worker=WORKER, pool_size=2)
    proc_guard.watch_dir(os.path.dirname(c.socket_path))
    try:
        yield c
    finally:
        await c.aclose()


async def _stats_when(client, pred, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        stats = await client.stats()
        if pred(stats) or time.monotonic() > deadline:
            return stats
        await asyncio.sleep(0.01)


async def test_a_burst_larger_than_the_pool_is_served(small_pool):
    client = small_pool
    stats = await _stats_when(client, lambda s: s["idle"] == 2)
    assert stats["pool_size"] == 2 and stats["idle"] == 2
    n = 9  # more than four times the pool: most are forked on request
    children = await asyncio.gather(*(client.spawn(tenant(i)) for i in range(n)))
    try:
        answers = await asyncio.gather(*(ping(c) for c in children))
        assert answers == [f"pong {c.pid} {c.tenant}\n".encode() for c in children]
        stats = await client.stats()
        assert stats["spawns"] == n and stats["live"] == n
        assert stats["pool_hits"] >= 1 and stats["pool_hits"] + stats["pool_misses"] == n
    finally:
        for c in children:
            c.close()
    # The pool refills once the burst is over.
    stats = await _stats_when(client, lambda s: s["idle"] == 2 and s["live"] == 0)
    assert (stats["idle"], stats["live"]) == (2, 0)


async def test_a_pool_child_that_dies_is_replaced(small_pool):
    client = small_pool
    stats = await _stats_when(client, lambda s: s["idle"] == 2)
    assert stats["idle"] == 2
    tenants = {pid for _, pid, _ in stats["children"]}
    idle = [p.pid for p in _children(stats["pid"]) if p.pid not in tenants]
    assert len(idle) == 2
    victim = idle[0]
    os.kill(victim, signal.SIGKILL)

    def replaced(s) -> bool:
        # Both: a stats reply sent before the template reaped the victim still counts it as idle.
        return s["idle"] == 2 and len({p.pid for p in _children(s["pid"])} - {victim}) == 2

    stats = await _stats_when(client, replaced)
    assert stats["idle"] == 2 and stats["live"] == 0
    now_idle = {p.pid for p in _children(stats["pid"])}
    assert victim not in now_idle and len(now_idle) == 2, now_idle
    # The replacement serves.
    child = await client.spawn(tenant(1))
    try:
        assert child.pid in now_idle
        assert await ping(child) == f"pong {child.pid} {child.tenant}\n".encode()
    finally:
        child.close()


def dying_worker(sock, tenant):  # run by the template below: its pool children die in prepare()
    raise AssertionError("not reached")


dying_worker.prepare = lambda: os._exit(3)  # type: ignore[attr-defined]


async def test_pool_children_that_keep_dying_are_replaced_at_a_bounded_rate(proc_guard):  # noqa: F811
    client = await TemplateClient.launch(worker="tests.test_pool:dying_worker", pool_size=2)
    proc_guard.watch_dir(os.path.dirname(client.socket_path))
    try:
        first = (await client.stats())["pool_refills"]
        await asyncio.sleep(1.0)
        forked = (await client.stats())["pool_refills"] - first
        # Replaced (the pool keeps trying) but about ten times a second per death, not as fast as they die.
        assert 1 <= forked <= 40, forked
    finally:
        await client.aclose()
