"""Memory figures of walredo processes and the status table, for operators.

Runs in the parent (called off the event loop: reading ``/proc`` is blocking I/O) and in the
``walredo-template status`` command. Imports psutil on first use only, so neither the template nor its
children ever load it.

USS is what a process alone holds (freed if it exits), PSS splits each shared page among its sharers (summed
over processes it is their real footprint), RSS counts shared pages in full. USS and PSS come from
``/proc/<pid>/smaps_rollup``, which the kernel shows only to a reader that may ptrace the process: sandboxed
children are not dumpable, so a parent that is not root (or lacks ``CAP_SYS_PTRACE``) cannot read them and
gets RSS alone (from ``/proc/<pid>/statm``, readable by anyone). :class:`Memory` says which it is.

:class:`ManagerStatus` (with :class:`TenantStatus` and :class:`TemplateStatus`) is what
``WalRedoManager.status()`` returns; :func:`memories` is its one blocking read for every pid at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import TemplateError
from .process import ProcessState

if TYPE_CHECKING:
    from .client import TemplateClient
    from .process import WalRedoProcess

log = logging.getLogger("forkserver.manager")

__all__ = ["Memory", "memory_of", "memories", "format_table", "MIB", "TenantStatus", "TemplateStatus",
           "ManagerStatus", "memory_fields", "collect_status"]

MIB = 1 << 20


@dataclass(frozen=True, slots=True)
class Memory:
    """One process's memory in bytes. ``uss``/``pss`` are None when smaps was not readable (``source`` is
    ``"statm"`` then: RSS only), ``"smaps"`` otherwise."""

    rss: int
    uss: int | None
    pss: int | None
    source: str


def memory_of(pid: int) -> Memory | None:
    """The memory of ``pid``, or None if it is gone. Blocking (reads ``/proc``): call it off the loop."""
    import psutil

    try:
        proc = psutil.Process(pid)
        try:
            full = proc.memory_full_info()
            return Memory(full.rss, full.uss, full.pss, "smaps")
        except psutil.AccessDenied:
            return Memory(proc.memory_info().rss, None, None, "statm")
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    except psutil.AccessDenied:
        return None


def memories(pids: Iterable[int]) -> dict[int, Memory | None]:
    """:func:`memory_of` for each pid (None for a pid that is gone). Blocking: one executor call for all."""
    return {pid: memory_of(pid) for pid in pids}


@dataclass(frozen=True)
class TenantStatus:
    """One tenant's live walredo process. Times in seconds; memory in bytes.

    ``memory_source`` says which figures are shown: ``"smaps"``: RSS, USS and PSS; ``"statm"``: RSS only
    (``uss``/``pss`` None: the child is not dumpable and this parent may not read its smaps, e.g. it is
    not root); None: the process was gone before its memory was read (all three None)."""

    tenant_id: str
    pid: int
    uptime: float  # since it was spawned
    requests_served: int  # responses read from it
    in_flight: int  # requests sent and not yet answered
    last_request_age: float | None  # since the last request was sent; None if none was
    rss: int | None
    uss: int | None
    pss: int | None
    memory_source: str | None


@dataclass(frozen=True)
class TemplateStatus:
    """The template fork server, from its own counters (``TemplateClient.stats()``) and ``/proc``.

    ``live``: tenant children forked and not yet reaped (by this template: children of an earlier template
    are not counted); ``idle``: pre-forked pool children waiting for a spawn; ``counters``: the whole stats
    reply (every counter the template sends, these included). Memory as in :class:`TenantStatus`."""

    pid: int | None
    spawns: int
    live: int
    idle: int
    rss: int | None
    uss: int | None
    pss: int | None
    memory_source: str | None
    counters: Mapping[str, Any]


@dataclass(frozen=True)
class ManagerStatus:
    """What ``WalRedoManager.status()`` returns: the template (None if it did not answer) and every live
    tenant process by tenant id."""

    template: TemplateStatus | None
    tenants: dict[str, TenantStatus]

    TENANT_COLUMNS = ("tenant_id", "pid", "uptime", "requests_served", "in_flight", "last_request_age",
                      "uss", "pss", "rss")

    def table(self) -> str:
        """The tenants as a :func:`format_table` table, oldest process first."""
        rows = sorted(self.tenants.values(), key=lambda t: -t.uptime)
        return format_table([vars(t) for t in rows], self.TENANT_COLUMNS)


def memory_fields(mem: Memory | None) -> dict[str, Any]:
    """``rss``, ``uss``, ``pss`` and ``memory_source`` of a :class:`TenantStatus` / :class:`TemplateStatus`."""
    if mem is None:
        return {"rss": None, "uss": None, "pss": None, "memory_source": None}
    return {"rss": mem.rss, "uss": mem.uss, "pss": mem.pss, "memory_source": mem.source}


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / MIB:.2f}"


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


_MEMORY_KEYS = frozenset({"rss", "uss", "pss"})
_AGE_KEYS = frozenset({"uptime", "last_request_age"})


def format_table(rows: Iterable[Mapping[str, object]], columns: Sequence[str]) -> str:
    """A plain-text table of ``rows`` (dicts) under ``columns`` (their keys): ``rss``/``uss``/``pss``
    (bytes) shown in MiB with their unit in the header, ``uptime``/``last_request_age`` (seconds) as
    durations, None as ``-``."""
    table = [[f"{c}_mib" if c in _MEMORY_KEYS else c for c in columns]]
    for row in rows:
        cells = []
        for c in columns:
            v = row.get(c)
            if v is None:
                cells.append("-")
            elif c in _MEMORY_KEYS and isinstance(v, int):
                cells.append(_mib(v))
            elif c in _AGE_KEYS and isinstance(v, float | int):
                cells.append(_age(float(v)))
            else:
                cells.append(str(v))
        table.append(cells)
    widths = [max(len(r[i]) for r in table) for i in range(len(columns))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in table)


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _discard_result(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


async def collect_status(running: Sequence[WalRedoProcess], template: TemplateClient,
                         template_timeout: float) -> ManagerStatus:
    """``WalRedoManager.status()``'s work: the template's stats reply (at most ``template_timeout`` seconds;
    None if it does not answer) and the memory of every pid, read in one executor call, off the loop.

    Errors: none of its own (a template that fails to answer gives ``template=None``).
    Cancellation: cancel-safe; a ``/proc`` read already started finishes in its thread and is dropped."""
    template_pid = template.template_pid
    pids = [p.pid for p in running] + ([template_pid] if template_pid is not None else [])
    memory_read = asyncio.get_running_loop().run_in_executor(None, memories, pids)
    try:
        try:
            async with asyncio.timeout(template_timeout):
                counters: dict[str, object] | None = await template.stats()
        except (TemplateError, TimeoutError) as exc:
            log.debug("status: the template did not answer: %r", exc)
            counters = None
        mem = await memory_read
    except BaseException:
        memory_read.add_done_callback(_discard_result)  # cancelled: the read's outcome is nobody's
        raise
    now = time.time()
    tenants = {}
    for p in running:
        if p.state is not ProcessState.RUNNING:
            continue
        assert p.tenant is not None
        tenants[p.tenant] = TenantStatus(
            tenant_id=p.tenant, pid=p.pid, uptime=max(0.0, now - p.started_at),
            requests_served=p.requests_served, in_flight=p.in_flight,
            last_request_age=None if p.last_request_at is None else max(0.0, now - p.last_request_at),
            **memory_fields(mem.get(p.pid)))
    status = None
    if counters is not None:
        pid = counters.get("pid", template_pid)
        pid = pid if isinstance(pid, int) else None
        tmem = mem.get(pid) if pid is not None and pid == template_pid else None
        status = TemplateStatus(pid=pid, spawns=_int(counters.get("spawns")), live=_int(counters.get("live")),
                                idle=_int(counters.get("idle")), counters=counters, **memory_fields(tmem))
    return ManagerStatus(template=status, tenants=tenants)
