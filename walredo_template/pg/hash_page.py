"""Hash index page layout (PostgreSQL 15 ``access/hash.h``), page initialisation and ``hash_mask``.

Every hash page has a 16-byte special space at pd_special = 8176 (``HashPageOpaqueData``)::

    8176 hasho_prevblkno u32   previous page of an overflow chain; on a bucket page the hashm_maxbucket
                               of its last split (or creation)
    8180 hasho_nextblkno u32   next page of the bucket's chain, 0xFFFFFFFF at the end
    8184 hasho_bucket    u32   bucket number (0xFFFFFFFF on meta, bitmap and unused pages)
    8188 hasho_flag      u16   page type (LH_OVERFLOW 1, LH_BUCKET 2, LH_BITMAP 4, LH_META 8; LH_UNUSED 0)
                               and LH_BUCKET_BEING_POPULATED 0x10, _BEING_SPLIT 0x20, _NEEDS_SPLIT_CLEANUP
                               0x40, LH_PAGE_HAS_DEAD_TUPLES 0x80
    8190 hasho_page_id   u16   0xFF80

The metapage (block 0) keeps ``HashMetaPageData`` at PageGetContents (offset 24; pd_lower = 24 + 4544)::

    24 magic u32 (0x6440640)   28 version u32 (4)      32 ntuples double       40 ffactor u16
    42 bsize u16               44 bmsize u16           46 bmshift u16          48 maxbucket u32
    52 highmask u32            56 lowmask u32          60 ovflpoint u32        64 firstfree u32
    68 nmaps u32               72 procid u32           76 spares[98] u32       468 mapp[1024] u32

A bitmap page keeps its bit array (bmsize bytes, pd_lower = 24 + bmsize) at offset 24; bit N of the
uint32 array is bit N % 8 of byte 24 + N / 8 (little-endian words). Bucket and overflow pages hold index
tuples (8-byte IndexTupleData header + the 4-byte hash code) in ordinary line pointers.

The functions that write the metapage, a bitmap or the special space first check that the page is the
kind the record says it is (PostgreSQL trusts the record; a record applied to the wrong page would otherwise
overwrite line pointers), raising :class:`InvalidPage`.
"""

from __future__ import annotations

import math
import struct

from . import indexpage as IP
from . import page as P
from .errors import InvalidPage, InvalidRecord
from .mask import begin_index_mask, mask_lp_dead, mask_page_hint_bits, mask_unused_space

LH_UNUSED_PAGE = 0
LH_OVERFLOW_PAGE = 1 << 0
LH_BUCKET_PAGE = 1 << 1
LH_BITMAP_PAGE = 1 << 2
LH_META_PAGE = 1 << 3
LH_BUCKET_BEING_POPULATED = 1 << 4
LH_BUCKET_BEING_SPLIT = 1 << 5
LH_BUCKET_NEEDS_SPLIT_CLEANUP = 1 << 6
LH_PAGE_HAS_DEAD_TUPLES = 1 << 7
LH_PAGE_TYPE = LH_OVERFLOW_PAGE | LH_BUCKET_PAGE | LH_BITMAP_PAGE | LH_META_PAGE
HASHO_PAGE_ID = 0xFF80
INVALID_BLOCK = 0xFFFFFFFF
INVALID_BUCKET = 0xFFFFFFFF

SPECIAL_SIZE = 16
OPAQUE_OFF = P.BLCKSZ - SPECIAL_SIZE  # 8176
OFF_PREVBLKNO = OPAQUE_OFF
OFF_NEXTBLKNO = OPAQUE_OFF + 4
OFF_FLAG = OPAQUE_OFF + 12
CONTENTS = P.SIZE_OF_PAGE_HEADER  # PageGetContents: MAXALIGN(SizeOfPageHeaderData)
MAX_BITMAP_SIZE = P.BLCKSZ - CONTENTS - SPECIAL_SIZE  # HashGetMaxBitmapSize: 8152

HASH_MAGIC = 0x6440640
HASH_VERSION = 4
HASH_MAX_SPLITPOINTS = 98  # (32 - 10) * 4 + 10
HASH_MAX_BITMAPS = 1024
# Absolute offsets of the HashMetaPageData fields
M_MAGIC = CONTENTS
M_NTUPLES = CONTENTS + 8
M_MAXBUCKET = CONTENTS + 24
M_HIGHMASK = CONTENTS + 28
M_LOWMASK = CONTENTS + 32
M_OVFLPOINT = CONTENTS + 36
M_FIRSTFREE = CONTENTS + 40
M_NMAPS = CONTENTS + 44
M_SPARES = CONTENTS + 52
M_MAPP = M_SPARES + 4 * HASH_MAX_SPLITPOINTS
META_LOWER = CONTENTS + 4544  # pd_lower of a metapage: just past sizeof(HashMetaPageData)

