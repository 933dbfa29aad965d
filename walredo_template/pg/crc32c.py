"""CRC-32C (Castagnoli), the checksum PostgreSQL puts on every WAL record and WAL page-independent data.

``crc32c(data, crc=0)`` returns the finished CRC of ``data``; passing a previous finished value as ``crc``
continues it, so ``crc32c(b, crc32c(a)) == crc32c(a + b)`` — that is how a WAL record's CRC (payload first,
then the first 20 header bytes) is computed without concatenating.

The optional ``crc32c`` package (hardware-accelerated, a C extension) is used when installed; otherwise a
pure-Python table-driven implementation runs. Both give identical results; the pure one is roughly a
hundred times slower, which matters only for bulk WAL decoding with CRC verification.
"""

from __future__ import annotations

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


crc32c: _Crc32c
try:  # optional speed-up: same function, in C with SSE4.2/ARMv8 CRC instructions where available
    from crc32c import crc32c as _crc32c_native
except ImportError:  # pragma: no cover - depends on the environment
    crc32c = crc32c_pure
    NATIVE = False
else:
    # The C function itself (same signature, same continuation semantics): no Python frame per call.
    crc32c = _crc32c_native
    NATIVE = True

__all__ = ["crc32c", "crc32c_pure", "NATIVE"]
