"""Memory figures of walredo processes and the status table, for operators.

Runs in the parent (called off the event loop: reading ``/proc`` is blocking I/O) and in the
``walredo-template status`` command. Imports psutil on first use only, so neither the template nor its
children ever load it.

USS is what a process alone holds (freed if it exits), PSS splits each shared page among its sharers (summed
over processes it is their real footprint), RSS counts shared pages in full. USS and PSS come from
``/proc/<pid>/smaps_rollup``, which the kernel shows only to a reader that may ptrace the process: sandboxed
children are not dumpable, so a parent that is not root (or lacks ``CAP_SYS_PTRACE``) cannot read them and
gets RSS alone (from ``/proc/<pid>/statm``, readable by anyone). :class:`Memory` says which it is.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

__all__ = ["Memory", "memory_of", "format_table", "age", "MIB"]

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


def age(since: float | None, now: float | None = None) -> float | None:
    """Seconds since the ``time.monotonic()`` reading ``since`` (None stays None)."""
    if since is None:
        return None
    return (time.monotonic() if now is None else now) - since