U16 = P.U16
U32 = P.U32
DOUBLE = struct.Struct("<d")
OPAQUE = struct.Struct("<IIIHH")
_BOUNDS = struct.Struct("<HHHHH")  # pd_flags, pd_lower, pd_upper, pd_special, pd_pagesize_version
# magic, version, ntuples, ffactor, bsize, bmsize, bmshift, maxbucket, highmask, lowmask, ovflpoint,
# firstfree, nmaps, procid
META_HEAD = struct.Struct("<IIdHHHHIIIIIII")


def _special(page: bytearray) -> None:
    """Refuse a page whose special space is not where a hash page keeps it (a corrupt or foreign page)."""
    special = U16.unpack_from(page, P.OFF_SPECIAL)[0]
    if special != OPAQUE_OFF:
        raise InvalidPage(f"pd_special {special} is not a hash page's ({OPAQUE_OFF})")


def flag(page: bytearray) -> int:
    """hasho_flag, after checking the page has a hash special space."""
    _special(page)
    return int(U16.unpack_from(page, OFF_FLAG)[0])


def set_flag(page: bytearray, value: int) -> None:
    """Set hasho_flag. A change into or out of the metapage / bitmap types changes whether the page's line
    pointers are items: they are checked then (:func:`check_items`), so a record's flag cannot turn a page
    whose pointers were never checked into a bucket page."""
    _special(page)
    was = U16.unpack_from(page, OFF_FLAG)[0]
    U16.pack_into(page, OFF_FLAG, value & 0xFFFF)
    if (was ^ value) & (LH_META_PAGE | LH_BITMAP_PAGE):
        check_items(page)


def set_link(page: bytearray, off: int, blkno: int) -> None:
    """Set hasho_prevblkno (``off`` = OFF_PREVBLKNO) or hasho_nextblkno (OFF_NEXTBLKNO)."""
    _special(page)
    U32.pack_into(page, off, blkno & 0xFFFFFFFF)


def init_page(page: bytearray, prevblkno: int, nextblkno: int, bucket: int, page_flag: int) -> None:
    """_hash_pageinit (PageInit with the hash special space) and a filled special space."""
    P.page_init(page, SPECIAL_SIZE)
    OPAQUE.pack_into(page, OPAQUE_OFF, prevblkno & 0xFFFFFFFF, nextblkno & 0xFFFFFFFF, bucket & 0xFFFFFFFF,
                     page_flag & 0xFFFF, HASHO_PAGE_ID)


def init_bitmap_page(page: bytearray, bmsize: int) -> None:
    """_hash_initbitmapbuffer with initpage: every bit set ("in use"), pd_lower just past the bitmap.
    Raises :class:`InvalidRecord` for a bitmap that would not fit between the header and the special space."""
    if bmsize > MAX_BITMAP_SIZE:
        raise InvalidRecord(f"hash bitmap size {bmsize} exceeds {MAX_BITMAP_SIZE}")
    init_page(page, INVALID_BLOCK, INVALID_BLOCK, INVALID_BUCKET, LH_BITMAP_PAGE)
    page[CONTENTS:CONTENTS + bmsize] = b"\xff" * bmsize
    U16.pack_into(page, P.OFF_LOWER, CONTENTS + bmsize)


def _ceil_log2(n: int) -> int:
    return 0 if n < 2 else (n - 1).bit_length()


def spare_index(num_bucket: int) -> int:
    """_hash_spareindex: the splitpoint phase whose allocation holds bucket ``num_bucket - 1``."""
    group = _ceil_log2(num_bucket)
    if group < 10:
        return group
    return 10 + ((group - 10) << 2) + (((num_bucket - 1) >> (group - 3)) & 3)


def total_buckets(phase: int) -> int:
    """_hash_get_totalbuckets: buckets allocated up to and including splitpoint phase ``phase``."""
    if phase < 10:
        return 1 << phase
    group = 10 + ((phase - 10) >> 2)
    half = 1 << (group - 1)
    return half + (half >> 2) * (((phase - 10) & 3) + 1)


