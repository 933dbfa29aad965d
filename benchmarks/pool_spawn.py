"""Cold spawns through ``WalRedoManager`` as a service sees them: sporadic, in bursts, in a storm.

Every phase runs on a fresh ``WalRedoManager`` over one template this module launches (``--pool N`` reaches
the template through ``WALREDO_TEMPLATE_POOL``), is reported next to a warm ping (through the same manager,
measured right before the phase) and a raw ``fork()`` of a process the template's size
(:mod:`benchmarks.rawfork`, run in the same run with the same interpreter), and ends with every child the
phase started killed and reaped (the manager is closed; the template's ``live`` count is awaited back to 0):

- ``sporadic``: cold tenants one at a time, ``gap`` (10 ms) apart, so each finds the pool refilled (a *pool
  hit*); per spawn: request → first pong through ``mgr.ping``, and the child's minor faults on that path
  (its faults when it was still idle in the pool, read just before the request, vs after its first pong),
  and the *template's* minor faults over the same request (copy-on-write of its own pages, shared again with
  the pool child it forked since the last spawn);
  each is paired with a warm ping after the same pause, which shows what waking the idle processes (and
  vCPUs) costs any round trip;
- ``burst``: ``pool`` cold tenants (or ``--burst-size``) requested at once with the pool full; the time until
  the last answered;
- ``storm``: ``N`` (≤ 2,000) cold tenants requested together: spawns/s, last ready, and the parent's loop
  stall (max gap of a 1 ms ticker) over its idle floor measured right before.

:func:`measure_version` is the per-interpreter measurement of :mod:`benchmarks.pyversions`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import psutil

from benchmarks.loopstall import LoopStallProbe, idle_floor
from benchmarks.pagefaults import minor_faults
from benchmarks.proc_memory import memory_mib
from benchmarks.runner import REPO_ROOT, log
from benchmarks.stats import summarize

STORM_MAX = 2000  # live children at once: ~2-3 MiB USS each, two fds each in the parent
POOL_ENV = "WALREDO_TEMPLATE_POOL"
CHILD_MIB_ESTIMATE = 4.0  # per live child, to cap a storm to the memory the machine has free


def _manager_cls() -> Any:
    from forkserver import WalRedoManager

    return WalRedoManager


@contextlib.asynccontextmanager
async def launched_template(pool: int | None, spawn_timeout: float = 120.0) -> AsyncIterator[Any]:
    """A template launched by ``TemplateClient.launch`` with ``pool`` pre-forked children (None: its default),
    stopped on exit."""
    from forkserver import TemplateClient

    old = os.environ.get(POOL_ENV)
    if pool is not None:
        os.environ[POOL_ENV] = str(pool)
    try:
        client = await TemplateClient.launch(spawn_timeout=spawn_timeout)
    finally:
        if pool is not None:
            if old is None:
                os.environ.pop(POOL_ENV, None)
            else:
                os.environ[POOL_ENV] = old
    try:
        yield client
    finally:
        await client.aclose()


async def template_stats(client: Any) -> dict[str, Any]:
    return dict(await client.stats())


async def wait_settled(client: Any, pool: int, timeout: float = 30.0) -> dict[str, Any]:
    """Until the template has no live child and a full pool (or ``timeout``); returns its last stats."""
    deadline = time.monotonic() + timeout
    while True:
        st = await template_stats(client)
        if (st.get("live", 0) == 0 and st.get("idle", pool) >= pool) or time.monotonic() > deadline:
            return st
        await asyncio.sleep(0.005)


@contextlib.asynccontextmanager
async def manager(client: Any, pool: int) -> AsyncIterator[Any]:
    """A fresh manager over ``client``; on exit it is closed (its children killed and reaped) and the template
    is back to no live child with its pool full."""
    mgr = _manager_cls()(client)
    await mgr.start()
    try:
        yield mgr
    finally:
        await mgr.aclose()
        await wait_settled(client, pool)


async def warm_pings(mgr: Any, n: int) -> dict[str, float]:
    tenant = uuid.uuid4().hex
    await mgr.ping(tenant)
    for _ in range(20):
        await mgr.ping(tenant)
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        await mgr.ping(tenant)
        samples.append(time.perf_counter() - t0)
    return summarize(samples)


def _faults_or_none(pid: int) -> int | None:
    try:
        return minor_faults(pid)
    except OSError:
        return None


def _child_faults(template_pid: int) -> dict[int, int]:
    out = {}
    with contextlib.suppress(psutil.Error):
        for c in psutil.Process(template_pid).children():
            with contextlib.suppress(OSError):
                out[c.pid] = minor_faults(c.pid)
    return out


async def sporadic(client: Any, pool: int, n: int, gap: float = 0.010, warm_n: int = 200,
                   prefault: bool = False) -> dict[str, Any]:
    """``n`` cold tenants ``gap`` apart. ``prefault``: a stats request to the template ``gap`` before each spawn
    (after its refill fork), which takes the copy-on-write faults of the template's common request path
    before the spawn does: what a warm-up pass after each refill would save a pool hit."""
    tpid = client.template_pid
    async with manager(client, pool) as mgr:
        warm = await warm_pings(mgr, warm_n)
        warm_tenant = next(iter(mgr.processes()))
        lat: list[float] = []
        idle_warm: list[float] = []
        on_path: list[int] = []
        at_ready: list[int] = []
        tmpl_faults: list[int] = []
        hits = 0
        for _ in range(n):
            # The same pause before a warm ping: what waking this idle machine costs any round trip.
            await asyncio.sleep(gap)
            t0 = time.perf_counter()
            await mgr.ping(warm_tenant)
            idle_warm.append(time.perf_counter() - t0)
            # Nothing is asked of the template between its refill and the spawn (a stats request there would
            # take the copy-on-write faults of its request path before the spawn does): /proc only.
            before = _child_faults(tpid)
            if prefault:
                await template_stats(client)
            await asyncio.sleep(gap)
            tenant = uuid.uuid4().hex
            tf0 = _faults_or_none(tpid)
            t0 = time.perf_counter()
            await mgr.ping(tenant)
            lat.append(time.perf_counter() - t0)
            tf1 = _faults_or_none(tpid)
            if tf0 is not None and tf1 is not None:
                tmpl_faults.append(tf1 - tf0)
            pid = mgr.processes()[tenant].pid
            hits += pid in before  # it existed before the request: a pool hit
            with contextlib.suppress(OSError):
                f = minor_faults(pid)
                at_ready.append(f)
                if pid in before:
                    on_path.append(f - before[pid])
    return {"n": n, "gap_ms": gap * 1e3, "warm_ms": warm, "warm_after_gap_ms": summarize(idle_warm),
            "ready_ms": summarize(lat),
            "pool_hits": hits, "faults_on_path": summarize(on_path, 1),
            "faults_at_ready": summarize(at_ready, 1), "template_faults": summarize(tmpl_faults, 1)}


async def hit_split(client: Any, pool: int, n: int, gap: float = 0.010) -> dict[str, Any]:
    """Where a sporadic pool hit's time goes, from the parent: ``TemplateClient.spawn`` (request → the
    template's reply), building the ``WalRedoProcess``, its first ping, and a second ping for comparison.
    Below the manager (no once-cell, no metrics); the processes are closed at the end."""
    from forkserver import WalRedoProcess

    parts: dict[str, list[float]] = {"reply": [], "process": [], "first_ping": [], "second_ping": []}
    procs = []
    try:
        for _ in range(n):
            await asyncio.sleep(gap)
            tenant = uuid.uuid4().hex
            t0 = time.perf_counter()
            handle = await client.spawn(tenant)
            t1 = time.perf_counter()
            proc = WalRedoProcess(handle, tenant=tenant)
            procs.append(proc)
            t2 = time.perf_counter()
            await proc.ping()
            t3 = time.perf_counter()
            await proc.ping()
            t4 = time.perf_counter()
            for k, v in (("reply", t1 - t0), ("process", t2 - t1), ("first_ping", t3 - t2), ("second_ping", t4 - t3)):
                parts[k].append(v)
    finally:
        for proc in procs:
            await proc.aclose()
        await wait_settled(client, pool)
    return {k: summarize(v) for k, v in parts.items()}


async def back_to_back(client: Any, pool: int, n: int) -> dict[str, Any]:
    """Cold tenants one after the other with no pause: each spawn finds the pool as the last one left it."""
    async with manager(client, pool) as mgr:
        lat = []
        for _ in range(n):
            t0 = time.perf_counter()
            await mgr.ping(uuid.uuid4().hex)
            lat.append(time.perf_counter() - t0)
    return {"n": n, "ready_ms": summarize(lat)}


async def _ping_timed(mgr: Any, tenant: str, t0: float, out: list[float]) -> None:
    await mgr.ping(tenant)
    out.append(time.perf_counter() - t0)


async def burst(client: Any, pool: int, rounds: int, warm_n: int = 200, size: int | None = None) -> dict[str, Any]:
    """``rounds`` bursts of ``size`` cold tenants at once (default: ``pool``), each with the pool full."""
    size = max(1, pool if size is None else size)
    last: list[float] = []
    each: list[float] = []
    async with manager(client, pool) as mgr:
        warm = await warm_pings(mgr, warm_n)
        for _ in range(rounds):
            mgr.quiesce_idle(now=time.time() + 1e9)  # stop the last round's tenants (and the warm one)
            await wait_settled(client, pool)
            await asyncio.sleep(0.01)
            t0 = time.perf_counter()
            done: list[float] = []
            await asyncio.gather(*(_ping_timed(mgr, uuid.uuid4().hex, t0, done) for _ in range(size)))
            last.append(max(done))
            each.extend(done)
    return {"size": size, "rounds": rounds, "warm_ms": warm, "last_ready_ms": summarize(last),
            "each_ready_ms": summarize(each)}


def storm_cap(n: int) -> tuple[int, str]:
    """``n`` bounded by :data:`STORM_MAX` and by half the memory available now; with the reason if cut."""
    avail_mib = psutil.virtual_memory().available / 2**20
    by_mem = int(avail_mib / 2 / CHILD_MIB_ESTIMATE)
    cap = min(STORM_MAX, by_mem)
    if n > cap:
        return cap, f"storm cut from {n} to {cap} (≤ {STORM_MAX}; {avail_mib:.0f} MiB available)"
    return n, ""


async def storm(client: Any, pool: int, n: int, floor_seconds: float, warm_n: int = 200) -> dict[str, Any]:
    n, note = storm_cap(n)
    if note:
        log(note)
    async with manager(client, pool) as mgr:
        warm = await warm_pings(mgr, warm_n)
        floor = await idle_floor(floor_seconds)
        ready: list[float] = []
        async with LoopStallProbe() as probe:
            t0 = time.perf_counter()
            await asyncio.gather(*(_ping_timed(mgr, uuid.uuid4().hex, t0, ready) for _ in range(n)))
            total = time.perf_counter() - t0
        gaps = probe.summary()
        live = len(mgr.processes())
    return {"n": n, "note": note, "warm_ms": warm, "idle_floor_ms": floor, "loop_gap_ms": gaps,
            "last_ready_ms": total * 1e3, "ready_ms": summarize(ready), "spawns_per_s": n / total,
            "live_at_end": live, "stall_over_floor_ms": max(0.0, gaps["max"] - floor["max"])}


async def raw_fork(python: str, rss_mib: float, samples: int, storm_n: int) -> dict[str, Any]:
    """:mod:`benchmarks.rawfork` in a subprocess of ``python`` (the template's interpreter)."""
    proc = await asyncio.create_subprocess_exec(
        python, "-m", "benchmarks.rawfork", "--rss-mib", f"{rss_mib:.1f}", "--samples", str(samples),
        "--storm", str(storm_n), cwd=REPO_ROOT, stdout=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL)
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"benchmarks.rawfork exited {proc.returncode}")
    raw = json.loads(out)
    res = {"rss_mib": raw["rss_mib"], "ready_ms": summarize(raw["ready"]), "cycle_ms": summarize(raw["cycle"])}
    if "storm" in raw:
        res["storm"] = raw["storm"]
    return res


