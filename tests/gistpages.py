"""Hand-made GiST pages and records for tests/test_gist.py and tests/test_gist_mutations.py.
"""

from __future__ import annotations

import struct

from recordbuilder import Block, build_record

from walredo_template import BufferTag
from walredo_template.pg import gist
from walredo_template.pg import indexpage as IP
from walredo_template.pg import page as P
from walredo_template.redo import apply_records

LSN = 0x5000000
TAG = BufferTag(1663, 5, 40000, 0, 7)


def block_tag(blkno: int) -> BufferTag:
    return TAG._replace(blknum=blkno)


def itup(n: int, payload_len: int = 16) -> bytes:
    """A GiST IndexTuple: t_tid (block n, offset 1), t_info = size, then payload bytes."""
    size = 8 + payload_len
    return struct.pack("<HHHH", n >> 16, n & 0xFFFF, 1, size) + bytes((n + i) & 0xFF for i in range(payload_len))


def gist_page(tuples: list[bytes], flags: int = gist.F_LEAF, lsn: int = 0x100, nsn: int = 0,
              rightlink: int = gist.INVALID_BLOCK) -> bytes:
    page = bytearray(P.BLCKSZ)
    gist.init_page(page, flags)
    for i, t in enumerate(tuples, 1):
        IP.add_item(page, t, i)
    struct.pack_into("<II", page, gist.MAX_SPECIAL, nsn >> 32, nsn & 0xFFFFFFFF)
    struct.pack_into("<I", page, gist.MAX_SPECIAL + 8, rightlink)
    P.set_lsn(page, lsn)
    return bytes(page)


def opaque(page: bytes) -> tuple[int, int, int, int]:
    """(nsn, rightlink, flags, page id)."""
    hi, lo, rl, flags, pid = struct.unpack_from("<IIIHH", page, min(P.get_special(page), gist.MAX_SPECIAL))
    return hi << 32 | lo, rl, flags, pid


def tuples_of(page: bytes) -> list[bytes]:
    return [bytes(IP.item(page, i)) for i in range(1, IP.items(page) + 1)]


def redo(tag: BufferTag, base: bytes | None, info: int, blocks: list[Block], main: bytes,
         lsn: int = LSN) -> bytes:
    return apply_records(tag, base, [(lsn, build_record(gist.RM_ID, info, blocks, main))])


def update_main(ndel: int, nins: int) -> bytes:
    return struct.pack("<HH", ndel, nins)


def split_main(origrlink: int, orignsn: int, origleaf: bool, npage: int, markfollowright: bool) -> bytes:
    return struct.pack("<I4xQBxHB3x", origrlink, orignsn, origleaf, npage, markfollowright)


def split_data(tuples: list[bytes]) -> bytes:
    return struct.pack("<i", len(tuples)) + b"".join(tuples)


def assert_sane(page: bytes) -> None:
    """check_page, and every line pointer with storage inside the tuple space (but on a deleted page,
    whose "line pointers" are the deleteXid)."""
    P.check_page(page)
    if opaque(page)[2] & gist.F_DELETED:
        assert P.get_lower(page) <= gist.DELETED_CONTENTS_END
        return
    upper = P.get_upper(page)
    for i in range(1, IP.items(page) + 1):
        w = struct.unpack_from("<I", page, 24 + 4 * (i - 1))[0]
        off, length = w & 0x7FFF, w >> 17
        if length:
            assert upper <= off and off + length <= P.BLCKSZ, (i, off, length)
