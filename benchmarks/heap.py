"""A parent heap of a given size with every page touched, as a long-running server's heap would be.

Touched matters: ``fork()`` copies the page tables of *mapped* memory, so an allocated-but-untouched
buffer would make forking look cheaper than it is for a real server.
"""

from __future__ import annotations

import mmap

PAGE = mmap.PAGESIZE


def touched_heap(gib: float) -> bytearray | None:
    """Allocate ``gib`` GiB in this process and write one byte in every page; ``None`` for 0.

    Raises ``MemoryError`` when the machine cannot hold it. Drop the reference to free it (CPython
    returns a buffer this large to the kernel at once).
    """
    size = int(gib * 2**30)
    if size <= 0:
        return None
    buf = bytearray(size)
    # One slice assignment writes byte 0 of every page: each page is faulted in and backed by RAM.
    buf[::PAGE] = b"\x01" * len(range(0, size, PAGE))
    return buf
