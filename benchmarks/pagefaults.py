"""Page faults: what one costs on this machine, and how many a process has taken.

A forked child pays for every page it writes (copy-on-write) or first touches with a minor fault. On a
virtual machine a fault can cost ten times what it costs on bare metal, and then the faults a new child
takes before answering its first request are most of its start-up time. Measuring the cost per fault in
the same run turns "the spawn takes N ms" into "the spawn takes F faults × C µs + the rest".
"""

from __future__ import annotations

import mmap
import os
import time

PAGE = mmap.PAGESIZE


def minor_faults(pid: int) -> int:
    """Minor faults ``pid`` has taken so far (``/proc/<pid>/stat`` field 10). Raises ``OSError`` if gone."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return int(fields[7])


def fault_cost_us(pages: int = 4096) -> dict[str, float]:
    """µs per fault on this machine: ``cow`` (a forked child writing pages it shares with its parent) and
    ``first_touch`` (writing fresh anonymous pages). Forks one short-lived child and reaps it.

    Raises ``OSError`` if the fork fails.
    """
    buf = bytearray(pages * PAGE)
    buf[::PAGE] = b"\x01" * pages
    r, w = os.pipe()
    try:
        pid = os.fork()
        if pid == 0:
            try:
                t0 = time.perf_counter()
                buf[::PAGE] = b"\x02" * pages  # one write per page: one copy-on-write fault each
                os.write(w, repr(time.perf_counter() - t0).encode())
            finally:
                os._exit(0)
        os.close(w)
        w = -1
        cow = float(os.read(r, 64).decode())
        os.waitpid(pid, 0)
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
    m = mmap.mmap(-1, pages * PAGE)
    try:
        t0 = time.perf_counter()
        for off in range(0, pages * PAGE, PAGE):
            m[off] = 1
        first = time.perf_counter() - t0
    finally:
        m.close()
    return {"cow": cow / pages * 1e6, "first_touch": first / pages * 1e6}
