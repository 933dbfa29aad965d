"""The fault campaign of issue 12 as bounded, repeatable scenarios (behind ``scripts/chaos``).

Each scenario runs real processes (a ``WalRedoManager`` with its template and children, or a parent in a
subprocess), injects one kind of fault, checks every page it gets back against PostgreSQL's own (the
committed capture, as ``scripts/demo.py`` does) and fills one :class:`Figures` row:

    kill-slow, kill-fast   SIGKILL random tenant children at two rates under load of concurrent request_redo
    template-kill          SIGKILL the template during a spawn storm, warm tenants under load
    template-stop          SIGSTOP the template during a spawn storm: warm tenants must keep answering; a cold
                           request must end within its bound (known hole: a stuck template is never noticed)
    child-stop             SIGSTOP a child: its request fails with RedoTimeout within about request_timeout
                           and the child is replaced
    parent-kill            SIGKILL a parent running in a subprocess: its template and children are gone
    emfile                 RLIMIT_NOFILE lowered in a subprocess parent: requests fail typed, nothing leaks
    soak                   minutes of load, child kills, template kills, tenant churn and idle quiesce, sampled

A row fails on any wrong page, hung request (no answer nor typed error within the scenario's bound; such a
request is cancelled, so nothing waits forever), leak, leftover process or an expectation of its scenario.

Bounds: every size (tenants, in-flight requests, kills, durations) is a field of :class:`Sizes`; every scenario
runs under a watchdog (``asyncio.timeout`` of its budget) that cancels it (the manager's ``aclose`` still
kills and reaps its processes); afterwards the process tree of what it started is walked and anything left is
SIGKILLed and counted. This process is a child subreaper while it runs, so orphans (children of a killed
template or parent) are re-parented here where they can be seen and reaped. Signals are only sent to pids
that are descendants of this process, through a pidfd opened before the check (never a recycled pid).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import dataclasses
import functools
import json
import logging
import os
import random
import resource
import signal
import statistics
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psutil  # type: ignore[import-untyped]  # no stubs installed (types-psutil)

from forkserver import RedoTimeout, WalRedoManager
from forkserver.errors import ForkServerError
from walredo_tools.capture import PageRequest, load_capture, page_requests, pages_match

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CAPTURE = os.path.join(REPO, "tests", "data", "wal-small", "capture.msgpack")
MiB = 2**20

_PR_SET_CHILD_SUBREAPER = 36
_PR_GET_CHILD_SUBREAPER = 37
_libc = ctypes.CDLL(None, use_errno=True)


# ---------------------------------------------------------------------------------------------- sizes, figures


@dataclass
class Sizes:
    """Every bound of the campaign. The defaults are the full campaign; :meth:`short` is the test suite's."""

    tenants: int = 16  # kill storms
    concurrency: int = 32  # requests in flight (load of every in-process scenario)
    request_timeout: float = 10.0
    max_records: int = 20  # requests of the capture with at most this many records (fast, every rmgr)
    slow_kills: int = 400
    slow_rate: float = 20.0  # kills/s
    fast_kills: int = 600
    fast_rate: float = 100.0
    warm: int = 8  # template scenarios: warm tenants under load
    cold: int = 16  # and a ring of cold tenants whose children are killed so that each request spawns
    spawners: int = 4
    template_kills: int = 20
    template_kill_interval: float = 1.0
    stop_rounds: int = 2
    stop_request_timeout: float = 3.0
    stop_max: float = 40.0  # the template stays stopped until the cold probe ended, at most this long
    child_stops: int = 10
    child_stop_timeout: float = 1.0
    parent_kills: int = 5
    parent_tenants: int = 8
    parent_gone_bound: float = 5.0
    emfile_levels: int = 12  # fd headroom 0..levels-1 above what is open when the limit is lowered
    emfile_requests: int = 16  # per level
    soak_seconds: float = 600.0
    soak_tenants: int = 24
    soak_concurrency: int = 16
    soak_rotate: float = 1.0  # a fresh tenant replaces one every this many seconds (the rest go idle)
    soak_idle: float = 3.0  # idle_timeout of the soak's manager
    soak_kill_rate: float = 1.0  # child kills/s
    soak_template_every: float = 60.0
    sample_seconds: float = 5.0

    @classmethod
    def short(cls) -> Sizes:
        """Seconds per scenario, a few dozen kills: for tests (no timing is asserted there)."""
        return cls(tenants=6, concurrency=12, slow_kills=20, slow_rate=20.0, fast_kills=30, fast_rate=100.0,
                   warm=3, cold=4, spawners=2, template_kills=3, template_kill_interval=0.5, stop_rounds=1,
                   stop_request_timeout=2.0, stop_max=6.0, child_stops=2, parent_kills=2, parent_tenants=3,
                   emfile_levels=2, emfile_requests=6, soak_seconds=12.0, soak_tenants=6, soak_concurrency=6,
                   soak_rotate=0.5, soak_idle=1.0, soak_kill_rate=2.0, soak_template_every=5.0, sample_seconds=1.0)


@dataclass
class Figures:
    """One scenario's row of the table."""

    scenario: str
    answers: int = 0
    wrong: int = 0
    failed: Counter[str] = field(default_factory=Counter)  # by exception type (and its cause's type)
    hung: int = 0  # no answer nor error within the bound: cancelled and counted here
    recovery: list[float] = field(default_factory=list)  # seconds, the scenario says from what to what
    drift: str = "–"
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # why the row fails besides wrong/hung/leftovers
    leftovers: int = 0
    elapsed: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems and self.wrong == 0 and self.hung == 0 and self.leftovers == 0


