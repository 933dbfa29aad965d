"""Hand-made Hash pages and records for tests/test_hash.py and tests/test_hash_split.py.
"""

from __future__ import annotations

import struct

from recordbuilder import Block, build_record

from walredo_template import BufferTag
from walredo_template.pg import hash as hashredo
from walredo_template.pg import hash_page as H
from walredo_template.pg import indexpage as IP
from walredo_template.pg import page as P
from walredo_template.redo import apply_records

RM = hashredo.RM_ID


SPC, DB, REL = 1663, 5, 71000
META = BufferTag(SPC, DB, REL, 0, 0)
BUCKET = BufferTag(SPC, DB, REL, 0, 1)
BUCKET2 = BufferTag(SPC, DB, REL, 0, 2)
BITMAP = BufferTag(SPC, DB, REL, 0, 3)
OVFL = BufferTag(SPC, DB, REL, 0, 4)
OVFL2 = BufferTag(SPC, DB, REL, 0, 5)
NEWMAP = BufferTag(SPC, DB, REL, 0, 6)
OTHER = BufferTag(SPC, DB, REL, 0, 7)
LSN0 = 0x1000
LSN = 0x2000
INV = 0xFFFFFFFF


def itup(hashcode: int, heap_off: int = 1) -> bytes:
    """A hash index tuple: t_tid (block 0, heap_off), t_info = 16, the hash code, MAXALIGN padding."""
    return struct.pack("<HHHHI", 0, 7, heap_off, 16, hashcode) + b"\x00" * 4


def bucket_page(*codes: int, flag: int = H.LH_BUCKET_PAGE, prev: int = 3, nxt: int = INV, bucket: int = 0,
                lsn: int = LSN0) -> bytearray:
    page = bytearray(P.BLCKSZ)
    H.init_page(page, prev, nxt, bucket, flag)
    for i, c in enumerate(codes, 1):
        IP.add_item(page, itup(c, i), i)
    P.set_lsn(page, lsn)
    return page


def meta_page(num_tuples: float = 0.0, lsn: int = LSN0) -> bytearray:
    page = bytearray(P.BLCKSZ)
    H.init_metapage(page, num_tuples, 450, 307)
    P.set_lsn(page, lsn)
    return page


def bitmap_page(bmsize: int = 4096, lsn: int = LSN0) -> bytearray:
    page = bytearray(P.BLCKSZ)
    H.init_bitmap_page(page, bmsize)
    P.set_lsn(page, lsn)
    return page


def redo(tag: BufferTag, base: bytes | bytearray | None, info: int, blocks: list[Block], main: bytes,
         lsn: int = LSN) -> bytearray:
    raw = build_record(RM, info, blocks, main)
    return bytearray(apply_records(tag, None if base is None else bytes(base), [(lsn, raw)]))


def opaque(page: bytes | bytearray) -> tuple[int, int, int, int, int]:
    return H.OPAQUE.unpack_from(page, H.OPAQUE_OFF)  # type: ignore[return-value]


def meta_head(page: bytes | bytearray) -> tuple:
    return H.META_HEAD.unpack_from(page, H.M_MAGIC)


def codes(page: bytes | bytearray) -> list[int]:
    return [struct.unpack_from("<I", IP.item(page, i), 8)[0] for i in range(1, IP.items(page) + 1)]


def u32(page: bytes | bytearray, off: int) -> int:
    return struct.unpack_from("<I", page, off)[0]


def ntuples(page: bytes | bytearray) -> float:
    return struct.unpack_from("<d", page, H.M_NTUPLES)[0]


def moved_tuples(offsets: list[int], tuples: list[bytes]) -> bytes:
    return struct.pack(f"<{len(offsets)}H", *offsets) + b"".join(tuples)


def squeeze_record(prim_same: int, prev_same: int, ntups: int = 1, next_page: bool = True,
             image: bytes | None = None) -> tuple[list[Block], bytes]:
    blocks = [Block(0, BUCKET, image=image)] if not prim_same else []
    blocks.append(Block(1, OVFL, data=moved_tuples([2], [itup(15)]) if ntups else None))
    blocks.append(Block(2, OVFL2))
    if not prev_same:
        blocks.append(Block(3, BUCKET2))
    if next_page:
        blocks.append(Block(4, NEWMAP))
    blocks += [Block(5, BITMAP, data=struct.pack("<I", 9)), Block(6, META, data=struct.pack("<I", 9))]
    return blocks, struct.pack("<IIHBB", BUCKET2.blknum, NEWMAP.blknum, ntups, prim_same, prev_same)
