"""Re-encode decoded PostgreSQL 15 WAL records: the inverse of ``walredo_template.pg.xlogrecord``.

A mutation that edits a field of a decoded record (a block's data, the main data, a block number, the
info byte) and re-encodes it yields a record that still decodes, so the mutation reaches redo instead of
stopping at the CRC or the fragment checks. Layout written (PostgreSQL's order, see xlogrecord.py): the
24-byte header, one block header per block (image header; relation unless SAME_REL; block number), the
origin and top-level-xid fragments, the main-data header; then each block's image and data, then the main
data. :func:`finish_record` sets ``xl_tot_len`` and the CRC (as ``tests/recordbuilder.finish_record``).
"""

from __future__ import annotations

import struct

from walredo_template.pg.crc32c import crc32c
from walredo_template.pg.xlogrecord import (
    BKPBLOCK_HAS_IMAGE,
    BKPBLOCK_SAME_REL,
    BKPIMAGE_COMPRESSED,
    BKPIMAGE_HAS_HOLE,
    BlockRef,
    DecodedRecord,
    decode_record,
)

_HDR = struct.Struct("<IIQBBxxI")


def finish_record(raw: bytes | bytearray) -> bytes:
    """Set ``xl_tot_len`` to the record's length and recompute its CRC-32C (records of >= 24 bytes)."""
    body = bytearray(raw)
    struct.pack_into("<I", body, 0, len(body))
    struct.pack_into("<I", body, 20, crc32c(bytes(body[:20]), crc32c(bytes(body[24:]))))
    return bytes(body)


def encode_record(rec: DecodedRecord) -> bytes:
    """The raw bytes of ``rec`` (CRC included). Block fields are written as they are, so a caller can make
    records the decoder refuses (e.g. data without BKPBLOCK_HAS_DATA); lengths come from the payloads."""
    head = bytearray()
    payload = bytearray()
    for block_id in sorted(rec.blocks):
        b = rec.blocks[block_id]
        data = b.data or b""
        head += struct.pack("<BBH", block_id & 0xFF, b.fork_flags & 0xFF, len(data) & 0xFFFF)
        if b.fork_flags & BKPBLOCK_HAS_IMAGE:
            bimg = b.bimg or b""
            head += struct.pack("<HHB", len(bimg) & 0xFFFF, b.hole_offset & 0xFFFF, b.bimg_info & 0xFF)
            if b.bimg_info & BKPIMAGE_COMPRESSED and b.bimg_info & BKPIMAGE_HAS_HOLE:
                head += struct.pack("<H", b.hole_length & 0xFFFF)
            payload += bimg
        if not b.fork_flags & BKPBLOCK_SAME_REL:
            head += struct.pack("<III", b.spcnode & 0xFFFFFFFF, b.dbnode & 0xFFFFFFFF, b.relnode & 0xFFFFFFFF)
        head += struct.pack("<I", b.blkno & 0xFFFFFFFF)
        payload += data
    if rec.origin is not None:
        head += struct.pack("<BH", 253, rec.origin & 0xFFFF)
    if rec.toplevel_xid is not None:
        head += struct.pack("<BI", 252, rec.toplevel_xid & 0xFFFFFFFF)
    if rec.main_data:
        if len(rec.main_data) < 256:
            head += struct.pack("<BB", 255, len(rec.main_data))
        else:
            head += struct.pack("<BI", 254, len(rec.main_data))
        payload += rec.main_data
    hdr = _HDR.pack(0, rec.xid & 0xFFFFFFFF, rec.prev & (2**64 - 1), rec.info & 0xFF, rec.rmid & 0xFF, 0)
    return finish_record(hdr + bytes(head) + bytes(payload))


def without_check_images(block: BlockRef) -> BlockRef:
    """``block`` without its wal_consistency_checking image (one not to apply): redo never reads it."""
    if not block.has_image or block.apply_image:
        return block
    return block._replace(fork_flags=block.fork_flags & ~BKPBLOCK_HAS_IMAGE, has_image=False, bimg=None,
                          hole_offset=0, hole_length=0, bimg_info=0)


def strip_check_images(raw: bytes) -> bytes:
    """``raw`` re-encoded without its consistency-check images (what redo sees, minus up to 8 KiB a block):
    keeps seeds small and mutations on the bytes redo reads. Raises ``InvalidRecord`` like decode_record."""
    rec = decode_record(raw, verify_crc=False)
    if not any(b.has_image and not b.apply_image for b in rec.blocks.values()):
        return raw
    return encode_record(rec._replace(blocks={k: without_check_images(b) for k, b in rec.blocks.items()}))
