"""The load of every scenario: :class:`Load`, clients issuing oracle-checked ``request_redo`` calls (every page
compared with PostgreSQL's, from the committed capture), and the small probes the scenarios read the
manager with (stop counts, cells, the template's pid) or wait on (:func:`wait_until` and its conditions).
"""

from __future__ import annotations

import asyncio
import functools
import os
import random
import statistics
import time
from collections import Counter
from collections.abc import Callable, Sequence

import psutil  # type: ignore[import-untyped]  # no stubs installed (types-psutil)

from benchmarks.chaos_figures import Figures, error_name
from benchmarks.chaos_procs import alive
from forkserver import RedoTimeout, WalRedoManager
from forkserver.errors import ForkServerError
from walredo_tools.capture import PageRequest, load_capture, page_requests, pages_match

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CAPTURE = os.path.join(REPO, "tests", "data", "wal-small", "capture.msgpack")


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
            fig.failed[error_name(exc)] += 1
            return exc
        except TimeoutError as exc:
            fig.hung += 1
            return exc
        except Exception as exc:
            fig.failed[error_name(exc)] += 1
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


def stop_count(mgr: WalRedoManager, cause: str) -> int:
    v = mgr.metrics.registry.get_sample_value("pageserver_wal_redo_processes_stopped_total", {"cause": cause})
    return int(v or 0)


def stops_note(mgr: WalRedoManager) -> str:
    counts = []
    for cause in ("broken", "idle", "timeout", "sandbox_violation", "memory_limit", "shutdown"):
        if v := stop_count(mgr, cause):
            counts.append(f"{cause} {v}")
    return ", ".join(counts) or "none"


def cells(mgr: WalRedoManager) -> int:
    return mgr.statistics().tenants  # tenants with a cell: should follow live processes, not tenants seen


def p50_max(values: Sequence[float]) -> str:
    if not values:
        return "–"
    return f"p50 {statistics.median(values) * 1e3:.0f} ms, max {max(values) * 1e3:.0f} ms (n={len(values)})"


async def wait_until(cond: Callable[[], bool], bound: float, step: float = 0.005) -> float | None:
    """Seconds until ``cond()`` held, or None if it did not within ``bound``."""
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > bound:
            return None
        await asyncio.sleep(step)
    return time.monotonic() - t0


def template_pid(mgr: WalRedoManager) -> int | None:
    return mgr.template.template_pid


# Conditions for wait_until (factories: a lambda in a loop would capture the loop's variable, not its value).
def absent(mgr: WalRedoManager, tenant: str) -> Callable[[], bool]:
    return lambda: tenant not in mgr.processes()


def new_template(mgr: WalRedoManager, old: int) -> Callable[[], bool]:
    return lambda: template_pid(mgr) not in (None, old)


def exited(pid: int) -> Callable[[], bool]:
    def gone() -> bool:
        try:
            return not alive(psutil.Process(pid))
        except psutil.NoSuchProcess:  # reaped between two looks: gone
            return True
    return gone


def all_exited(procs: dict[int, psutil.Process]) -> Callable[[], bool]:
    return lambda: not any(alive(p) for p in procs.values())
