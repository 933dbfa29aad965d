"""Decoding of PostgreSQL 15 WAL records (``XLogRecord``) and restoring their full-page images.

A record as it sits in WAL (``tot_len`` bytes)::

    XLogRecord header, 24 bytes (little-endian on this platform, as PostgreSQL writes it):
      u32 xl_tot_len | u32 xl_xid | u64 xl_prev | u8 xl_info | u8 xl_rmid | 2 pad | u32 xl_crc
    fragment headers, in this order:
      block references (block_id 0..32, strictly increasing):
        u8 id | u8 fork_flags | u16 data_length
        [if fork_flags & 0x10 HAS_IMAGE]  u16 length | u16 hole_offset | u8 bimg_info
                                          [u16 hole_length if compressed and bimg_info & HAS_HOLE]
        [unless fork_flags & 0x80 SAME_REL] u32 spcNode | u32 dbNode | u32 relNode
        u32 block number
      253 origin: u16           252 top-level xid: u32
      255 short main data: u8 length   |   254 long main data: u32 length   (always last)
    payload: for each block in id order its image then its data; then the main data.

The CRC-32C covers the payload and header fragments (everything after the 24-byte header), then the
first 20 header bytes. ``decode_record`` checks every length against the record so that malformed input
raises :class:`InvalidRecord`, never ``struct.error``/``IndexError``.

Image restore (:meth:`BlockRef.image`): the stored bytes are the page with the "hole" (the free space
between pd_lower and pd_upper) cut out, optionally compressed with pglz, lz4 or zstd (``bimg_info``
bits 0x04/0x08/0x10). lz4 and zstd need the optional ``lz4`` / ``zstandard`` packages; without them
:class:`MissingCompressionLibrary` names the package.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from .. import BufferTag
from .crc32c import crc32c
from .errors import InvalidRecord, MissingCompressionLibrary
from .page import BLCKSZ, U16, U32, ZERO_PAGE
from .pglz import pglz_decompress

SIZE_OF_XLOG_RECORD = 24

# rmgr ids used by the heap redo (src/include/access/rmgrlist.h)
RM_XLOG_ID = 0
RM_HEAP2_ID = 9
RM_HEAP_ID = 10

# fragment ids (xlogrecord.h)
XLR_MAX_BLOCK_ID = 32
XLR_BLOCK_ID_DATA_SHORT = 255
XLR_BLOCK_ID_DATA_LONG = 254
XLR_BLOCK_ID_ORIGIN = 253
XLR_BLOCK_ID_TOPLEVEL_XID = 252

# fork_flags bits
BKPBLOCK_FORK_MASK = 0x0F
BKPBLOCK_HAS_IMAGE = 0x10
BKPBLOCK_HAS_DATA = 0x20
BKPBLOCK_WILL_INIT = 0x40
BKPBLOCK_SAME_REL = 0x80

# bimg_info bits (PostgreSQL 15)
BKPIMAGE_HAS_HOLE = 0x01
BKPIMAGE_APPLY = 0x02
BKPIMAGE_COMPRESS_PGLZ = 0x04
BKPIMAGE_COMPRESS_LZ4 = 0x08
BKPIMAGE_COMPRESS_ZSTD = 0x10
BKPIMAGE_COMPRESSED = BKPIMAGE_COMPRESS_PGLZ | BKPIMAGE_COMPRESS_LZ4 | BKPIMAGE_COMPRESS_ZSTD

MAX_FORKNUM = 3  # main, fsm, vm, init

_HDR = struct.Struct("<IIQBBxxI")
_BLK_HDR = struct.Struct("<BH")  # fork_flags, data_length (after the id byte)
_IMG_HDR = struct.Struct("<HHB")  # length, hole_offset, bimg_info
_RNODE_BLK = struct.Struct("<IIII")  # spc, db, rel, blkno
# fast paths of decode_record, from offset 25 (block 0's fork_flags):
# block 0: fork_flags, data_length, spc, db, rel, blkno; 0xFF; main data length
_FAST1 = struct.Struct("<BHIIIIxB")
# ... then block 1 (id byte read as B): fork_flags, data_length, blkno (SAME_REL); 0xFF; main data length
_FAST2 = struct.Struct("<BHIIIIxBHIxB")


class BlockRef(NamedTuple):
    """One block reference of a record: which page, and the image and/or data the record carries for it.

    Immutable. A NamedTuple rather than a frozen dataclass because :func:`decode_record` builds one per
    block of every record, and ``tuple.__new__`` is several times cheaper than a frozen dataclass's
    constructor (that was the largest cost of decoding); attribute reads are just as fast.
    """

    block_id: int
    forknum: int
    spcnode: int
    dbnode: int
    relnode: int
    blkno: int
    fork_flags: int  # the raw byte
    will_init: bool  # BKPBLOCK_WILL_INIT: redo initializes the page, the old content is irrelevant
    has_image: bool
    apply_image: bool  # False for wal_consistency_checking images: an answer key, not to be applied
    data: bytes | None  # block data when BKPBLOCK_HAS_DATA, else None
    bimg: bytes | None  # the image bytes as stored (hole cut out, maybe compressed)
    hole_offset: int
    hole_length: int
    bimg_info: int

    @property
    def tag(self) -> BufferTag:
        """The page this reference names."""
        return BufferTag(self.spcnode, self.dbnode, self.relnode, self.forknum, self.blkno)

    def image(self) -> bytes:
        """The full 8192-byte page image: decompressed, hole filled with zeros.

        Raises :class:`InvalidRecord` if the reference has no image or the image is corrupt (decompressed
        size wrong, hole out of range), :class:`MissingCompressionLibrary` if it is lz4/zstd-compressed and
        the ``lz4``/``zstandard`` package is not installed.
        """
        bimg = self.bimg
        if bimg is None:
            raise InvalidRecord(f"block {self.block_id} has no image")
        info = self.bimg_info
        hole_offset = self.hole_offset
        hole_length = self.hole_length
        want = BLCKSZ - hole_length
        if hole_offset + hole_length > BLCKSZ:
            raise InvalidRecord(f"image hole {hole_offset}+{hole_length} beyond the page")
        if info & BKPIMAGE_COMPRESSED:
            body = _decompress(bimg, info, want)
        else:
            body = bimg
        if len(body) != want:
            raise InvalidRecord(f"image of block {self.block_id} has {len(body)} bytes, expected {want}")
        if hole_length == 0:
            return bytes(body)
        return b"".join((body[:hole_offset], ZERO_PAGE[:hole_length], body[hole_offset:]))


def _decompress(bimg: bytes, info: int, want: int) -> bytes:
    if info & BKPIMAGE_COMPRESS_PGLZ:
        return pglz_decompress(bimg, want, check_complete=True)
    if info & BKPIMAGE_COMPRESS_LZ4:
        try:
            import lz4.block
        except ImportError as e:
            raise MissingCompressionLibrary(
                "image is lz4-compressed; install the 'lz4' package (extra: compression)"
            ) from e
        try:
            out: bytes = lz4.block.decompress(bimg, uncompressed_size=want)
        except Exception as e:  # lz4.block.LZ4BlockError and friends
            raise InvalidRecord(f"lz4 image does not decompress: {e}") from e
        if len(out) != want:
            raise InvalidRecord(f"lz4 image decompressed to {len(out)} bytes, expected {want}")
        return out
    try:
        import zstandard
    except ImportError as e:
        raise MissingCompressionLibrary(
            "image is zstd-compressed; install the 'zstandard' package (extra: compression)"
        ) from e
    try:
        out = zstandard.ZstdDecompressor().decompress(bimg, max_output_size=want)
    except Exception as e:  # zstandard.ZstdError
        raise InvalidRecord(f"zstd image does not decompress: {e}") from e
    if len(out) != want:
        raise InvalidRecord(f"zstd image decompressed to {len(out)} bytes, expected {want}")
    return out


class DecodedRecord(NamedTuple):
    """A decoded WAL record. ``blocks`` is keyed by block id; ``main_data`` is b"" when there is none.

    Immutable (a NamedTuple, for the same construction-cost reason as :class:`BlockRef`).
    """

    tot_len: int
    xid: int
    prev: int
    info: int
    rmid: int
    blocks: dict[int, BlockRef]
    main_data: bytes
    origin: int | None
    toplevel_xid: int | None


_new = tuple.__new__


def decode_record(raw: bytes, *, verify_crc: bool = True) -> DecodedRecord:
    """Decode one whole WAL record (``tot_len`` bytes including its 24-byte header).

    Raises :class:`InvalidRecord` with a message saying what is wrong: too short for a header, ``tot_len``
    not the length of ``raw``, CRC mismatch (when ``verify_crc``), an unknown fragment id, block ids out of
    order, a same-relation block without a previous relation, a fork number out of range, inconsistent
    data/image flags and lengths, an image longer than a page or with its hole out of range, or fragment
    lengths that do not add up to the record. ``TypeError`` if ``raw`` is not bytes-like (a caller bug).
    """
    if not isinstance(raw, bytes):
        if not isinstance(raw, (bytearray, memoryview)):
            raise TypeError(f"record must be bytes-like, not {type(raw).__name__}")
        raw = bytes(raw)
    n = len(raw)
    if n < SIZE_OF_XLOG_RECORD:
        raise InvalidRecord(f"record of {n} bytes is shorter than the {SIZE_OF_XLOG_RECORD}-byte header")
    tot_len, xid, prev, info, rmid, crc = _HDR.unpack_from(raw)
    if tot_len != n:
        raise InvalidRecord(f"xl_tot_len is {tot_len} but the record has {n} bytes")
    if verify_crc:
        if n > 2048:
            mv = memoryview(raw)  # no copy of a large payload (images) for the CRC
            got = crc32c(mv[:20], crc32c(mv[SIZE_OF_XLOG_RECORD:]))
        else:
            got = crc32c(raw[SIZE_OF_XLOG_RECORD:] + raw[:20])  # one call is cheaper for small records
        if got != crc:
            raise InvalidRecord(f"incorrect resource manager data checksum: {got:08X} != {crc:08X}")

    # Fast paths for the two shapes nearly every heap record has: block 0 (own relation, no image) then
    # short main data; or that plus block 1 (same relation, no image). One unpack reads all their
    # fragment headers. Any other shape, and any inconsistency, takes the general loop below, which then
    # accepts or rejects the record itself: the fast paths only ever return what the loop would return.
    if n >= 46 and raw[24] == 0 and not raw[25] & 0x90:
        if raw[44] == XLR_BLOCK_ID_DATA_SHORT:
            fork_flags, data_len, spc, db, rel, blkno, main_len = _FAST1.unpack_from(raw, 25)
            if (
                n == 46 + data_len + main_len
                and fork_flags & BKPBLOCK_FORK_MASK <= MAX_FORKNUM
                and (data_len != 0) == (fork_flags & BKPBLOCK_HAS_DATA != 0)
            ):
                pos = 46 + data_len
                return _new(DecodedRecord, (tot_len, xid, prev, info, rmid, {0: _new(BlockRef, (
                    0, fork_flags & BKPBLOCK_FORK_MASK, spc, db, rel, blkno, fork_flags,
                    fork_flags & BKPBLOCK_WILL_INIT != 0, False, False, raw[46:pos] if data_len else None,
                    None, 0, 0, 0))}, raw[pos:] if main_len else b"", None, None))
        elif n >= 54 and raw[44] == 1 and raw[45] & 0x90 == BKPBLOCK_SAME_REL and raw[52] == XLR_BLOCK_ID_DATA_SHORT:
            ff0, len0, spc, db, rel, blk0, ff1, len1, blk1, main_len = _FAST2.unpack_from(raw, 25)
            if (
                n == 54 + len0 + len1 + main_len
                and ff0 & BKPBLOCK_FORK_MASK <= MAX_FORKNUM
                and ff1 & BKPBLOCK_FORK_MASK <= MAX_FORKNUM
                and (len0 != 0) == (ff0 & BKPBLOCK_HAS_DATA != 0)
                and (len1 != 0) == (ff1 & BKPBLOCK_HAS_DATA != 0)
            ):
                pos = 54 + len0
                end = pos + len1
                return _new(DecodedRecord, (tot_len, xid, prev, info, rmid, {
                    0: _new(BlockRef, (
                        0, ff0 & BKPBLOCK_FORK_MASK, spc, db, rel, blk0, ff0, ff0 & BKPBLOCK_WILL_INIT != 0,
                        False, False, raw[54:pos] if len0 else None, None, 0, 0, 0)),
                    1: _new(BlockRef, (
                        1, ff1 & BKPBLOCK_FORK_MASK, spc, db, rel, blk1, ff1, ff1 & BKPBLOCK_WILL_INIT != 0,
                        False, False, raw[pos:end] if len1 else None, None, 0, 0, 0)),
                }, raw[end:] if main_len else b"", None, None))
    return _decode_general(raw, tot_len, xid, prev, info, rmid)


def _decode_general(raw: bytes, tot_len: int, xid: int, prev: int, info: int, rmid: int) -> DecodedRecord:
    """The fragment headers and payload of any record shape (the header is already checked)."""
    n = tot_len
    pos = SIZE_OF_XLOG_RECORD
    datatotal = 0
    main_len = 0
    origin = None
    toplevel_xid = None
    max_block_id = -1
    # per block: (block_id, fork_flags, data_len, spc, db, rel, blkno, bimg_len, hole_off, hole_len, bimg_info)
    hdrs = []
    spc = db = rel = None
    try:
        # Fragment headers continue while more bytes remain than the payloads announced so far.
        while n - pos > datatotal:
            block_id = raw[pos]
            pos += 1
            if block_id > XLR_MAX_BLOCK_ID:  # the special fragments (block references are the common case)
                if block_id == XLR_BLOCK_ID_DATA_SHORT:
                    main_len = raw[pos]
                    pos += 1
                    datatotal += main_len
                    break
                if block_id == XLR_BLOCK_ID_DATA_LONG:
                    (main_len,) = U32.unpack_from(raw, pos)
                    pos += 4
                    datatotal += main_len
                    break
                if block_id == XLR_BLOCK_ID_ORIGIN:
                    (origin,) = U16.unpack_from(raw, pos)
                    pos += 2
                    continue
                if block_id == XLR_BLOCK_ID_TOPLEVEL_XID:
                    (toplevel_xid,) = U32.unpack_from(raw, pos)
                    pos += 4
                    continue
                raise InvalidRecord(f"invalid block_id {block_id}")
            if block_id <= max_block_id:
                raise InvalidRecord(f"out-of-order block_id {block_id} after {max_block_id}")
            max_block_id = block_id
            fork_flags, data_len = _BLK_HDR.unpack_from(raw, pos)
            pos += 3
            if fork_flags & BKPBLOCK_FORK_MASK > MAX_FORKNUM:
                raise InvalidRecord(f"block {block_id}: invalid fork number {fork_flags & BKPBLOCK_FORK_MASK}")
            if fork_flags & BKPBLOCK_HAS_DATA:
                if data_len == 0:
                    raise InvalidRecord(f"block {block_id}: BKPBLOCK_HAS_DATA set, but no data included")
            elif data_len != 0:
                raise InvalidRecord(f"block {block_id}: BKPBLOCK_HAS_DATA not set, but data length is {data_len}")
            datatotal += data_len
            bimg_len = hole_off = hole_len = bimg_info = 0
            if fork_flags & BKPBLOCK_HAS_IMAGE:
                bimg_len, hole_off, bimg_info = _IMG_HDR.unpack_from(raw, pos)
                pos += 5
                compressed = bimg_info & BKPIMAGE_COMPRESSED
                if compressed:
                    if bimg_info & BKPIMAGE_HAS_HOLE:
                        (hole_len,) = U16.unpack_from(raw, pos)
                        pos += 2
                else:
                    hole_len = BLCKSZ - bimg_len
                datatotal += bimg_len
                if bimg_len == 0 or bimg_len > BLCKSZ:
                    raise InvalidRecord(f"block {block_id}: image length {bimg_len} not in 1..{BLCKSZ}")
                if bimg_info & BKPIMAGE_HAS_HOLE:
                    if hole_off == 0 or hole_len == 0 or bimg_len == BLCKSZ:
                        raise InvalidRecord(
                            f"block {block_id}: BKPIMAGE_HAS_HOLE set, but hole offset {hole_off} "
                            f"length {hole_len} image length {bimg_len}"
                        )
                elif hole_off != 0 or hole_len != 0:
                    raise InvalidRecord(
                        f"block {block_id}: BKPIMAGE_HAS_HOLE not set, but hole offset {hole_off} "
                        f"length {hole_len}"
                    )
                if hole_off + hole_len > BLCKSZ:
                    raise InvalidRecord(f"block {block_id}: image hole {hole_off}+{hole_len} beyond the page")
                if compressed and bimg_len == BLCKSZ:
                    raise InvalidRecord(f"block {block_id}: compressed image has length {BLCKSZ}")
                if not compressed and not (bimg_info & BKPIMAGE_HAS_HOLE) and bimg_len != BLCKSZ:
                    raise InvalidRecord(
                        f"block {block_id}: uncompressed image without hole has length {bimg_len}"
                    )
            if fork_flags & BKPBLOCK_SAME_REL:
                if rel is None:
                    raise InvalidRecord(f"block {block_id}: BKPBLOCK_SAME_REL set but no previous rel")
                (blkno,) = U32.unpack_from(raw, pos)
                pos += 4
            else:
                spc, db, rel, blkno = _RNODE_BLK.unpack_from(raw, pos)
                pos += 16
            hdrs.append((block_id, fork_flags, data_len, spc, db, rel, blkno, bimg_len, hole_off, hole_len, bimg_info))
    except (struct.error, IndexError):
        raise InvalidRecord(f"record header fragments truncated at offset {pos} of {n}") from None

    if n - pos != datatotal:
        raise InvalidRecord(
            f"record payload is {n - pos} bytes but its fragment headers announce {datatotal}"
        )
    blocks = {}
    for block_id, fork_flags, data_len, spc, db, rel, blkno, bimg_len, hole_off, hole_len, bimg_info in hdrs:
        bimg = None
        if fork_flags & BKPBLOCK_HAS_IMAGE:
            bimg = raw[pos : pos + bimg_len]
            pos += bimg_len
        data = None
        if data_len:
            data = raw[pos : pos + data_len]
            pos += data_len
        blocks[block_id] = _new(BlockRef, (
            block_id,
            fork_flags & BKPBLOCK_FORK_MASK,
            spc,
            db,
            rel,
            blkno,
            fork_flags,
            fork_flags & BKPBLOCK_WILL_INIT != 0,
            fork_flags & BKPBLOCK_HAS_IMAGE != 0,
            bimg_info & BKPIMAGE_APPLY != 0,
            data,
            bimg,
            hole_off,
            hole_len,
            bimg_info,
        ))
    main_data = raw[pos : pos + main_len] if main_len else b""
    return _new(DecodedRecord, (tot_len, xid, prev, info, rmid, blocks, main_data, origin, toplevel_xid))


__all__ = [
    "BLCKSZ",
    "BlockRef",
    "DecodedRecord",
    "decode_record",
    "RM_XLOG_ID",
    "RM_HEAP2_ID",
    "RM_HEAP_ID",
    "BKPBLOCK_HAS_IMAGE",
    "BKPBLOCK_HAS_DATA",
    "BKPBLOCK_WILL_INIT",
    "BKPBLOCK_SAME_REL",
    "BKPIMAGE_HAS_HOLE",
    "BKPIMAGE_APPLY",
    "BKPIMAGE_COMPRESSED",
]
