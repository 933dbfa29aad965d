"""The manager's table of tenants: one cell per tenant, the live processes, and how a process leaves.

Runs in the parent, on its event loop (never blocks). :class:`~forkserver.manager.WalRedoManager` decides
*when* a process goes (a request broke it, the watchdog timed it out, the quiesce tick found it idle,
``max_processes`` needs room); this module is *how*: take it out of its cell, forget the tenant if nothing
else needs the cell, kill it, reap it in the background, count the stop by what happened to the child.

Forgetting tenants: a cell that is empty, with no spawn in flight and no waiter, is dropped from the map and
closed in the same synchronous step (``OnceCell.close_if_empty``): when its process is retired, when its
spawn failed and nobody waits. A request takes the tenant's current cell on every try (:meth:`TenantTable.cell`),
so no request uses a dropped cell (closed: ``get_or_init`` on it raises ``CellClosed`` and never spawns), and a
cell with a spawn in flight or a waiter is never dropped, so a tenant never has two processes. Live processes
are also kept in their own map, so the watchdog and quiesce ticks cost O(live processes), not O(tenants ever
seen).

Stop causes are counted once the child is reaped, by what happened to it (:func:`stop_cause`): its exit
status, and whether its stream broke before this side stopped it (``WalRedoProcess.broke_first``). A child
killed by a signal this side did not send is ``broken`` even if it was idle or being stopped for another
reason.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import logging
import signal
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from prometheus_client import Counter

from .metrics import RedoMetrics, StopCause
from .oncecell import OnceCell
from .process import ProcessState, WalRedoProcess
from .sandbox import EXIT_MEMORY_LIMIT

__all__ = ["ProcessInfo", "TenantTable", "lru_idle_beyond", "stop_cause"]

log = logging.getLogger("forkserver.manager")


@dataclass(frozen=True)
class ProcessInfo:
    """A snapshot of one tenant's walredo process, as returned by ``WalRedoManager.processes``."""

    tenant_id: str
    pid: int
    started_at: float  # time.time() when it was spawned
    requests_served: int
    last_request_at: float | None  # time.time() of the last request sent, None if none yet
    in_flight: int


