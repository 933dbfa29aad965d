"""Mutators: a byte mutator in pure Python, and the structure-aware mutator of apply_records requests.

:class:`ByteMutator` is what the tests (and ``scripts/fuzz --engine random``) use instead of libFuzzer's
``atheris.Mutate``: bit flips, interesting values, byte runs, insertions, deletions, copies. Both have the
signature ``(data, max_size) -> bytes``.

:func:`mutate_apply` edits one part of an :class:`~fuzzing.inputs.ApplyInput` with such a byte mutator
(so coverage guidance still steers the bytes) and puts the input back together:

- a record's bytes (CRC fixed afterwards unless the input says otherwise), or only its payload;
- a decoded record's main data, a block's data, block number, fork flags or the info byte, re-encoded
  (:mod:`fuzzing.records`): the record still decodes, so the change reaches the redo routine;
- the base page: any bytes, a header field, a line pointer or the special space; or no base page;
- the record list: drop, duplicate or swap records, toggle a record's CRC fixing, toggle wal_log_hints.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable

from walredo_template.pg.errors import RedoError
from walredo_template.pg.xlogrecord import decode_record

from .inputs import decode_apply, encode_apply
from .records import encode_record

ByteMutate = Callable[[bytes, int], bytes]

_INTERESTING16 = (0, 1, 8, 16, 23, 24, 0x7F, 0x80, 0xFF, 0x100, 0x1000, 0x1FF8, 0x1FFF, 0x2000, 0x2001,
                  0x7FFF, 0x8000, 0xFFFF)


class ByteMutator:
    """A small havoc mutator (libFuzzer's mutation kinds, without coverage feedback); deterministic for a
    given ``random.Random``."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def __call__(self, data: bytes, max_size: int) -> bytes:
        rng = self.rng
        buf = bytearray(data)
        for _ in range(1 + rng.randrange(4)):
            op = rng.randrange(8)
            n = len(buf)
            if op == 0 and n:
                i = rng.randrange(n)
                buf[i] ^= 1 << rng.randrange(8)
            elif op == 1 and n:
                buf[rng.randrange(n)] = rng.randrange(256)
            elif op == 2 and n >= 2:
                i = rng.randrange(n - 1)
                struct.pack_into("<H", buf, i, rng.choice(_INTERESTING16))
            elif op == 3 and n >= 4:
                i = rng.randrange(n - 3)
                v = struct.unpack_from("<I", buf, i)[0]
                struct.pack_into("<I", buf, i, (v + rng.choice((-1, 1, -8, 8, 1 << 16, -(1 << 16)))) & 0xFFFFFFFF)
            elif op == 4:
                i = rng.randrange(n + 1)
                buf[i:i] = bytes([rng.randrange(256)]) * (1 + rng.randrange(8))
            elif op == 5 and n:
                i = rng.randrange(n)
                del buf[i:i + 1 + rng.randrange(min(16, n - i))]
            elif op == 6 and n >= 2:
                i, j = rng.randrange(n), rng.randrange(n)
                k = 1 + rng.randrange(min(32, n - max(i, j)))
                buf[j:j + k] = buf[i:i + k]
            elif op == 7 and n:
                i = rng.randrange(n)
                buf[i:i + 4] = bytes(min(4, n - i))
        return bytes(buf[:max_size])


def mutate_record_fields(raw: bytes, mutate: ByteMutate, rng: random.Random) -> bytes | None:
    """A decoded-and-re-encoded variant of ``raw`` with one field changed; None if ``raw`` does not
    decode (the caller then mutates bytes)."""
    try:
        rec = decode_record(raw, verify_crc=False)
    except RedoError:
        return None
    choice = rng.randrange(5)
    if choice == 0 or not rec.blocks:
        rec = rec._replace(main_data=mutate(rec.main_data, max(64, 2 * len(rec.main_data))))
    elif choice == 1:
        rec = rec._replace(info=rng.randrange(256) if rng.randrange(4) == 0 else rec.info ^ (0x10 << rng.randrange(4)))
    else:
        block_id = rng.choice(sorted(rec.blocks))
        b = rec.blocks[block_id]
        if choice == 2:
            data = mutate(b.data or b"", max(64, 2 * len(b.data or b"")))
            b = b._replace(data=data or None, fork_flags=(b.fork_flags | 0x20) if data else (b.fork_flags & ~0x20))
        elif choice == 3:
            b = b._replace(blkno=b.blkno ^ (1 << rng.randrange(3)) if rng.randrange(2) else rng.randrange(8))
        else:
            b = b._replace(fork_flags=b.fork_flags ^ (1 << rng.randrange(8)))
        rec = rec._replace(blocks={**rec.blocks, block_id: b})
    return encode_record(rec)


def _mutate_page(page: bytes, mutate: ByteMutate, rng: random.Random) -> bytes:
    choice = rng.randrange(4)
    buf = bytearray(page)
    if choice == 0 or len(buf) < 8192:
        return mutate(page, 8192)
    if choice == 1:  # a header field (pd_flags .. pd_prune_xid)
        off = rng.choice((10, 12, 14, 16, 18))
        struct.pack_into("<H", buf, off, rng.choice(_INTERESTING16) if rng.randrange(2) else rng.randrange(1 << 16))
    elif choice == 2:  # one line pointer
        lower = struct.unpack_from("<H", buf, 12)[0]
        n = max(1, (min(lower, 8192) - 24) // 4)
        off = 24 + 4 * rng.randrange(n)
        buf[off:off + 4] = mutate(bytes(buf[off:off + 4]), 4).ljust(4, b"\0")
    else:  # the special space (page type and flags)
        special = min(struct.unpack_from("<H", buf, 16)[0], 8184)
        buf[special:] = mutate(bytes(buf[special:]), 8192 - special).ljust(8192 - special, b"\0")
    return bytes(buf)


def mutate_apply(data: bytes, max_size: int, mutate: ByteMutate, rng: random.Random) -> bytes:
    """A mutant of the apply_records input ``data`` (module docstring); bytes-mutated when it is not one."""
    inp = decode_apply(data)
    if inp is None:
        return mutate(data, max_size)
    records = list(inp.records)
    choice = rng.randrange(10)
    if records and choice <= 4:
        i = rng.randrange(len(records))
        lsn, raw, fix = records[i]
        if choice <= 1:
            new = mutate_record_fields(raw, mutate, rng) or mutate(raw, max(64, 2 * len(raw)))
        elif choice == 2 and len(raw) > 24:
            new = raw[:24] + mutate(raw[24:], max(64, 2 * len(raw)))
        else:
            new = mutate(raw, max(64, 2 * len(raw)))
        records[i] = (lsn, new, fix)
    elif choice <= 7:
        if inp.base is None or rng.randrange(16) == 0:
            inp.base = None if inp.base is not None else bytes(8192)
        else:
            inp.base = _mutate_page(inp.base, mutate, rng)
    elif choice == 8 and records:
        i = rng.randrange(len(records))
        op = rng.randrange(4)
        if op == 0 and len(records) > 1:
            del records[i]
        elif op == 1 and len(records) < 8:
            records.insert(i, records[i])
        elif op == 2:
            j = rng.randrange(len(records))
            records[i], records[j] = records[j], records[i]
        else:
            lsn, raw, fix = records[i]
            records[i] = (lsn, raw, not fix)
    else:
        inp.wal_log_hints = not inp.wal_log_hints
    inp.records = records
    out = encode_apply(inp)
    return out if len(out) <= max_size else data
