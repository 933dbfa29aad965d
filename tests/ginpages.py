"""Hand-made GIN pages and records for tests/test_gin.py and tests/test_gin_posting.py.
"""

from __future__ import annotations

import struct

from recordbuilder import Block, build_record

from walredo_template import BufferTag
from walredo_template.pg import gin
from walredo_template.pg import gin_posting as GP
from walredo_template.pg import indexpage as IP
from walredo_template.pg import page as P
from walredo_template.redo import apply_records

RM = gin.RM_ID


SPC, DB, REL = 1663, 5, 80000
META = BufferTag(SPC, DB, REL, 0, 0)
PAGE = BufferTag(SPC, DB, REL, 0, 1)
PAGE2 = BufferTag(SPC, DB, REL, 0, 2)
PAGE3 = BufferTag(SPC, DB, REL, 0, 3)
LSN0 = 0x1000
LSN = 0x2000
INVALID = 0xFFFFFFFF


def gpage(flags: int, lsn: int = LSN0, rightlink: int = INVALID, maxoff: int = 0) -> bytearray:
    page = bytearray(P.BLCKSZ)
    P.page_init(page, 8)
    struct.pack_into("<IHH", page, 8184, rightlink, maxoff, flags)
    P.set_lsn(page, lsn)
    return page


def opaque(page: bytes | bytearray) -> tuple[int, int, int]:
    return struct.unpack_from("<IHH", page, 8184)


def itup(key: int, size: int = 16, tid: tuple[int, int] = (0, 0)) -> bytes:
    """An index tuple of ``size`` bytes (t_tid = tid, t_info = size) with a recognizable body."""
    return struct.pack("<HHHH", tid[0] >> 16, tid[0] & 0xFFFF, tid[1], size) + bytes([key & 0xFF]) * (size - 8)


def entry_page(*tuples: bytes, flags: int = gin.GIN_LEAF, lsn: int = LSN0) -> bytearray:
    page = gpage(flags, lsn)
    for t in tuples:
        IP.add_item(page, t, IP.items(page) + 1)
    return page


def items_of(page: bytes | bytearray) -> list[bytes]:
    return [bytes(IP.item(page, i)) for i in range(1, IP.items(page) + 1)]


def tid(blk: int, off: int) -> int:
    return blk << 16 | off


def leaf_page(*segments: list[int], lsn: int = LSN0) -> bytearray:
    page = gpage(gin.GIN_DATA | gin.GIN_LEAF | gin.GIN_COMPRESSED, lsn)
    data = b"".join(GP.encode_segment(s)[0] for s in segments)
    page[32:32 + len(data)] = data
    struct.pack_into("<H", page, 12, 32 + len(data))
    return page


def leaf_items(page: bytes | bytearray) -> list[list[int]]:
    out, pos, end = [], 32, P.get_lower(page)
    buf = bytes(page)
    while pos < end:
        out.append(GP.decode_segment(buf, pos))
        pos += GP.segment_size(buf, pos, end)
    return out


def posting_item(child: int, key: tuple[int, int]) -> bytes:
    return struct.pack("<HHHHH", child >> 16, child & 0xFFFF, key[0] >> 16, key[0] & 0xFFFF, key[1])


def internal_data_page(*items: bytes, lsn: int = LSN0) -> bytearray:
    page = gpage(gin.GIN_DATA, lsn, maxoff=len(items))
    data = b"".join(items)
    page[32:32 + len(data)] = data
    struct.pack_into("<H", page, 12, 32 + len(data))
    return page


def redo(tag: BufferTag, base: bytes | bytearray | None, info: int, blocks: list[Block], main: bytes,
         lsn: int = LSN) -> bytearray:
    raw = build_record(RM, info, blocks, main)
    return bytearray(apply_records(tag, None if base is None else bytes(base), [(lsn, raw)]))


def insert_main(flags: int, left: int = 0, right: int = 0) -> bytes:
    if flags & gin.GIN_INSERT_ISLEAF:
        return struct.pack("<H", flags)
    return struct.pack("<HHHHH", flags, left >> 16, left & 0xFFFF, right >> 16, right & 0xFFFF)


def actions(*acts: tuple[int, int, bytes]) -> bytes:
    return struct.pack("<H", len(acts)) + b"".join(struct.pack("<BB", s, a) + d for s, a, d in acts)


def additems(*tids: int) -> bytes:
    return struct.pack("<H", len(tids)) + b"".join(struct.pack("<HHH", t >> 32, (t >> 16) & 0xFFFF, t & 0xFFFF)
                                                   for t in tids)