def init_metapage(page: bytearray, num_tuples: float, procid: int, ffactor: int) -> None:
    """_hash_init_metabuffer with initpage: the bucket count from the estimated tuples and the fill factor
    (at least 2, at most 2^30, rounded up to a whole splitpoint phase), masks, one spare page after the
    initial splitpoint, no bitmaps yet, hashm_ntuples 0. Raises :class:`InvalidRecord` when the estimate
    is not a number (PostgreSQL would convert NaN to an integer)."""
    # C divides by the uint16 promoted to double: x / 0 is +-inf, 0 / 0 NaN
    dnum = num_tuples / ffactor if ffactor else (math.inf * num_tuples if num_tuples else math.nan)
    if dnum != dnum:
        raise InvalidRecord(f"hash metapage init with num_tuples {num_tuples} and ffactor {ffactor}")
    if dnum <= 2.0:
        nbuckets = 2
    elif dnum >= float(0x40000000):
        nbuckets = 0x40000000
    else:
        nbuckets = total_buckets(spare_index(int(dnum)))
    spare = spare_index(nbuckets)
    init_page(page, INVALID_BLOCK, INVALID_BLOCK, INVALID_BUCKET, LH_META_PAGE)
    bmshift = MAX_BITMAP_SIZE.bit_length() - 1  # pg_leftmost_one_pos32
    highmask = (1 << nbuckets.bit_length()) - 1  # pg_nextpower2_32(nbuckets + 1) - 1
    META_HEAD.pack_into(page, M_MAGIC, HASH_MAGIC, HASH_VERSION, 0.0, ffactor, MAX_BITMAP_SIZE, 1 << bmshift,
                        bmshift + 3, nbuckets - 1, highmask, highmask >> 1, spare, 0, 0, procid)
    U32.pack_into(page, M_SPARES + 4 * spare, 1)
    U16.pack_into(page, P.OFF_LOWER, META_LOWER)


def check_items(page: bytearray) -> None:
    """Refuse a bucket or overflow page (any page but a metapage or bitmap page, whose "line pointers" are
    their data) with a line pointer whose storage lies outside pd_upper..pd_special: run once on a page that
    came from outside (a base image), so a record that leaves the items alone cannot pass a corrupt one on."""
    _f, lower, upper, special, _v = _BOUNDS.unpack_from(page, P.OFF_FLAGS)
    if special == OPAQUE_OFF and U16.unpack_from(page, OFF_FLAG)[0] & (LH_META_PAGE | LH_BITMAP_PAGE):
        return
    nline = (lower - P.SIZE_OF_PAGE_HEADER) >> 2
    if nline <= 0:
        return
    for i, w in enumerate(P.lp_array(nline).unpack_from(page, P.SIZE_OF_PAGE_HEADER), 1):
        length = w >> 17
        if length and ((w & 0x7FFF) < upper or (w & 0x7FFF) + length > special):
            raise InvalidPage(f"item {i} at {w & 0x7FFF} length {length} lies outside the tuple space")


# --- checked access to the metapage and bitmap pages ---------------------------------------------

def require(page: bytearray, page_type: int, what: str) -> None:
    """Refuse a page that is not of ``page_type`` (LH_META_PAGE, LH_BITMAP_PAGE)."""
    got = flag(page) & LH_PAGE_TYPE
    if got != page_type:
        raise InvalidPage(f"{what}: page type {got:#x} is not {page_type:#x}")


def meta_u32(page: bytearray, off: int) -> int:
    return int(U32.unpack_from(page, off)[0])


def set_meta_u32(page: bytearray, off: int, value: int) -> None:
    U32.pack_into(page, off, value & 0xFFFFFFFF)


def spare_offset(index: int, source: str) -> int:
    """Offset of hashm_spares[index]; ``source`` says whether a bad index is the record's or the page's."""
    if not 0 <= index < HASH_MAX_SPLITPOINTS:
        msg = f"hash splitpoint {index} out of range (max {HASH_MAX_SPLITPOINTS - 1})"
        raise InvalidRecord(msg) if source == "record" else InvalidPage(msg)
    return M_SPARES + 4 * index


def add_bitmap(page: bytearray, blkno: int) -> None:
    """hashm_mapp[hashm_nmaps++] = blkno. Raises :class:`InvalidPage` when the metapage has no free slot."""
    nmaps = meta_u32(page, M_NMAPS)
    if nmaps >= HASH_MAX_BITMAPS:
        raise InvalidPage(f"hash metapage already has {nmaps} bitmap pages")
    set_meta_u32(page, M_MAPP + 4 * nmaps, blkno)
    set_meta_u32(page, M_NMAPS, nmaps + 1)


def add_ntuples(page: bytearray, delta: int) -> None:
    """hashm_ntuples += delta, in double arithmetic as PostgreSQL does."""
    DOUBLE.pack_into(page, M_NTUPLES, DOUBLE.unpack_from(page, M_NTUPLES)[0] + delta)