class TenantTable:
    """Cells by tenant, live processes and the reaps in progress; see the module docstring.

    ``dispose`` is what a cell closed on shutdown does with its process (kill, reap, count)."""

    def __init__(self, metrics: RedoMetrics, evicted: Counter,
                 dispose: Callable[[WalRedoProcess], Awaitable[None]]) -> None:
        self._metrics = metrics
        self._evicted = evicted
        self._dispose = dispose
        # One cell per tenant that has a process or is getting one; dropped once empty (forget).
        self.cells: dict[str, OnceCell[WalRedoProcess]] = {}
        # Every RUNNING process and its cell; a process leaves it synchronously when it stops (on_stop).
        self.live: dict[WalRedoProcess, OnceCell[WalRedoProcess]] = {}
        # Spawns in flight: a burst of cold tenants counts against max_processes before its processes exist.
        self.spawning = 0
        # Kills of retired processes run here, so the request that retired one can fail or retry at once;
        # held strongly until done, and awaited on close.
        self.reapers: set[asyncio.Task[object]] = set()

    def cell(self, tenant_id: str) -> OnceCell[WalRedoProcess]:
        """The tenant's current cell, made if it has none."""
        cell = self.cells.get(tenant_id)
        if cell is None:
            cell = self.cells[tenant_id] = OnceCell(dispose=self._dispose)
        return cell

    def add(self, process: WalRedoProcess, cell: OnceCell[WalRedoProcess]) -> None:
        """A freshly spawned process of ``cell``'s tenant."""
        self.live[process] = cell

    def running(self) -> list[WalRedoProcess]:
        """The live processes that are still their cell's value and RUNNING."""
        return [p for p, cell in self.live.items() if cell.get() is p and p.state is ProcessState.RUNNING]

    def processes(self) -> dict[str, ProcessInfo]:
        """A snapshot of :meth:`running`, by tenant."""
        out = {}
        for p in self.running():
            assert p.tenant is not None
            out[p.tenant] = ProcessInfo(tenant_id=p.tenant, pid=p.pid, started_at=p.started_at,
                                        requests_served=p.requests_served, last_request_at=p.last_request_at,
                                        in_flight=p.in_flight)
        return out

    def forget(self, tenant_id: str, cell: OnceCell[WalRedoProcess]) -> None:
        """Drop the tenant's cell if it is idle (empty, no spawn in flight, no waiter), closing it in the same
        step: a caller still holding it gets ``CellClosed`` and takes the tenant's current cell."""
        if self.cells.get(tenant_id) is cell and cell.close_if_empty():
            del self.cells[tenant_id]

    def on_process_stop(self, process: WalRedoProcess) -> None:
        """``WalRedoProcess``'s ``on_stop``: called synchronously when it leaves RUNNING. A process whose
        stream broke on its own (its child died, maybe while idle) is retired now: its tenant is forgotten if
        it never comes back, and no tick or request has to find it dead."""
        cell = self.live.pop(process, None)
        if cell is not None and process.broke_first and cell.take_if(process):
            assert process.tenant is not None
            self.forget(process.tenant, cell)
            self._reap_later(process, StopCause.BROKEN)

    def retire(self, cell: OnceCell[WalRedoProcess], process: WalRedoProcess, reason: StopCause) -> None:
        """Remove ``process`` from its cell if it is still there, kill it and reap it in the background; its
        stop is counted once reaped (:func:`stop_cause`: ``reason`` unless the child broke first).

        Only the caller whose ``take_if`` succeeds owns the reap (awaited on shutdown); a late caller holding
        the same stale process just makes sure it is dead, and never touches the cell's newer process.
        """
        if not cell.take_if(process):
            process.close()  # idempotent: already closed by whoever retired it
            return
        assert process.tenant is not None
        self.forget(process.tenant, cell)
        self.live.pop(process, None)
        process.close()  # the kill, now (on_stop finds it already out of live)
        self._reap_later(process, reason)

    def make_room(self, max_processes: int, extra: int) -> None:
        """Retire the least recently used idle processes so that live ones, spawns in flight and ``extra``
        more fit in ``max_processes`` (as far as idle processes allow: busy ones are never retired)."""
        limit = max_processes - self.spawning - extra
        for process in lru_idle_beyond(self.live, limit):
            assert process.tenant is not None
            log.info("tenant %s pid %d: retired: least recently used idle process, %d live (max_processes %d)",
                     process.tenant, process.pid, len(self.live), max_processes)
            self._evicted.inc()
            self.retire(self.live[process], process, StopCause.IDLE)

    def expire(self, sent_before: float, make_error: Callable[[str, int], BaseException]) -> int:
        """Fail requests sent before ``sent_before`` (monotonic) with ``make_error(tenant, pid)`` and retire
        their processes (``TIMEOUT``). Returns the number of requests failed."""
        total = 0
        for process, cell in [(p, c) for p, c in self.live.items() if p.in_flight]:
            assert process.tenant is not None
            expired = process.expire(sent_before, functools.partial(make_error, process.tenant, process.pid))
            if expired:
                total += expired
                self.retire(cell, process, StopCause.TIMEOUT)
        return total

    def retire_idle(self, now: float, idle_timeout: float) -> list[str]:
        """Retire processes with no request in flight and none sent since ``now - idle_timeout`` (wall
        clock). Returns their tenants."""
        stopped = []
        idle = [(p, c) for p, c in self.live.items() if not p.in_flight
                and now - (p.last_request_at if p.last_request_at is not None else p.started_at) >= idle_timeout]
        for process, cell in idle:
            assert process.tenant is not None
            self.retire(cell, process, StopCause.IDLE)
            stopped.append(process.tenant)
        return stopped

    async def reap(self, process: WalRedoProcess, reason: StopCause) -> None:
        """Kill (if need be) and reap ``process``, then count its stop."""
        self.count_stop(process, await process.aclose(), reason)

    def count_stop(self, process: WalRedoProcess, status: int | None, reason: StopCause) -> None:
        """Count (and log) the stop of ``process`` whose child exited with ``status``."""
        cause = stop_cause(status, broke_first=process.broke_first, reason=reason)
        self._metrics.count_stop(cause)
        if cause is StopCause.SANDBOX_VIOLATION:
            log.error("tenant %s pid %d: stopped: sandbox violation (killed by SIGSYS: a syscall outside the "
                      "seccomp allowlist)", process.tenant, process.pid)
        elif cause is StopCause.MEMORY_LIMIT:
            log.error("tenant %s pid %d: stopped: memory limit (an allocation failed at its address-space "
                      "limit)", process.tenant, process.pid)
        else:
            log.info("tenant %s pid %d: stopped: %s (exit status %s)", process.tenant, process.pid, cause.value,
                     "unknown" if status is None else status)

    def _reap_later(self, process: WalRedoProcess, reason: StopCause) -> None:
        task = asyncio.get_running_loop().create_task(self.reap(process, reason),
                                                      name=f"walredo-retire-{process.pid}")
        self.reapers.add(task)
        task.add_done_callback(self.reapers.discard)


def lru_idle_beyond(live: Iterable[WalRedoProcess], limit: int) -> list[WalRedoProcess]:
    """The processes to retire so that at most ``limit`` of ``live`` remain: the least recently used idle
    ones (RUNNING, no request in flight, at least one request sent: a process nobody used yet is about to
    serve the request it was spawned for). Fewer, or none, when too few are idle. Pure: decides, retires
    nothing."""
    live = list(live)
    excess = len(live) - max(limit, 0)
    if excess <= 0:
        return []
    idle = [p for p in live if p.state is ProcessState.RUNNING and not p.in_flight and p.last_request_at is not None]
    return heapq.nsmallest(excess, idle, key=lambda p: p.last_request_at or 0.0)


def stop_cause(status: int | None, *, broke_first: bool, reason: StopCause) -> StopCause:
    """Why a process stopped, from what happened to its child: killed by SIGSYS (its seccomp filter) →
    ``SANDBOX_VIOLATION``; the worker's memory-limit exit → ``MEMORY_LIMIT``; its stream broke before this
    side stopped it (``broke_first``: it died, was killed by a signal we did not send, or misbehaved), or it
    ended any other way than by our SIGKILL → ``BROKEN``; else ``reason``, why this side stopped it (``IDLE``,
    ``TIMEOUT``, ``SHUTDOWN``; ``BROKEN`` when it was retired for breaking). ``status`` is the exit status
    (``-N`` for signal N; ``None`` if unknown)."""
    if status == -signal.SIGSYS:
        return StopCause.SANDBOX_VIOLATION
    if status == EXIT_MEMORY_LIMIT:
        return StopCause.MEMORY_LIMIT
    if broke_first or (status is not None and status != -signal.SIGKILL):
        return StopCause.BROKEN
    return reason
