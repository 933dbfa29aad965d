"""``WalRedoManager``: the library API a storage server calls on its hot path.

"Give me this page at this LSN for this tenant." One walredo process per tenant, held in a
:class:`~forkserver.oncecell.OnceCell`, started by the template fork server
(:class:`~forkserver.client.TemplateClient`), talked to through a pipelined
:class:`~forkserver.process.WalRedoProcess`. Runs in the parent process on its asyncio loop and never
forks, spawns, waits for a pid or makes a blocking socket call there.

Per request (``request_redo``)::

    validate arguments ──ValueError──▶ caller           (before any spawn or I/O)
    for attempt in 0..retries:
        cell = the tenant's current cell (created if none)
        process = cell.get_or_init(spawn)                 (cold tenant: one spawn, others wait; with
                                                           max_processes, LRU idle processes retired first)
        process already BROKEN (died while idle)          → take_if, replace it once without spending a try
        page = process.redo(...) within request_timeout
          ├─ page                        → return it (over max_processes: retire LRU idle ones)
          ├─ RedoFailed (engine refused) → raise, process kept (deterministic; a retry fails again);
          │                                with dump_failed, its inputs are written in the background
          ├─ timeout                     → take_if(process), kill it, raise RedoTimeout
          └─ ProcessBroken (died, EOF)   → take_if(process), kill it, retry with a fresh one
    raise RedoProcessFailed

``take_if`` removes the process only if it is still the one this caller used, so a caller that saw an old
process die never evicts the replacement another caller already started.

Which tenants have a process, and how a process leaves (retire, reap, the stop's cause): :mod:`forkserver.tenants`.

Operating it: :meth:`WalRedoManager.status` (per-tenant pid, uptime, requests, memory; the template's
counters and memory), ``max_processes`` (the least recently used idle processes are retired to stay at or
below N; see :func:`lru_idle_beyond`), ``dump_failed`` (the inputs of a request the engine refused are written
for offline replay, :mod:`forkserver.dump`). Every lifecycle log line reads ``tenant <id> pid <pid>: ...``.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge

from walredo_template import BufferTag
from walredo_template.protocol import MAX_FRAME_SIZE, SUPPORTED_PG_VERSION, RedoRequest

from .client import DEFAULT_WORKER, TemplateClient, validate_tenant_id
from .dump import DumpWriter
from .errors import (
    CellClosed,
    InitAborted,
    ManagerClosed,
    ProcessBroken,
    ProcessClosed,
    RedoFailed,
    RedoProcessFailed,
    RedoTemplateUnavailable,
    RedoTimeout,
    TemplateError,
    TemplateUnavailable,
    UsageError,
)
from .metrics import Outcome, RedoMetrics, StopCause
from .oncecell import OnceCell
from .pool import MAX_POOL_SIZE
from .process import ProcessState, WalRedoProcess
from .status import ManagerStatus, collect_status
from .tenants import ProcessInfo, TenantTable, lru_idle_beyond, stop_cause

__all__ = ["WalRedoManager", "ManagerState", "ManagerStatistics", "ProcessInfo", "lru_idle_beyond", "stop_cause"]

log = logging.getLogger(__name__)

_R = TypeVar("_R")  # what one request on a process returns (_call)


class ManagerState(enum.Enum):
    NEW = "new"
    STARTING = "starting"  # start() is launching the template: a second start() or an aclose() must see it
    RUNNING = "running"
    CLOSING = "closing"
    CLOSED = "closed"


@dataclass(frozen=True)
class ManagerStatistics:
    """A snapshot of a :class:`WalRedoManager`, as returned by :meth:`WalRedoManager.statistics`."""

    tenants: int  # tenants with a cell: a live process, a spawn in flight, or requests about to use one
    live_processes: int  # processes serving (RUNNING)
    reaping: int  # stopped processes whose child is still being reaped


class WalRedoManager:
    """Per-tenant walredo processes with coalesced cold starts, pipelining, retries, timeouts, idle quiesce.

    Use as ``async with WalRedoManager(...) as mgr:``. With ``template=None`` the manager launches its own
    template process (off the event loop) and stops it on exit; with a ``TemplateClient`` it uses that one
    and leaves it running.

    Arguments:
        request_timeout: seconds one redo/ping may take on a process before it fails with ``RedoTimeout``
            and the process is killed (Neon: 60 s).
        idle_timeout: a process with no request for this long is stopped by the quiesce task (Neon: 180 s).
        retries: how many times a request is retried on a fresh process after its process broke (Neon: 2).
        quiesce_period: how often the quiesce task looks for idle processes (default 20 s).
        worker: ``module:function`` the launched template runs in each child.
        registry: a ``prometheus_client.CollectorRegistry`` for the metrics (default: a private one).
        sandbox: every child of the launched template enters :mod:`forkserver.sandbox` before it serves
            (default); False turns it off for debugging (the template logs a warning).
        child_user: children of the launched template drop to this user and its group (the parent must run
            as root).
        child_memory_limit: address-space limit of each child in bytes (default 256 MiB; 0: none).
        pool_size: children the launched template keeps pre-forked for cold tenants (0 to
            ``forkserver.pool.MAX_POOL_SIZE``; default: the template's, ``$WALREDO_TEMPLATE_POOL`` or its
            built-in default); ``ValueError`` outside that range.
        max_processes: at most this many live processes (None: no limit; else an int >= 1). Before a new
            tenant's process is spawned, and after a request ends while there are more, the least recently
            used *idle* processes (no request in flight, at least one served) beyond N are retired; their
            tenants get a new process on their next request. A busy process is never retired, so while more
            than N are busy (or just spawned and not used yet) the count exceeds N until requests end.
            Counted as ``idle`` stops in ``pageserver_wal_redo_processes_stopped_total`` and, on their own, in
            ``pageserver_wal_redo_processes_evicted_total``.
        dump_failed: a directory (created 0700) where the inputs of each request the engine refused
            (``RedoFailed``) are written for offline replay (:mod:`forkserver.dump`, ``scripts/replay-dump``),
            at most 100 files. Written in the background off the loop: a dump never delays or changes the
            request's outcome; a write that fails is logged. Counted in
            ``pageserver_wal_redo_failed_request_dumps_total{result="written"|"skipped"|"error"}``.

    Size: the class is the request path (``_call``: tries, free replacements, retirement on each outcome)
    and the lifecycle it depends on (start/aclose racing a launch); they share one state machine, so they
    stay together (~500 lines, more than a third of them docstrings). The table of tenants and how processes leave it
    is :mod:`forkserver.tenants`; status gathering is :mod:`forkserver.status`.

    A child killed by its sandbox (SIGSYS) or stopped by its memory limit is a broken process like any
    crash (the request is retried on a new one); its cause is logged once with the tenant and pid
    ("sandbox violation" / "memory limit") and counted in ``pageserver_wal_redo_processes_stopped_total``
    as ``sandbox_violation`` / ``memory_limit``, once the process is reaped.
    """

    def __init__(
        self,
        template: TemplateClient | None = None,
        *,
        request_timeout: float = 60.0,
        idle_timeout: float = 180.0,
        retries: int = 2,
        quiesce_period: float = 20.0,
        worker: str = DEFAULT_WORKER,
        registry: CollectorRegistry | None = None,
        sandbox: bool = True,
        child_user: str | None = None,
        child_memory_limit: int | None = None,
        max_processes: int | None = None,
        dump_failed: str | os.PathLike[str] | None = None,
        pool_size: int | None = None,
    ) -> None:
        if not (request_timeout > 0 and idle_timeout > 0 and quiesce_period > 0):
            raise ValueError("request_timeout, idle_timeout and quiesce_period must be positive")
        if not isinstance(retries, int) or retries < 0:
            raise ValueError("retries must be a non-negative int")
        if max_processes is not None and (isinstance(max_processes, bool) or not isinstance(max_processes, int)
                                          or max_processes < 1):
            raise ValueError(f"max_processes must be None or an int >= 1, not {max_processes!r}")
        if pool_size is not None and (isinstance(pool_size, bool) or not isinstance(pool_size, int)
                                      or not 0 <= pool_size <= MAX_POOL_SIZE):
            raise ValueError(f"pool_size must be None or an int from 0 to {MAX_POOL_SIZE}, not {pool_size!r}")
        self._pool_size = pool_size
        self.max_processes = max_processes
        self._template = template
        self._owns_template = template is None
        self._worker = worker
        # What start() passes to TemplateClient.launch when it launches the template itself.
        self._sandbox = sandbox
        self._child_user = child_user
        self._child_memory_limit = child_memory_limit
        if not sandbox:
            log.warning("WalRedoManager(sandbox=False): walredo children run WITHOUT their sandbox "
                        "(seccomp allowlist, resource limits); for debugging only")
        self.request_timeout = request_timeout
        self.idle_timeout = idle_timeout
        self.retries = retries
        self.quiesce_period = quiesce_period
        self.metrics = RedoMetrics(registry)
        # On the manager's registry, next to RedoMetrics: evictions are also counted as `idle` stops there
        # (StopCause has no value of their own), this counter tells them apart.
        self.evicted = Counter("pageserver_wal_redo_processes_evicted",
                               "Idle walredo processes retired to stay within max_processes",
                               registry=self.metrics.registry)
        self.dumps = Counter("pageserver_wal_redo_failed_request_dumps",
                             "Failed-request dumps, by result (written, skipped, error)", ["result"],
                             registry=self.metrics.registry)
        self._dumper = (None if dump_failed is None
                        else DumpWriter(dump_failed, lambda result: self.dumps.labels(result).inc()))
        self._tenants = TenantTable(self.metrics, self.evicted, self._dispose_on_shutdown)
        # Read at scrape time: no bookkeeping on the request path.
        self.live_gauge = Gauge("pageserver_wal_redo_processes_live", "Walredo processes serving (RUNNING)",
                                registry=self.metrics.registry)
        self.live_gauge.set_function(lambda: len(self._tenants.live))
        self.spawning_gauge = Gauge("pageserver_wal_redo_processes_spawning", "Spawns in flight",
                                    registry=self.metrics.registry)
        self.spawning_gauge.set_function(lambda: self._tenants.spawning)
        self._state = ManagerState.NEW
        self._quiesce_task: asyncio.Task[None] | None = None
        self._watchdog_task: asyncio.Task[None] | None = None
        self._close_task: asyncio.Task[None] | None = None
        # Resolved when start()'s template launch is over (and, if aclose() ran meanwhile, the template is
        # stopped again), so that aclose() during start returns only once nothing runs.
        self._launching: asyncio.Future[None] | None = None
        # How often the watchdog looks for timed-out requests: a request fails between request_timeout and
        # request_timeout + watchdog_period after it was sent.
        self.watchdog_period = min(max(request_timeout / 8, 0.005), 1.0)

    # ------------------------------------------------------------------ lifecycle

    @property
    def state(self) -> ManagerState:
        return self._state

    @property
    def template(self) -> TemplateClient:
        self._check_running()
        assert self._template is not None
        return self._template

    async def __aenter__(self) -> WalRedoManager:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Launch the template if none was given, and the idle-quiesce task.

        Errors: ``UsageError`` if already started (or starting) or closed; ``ManagerClosed`` if ``aclose()``
        ran while the template was being launched (that template is stopped); whatever
        ``TemplateClient.launch`` raises.
        Cancellation: a cancelled start leaves the manager NEW with nothing running (a launched template is
        stopped).
        """
        if self._state is not ManagerState.NEW:
            raise UsageError(f"WalRedoManager cannot start: it is {self._state.value}")
        if self._template is None:
            self._state = ManagerState.STARTING
            self._launching = asyncio.get_running_loop().create_future()
            try:
                try:
                    template = await TemplateClient.launch(worker=self._worker, sandbox=self._sandbox,
                                                           child_user=self._child_user,
                                                           child_memory_limit=self._child_memory_limit,
                                                           pool_size=self._pool_size)
                except BaseException:
                    if self._state is ManagerState.STARTING:
                        self._state = ManagerState.NEW
                    raise
                if self._state is not ManagerState.STARTING:
                    # aclose() ran during the launch and found nothing to stop: this template is ours to stop.
                    await template.aclose()
                    raise ManagerClosed("WalRedoManager was closed while it started")
                self._template = template
            finally:
                self._launching.set_result(None)
        self._state = ManagerState.RUNNING
        loop = asyncio.get_running_loop()
        self._quiesce_task = loop.create_task(self._quiesce_loop(), name="walredo-quiesce")
        self._watchdog_task = loop.create_task(self._watchdog_loop(), name="walredo-watchdog")

    async def aclose(self) -> None:
        """Shut down: every cell closes for good, waiting requests fail with ``ManagerClosed``, every child is
        killed and reaped, and a template this manager launched is stopped. Idempotent; a concurrent or later
        call waits for the same shutdown.

        Cancellation: the shutdown itself is shielded: cancelling the caller (even repeatedly) does not leave
        processes behind; the cancellation is re-raised after the shutdown completes.
        """
        if self._close_task is None:
            if self._state is not ManagerState.RUNNING:  # never ran (NEW, STARTING, or closed from those)
                self._state = ManagerState.CLOSED
                if self._launching is not None and not self._launching.done():
                    await _shielded(self._launching)  # start() stops the template it was launching
                return
            self._state = ManagerState.CLOSING
            # One shutdown task for every caller: a concurrent aclose() also returns only once the children
            # are reaped, and the state becomes CLOSED when the work ends, whichever caller was cancelled.
            self._close_task = asyncio.get_running_loop().create_task(self._close(), name="walredo-shutdown")
        await _shielded(self._close_task)

    async def _close(self) -> None:
        try:
            await self._shutdown()
        finally:
            self._state = ManagerState.CLOSED

    async def _shutdown(self) -> None:
        background = [t for t in (self._quiesce_task, self._watchdog_task) if t is not None]
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        cells = list(self._tenants.cells.items())
        # Closing a cell disposes its process (kill + reap); an attempt still spawning is awaited and its
        # process disposed as well, so nothing started before shutdown survives it.
        results = await asyncio.gather(*(cell.close() for _tenant, cell in cells), return_exceptions=True)
        for (tenant_id, _cell), result in zip(cells, results):
            if isinstance(result, BaseException):
                log.warning("tenant %s: error while stopping its walredo process: %r", tenant_id, result)
        if self._tenants.reapers:
            await asyncio.gather(*self._tenants.reapers, return_exceptions=True)
        if self._dumper is not None:
            await self._dumper.aclose()
        if self._owns_template and self._template is not None:
            await self._template.aclose()

    def _check_running(self) -> None:
        if self._state is not ManagerState.RUNNING:
            if self._state in (ManagerState.NEW, ManagerState.STARTING):
                raise UsageError("WalRedoManager is not started: use 'async with WalRedoManager() as mgr'")
            raise ManagerClosed("WalRedoManager is closed")

    # ------------------------------------------------------------------ requests

    async def request_redo(
        self,
        tenant_id: str,
        tag: BufferTag,
        lsn: int,
        base_image: bytes | None,
        records: Sequence[tuple[int, bytes]],
        pg_version: int = SUPPORTED_PG_VERSION,
        *,
        wal_log_hints: bool = False,
    ) -> bytes:
        """Reconstruct the page ``tag`` at ``lsn`` from ``base_image`` and ``records`` in the tenant's process.

        Returns the 8192-byte page. Starts the tenant's process if it has none (concurrent cold requests share
        one spawn). ``wal_log_hints`` must be True when the cluster that wrote the WAL had data checksums or
        ``wal_log_hints`` on: PostgreSQL's Heap2 VISIBLE redo then also sets the heap page's LSN.

        Errors:
            - ``ValueError`` for bad arguments, before any spawn or I/O: invalid tenant id, tag not 5 ints, lsn
              not a non-negative int, base image not 8192 bytes, a record that is not ``(int, bytes)``, no
              records and no base image, records whose end LSNs are not strictly ascending, a last record
              ending after ``lsn``, a request too large for one frame;
            - ``RedoFailed`` when the engine refuses the input (unsupported or malformed record, ...): not
              retried, the process is kept; with ``dump_failed`` its inputs are dumped in the background
              (the error is raised at once, whatever happens to the dump);
            - ``RedoTimeout`` after ``request_timeout``, which counts the whole request: the wait for a spawn
              (a cold tenant, a template restarting or reconnecting) and every retry included; a process the
              request was sent to is killed and replaced on the next request;
            - ``RedoProcessFailed`` when the process broke on every try (``retries`` + 1), or this process
              could not start one (e.g. out of file descriptors); its subclass ``RedoTemplateUnavailable``
              (also a ``TemplateUnavailable``) when the template could not: down, restarting, stuck;
            - ``ManagerClosed`` if the manager is (or gets) closed.

        Cancellation: cancel-safe. The request's response, if the process still sends it, is read and
        dropped, so other requests pipelined on the same process are unaffected; a spawn this call started
        goes on and serves later requests.
        """
        validate_tenant_id(tenant_id)
        request = _redo_request(tag, lsn, base_image, records, pg_version, wal_log_hints)
        self._check_running()
        started = time.perf_counter()
        if self._dumper is None:
            page = await self._call(tenant_id, lambda process: process.send_redo(request))
        else:
            dumper = self._dumper

            async def redo_or_dump(process: WalRedoProcess) -> bytes:
                try:
                    return await process.send_redo(request)
                except RedoFailed as exc:
                    dumper.submit(tenant_id, process.pid, tag, lsn, base_image, records, pg_version,
                                  wal_log_hints, str(exc))
                    raise

            page = await self._call(tenant_id, redo_or_dump)
        self.metrics.redo_seconds.observe(time.perf_counter() - started)
        self.metrics.records.observe(len(records))
        return page

    async def ping(self, tenant_id: str) -> None:
        """Round-trip a ping through the tenant's process, starting it if needed.

        Errors and cancellation: as :meth:`request_redo` (``ValueError`` for an invalid tenant id).
        """
        validate_tenant_id(tenant_id)
        self._check_running()
        await self._call(tenant_id, WalRedoProcess.ping)

    def processes(self) -> dict[str, ProcessInfo]:
        """A snapshot of the live processes, by tenant id. Never waits; tenants still spawning are absent, and
        so is a process whose child died (dropped as soon as its EOF is read; replaced on the next request)."""
        return self._tenants.processes()

    async def status(self, *, template_timeout: float = 2.0) -> ManagerStatus:
        """The operator's view: every live tenant process (pid, uptime, requests served, in flight, last
        request age, RSS/USS/PSS) and the template (pid, spawns, live, idle, RSS/USS/PSS, its counters).

        Memory is read from ``/proc`` in one executor call for every pid, off the event loop. Which figures
        are shown is each entry's ``memory_source``: ``"smaps"`` gives all three; ``"statm"`` gives RSS only
        (sandboxed children are not dumpable, so a parent that is not root, or lacks ``CAP_SYS_PTRACE``, may
        not read their smaps); None: the process was gone before it was read. A tenant whose process stopped
        while its memory was read is left out.

        Errors: ``UsageError`` / ``ManagerClosed`` if the manager is not running. A template that does not
        answer its stats request within ``template_timeout`` seconds (gone, restarting, ``TemplateUnavailable``)
        gives ``template=None``; the tenants are still listed (they do not depend on it).
        Cancellation: cancel-safe; it changes no state (a ``/proc`` read already started finishes in its
        thread and is dropped).
        """
        self._check_running()
        assert self._template is not None
        return await collect_status(self._tenants.running(), self._template, template_timeout)

    def statistics(self) -> ManagerStatistics:
        """Counts of tenants with a cell, live processes and processes being reaped. Never waits."""
        t = self._tenants
        return ManagerStatistics(tenants=len(t.cells), live_processes=len(t.live), reaping=len(t.reapers))

    async def _call(self, tenant_id: str, op: Callable[[WalRedoProcess], Awaitable[_R]]) -> _R:
        last_error: BaseException | None = None
        # Replacing a process once does not spend one of the tries when this request is not why it failed:
        # a process found BROKEN when picked up (its child died between requests), or one this side closed
        # (ProcessClosed: the watchdog killed it for an older request that timed out).
        free_replacement = True
        # The whole request, spawns and retries included, must end within request_timeout: a cold request
        # waits for its spawn under this deadline; a warm one is expired by the watchdog (no timer per request).
        deadline = asyncio.get_running_loop().time() + self.request_timeout
        try:
            tries = 0
            while tries <= self.retries:
                tries += 1
                if self._state is not ManagerState.RUNNING:  # a new cell now would outlive the shutdown
                    raise ManagerClosed("WalRedoManager was closed during the request")
                # The tenant's current cell, on every try: the one an earlier try used may have been dropped
                # (and closed) since it became empty. Nothing awaits between this lookup and get_or_init
                # starting its attempt, and a cell with an attempt in flight is never dropped.
                cell = self._tenants.cell(tenant_id)
                cold = cell.get() is None
                try:
                    if cold:
                        async with asyncio.timeout_at(deadline):
                            process = await cell.get_or_init(functools.partial(self._launch, tenant_id, cell))
                    else:
                        process = await cell.get_or_init(functools.partial(self._launch, tenant_id, cell))
                except TimeoutError as exc:  # our deadline (get_or_init is cancel-safe: the spawn goes on)
                    if isinstance(exc, TemplateError):
                        self._tenants.forget(tenant_id, cell)
                        last_error = exc
                        continue
                    if isinstance(last_error, TemplateUnavailable) or self.template.template_pid is None:
                        raise RedoTemplateUnavailable(
                            f"walredo for tenant {tenant_id}: no process within request_timeout "
                            f"({self.request_timeout} s): the template is unavailable: {last_error or 'reconnecting'}"
                        ) from (last_error or exc)
                    raise RedoTimeout(f"walredo request for tenant {tenant_id}: no process within request_timeout "
                                      f"({self.request_timeout} s): {last_error or 'spawning'}") from exc
                except (CellClosed, InitAborted) as exc:
                    if self._state is not ManagerState.RUNNING:
                        raise ManagerClosed("WalRedoManager was closed while the request waited") from exc
                    self._tenants.forget(tenant_id, cell)
                    last_error = exc
                    continue
                except (TemplateError, OSError) as exc:
                    # OSError: the spawn's own resources (EMFILE/ENFILE at its socketpair) in this process.
                    self._tenants.forget(tenant_id, cell)
                    last_error = exc
                    continue
                if process.state is not ProcessState.RUNNING and free_replacement:
                    free_replacement = False
                    tries -= 1
                    self._tenants.retire(cell, process, StopCause.BROKEN)
                    continue
                try:
                    # No timer per request on a warm process: the watchdog task expires requests older than
                    # request_timeout (see _watchdog_loop); the one that timed out gets RedoTimeout, younger
                    # ones on the same process get ProcessClosed and are retried below. A request that waited
                    # for a spawn (or a retry) has less left: it gets a timer for the rest of its deadline.
                    if cold or tries > 1:
                        try:
                            async with asyncio.timeout_at(deadline):
                                result = await op(process)
                        except TimeoutError as exc:
                            if isinstance(exc, RedoTimeout):
                                raise
                            self._tenants.retire(cell, process, StopCause.TIMEOUT)
                            raise self._timeout_error(tenant_id, process.pid) from exc
                    else:
                        result = await op(process)
                except ProcessBroken as exc:
                    self._tenants.retire(cell, process, StopCause.BROKEN)
                    if self._state is not ManagerState.RUNNING:
                        raise ManagerClosed("WalRedoManager was closed during the request") from exc
                    if isinstance(exc, ProcessClosed) and free_replacement:
                        free_replacement = False
                        tries -= 1
                    last_error = exc
                    continue
                if self.max_processes is not None and len(self._tenants.live) > self.max_processes:
                    # over the limit while every process was busy: back to it now
                    self._tenants.make_room(self.max_processes, 0)
                self.metrics.count_request(Outcome.OK)
                return result
            if isinstance(last_error, TemplateUnavailable):
                raise RedoTemplateUnavailable(
                    f"walredo for tenant {tenant_id}: no process: the template is unavailable: {last_error}"
                ) from last_error
            raise RedoProcessFailed(
                f"walredo for tenant {tenant_id} failed after {self.retries + 1} tries: {last_error}"
            ) from last_error
        except RedoFailed:
            self.metrics.count_request(Outcome.REDO_ERROR)
            raise
        except RedoTimeout:
            self.metrics.count_request(Outcome.TIMEOUT)
            raise
        except ManagerClosed:
            self.metrics.count_request(Outcome.CLOSED)
            raise
        except RedoProcessFailed:
            self.metrics.count_request(Outcome.FAILED)
            raise
        except asyncio.CancelledError:
            self.metrics.count_request(Outcome.CANCELLED)
            raise

    async def _launch(self, tenant_id: str, cell: OnceCell[WalRedoProcess]) -> WalRedoProcess:
        # Runs in the cell's attempt task: callers' cancellations do not reach it.
        assert self._template is not None
        started = time.perf_counter()
        tenants = self._tenants
        if self.max_processes is not None:
            tenants.make_room(self.max_processes, 1)
        tenants.spawning += 1
        try:
            handle = await self._template.spawn(tenant_id, timeout=self.request_timeout)
        except BaseException as exc:
            # The cell is empty once this attempt ends. If every caller left meanwhile (cancelled), nobody
            # handles the failure: drop the cell here, after the attempt ended (_forget refuses while a woken
            # waiter has yet to resume; that waiter drops it itself).
            asyncio.get_running_loop().call_soon(tenants.forget, tenant_id, cell)
            if isinstance(exc, TemplateUnavailable):  # the template is gone: the client says so, once
                log.debug("tenant %s: spawn failed: %s", tenant_id, exc)
            elif isinstance(exc, Exception):
                log.warning("tenant %s: spawn failed: %s", tenant_id, exc)
            raise
        finally:
            tenants.spawning -= 1
        process = WalRedoProcess(handle, tenant=tenant_id, on_stop=tenants.on_process_stop)
        tenants.add(process, cell)
        elapsed = time.perf_counter() - started
        self.metrics.launch_seconds.observe(elapsed)
        self.metrics.started.inc()
        log.info("tenant %s pid %d: started (%.2f ms)", tenant_id, process.pid, elapsed * 1e3)
        return process

    async def _dispose_on_shutdown(self, process: WalRedoProcess) -> None:
        await self._tenants.reap(process, StopCause.SHUTDOWN)

    # ------------------------------------------------------------------ request timeouts

    async def _watchdog_loop(self) -> None:
        while True:
            await asyncio.sleep(self.watchdog_period)
            self.expire_requests()

    def expire_requests(self, now: float | None = None) -> int:
        """Fail requests sent more than ``request_timeout`` ago with ``RedoTimeout`` and kill their processes.

        Called by the watchdog task every ``watchdog_period``. Returns the number of requests timed out.
        """
        now = time.monotonic() if now is None else now
        return self._tenants.expire(now - self.request_timeout, self._timeout_error)

    def _timeout_error(self, tenant_id: str, pid: int) -> RedoTimeout:
        return RedoTimeout(
            f"walredo request for tenant {tenant_id} took longer than {self.request_timeout} s; process {pid} killed"
        )

    # ------------------------------------------------------------------ idle quiesce

    async def _quiesce_loop(self) -> None:
        while True:
            await asyncio.sleep(self.quiesce_period)
            self.quiesce_idle()

    def quiesce_idle(self, now: float | None = None) -> list[str]:
        """Stop processes with no request in flight and none sent for ``idle_timeout``. Returns their tenants.

        Called by the background task every ``quiesce_period``; public so a service can trigger it. The next
        request for such a tenant spawns a new process.
        """
        now = time.time() if now is None else now
        return self._tenants.retire_idle(now, self.idle_timeout)