def change_bit(page: bytearray, bit: int, value: bool) -> None:
    """SETBIT / CLRBIT in a bitmap page. Raises :class:`InvalidRecord` for a bit past the page's bitmap
    space (PostgreSQL would write wherever it points)."""
    require(page, LH_BITMAP_PAGE, "hash bitmap bit")
    pos = CONTENTS + (bit >> 3)
    if pos >= CONTENTS + MAX_BITMAP_SIZE:
        raise InvalidRecord(f"hash bitmap bit {bit} is past the bitmap")
    if value:
        page[pos] |= 1 << (bit & 7)
    else:
        page[pos] &= ~(1 << (bit & 7)) & 0xFF


# --- tuples moved and deleted by MOVE_PAGE_CONTENTS / SQUEEZE_PAGE / DELETE ----------------------

_INDEX_SIZE_MASK = 0x1FFF
_OFFSETS: dict[int, struct.Struct] = {}


def offsets(buf: bytes, start: int, count: int, name: str) -> tuple[int, ...]:
    """``count`` u16 offset numbers at ``buf[start:]``."""
    if count < 0 or start + 2 * count > len(buf):
        raise InvalidRecord(f"{name}: {count} offsets do not fit in {len(buf) - start} bytes")
    st = _OFFSETS.get(count)
    if st is None:
        st = struct.Struct(f"<{count}H")
        if count <= 2048:  # more than a page's worth only comes from a broken record: not cached
            _OFFSETS[count] = st
    return st.unpack_from(buf, start)


def add_moved_tuples(page: bytearray, data: bytes | None, ntups: int, name: str) -> None:
    """The write page of MOVE_PAGE_CONTENTS / SQUEEZE_PAGE: ``ntups`` offsets, then as many tuples, each
    added with its MAXALIGNed length (so the record's padding lands on the page, as in PostgreSQL)."""
    if ntups == 0:
        return
    buf = data or b""
    where = offsets(buf, 0, ntups, name)
    pos = 2 * ntups
    end = len(buf)
    n = 0
    while pos < end:
        if pos + 8 > end:
            raise InvalidRecord(f"{name}: truncated index tuple at {pos} of {end}")
        size = P.maxalign(U16.unpack_from(buf, pos + 6)[0] & _INDEX_SIZE_MASK)
        if size == 0 or pos + size > end:
            raise InvalidRecord(f"{name}: index tuple of {size} bytes at {pos} does not fit in {end}")
        if n >= ntups:
            raise InvalidRecord(f"{name}: more tuples than the {ntups} offsets")
        IP.add_item(page, buf[pos:pos + size], where[n])
        pos += size
        n += 1
    if n != ntups:
        raise InvalidRecord(f"{name}: {n} tuples for {ntups} offsets")


def delete_listed(page: bytearray, data: bytes | None, name: str) -> None:
    """PageIndexMultiDelete of the u16 offsets that make up a block's data (none when it has no data)."""
    if data:
        offnums = offsets(data, 0, len(data) // 2, name)
        if offnums:
            IP.multi_delete(page, offnums)


# --- hash_mask -----------------------------------------------------------------------------------

def hash_mask(page: bytearray, blkno: int = 0) -> None:
    """PostgreSQL's ``hash_mask`` in place, stricter in two ways.

    Masked as PostgreSQL does: LSN and checksum, the page header hints, the hole between pd_lower and
    pd_upper (on every page type, metapage and bitmap pages included), LP_DEAD flags on bucket and overflow
    pages (set by scans without WAL) and the LH_PAGE_HAS_DEAD_TUPLES hint. Stricter: only LP_DEAD is
    equated with LP_NORMAL (:func:`.mask.mask_lp_dead`), and an LH_UNUSED page (a freed overflow page, or the
    last page a split preallocates) is compared whole, where PostgreSQL masks everything after its page
    header (``mask_page_content``): both sides build such pages with _hash_pageinit and an identical
    special space, so the only difference the wider mask could hide is one this engine made. An all-zero
    page (a block inside a split's preallocation, never written) is left as it is. Raises
    :class:`InvalidPage` for a page whose bounds cannot be walked.
    """
    if not begin_index_mask(page):
        return
    mask_page_hint_bits(page)
    mask_unused_space(page)
    special = U16.unpack_from(page, P.OFF_SPECIAL)[0]
    if special + SPECIAL_SIZE > P.BLCKSZ:
        raise InvalidPage(f"pd_special {special} leaves no room for the hash special space")
    page_flag = U16.unpack_from(page, special + 12)[0]
    page_type = page_flag & LH_PAGE_TYPE
    if page_type == LH_BUCKET_PAGE or page_type == LH_OVERFLOW_PAGE:
        mask_lp_dead(page)
    # read again: mask_page_content has zeroed it on an unused page
    U16.pack_into(page, special + 12, U16.unpack_from(page, special + 12)[0] & ~LH_PAGE_HAS_DEAD_TUPLES)
