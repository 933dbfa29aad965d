"""CRC-32C (Castagnoli), the checksum PostgreSQL puts on every WAL record and WAL page-independent data.

``crc32c(data, crc=0)`` returns the finished CRC of ``data``; passing a previous finished value as ``crc``
continues it, so ``crc32c(b, crc32c(a)) == crc32c(a + b)`` — that is how a WAL record's CRC (payload first,
then the first 20 header bytes) is computed without concatenating.

The optional ``crc32c`` package (hardware-accelerated, a C extension) is used when installed — its extension
module alone, loaded without the package's ``__init__`` (see :func:`_load_native`); otherwise a pure-Python
table-driven implementation runs. Both give identical results; the pure one is roughly a
hundred times slower, which matters only for bulk WAL decoding with CRC verification.
"""

from __future__ import annotations

import importlib.machinery
import os
from typing import Protocol

_POLY = 0x82F63B78  # reflected Castagnoli polynomial


def _make_table() -> tuple[int, ...]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ _POLY if c & 1 else c >> 1
        table.append(c)
    return tuple(table)


_TABLE = _make_table()


def crc32c_pure(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """Pure-Python CRC-32C of ``data``, continuing from the finished value ``crc``. Never raises on bytes."""
    table = _TABLE
    c = crc ^ 0xFFFFFFFF
    for b in bytes(data):
        c = table[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


class _Crc32c(Protocol):
    """What both implementations accept: ``crc32c(data, crc=0)``, the previous value positionally."""

    def __call__(self, data: bytes | bytearray | memoryview, crc: int = 0, /) -> int: ...


def _load_native() -> _Crc32c:
    """The ``crc32c`` package's C function, loaded from its extension module alone.

    Not ``import crc32c``: the package's ``__init__`` imports importlib.metadata, argparse, email, zipfile
    and more (~60 modules, ~2 MiB, for its version string and command line), all of which the template would
    then carry and every child would share and partly copy. Errors: ``ImportError`` when the package or a
    loadable extension is missing."""
    spec = importlib.machinery.PathFinder.find_spec("crc32c")  # finds the package without running it
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("no crc32c package")
    for directory in spec.submodule_search_locations:
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            path = os.path.join(directory, "_crc32c" + suffix)
            if not os.path.exists(path):
                continue
            loader = importlib.machinery.ExtensionFileLoader("crc32c._crc32c", path)
            module = loader.create_module(importlib.machinery.ModuleSpec("crc32c._crc32c", loader, origin=path))
            loader.exec_module(module)
            native: _Crc32c = module.crc32c
            return native
    raise ImportError("the crc32c package has no _crc32c extension")


crc32c: _Crc32c
try:  # optional speed-up: same function, in C with SSE4.2/ARMv8 CRC instructions where available
    _crc32c_native = _load_native()
except ImportError:  # pragma: no cover - depends on the environment
    crc32c = crc32c_pure
    NATIVE = False
else:
    # The C function itself (same signature, same continuation semantics): no Python frame per call.
    crc32c = _crc32c_native
    NATIVE = True

__all__ = ["crc32c", "crc32c_pure", "NATIVE"]