def _error_name(exc: BaseException) -> str:
    cause = exc.__cause__
    return f"{type(exc).__name__}({type(cause).__name__})" if cause is not None else type(exc).__name__


# ---------------------------------------------------------------------------------------------- processes


def _subreaper(on: bool) -> bool:
    """Set PR_SET_CHILD_SUBREAPER; return the previous setting."""
    prev = ctypes.c_int(0)
    _libc.prctl(_PR_GET_CHILD_SUBREAPER, ctypes.byref(prev), 0, 0, 0)
    if _libc.prctl(_PR_SET_CHILD_SUBREAPER, 1 if on else 0, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
    return bool(prev.value)


def _descendants() -> dict[int, psutil.Process]:
    try:
        return {p.pid: p for p in psutil.Process().children(recursive=True)}
    except psutil.Error:
        return {}


def _alive(p: psutil.Process) -> bool:
    try:
        return bool(p.is_running() and p.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def _is_mine(pid: int) -> bool:
    try:
        return any(parent.pid == os.getpid() for parent in psutil.Process(pid).parents())
    except psutil.Error:
        return False


def signal_mine(pid: int, sig: int) -> bool:
    """Send ``sig`` to ``pid`` only if it is a descendant of this process; through a pidfd opened first, so
    a pid recycled after the check is never hit. Returns whether the signal was sent."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    try:
        if not _is_mine(pid):
            return False
        signal.pidfd_send_signal(fd, sig)
        return True
    except ProcessLookupError:
        return False
    finally:
        os.close(fd)


def _rss(pid: int | None) -> int | None:
    if pid is None:
        return None
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return None


class Reaper:
    """Reaps zombies re-parented to this (subreaper) process: orphans of a killed template or parent.

    Never touches a child that existed before it started nor one in ``protected`` (a subprocess whose
    owner waits for it)."""

    def __init__(self) -> None:
        self.protected: set[int] = set()
        self._before = {p.pid for p in psutil.Process().children()}
        self._task: asyncio.Task[None] | None = None
        self.reaped = 0

    def reap(self) -> None:
        for p in psutil.Process().children():
            if p.pid in self._before or p.pid in self.protected:
                continue
            try:
                if p.status() == psutil.STATUS_ZOMBIE and os.waitpid(p.pid, os.WNOHANG)[0]:
                    self.reaped += 1
            except (psutil.Error, ChildProcessError):
                pass

    async def _loop(self) -> None:
        while True:
            self.reap()
            await asyncio.sleep(0.05)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="chaos-reaper")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.reap()


async def settle(before: set[int], reaper: Reaper, bound: float = 5.0) -> list[str]:
    """Wait (bounded) until no process that appeared under us since ``before`` is alive; SIGKILL and describe
    what is still there after ``bound``."""
    deadline = time.monotonic() + bound
    while True:
        reaper.reap()
        left = [p for pid, p in _descendants().items() if pid not in before and _alive(p)]
        if not left or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    out = []
    for p in left:
        with contextlib.suppress(psutil.Error):
            out.append(f"{p.pid} {' '.join(p.cmdline())[:80] or p.name()}")
        signal_mine(p.pid, signal.SIGKILL)
    if left:
        await asyncio.sleep(0.2)
        reaper.reap()
    return out


# ---------------------------------------------------------------------------------------------- load


@functools.lru_cache(maxsize=4)
def _pages(max_records: int) -> tuple[tuple[PageRequest, ...], bool]:
    doc = load_capture(CAPTURE)
    return tuple(r for r in page_requests(doc) if len(r.records) <= max_records), bool(doc["checksums"])


def tenant_ids(prefix: int, n: int, start: int = 0) -> list[str]:
    return [f"{prefix:08x}{i:024x}" for i in range(start, start + n)]


_RESERVOIR = 10_000


class Load:
    """Clients issuing oracle-checked ``request_redo`` calls for random tenants of ``tenants`` (a list the
    scenario may change) until stopped. Each call is bounded by ``hang_after``: past it, it is cancelled
    (requests are cancel-safe) and counted as hung."""

    def __init__(self, mgr: WalRedoManager, fig: Figures, tenants: list[str], *, max_records: int,
                 hang_after: float, rng: random.Random) -> None:
        self.mgr, self.fig, self.tenants, self.hang_after, self.rng = mgr, fig, tenants, hang_after, rng
        self.requests, self.wal_log_hints = _pages(max_records)
        # A bounded reservoir of answer latencies (a soak answers millions: a plain list would be the leak).
        self.latencies: list[float] = []
        self.answered = 0
        self.max_latency = 0.0
        self.last_answer = 0.0
        self.untyped: Counter[str] = Counter()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def one(self, tenant: str, fig: Figures | None = None) -> BaseException | None:
        """One checked request; returns the error it ended with (None for an answer)."""
        fig = self.fig if fig is None else fig
        req = self.rng.choice(self.requests)
        t0 = time.monotonic()
        try:
            async with asyncio.timeout(self.hang_after):
                page = await self.mgr.request_redo(tenant, req.tag, req.lsn, req.base_image, req.records,
                                                   wal_log_hints=self.wal_log_hints)
        except RedoTimeout as exc:  # before TimeoutError: it is one
            fig.failed[_error_name(exc)] += 1
            return exc
        except TimeoutError as exc:
            fig.hung += 1
            return exc
        except Exception as exc:
            fig.failed[_error_name(exc)] += 1
            if not isinstance(exc, ForkServerError):
                self.untyped[type(exc).__name__] += 1
            return exc
        now = time.monotonic()
        self.answered += 1
        self.max_latency = max(self.max_latency, now - t0)
        if len(self.latencies) < _RESERVOIR:
            self.latencies.append(now - t0)
        elif (slot := self.rng.randrange(self.answered)) < _RESERVOIR:
            self.latencies[slot] = now - t0
        self.last_answer = now
        fig.answers += 1
        if not pages_match(req.tag, page, req.expected, req.rmgr):
            fig.wrong += 1
        return None

    async def _client(self) -> None:
        while not self._stop.is_set():
            if self.tenants:
                await self.one(self.rng.choice(self.tenants))
            else:
                await asyncio.sleep(0.01)

    def start(self, concurrency: int) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._client()) for _ in range(concurrency)]

    async def stop(self) -> None:
        self._stop.set()
        try:
            await asyncio.gather(*self._tasks)
        finally:
            for t in self._tasks:
                t.cancel()

    def latency_note(self) -> str:
        if not self.latencies:
            return "no answers"
        return f"answer p50 {statistics.median(self.latencies) * 1e3:.1f} ms, max {self.max_latency:.2f} s"


def _stop_count(mgr: WalRedoManager, cause: str) -> int:
    v = mgr.metrics.registry.get_sample_value("pageserver_wal_redo_processes_stopped_total", {"cause": cause})
    return int(v or 0)


def _stops(mgr: WalRedoManager) -> str:
    counts = []
    for cause in ("broken", "idle", "timeout", "sandbox_violation", "memory_limit", "shutdown"):
        if v := _stop_count(mgr, cause):
            counts.append(f"{cause} {v}")
    return ", ".join(counts) or "none"


def _cells(mgr: WalRedoManager) -> int:
    return mgr.statistics().tenants  # tenants with a cell: should follow live processes, not tenants seen


def _p50_max(values: Sequence[float]) -> str:
    if not values:
        return "–"
    return f"p50 {statistics.median(values) * 1e3:.0f} ms, max {max(values) * 1e3:.0f} ms (n={len(values)})"


async def _wait_for(cond: Callable[[], bool], bound: float, step: float = 0.005) -> float | None:
    """Seconds until ``cond()`` held, or None if it did not within ``bound``."""
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > bound:
            return None
        await asyncio.sleep(step)
    return time.monotonic() - t0


def _template_pid(mgr: WalRedoManager) -> int | None:
    return mgr.template.template_pid


# Conditions for _wait_for (factories: a lambda in a loop would capture the loop's variable, not its value).
def _absent(mgr: WalRedoManager, tenant: str) -> Callable[[], bool]:
    return lambda: tenant not in mgr.processes()


def _new_template(mgr: WalRedoManager, old: int) -> Callable[[], bool]:
    return lambda: _template_pid(mgr) not in (None, old)


def _gone(pid: int) -> Callable[[], bool]:
    return lambda: not psutil.pid_exists(pid) or not _alive(psutil.Process(pid))


def _all_gone(procs: dict[int, psutil.Process]) -> Callable[[], bool]:
    return lambda: not any(_alive(p) for p in procs.values())


# ---------------------------------------------------------------------------------------------- scenarios


async def kill_storm(sz: Sizes, fig: Figures, kills: int, rate: float, rng: random.Random) -> None:
    """SIGKILL random tenant children at ``rate``/s under load; recovery: kill → that tenant listed with a new
    pid in ``processes()``."""
    async with WalRedoManager(request_timeout=sz.request_timeout) as mgr:
        tenants = tenant_ids(1, sz.tenants)
        await asyncio.gather(*(mgr.ping(t) for t in tenants))
        load = Load(mgr, fig, tenants, max_records=sz.max_records, rng=rng,
                    hang_after=(mgr.retries + 1) * sz.request_timeout + 5.0)
        load.start(sz.concurrency)
        pending: dict[str, tuple[int, float]] = {}
        done = 0
        t0 = time.monotonic()
        try:
            while done < kills:
                await asyncio.sleep(max(0.0, t0 + (done + 1) / rate - time.monotonic()))
                procs = mgr.processes()
                now = time.monotonic()
                for tenant, (pid, at) in list(pending.items()):
                    info = procs.get(tenant)
                    if info is not None and info.pid != pid:
                        fig.recovery.append(now - at)
                        del pending[tenant]
                victims = [i for i in procs.values() if i.tenant_id not in pending]
                if not victims:
                    continue
                victim = rng.choice(victims)
                if signal_mine(victim.pid, signal.SIGKILL):
                    done += 1
                    pending[victim.tenant_id] = (victim.pid, time.monotonic())
            storm = time.monotonic() - t0
            await asyncio.sleep(0.5)
        finally:
            await load.stop()
        if load.untyped:
            fig.problems.append(f"untyped failures {dict(load.untyped)}")
        fig.notes += [f"{done} kills in {storm:.1f} s ({done / storm:.0f}/s), {sz.tenants} tenants, "
                      f"{sz.concurrency} in flight", load.latency_note(), f"stops counted: {_stops(mgr)}",
                      "recovery = kill → tenant has a new pid"]


async def template_faults(sz: Sizes, fig: Figures, rng: random.Random, *, stop: bool) -> None:
    """The template SIGKILLed (``stop=False``) or SIGSTOPped during a spawn storm, warm tenants under load."""
    rt = sz.stop_request_timeout if stop else sz.request_timeout
    async with WalRedoManager(request_timeout=rt) as mgr:
        warm, cold = tenant_ids(2, sz.warm), tenant_ids(3, sz.cold)
        await asyncio.gather(*(mgr.ping(t) for t in warm + cold))
        # Hung: no outcome within the bound a caller is promised (request_timeout per try) plus slack. With the
        # template stopped, the fix makes a cold request end within request_timeout.
        hang_after = rt + 2.0 if stop else (mgr.retries + 1) * rt + 5.0
        load = Load(mgr, fig, warm, max_records=sz.max_records, rng=rng, hang_after=hang_after)
        coldfig = Figures("cold")
        storm_on = asyncio.Event()
        storm_on.set()

        async def spawner() -> None:
            while not load._stop.is_set():
                await storm_on.wait()
                tenant = rng.choice(cold)
                info = mgr.processes().get(tenant)
                if info is not None:
                    signal_mine(info.pid, signal.SIGKILL)
                    await _wait_for(_absent(mgr, tenant), 1.0)
                await load.one(tenant, coldfig)

        load.start(sz.concurrency)
        spawners = [asyncio.get_running_loop().create_task(spawner()) for _ in range(sz.spawners)]
        replaced_while_stopped = 0
        try:
            rounds = sz.stop_rounds if stop else sz.template_kills
            for _ in range(rounds):
                await asyncio.sleep(sz.template_kill_interval)
                if await _wait_for(lambda: _template_pid(mgr) is not None, 15.0) is None:
                    fig.problems.append("no template for 15 s")
                    break
                pid = _template_pid(mgr)
                assert pid is not None
                if not stop:
                    if not signal_mine(pid, signal.SIGKILL):
                        continue
                    t0 = time.monotonic()
                    await _wait_for(_new_template(mgr, pid), 15.0)
                else:
                    storm_on.clear()
                    answers0 = fig.answers
                    signal_mine(pid, signal.SIGSTOP)
                    t_stop = time.monotonic()
                    probe_tenant = rng.choice(cold)
                    info = mgr.processes().get(probe_tenant)
                    if info is not None:
                        signal_mine(info.pid, signal.SIGKILL)
                        await _wait_for(_absent(mgr, probe_tenant), 1.0)
                    probe = Figures("probe")
                    bounded = asyncio.ensure_future(load.one(probe_tenant, coldfig))
                    # The same request left to run to its own end (bounded by stop_max): how it fails today.
                    long_load = Load(mgr, probe, [], max_records=sz.max_records, rng=rng, hang_after=sz.stop_max)
                    long = asyncio.ensure_future(long_load.one(probe_tenant))
                    await asyncio.wait([long], timeout=sz.stop_max + 1)
                    stopped_for = time.monotonic() - t_stop
                    outcome = "answered" if probe.answers else ("hung" if probe.hung else "/".join(probe.failed))
                    if _template_pid(mgr) not in (None, pid):
                        replaced_while_stopped += 1
                    fig.notes.append(f"cold request with template stopped: {outcome} after {stopped_for:.1f} s "
                                     f"(bound {hang_after:.0f} s); warm answers meanwhile "
                                     f"{fig.answers - answers0}")
                    if fig.answers == answers0:
                        fig.problems.append("warm tenants stopped answering while the template was stopped")
                    signal_mine(pid, signal.SIGCONT)
                    await bounded
                    t0 = time.monotonic()
                    storm_on.set()
                # recovery: the fault → a cold tenant answered again (a fresh spawn on a live template)
                tenant = rng.choice(cold)
                info = mgr.processes().get(tenant)
                if info is not None:
                    signal_mine(info.pid, signal.SIGKILL)
                    await _wait_for(_absent(mgr, tenant), 1.0)
                for _ in range(20):
                    if await load.one(tenant, coldfig) is None:
                        fig.recovery.append(time.monotonic() - t0)
                        break
                else:
                    fig.problems.append("cold tenants did not recover after 20 tries")
            await asyncio.sleep(0.5)
        finally:
            storm_on.set()
            await load.stop()
            await asyncio.gather(*spawners, return_exceptions=True)
        if stop:
            fig.notes.append(f"template replaced while stopped: {replaced_while_stopped} of {sz.stop_rounds}")
        fig.hung += coldfig.hung
        fig.wrong += coldfig.wrong
        if load.untyped:
            fig.problems.append(f"untyped failures {dict(load.untyped)}")
        if sum(fig.failed.values()):
            fig.problems.append("warm tenants had failed requests")
        fig.notes += [f"warm: {sz.warm} tenants, {sz.concurrency} in flight, {load.latency_note()}",
                      f"cold ({sz.cold} tenants, {sz.spawners} spawners): {coldfig.answers} answers, failed "
                      f"{dict(coldfig.failed) or 0}, hung {coldfig.hung}",
                      f"template restarts {mgr.template.restarts}",
                      "recovery = " + ("SIGCONT" if stop else "SIGKILL") + " → a cold tenant answered"]


async def child_stop(sz: Sizes, fig: Figures, rng: random.Random) -> None:
    """SIGSTOP a tenant's child: its request must fail with RedoTimeout within about request_timeout, and the
    tenant get a new child. Recovery: SIGSTOP → the tenant answered on a new pid."""
    rt = sz.child_stop_timeout
    async with WalRedoManager(request_timeout=rt) as mgr:
        others, victims = tenant_ids(4, 4), tenant_ids(5, max(1, sz.child_stops))
        await asyncio.gather(*(mgr.ping(t) for t in others + victims))
        bound = rt + mgr.watchdog_period + 1.0
        load = Load(mgr, fig, others, max_records=sz.max_records, rng=rng, hang_after=3 * rt + 5.0)
        load.start(min(8, sz.concurrency))
        probe_fig = Figures("probe")
        took: list[float] = []
        try:
            for i in range(sz.child_stops):
                victim = victims[i % len(victims)]
                await mgr.ping(victim)
                pid = mgr.processes()[victim].pid
                t0 = time.monotonic()
                signal_mine(pid, signal.SIGSTOP)
                probe = Load(mgr, probe_fig, [], max_records=sz.max_records, rng=rng, hang_after=bound + 5.0)
                err = await probe.one(victim)
                took.append(time.monotonic() - t0)
                if not isinstance(err, RedoTimeout):
                    fig.problems.append(f"stopped child: {'answer' if err is None else _error_name(err)}, "
                                        "not RedoTimeout")
                elif took[-1] > bound:
                    fig.problems.append(f"RedoTimeout after {took[-1]:.2f} s > {bound:.2f} s")
                gone = await _wait_for(_gone(pid),
                                       5.0, 0.01)
                if gone is None:
                    fig.problems.append(f"stopped child {pid} still alive 5 s after its timeout")
                    signal_mine(pid, signal.SIGKILL)
                if await probe.one(victim) is None and mgr.processes().get(victim) is not None:
                    new = mgr.processes()[victim].pid
                    if new == pid:
                        fig.problems.append("the stopped child was not replaced")
                    fig.recovery.append(time.monotonic() - t0)
                else:
                    fig.problems.append("the tenant did not answer after its child was replaced")
        finally:
            await load.stop()
        fig.answers += probe_fig.answers
        fig.wrong += probe_fig.wrong
        fig.hung += probe_fig.hung
        fig.failed.update(probe_fig.failed)
        fig.notes += [f"{sz.child_stops} stops, request_timeout {rt} s: stopped request ended after "
                      f"{_p50_max(took)} (bound {bound:.2f} s)", f"stops counted: {_stops(mgr)}",
                      "recovery = SIGSTOP → the tenant answered on a new child"]


def _role_cmd(role: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "benchmarks.chaos", "--role", role, *args]


def _role_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    return env


async def _read_json_line(stream: asyncio.StreamReader, bound: float) -> dict[str, Any]:
    while True:
        line = await asyncio.wait_for(stream.readline(), bound)
        if not line:
            raise EOFError("the subprocess exited without a report")
        if line.startswith(b"{"):
            out: dict[str, Any] = json.loads(line)
            return out


async def parent_kill(sz: Sizes, fig: Figures, reaper: Reaper) -> None:
    """SIGKILL a parent (a subprocess with a manager, warm tenants under load): every process it owned must be
    gone within ``parent_gone_bound``. Recovery: SIGKILL → the last of them gone."""
    counts: list[int] = []
    for _ in range(sz.parent_kills):
        proc = await asyncio.create_subprocess_exec(
            *_role_cmd("parent", "--tenants", str(sz.parent_tenants)), cwd=REPO, env=_role_env(),
            stdout=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL)
        reaper.protected.add(proc.pid)
        try:
            assert proc.stdout is not None
            report = await _read_json_line(proc.stdout, 60.0)
            await asyncio.sleep(0.3)  # under load
            owned = {p.pid: p for p in psutil.Process(proc.pid).children(recursive=True)}
            counts.append(len(owned))
            if not report.get("children"):
                fig.problems.append("the parent reported no children")
            proc.kill()
            took = await _wait_for(_all_gone(owned),
                                   sz.parent_gone_bound, 0.002)
            if took is None:
                left = [pid for pid, p in owned.items() if _alive(p)]
                fig.problems.append(f"{len(left)} processes of a killed parent alive after "
                                    f"{sz.parent_gone_bound} s")
            else:
                fig.recovery.append(took)
        finally:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
            reaper.protected.discard(proc.pid)
    fig.notes += [f"{sz.parent_kills} parents killed, each owning {min(counts, default=0)}–"
                  f"{max(counts, default=0)} processes (template, pool child, {sz.parent_tenants} tenants)",
                  "recovery = parent SIGKILL → every process it owned gone"]


async def emfile(sz: Sizes, fig: Figures, reaper: Reaper) -> None:
    """RLIMIT_NOFILE lowered in a subprocess parent to what it has open + 0..levels-1: every request must end
    typed, the parent recover once the limit is back, and no fd leak."""
    proc = await asyncio.create_subprocess_exec(
        *_role_cmd("emfile", "--levels", str(sz.emfile_levels), "--requests", str(sz.emfile_requests)),
        cwd=REPO, env=_role_env(), stdout=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL)
    reaper.protected.add(proc.pid)
    try:
        assert proc.stdout is not None
        report = await _read_json_line(proc.stdout, 60.0 + sz.emfile_levels * 30.0)
    finally:
        if proc.returncode is None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(proc.wait(), 20.0)
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        reaper.protected.discard(proc.pid)
    fig.answers += int(report["answers"])
    fig.wrong += int(report["wrong"])
    fig.hung += int(report["hung"])
    fig.failed.update({str(k): int(v) for k, v in report["failed"].items()})
    fig.recovery += [float(v) for v in report["recovery"]]
    fig.problems += [str(v) for v in report["problems"]]
    fig.notes += [str(v) for v in report["notes"]]
    if proc.returncode != 0:
        fig.problems.append(f"the emfile parent exited with {proc.returncode}")


async def soak(sz: Sizes, fig: Figures, rng: random.Random) -> None:
    """Load, child kills, template kills, tenant churn and idle quiesce for ``soak_seconds``, sampled."""
    async with WalRedoManager(request_timeout=sz.request_timeout, idle_timeout=sz.soak_idle,
                              quiesce_period=min(1.0, sz.soak_idle)) as mgr:
        active = tenant_ids(6, sz.soak_tenants)
        next_id = sz.soak_tenants
        await asyncio.gather(*(mgr.ping(t) for t in active))
        load = Load(mgr, fig, active, max_records=sz.max_records, rng=rng,
                    hang_after=(mgr.retries + 1) * sz.request_timeout + 5.0)
        load.start(sz.soak_concurrency)
        me = psutil.Process()
        samples: list[dict[str, float]] = []
        kills = tkills = 0
        t0 = time.monotonic()
        next_sample = next_rotate = next_kill = t0
        next_tkill = t0 + sz.soak_template_every
        try:
            while (now := time.monotonic()) < t0 + sz.soak_seconds:
                if now >= next_rotate:  # churn: a fresh tenant; the one it replaces goes idle and is quiesced
                    active[rng.randrange(len(active))] = tenant_ids(6, 1, next_id)[0]
                    next_id += 1
                    next_rotate += sz.soak_rotate
                if now >= next_kill:
                    procs = list(mgr.processes().values())
                    if procs and signal_mine(rng.choice(procs).pid, signal.SIGKILL):
                        kills += 1
                    next_kill += 1.0 / sz.soak_kill_rate
                if now >= next_tkill:
                    pid = _template_pid(mgr)
                    if pid is not None and signal_mine(pid, signal.SIGKILL):
                        tkills += 1
                    next_tkill += sz.soak_template_every
                if now >= next_sample:
                    d = _descendants().values()
                    zombies = sum(1 for p in d if not _alive(p))
                    samples.append({"t": now - t0, "rss": me.memory_info().rss / MiB,
                                    "fds": len(os.listdir("/proc/self/fd")), "live": len(d) - zombies,
                                    "zombies": zombies, "template": (_rss(_template_pid(mgr)) or 0) / MiB,
                                    "cells": _cells(mgr)})
                    next_sample += sz.sample_seconds
                await asyncio.sleep(0.02)
        finally:
            await load.stop()
        seen = next_id
        fig.notes += [f"{sz.soak_seconds:.0f} s, {sz.soak_tenants} active of {seen} tenants seen, "
                      f"{sz.soak_concurrency} in flight, {kills} child kills, {tkills} template kills, "
                      f"idle_timeout {sz.soak_idle} s", load.latency_note(), f"stops counted: {_stops(mgr)}"]
        # Every child we SIGKILLed broke: it must be counted broken, whatever it was doing (idle, or being
        # retired at that moment). A few may be lost to true ties (our kill and the manager's at once) or to
        # a second kill landing on a child already dying.
        broken = _stop_count(mgr, "broken")
        if broken < kills - max(2, kills // 50):
            fig.problems.append(f"stop causes misattributed: {kills} children killed, {broken} stops counted "
                                "broken")
    fig.drift, problems, table = drift(samples, live_bound=2 * sz.soak_tenants + 8)
    fig.notes += table
    fig.problems += problems


def drift(samples: Sequence[dict[str, float]], *, live_bound: int) -> tuple[str, list[str], list[str]]:
    """Verdict per sampled metric: "flat" = the end (the smallest of the last three samples) within a tolerance
    of the early ones (the first fifth, at least one, after the first sample). A leak stays in every late
    sample; a transient (a zombie sampled between a kill and its reap) does not fail the soak by landing on the
    very last one. Returns (verdict, problems, one line per metric)."""
    if len(samples) < 3:
        return "too few samples", ["too few soak samples"], []
    early = samples[1:max(2, len(samples) // 5 + 1)]
    # metric: (relative tolerance, absolute tolerance, unit)
    rules = {"rss": (0.10, 4.0, "MiB"), "fds": (0.0, 4.0, ""), "live": (0.0, 4.0, ""),
             "zombies": (0.0, 2.0, ""), "template": (0.10, 4.0, "MiB"), "cells": (0.0, 4.0, "")}
    verdicts, problems, lines = [], [], []
    for key, (rel, tol, unit) in rules.items():
        vals = [s[key] for s in samples]
        ref = max(s[key] for s in early)
        end = min(vals[-3:])
        flat = end <= ref * (1 + rel) + tol
        if key == "live":
            flat = flat or end <= live_bound
        verdict = "flat" if flat else "grows"
        lines.append(f"{key}: first {vals[0]:.1f}, last {vals[-1]:.1f}, max {max(vals):.1f} {unit} → {verdict}")
        verdicts.append(f"{key} {verdict}")
        if not flat:
            why = " (the manager never forgets a tenant)" if key == "cells" else ""
            problems.append(f"{key} grows: {vals[0]:.1f} → {end:.1f}{why}")
    flat_all = all(v.endswith("flat") for v in verdicts)
    return ("flat" if flat_all else ", ".join(v for v in verdicts if not v.endswith("flat"))), problems, lines


# ---------------------------------------------------------------------------------------------- subprocess roles


async def _parent_role(tenants: int) -> None:
    """A parent to be SIGKILLed: a manager, warm tenants under load; reports its processes, runs ≤ 120 s."""
    async with WalRedoManager() as mgr:
        ids = tenant_ids(7, tenants)
        await asyncio.gather(*(mgr.ping(t) for t in ids))
        fig = Figures("parent")
        load = Load(mgr, fig, ids, max_records=20, rng=random.Random(7), hang_after=60.0)
        load.start(8)
        print(json.dumps({"template": _template_pid(mgr), "children": [i.pid for i in mgr.processes().values()]}),
              flush=True)
        await asyncio.sleep(120.0)
        await load.stop()


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


async def _emfile_role(levels: int, requests: int) -> dict[str, object]:
    fig = Figures("emfile")
    rng = random.Random(8)
    untyped: Counter[str] = Counter()
    by_level: list[str] = []
    async with WalRedoManager(request_timeout=5.0) as mgr:
        await asyncio.sleep(0.2)
        base = _fd_count()
        warm = tenant_ids(8, 4)
        await asyncio.gather(*(mgr.ping(t) for t in warm))
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        load = Load(mgr, fig, warm, max_records=20, rng=rng, hang_after=30.0)
        next_cold = 0
        for headroom in range(levels):
            cold = tenant_ids(9, requests // 2, next_cold)
            next_cold += len(cold)
            level = Figures("level")
            t_level = time.monotonic()
            resource.setrlimit(resource.RLIMIT_NOFILE, (_fd_count() + headroom, hard))
            try:
                errs = await asyncio.gather(*(load.one(t, level) for t in cold + warm[: requests - len(cold)]))
            finally:
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            untyped.update(type(e).__name__ for e in errs if e is not None and not isinstance(e, ForkServerError)
                           and not isinstance(e, TimeoutError))
            by_level.append(f"+{headroom}: {level.answers} ok" + (f", {dict(level.failed)}" if level.failed else "")
                            + f" in {time.monotonic() - t_level:.1f} s")
            for name in ("answers", "wrong", "hung"):
                setattr(fig, name, getattr(fig, name) + getattr(level, name))
            fig.failed.update(level.failed)
            # recovery: the limit back → a cold and a warm tenant answer
            t0 = time.monotonic()
            probe = Figures("probe")
            for _ in range(50):
                if (await load.one(tenant_ids(10, 1, headroom)[0], probe) is None
                        and await load.one(rng.choice(warm), probe) is None):
                    fig.recovery.append(time.monotonic() - t0)
                    break
                await asyncio.sleep(0.1)
            else:
                fig.problems.append(f"no recovery after EMFILE at headroom {headroom}")
            fig.wrong += probe.wrong
        mgr.quiesce_idle(now=time.time() + 1e9)  # stop every process: what is left open is a leak
        await _wait_for(lambda: not mgr.processes(), 5.0)
        await asyncio.sleep(1.0)
        end = _fd_count()
        if end > base:
            fig.problems.append(f"fd leak: {base} open before, {end} after every process stopped")
        fig.notes += [f"headroom 0..{levels - 1} fds, {requests} requests each (half cold): " + "; ".join(by_level),
                      f"fds: {base} before, {end} after all processes stopped",
                      f"template restarts {mgr.template.restarts}", "recovery = limit restored → cold+warm answered"]
    if untyped:
        fig.problems.append(f"untyped failures {dict(untyped)}")
    return {"answers": fig.answers, "wrong": fig.wrong, "hung": fig.hung, "failed": dict(fig.failed),
            "recovery": fig.recovery, "problems": fig.problems, "notes": fig.notes}


# ---------------------------------------------------------------------------------------------- campaign


Scenario = Callable[[Sizes, Figures, random.Random, Reaper], Awaitable[None]]

SCENARIOS: dict[str, Scenario] = {
    "kill-slow": lambda sz, f, r, _: kill_storm(sz, f, sz.slow_kills, sz.slow_rate, r),
    "kill-fast": lambda sz, f, r, _: kill_storm(sz, f, sz.fast_kills, sz.fast_rate, r),
    "template-kill": lambda sz, f, r, _: template_faults(sz, f, r, stop=False),
    "template-stop": lambda sz, f, r, _: template_faults(sz, f, r, stop=True),
    "child-stop": lambda sz, f, r, _: child_stop(sz, f, r),
    "parent-kill": lambda sz, f, r, reaper: parent_kill(sz, f, reaper),
    "emfile": lambda sz, f, r, reaper: emfile(sz, f, reaper),
    "soak": lambda sz, f, r, _: soak(sz, f, r),
}


def budget(name: str, sz: Sizes) -> float:
    """Seconds the scenario may run before its watchdog fails it."""
    est = {
        "kill-slow": sz.slow_kills / sz.slow_rate,
        "kill-fast": sz.fast_kills / sz.fast_rate,
        "template-kill": sz.template_kills * (sz.template_kill_interval + 2.0),
        "template-stop": sz.stop_rounds * (sz.stop_max + sz.template_kill_interval + 10.0),
        "child-stop": sz.child_stops * (sz.child_stop_timeout + 3.0),
        "parent-kill": sz.parent_kills * (sz.parent_gone_bound + 10.0),
        "emfile": sz.emfile_levels * 10.0,
        "soak": sz.soak_seconds,
    }[name]
    return 2 * est + 60.0


async def run_scenario(name: str, sz: Sizes, reaper: Reaper, seed: int = 12) -> Figures:
    fig = Figures(name)
    before = set(_descendants())
    t0 = time.monotonic()
    limit = budget(name, sz)
    try:
        async with asyncio.timeout(limit):
            await SCENARIOS[name](sz, fig, random.Random(seed), reaper)
    except TimeoutError:
        fig.problems.append(f"over its budget of {limit:.0f} s (watchdog)")
    except Exception as exc:
        fig.problems.append(f"crashed: {type(exc).__name__}: {exc}")
    left = await settle(before, reaper)
    fig.leftovers = len(left)
    if left:
        fig.notes.append(f"leftover processes (SIGKILLed): {'; '.join(left)}")
    fig.elapsed = time.monotonic() - t0
    return fig


async def campaign(names: Sequence[str], sz: Sizes, seed: int = 12) -> tuple[list[Figures], list[str]]:
    """Run the scenarios in order; returns their figures and what was left at the end (processes, zombies)."""
    prev = _subreaper(True)
    reaper = Reaper()
    reaper.start()
    before = set(_descendants())
    figs: list[Figures] = []
    try:
        for name in names:
            figs.append(await run_scenario(name, sz, reaper, seed))
    finally:
        await reaper.stop()
        final = await settle(before, reaper, bound=2.0)
        zombies = [f"zombie {pid}" for pid, p in _descendants().items() if pid not in before and not _alive(p)]
        _subreaper(prev)
    return figs, final + zombies


def table(figs: Sequence[Figures], leftover: Sequence[str]) -> str:
    head = ["scenario", "verdict", "answers", "wrong", "failed (by type)", "hung", "recovery", "drift", "time",
            "figures"]
    rows = []
    for f in figs:
        why = list(f.problems)
        why += [f"{f.wrong} wrong pages"] if f.wrong else []
        why += [f"{f.hung} hung requests"] if f.hung else []
        why += [f"{f.leftovers} leftover processes"] if f.leftovers else []
        verdict = "ok" if f.ok else "FAIL: " + "; ".join(why)
        failed = ", ".join(f"{k} {v}" for k, v in sorted(f.failed.items())) or "0"
        rows.append([f.scenario, verdict, f"{f.answers:,}", str(f.wrong), failed, str(f.hung), _p50_max(f.recovery),
                     f.drift, f"{f.elapsed:.0f} s", "; ".join(f.notes)])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in r) + " |" for r in rows]
    lines.append(f"\nleft at the end: {', '.join(leftover) if leftover else 'no process, no zombie'}")
    return "\n".join(lines)


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="scripts/chaos", description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenario", action="append", default=[],
                    help=f"one of {', '.join(SCENARIOS)} or all (repeatable; default all)")
    ap.add_argument("--short", action="store_true", help="the test suite's sizes (seconds per scenario)")
    ap.add_argument("--seed", type=int, default=12)
    ap.add_argument("--verbose", action="store_true", help="log the manager's warnings (every broken child)")
    ap.add_argument("--role", choices=["parent", "emfile"], help=argparse.SUPPRESS)
    ap.add_argument("--levels", type=int, default=12, help=argparse.SUPPRESS)
    ap.add_argument("--requests", type=int, default=16, help=argparse.SUPPRESS)
    defaults = Sizes()
    for f in dataclasses.fields(Sizes):
        ap.add_argument("--" + f.name.replace("_", "-"), type=type(getattr(defaults, f.name)), default=None,
                        help=f"(default {getattr(defaults, f.name)}; --short: {getattr(Sizes.short(), f.name)})")
    return ap.parse_args(argv)


def _sizes(args: argparse.Namespace) -> Sizes:
    sz = Sizes.short() if args.short else Sizes()
    for f in dataclasses.fields(Sizes):
        v = getattr(args, f.name)
        if v is not None:
            setattr(sz, f.name, v)
    if sz.concurrency > 64 or sz.soak_concurrency > 64:
        raise SystemExit("at most 64 requests in flight")
    if max(sz.tenants, sz.warm + sz.cold, sz.soak_tenants, sz.parent_tenants) > 50:
        raise SystemExit("at most 50 tenants")
    return sz


def _names(args: argparse.Namespace) -> list[str]:
    chosen = args.scenario or ["all"]
    names: list[str] = []
    for n in chosen:
        for part in n.split(","):
            if part == "all":
                names += list(SCENARIOS)
            elif part in SCENARIOS:
                names.append(part)
            else:
                raise SystemExit(f"unknown scenario {part!r}: choose from {', '.join(SCENARIOS)} or all")
    return list(dict.fromkeys(names))


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    if args.role == "parent":
        asyncio.run(_parent_role(args.tenants or 8))
        return 0
    if args.role == "emfile":
        print(json.dumps(asyncio.run(_emfile_role(args.levels, args.requests))), flush=True)
        return 0
    sz, names = _sizes(args), _names(args)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if not args.verbose:  # every injected fault is logged as a warning: thousands of lines
        logging.getLogger("forkserver").setLevel(logging.ERROR)
    total = sum(budget(n, sz) for n in names)
    print(f"chaos: {', '.join(names)} (watchdog budgets total {total:.0f} s)", file=sys.stderr, flush=True)
    import faulthandler

    faulthandler.dump_traceback_later(total + 120, exit=True)  # last resort if the event loop itself is stuck
    figs, leftover = asyncio.run(campaign(names, sz, args.seed))
    faulthandler.cancel_dump_traceback_later()
    print(table(figs, leftover), flush=True)
    return 0 if all(f.ok for f in figs) and not leftover else 1


if __name__ == "__main__":
    sys.exit(main())
