"""Build raw PostgreSQL 15 WAL records by hand, for tests of redo code paths PostgreSQL's workloads never
produce and for mutations that must still decode (the CRC is recomputed).

    raw = build_record(RM_BTREE_ID, 0x00, [Block(0, tag, data=b"...")], main_data=b"...")
    apply_records(tag, page, [(lsn, raw)])

Layout written (see walredo_template/pg/xlogrecord.py): the 24-byte header, one block header per block
(with an uncompressed image header when ``image`` is given; SAME_REL when a block names the relation of
the block before it), then the main-data header; then for each block its image and data, then the main data.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from walredo_template import BufferTag
from walredo_template.pg.crc32c import crc32c

_HDR = struct.Struct("<IIQBBxxI")
BKPBLOCK_HAS_IMAGE = 0x10
BKPBLOCK_HAS_DATA = 0x20
BKPBLOCK_WILL_INIT = 0x40
BKPBLOCK_SAME_REL = 0x80
BKPIMAGE_APPLY = 0x02


@dataclass(frozen=True)
class Block:
    """One block reference: ``image`` is an 8192-byte page stored whole (no hole, uncompressed), flagged
    for apply unless ``apply_image`` is False (a consistency-check image)."""

    block_id: int
    tag: BufferTag
    data: bytes | None = None
    will_init: bool = False
    image: bytes | None = None
    apply_image: bool = True


def build_record(rmid: int, info: int, blocks: list[Block] | tuple[Block, ...] = (), main_data: bytes = b"",
                 *, xid: int = 1000, prev: int = 0x1000000) -> bytes:
    """The raw record bytes, CRC included."""
    head = bytearray()
    payload = bytearray()
    prev_rel: tuple[int, int, int] | None = None
    for b in blocks:
        flags = b.tag.forknum
        if b.data is not None:
            flags |= BKPBLOCK_HAS_DATA
        if b.will_init:
            flags |= BKPBLOCK_WILL_INIT
        if b.image is not None:
            flags |= BKPBLOCK_HAS_IMAGE
        rel = (b.tag.spcnode, b.tag.dbnode, b.tag.relnode)
        if rel == prev_rel:
            flags |= BKPBLOCK_SAME_REL
        head += struct.pack("<BBH", b.block_id, flags, len(b.data or b""))
        if b.image is not None:
            assert len(b.image) == 8192
            head += struct.pack("<HHB", 8192, 0, BKPIMAGE_APPLY if b.apply_image else 0)
            payload += b.image
        if rel != prev_rel:
            head += struct.pack("<III", *rel)
        head += struct.pack("<I", b.tag.blknum)
        prev_rel = rel
        payload += b.data or b""
    if main_data:
        if len(main_data) < 256:
            head += struct.pack("<BB", 255, len(main_data))
        else:
            head += struct.pack("<BI", 254, len(main_data))
        payload += main_data
    return finish_record(_HDR.pack(0, xid, prev, info, rmid, 0) + bytes(head) + bytes(payload))


def finish_record(raw: bytes | bytearray) -> bytes:
    """Set tot_len to the record's length and recompute the CRC (after a mutation, so it still decodes)."""
    body = bytearray(raw)
    struct.pack_into("<I", body, 0, len(body))
    struct.pack_into("<I", body, 20, crc32c(bytes(body[:20]), crc32c(bytes(body[24:]))))
    return bytes(body)
