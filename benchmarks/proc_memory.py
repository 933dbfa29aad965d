"""USS / PSS / RSS of processes, from ``/proc/<pid>/smaps_rollup`` via psutil.

USS is what the process alone holds (freed if it exits); PSS splits each shared page among its sharers,
so PSS summed over a set of processes is their real footprint; RSS counts shared pages in full.
"""

from __future__ import annotations

import psutil

MIB = 2**20


def memory_mib(pid: int) -> dict[str, float]:
    """``{"uss", "pss", "rss"}`` of ``pid`` in MiB. Raises ``psutil.NoSuchProcess`` if it is gone."""
    info = psutil.Process(pid).memory_full_info()
    return {"uss": info.uss / MIB, "pss": info.pss / MIB, "rss": info.rss / MIB}


def total_pss_mib(pids: list[int]) -> float:
    """Sum of PSS over ``pids`` (processes that exited meanwhile count 0), in MiB."""
    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_full_info().pss
        except psutil.NoSuchProcess:
            pass
    return total / MIB