async def idle_memory(client: Any, pool: int, siblings: int) -> dict[str, Any]:
    """USS/PSS of one idle child with ``siblings`` idle siblings (each answered one ping), and the template's."""
    async with manager(client, pool) as mgr:
        first = uuid.uuid4().hex
        await mgr.ping(first)
        for _ in range(siblings):
            await mgr.ping(uuid.uuid4().hex)
        await asyncio.sleep(0.3)
        pid = mgr.processes()[first].pid
        child = memory_mib(pid)
        tmpl = memory_mib(client.template_pid)
    return {"siblings": siblings, "child": child, "template": tmpl}


async def measure_version(pool: int | None, spawns: int, siblings: int, raw_samples: int) -> dict[str, Any]:
    """One interpreter's figures for :mod:`benchmarks.pyversions` (this process is that interpreter)."""
    async with launched_template(pool) as client:
        eff_pool = int((await wait_settled(client, pool or 1)).get("idle", pool or 1))
        tmpl_mem = memory_mib(client.template_pid)
        sp = await sporadic(client, eff_pool, spawns)
        b2b = await back_to_back(client, eff_pool, spawns)
        mem = await idle_memory(client, eff_pool, siblings)
        raw = await raw_fork(sys.executable, tmpl_mem["rss"], raw_samples, 0)
    return {"python": sys.version.split()[0], "pool": eff_pool, "template_mem": tmpl_mem, "sporadic": sp,
            "back_to_back": b2b, "memory": mem, "raw_fork": raw}