def _redo_request(tag: BufferTag, lsn: int, base_image: bytes | None, records: Sequence[tuple[int, bytes]],
                  pg_version: int, wal_log_hints: bool) -> RedoRequest:
    """Check the arguments once, before any spawn or I/O, with the child protocol's own rules (the
    ``RedoRequest`` built here is what the process frames, so nothing is checked twice); every refusal is a
    ``ValueError``."""
    if pg_version != SUPPORTED_PG_VERSION:
        raise ValueError(f"pg_version {pg_version!r} is not supported (only {SUPPORTED_PG_VERSION})")
    try:
        request = RedoRequest(tag, lsn, base_image, records, pg_version, wal_log_hints=wal_log_hints)
    except TypeError as exc:
        raise ValueError(str(exc)) from exc
    # The frame bound (FrameTooLarge) would otherwise only be hit when the process frames the request,
    # after a spawn. Framing costs a copy, so only a request that may be near the bound is framed here:
    # msgpack adds at most 15 bytes per record (array header, u64, bin header) and a few hundred for the rest.
    size = (0 if base_image is None else len(base_image)) + sum([len(rec) + 16 for _lsn, rec in records])
    if size + 512 > MAX_FRAME_SIZE:
        request.frame(0)
    return request


async def _shielded(task: asyncio.Future[None]) -> None:
    """Wait for ``task`` to complete even if the caller is cancelled (any number of times); re-raise the
    cancellation afterwards. ``asyncio.wait`` never cancels what it waits on, whereas awaiting the task
    itself after a first cancellation would let a second one cancel the task."""
    cancelled: asyncio.CancelledError | None = None
    while not task.done():
        try:
            await asyncio.wait((task,))
        except asyncio.CancelledError as exc:
            cancelled = exc
    if cancelled is not None:
        if not task.cancelled():
            task.exception()  # retrieved: the cancellation is what this caller reports
        raise cancelled
    task.result()

