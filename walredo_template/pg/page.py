"""PostgreSQL 15 page layout and the ``bufpage.c`` operations heap redo uses, on a ``bytearray``.

Layout of an 8192-byte page (``storage/bufpage.h``, ``storage/itemid.h``, ``access/htup_details.h``)::

    0  pd_lsn        u32 xlogid | u32 xrecoff      (the LSN as two little-endian halves, high first)
    8  pd_checksum   u16
    10 pd_flags      u16   PD_HAS_FREE_LINES 0x1, PD_PAGE_FULL 0x2, PD_ALL_VISIBLE 0x4
    12 pd_lower      u16   end of the line pointer array
    14 pd_upper      u16   start of tuple space
    16 pd_special    u16   start of the special space (8192 on heap pages)
    18 pd_pagesize_version u16   8192 | 4 for PostgreSQL >= 8.3 layouts (15 included)
    20 pd_prune_xid  u32
    24 line pointers, 4 bytes each: lp_off:15 | lp_flags:2 | lp_len:15 (one little-endian u32)

Heap tuple header (23 bytes): t_xmin u32 @0, t_xmax u32 @4, t_cid/t_xvac u32 @8, t_ctid (u16 bi_hi,
u16 bi_lo, u16 posid) @12, t_infomask2 u16 @18, t_infomask u16 @20, t_hoff u8 @22.

Every function here validates what it reads from the page, so a corrupt page or an offset that points
outside it raises :class:`InvalidPage` (or :class:`InvalidRecord` for record-supplied values) rather than
``IndexError`` or ``struct.error``. The functions work in place on a ``bytearray``: redo replays many
records on the same buffer and must not allocate a page per record.
"""

from __future__ import annotations

import struct

from .errors import InvalidPage, InvalidRecord

BLCKSZ = 8192
SIZE_OF_PAGE_HEADER = 24
PG_PAGE_LAYOUT_VERSION = 4
PAGESIZE_VERSION = BLCKSZ | PG_PAGE_LAYOUT_VERSION
MAXALIGN = 8
SIZEOF_HEAP_TUPLE_HEADER = 23
SIZEOF_ITEMID = 4
# MaxHeapTuplesPerPage: (BLCKSZ - header) / (MAXALIGN(tuple header) + line pointer)
MAX_HEAP_TUPLES_PER_PAGE = (BLCKSZ - SIZE_OF_PAGE_HEADER) // (24 + SIZEOF_ITEMID)  # 291
MAX_HEAP_TUPLE_SIZE = BLCKSZ - 24 - SIZE_OF_PAGE_HEADER - 4  # MaxHeapTupleSize with 8 KiB pages: 8160

PD_HAS_FREE_LINES = 0x0001
PD_PAGE_FULL = 0x0002
PD_ALL_VISIBLE = 0x0004

LP_UNUSED = 0
LP_NORMAL = 1
LP_REDIRECT = 2
LP_DEAD = 3

# Offsets of header fields
OFF_LSN = 0
OFF_CHECKSUM = 8
OFF_FLAGS = 10
OFF_LOWER = 12
OFF_UPPER = 14
OFF_SPECIAL = 16
OFF_PAGESIZE_VERSION = 18
OFF_PRUNE_XID = 20

# Offsets inside a heap tuple header
T_XMIN = 0
T_XMAX = 4
T_CID = 8  # also t_xvac
T_CTID = 12
T_INFOMASK2 = 18
T_INFOMASK = 20
T_HOFF = 22

U16 = struct.Struct("<H")
U32 = struct.Struct("<I")
U64 = struct.Struct("<Q")
LSN = struct.Struct("<II")
# pd_flags, pd_lower, pd_upper, pd_special, pd_pagesize_version (bytes 10..20)
_BOUNDS = struct.Struct("<HHHHH")
# pd_lower, pd_upper, pd_special (bytes 12..18)
_LUS = struct.Struct("<HHH")
_LU = struct.Struct("<HH")
CTID = struct.Struct("<HHH")
INFOMASKS = struct.Struct("<HH")  # t_infomask2, t_infomask

ZERO_PAGE = bytes(BLCKSZ)  # a never-initialized page

# A page argument that is only read: the redo buffer itself, an image, or a view of either.
Buffer = bytes | bytearray | memoryview


def maxalign(n: int) -> int:
    return (n + (MAXALIGN - 1)) & ~(MAXALIGN - 1)


# --- header access -------------------------------------------------------------------------------

def get_lsn(page: Buffer) -> int:
    hi: int
    lo: int
    hi, lo = LSN.unpack_from(page, OFF_LSN)
    return (hi << 32) | lo


def set_lsn(page: bytearray, lsn: int) -> None:
    """PageSetLSN."""
    LSN.pack_into(page, OFF_LSN, (lsn >> 32) & 0xFFFFFFFF, lsn & 0xFFFFFFFF)


def get_flags(page: Buffer) -> int:
    flags: int = U16.unpack_from(page, OFF_FLAGS)[0]
    return flags


def get_lower(page: Buffer) -> int:
    lower: int = U16.unpack_from(page, OFF_LOWER)[0]
    return lower


def get_upper(page: Buffer) -> int:
    upper: int = U16.unpack_from(page, OFF_UPPER)[0]
    return upper


def get_special(page: Buffer) -> int:
    special: int = U16.unpack_from(page, OFF_SPECIAL)[0]
    return special


def get_prune_xid(page: Buffer) -> int:
    xid: int = U32.unpack_from(page, OFF_PRUNE_XID)[0]
    return xid


def is_new(page: Buffer) -> bool:
    """PageIsNew: pd_upper == 0 means the page was never initialized (all zeros)."""
    upper: int = U16.unpack_from(page, OFF_UPPER)[0]
    return upper == 0


def max_offset(page: Buffer) -> int:
    """PageGetMaxOffsetNumber."""
    lower: int = U16.unpack_from(page, OFF_LOWER)[0]
    if lower <= SIZE_OF_PAGE_HEADER:
        return 0
    return (lower - SIZE_OF_PAGE_HEADER) >> 2


def check_page(page: Buffer) -> None:
    """Refuse anything that is not an initialized PostgreSQL 15 page with sane bounds.

    Raises :class:`InvalidPage`: wrong size, ``pd_pagesize_version`` other than 8192|4 (another page
    layout), or pd_lower/pd_upper/pd_special out of order.
    """
    if len(page) != BLCKSZ:
        raise InvalidPage(f"page has {len(page)} bytes, expected {BLCKSZ}")
    _flags, lower, upper, special, psv = _BOUNDS.unpack_from(page, OFF_FLAGS)
    if psv != PAGESIZE_VERSION:
        raise InvalidPage(
            f"pd_pagesize_version is {psv:#06x}, expected {PAGESIZE_VERSION:#06x} (8192-byte page, layout 4)"
        )
    if not (SIZE_OF_PAGE_HEADER <= lower <= upper <= special <= BLCKSZ) or special & (MAXALIGN - 1):
        raise InvalidPage(f"corrupted page pointers: lower = {lower}, upper = {upper}, special = {special}")


def page_init(page: bytearray, special_size: int = 0) -> None:
    """PageInit: zero the page and set an empty header (heap and VM pages have no special space)."""
    special_size = maxalign(special_size)
    page[:] = ZERO_PAGE
    _LUS.pack_into(page, OFF_LOWER, SIZE_OF_PAGE_HEADER, BLCKSZ - special_size, BLCKSZ - special_size)
    U16.pack_into(page, OFF_PAGESIZE_VERSION, PAGESIZE_VERSION)


def set_prunable(page: bytearray, xid: int) -> None:
    """PageSetPrunable: keep the oldest prunable xid (modulo-2^32 comparison, as TransactionIdPrecedes)."""
    cur = U32.unpack_from(page, OFF_PRUNE_XID)[0]
    if cur == 0 or xid_precedes(xid, cur):
        U32.pack_into(page, OFF_PRUNE_XID, xid)


def xid_precedes(a: int, b: int) -> bool:
    """TransactionIdPrecedes: permanent xids (< 3) compare plainly, normal ones modulo 2^32."""
    if a < 3 or b < 3:
        return a < b
    diff = (a - b) & 0xFFFFFFFF
    return diff >= 0x80000000


# --- line pointers -------------------------------------------------------------------------------

def get_itemid(page: Buffer, offnum: int) -> int:
    """The raw line pointer word for 1-based ``offnum`` (caller checks ``offnum <= max_offset``)."""
    word: int = U32.unpack_from(page, SIZE_OF_PAGE_HEADER + (offnum - 1) * 4)[0]
    return word


def set_itemid(page: bytearray, offnum: int, off: int, flags: int, length: int) -> None:
    U32.pack_into(page, SIZE_OF_PAGE_HEADER + (offnum - 1) * 4, off | (flags << 15) | (length << 17))


def lp_off(word: int) -> int:
    return word & 0x7FFF


def lp_flags(word: int) -> int:
    return (word >> 15) & 3


def lp_len(word: int) -> int:
    return word >> 17


def normal_item(page: Buffer, offnum: int) -> tuple[int, int]:
    """(offset, length) of the LP_NORMAL item at ``offnum``, checked to lie inside the tuple space.

    The redo routines' ``elog(PANIC, "invalid lp")`` becomes :class:`InvalidRecord` here: the record names
    an item the page does not have (the record and the page disagree).
    """
    lower: int
    upper: int
    special: int
    lower, upper, special = _LUS.unpack_from(page, OFF_LOWER)
    maxoff = (lower - SIZE_OF_PAGE_HEADER) >> 2 if lower > SIZE_OF_PAGE_HEADER else 0
    if offnum < 1 or offnum > maxoff:
        raise InvalidRecord(f"item {offnum} beyond the line pointer array ({maxoff} items)")
    w: int = U32.unpack_from(page, SIZE_OF_PAGE_HEADER + (offnum - 1) * 4)[0]
    if (w >> 15) & 3 != LP_NORMAL:
        raise InvalidRecord(f"item {offnum} is not a normal line pointer (flags {(w >> 15) & 3})")
    off = w & 0x7FFF
    length = w >> 17
    if length < SIZEOF_HEAP_TUPLE_HEADER or off < upper or off + length > special:
        raise InvalidPage(f"item {offnum} at {off} length {length} lies outside the tuple space")
    return off, length


# --- PageAddItem ---------------------------------------------------------------------------------

def _reserve(page: bytearray, offnum: int, size: int, is_heap: bool) -> int:
    """PageAddItem's placement for an item of ``size`` bytes at 1-based ``offnum`` (PAI_OVERWRITE): check
    the bounds and the slot, set the line pointer, pd_lower and pd_upper; return where the item goes.
    Nothing is written unless every check passes."""
    lower: int
    upper: int
    flags, lower, upper, special, _psv = _BOUNDS.unpack_from(page, OFF_FLAGS)
    if not (SIZE_OF_PAGE_HEADER <= lower <= upper <= special <= BLCKSZ):
        raise InvalidPage(f"corrupted page pointers: lower = {lower}, upper = {upper}, special = {special}")
    limit = ((lower - SIZE_OF_PAGE_HEADER) >> 2) + 1
    if offnum < 1:
        raise InvalidRecord(f"invalid item offset {offnum}")
    if offnum < limit:
        w = U32.unpack_from(page, SIZE_OF_PAGE_HEADER + (offnum - 1) * 4)[0]
        if w & 0xFFFF8000:  # lp_flags or lp_len set: the slot is in use
            raise InvalidRecord(f"will not overwrite used item {offnum}")
    else:
        if offnum > limit:
            raise InvalidRecord(f"item offset {offnum} is too large (max {limit})")
        lower += SIZEOF_ITEMID
    if is_heap and offnum > MAX_HEAP_TUPLES_PER_PAGE:
        raise InvalidRecord(f"can't put more than {MAX_HEAP_TUPLES_PER_PAGE} items in a heap page")
    upper -= (size + 7) & ~7
    if lower > upper:
        raise InvalidRecord(f"item of {size} bytes does not fit on the page")
    U32.pack_into(page, SIZE_OF_PAGE_HEADER + (offnum - 1) * 4, upper | (LP_NORMAL << 15) | (size << 17))
    _LU.pack_into(page, OFF_LOWER, lower, upper)
    return upper


def add_item(page: bytearray, item: Buffer, offnum: int, *, is_heap: bool = True) -> int:
    """PageAddItemExtended with PAI_OVERWRITE (the form heap redo uses), returning ``offnum``.

    The item goes at 1-based ``offnum``, which must be an unused slot or the next one past the array.
    Raises :class:`InvalidPage` on corrupt page bounds and :class:`InvalidRecord` when the slot is in use,
    too far, beyond MaxHeapTuplesPerPage, or the item does not fit (PostgreSQL PANICs on these in redo).
    """
    size = len(item)
    if size == 0 or size > 0x7FFF:
        raise InvalidRecord(f"invalid item size {size}")
    upper = _reserve(page, offnum, size, is_heap)
    page[upper:upper + size] = item
    return offnum


# t_xmin, t_xmax, t_cid, t_ctid (bi_hi, bi_lo, posid), t_infomask2, t_infomask, t_hoff
TUPLE_HEADER = struct.Struct("<IIIHHHHHB")


def add_heap_tuple(page: bytearray, offnum: int, xmin: int, xmax: int, blkno: int, infomask2: int,
                   infomask: int, hoff: int, body: Buffer, suffix: Buffer | None = None) -> None:
    """Build a heap tuple as redo does (t_cid = FirstCommandId, t_ctid = (blkno, offnum)) directly in
    the page at ``offnum``: the header, then ``body`` (and ``suffix``, for UPDATE's suffix compression).

    Same placement rules and errors as :func:`add_item`; saves assembling the tuple in a separate buffer.
    """
    size = SIZEOF_HEAP_TUPLE_HEADER + len(body) + (len(suffix) if suffix is not None else 0)
    if size > MAX_HEAP_TUPLE_SIZE:
        raise InvalidRecord(f"tuple of {size} bytes exceeds MaxHeapTupleSize")
    upper = _reserve(page, offnum, size, True)
    TUPLE_HEADER.pack_into(page, upper, xmin, xmax, 0, (blkno >> 16) & 0xFFFF, blkno & 0xFFFF, offnum,
                           infomask2, infomask, hoff)
    pos = upper + SIZEOF_HEAP_TUPLE_HEADER
    end = pos + len(body)
    page[pos:end] = body
    if suffix is not None:
        page[end:upper + size] = suffix


# --- fragmentation and line pointer truncation ----------------------------------------------------

_LP_ARRAYS: dict[int, struct.Struct] = {}


def lp_array(nline: int) -> struct.Struct:
    """A cached Struct for ``nline`` line pointer words: one unpack/pack per page instead of per item."""
    st = _LP_ARRAYS.get(nline)
    if st is None:
        st = _LP_ARRAYS[nline] = struct.Struct(f"<{nline}I")
    return st


def repair_fragmentation(page: bytearray) -> None:
    """PageRepairFragmentation (PostgreSQL 15).

    Moves every item with storage to the end of the page, in line pointer order (item 1 nearest the
    special space, as compactify_tuples does whether or not the items were presorted), each keeping its
    MAXALIGNed length; sets any non-used pointer to a clean LP_UNUSED; drops trailing LP_UNUSED pointers
    (new in 14/15: pd_lower shrinks); sets/clears PD_HAS_FREE_LINES. Raises :class:`InvalidPage` on the
    conditions PostgreSQL reports as corruption.
    """
    flags, lower, upper, special, _psv = _BOUNDS.unpack_from(page, OFF_FLAGS)
    if not (SIZE_OF_PAGE_HEADER <= lower <= upper <= special <= BLCKSZ) or special & 7:
        raise InvalidPage(f"corrupted page pointers: lower = {lower}, upper = {upper}, special = {special}")
    nline = (lower - SIZE_OF_PAGE_HEADER) >> 2
    st = lp_array(nline)
    words = list(st.unpack_from(page, SIZE_OF_PAGE_HEADER))
    pieces = []  # bytes of the items that move, in line pointer order
    nunused = 0
    finalused = 0
    new_upper = special
    moving = False  # False while every item so far already sits where compaction would put it
    for idx in range(nline):
        w = words[idx]
        if w & 0x18000:  # lp_flags != LP_UNUSED
            finalused = idx + 1
            length = w >> 17
            if length:
                off = w & 0x7FFF
                alen = (length + 7) & ~7
                if off < upper or off >= special or off + alen > BLCKSZ:
                    raise InvalidPage(f"corrupted line pointer: {off} length {length}")
                new_upper -= alen
                if moving or off != new_upper:
                    moving = True
                    pieces.append(page[off:off + alen])
                    words[idx] = (w & 0xFFFF8000) | new_upper
        else:
            words[idx] = 0  # ItemIdSetUnused
            nunused += 1
    if special - new_upper > special - lower:
        raise InvalidPage(f"corrupted item lengths: total {special - new_upper}, available space {special - lower}")
    if pieces:
        # Item 1 ends at pd_special, each following item just below the previous one; the moved items
        # form one contiguous run from new_upper up to the last item that stayed in place.
        pieces.reverse()
        joined = b"".join(pieces)
        page[new_upper:new_upper + len(joined)] = joined
    st.pack_into(page, SIZE_OF_PAGE_HEADER, *words)
    U16.pack_into(page, OFF_UPPER, new_upper)
    if finalused != nline:
        nunusedend = nline - finalused
        nunused -= nunusedend
        U16.pack_into(page, OFF_LOWER, lower - SIZEOF_ITEMID * nunusedend)
    if nunused > 0:
        flags |= PD_HAS_FREE_LINES
    else:
        flags &= ~PD_HAS_FREE_LINES
    U16.pack_into(page, OFF_FLAGS, flags)


def truncate_line_pointer_array(page: bytearray) -> None:
    """PageTruncateLinePointerArray (VACUUM's rule, not PageRepairFragmentation's).

    Removes trailing LP_UNUSED pointers but always keeps item 1, and sets PD_HAS_FREE_LINES when an unused
    pointer remains before the last used one.
    """
    nline = max_offset(page)
    countdone = False
    sethint = False
    nunusedend = 0
    unpack = U32.unpack_from
    for i in range(nline, 0, -1):
        w = unpack(page, SIZE_OF_PAGE_HEADER + (i - 1) * 4)[0]
        used = (w >> 15) & 3 != LP_UNUSED
        if not countdone and i > 1:
            if not used:
                nunusedend += 1
            else:
                countdone = True
        elif not used:
            sethint = True
            break
    if nunusedend:
        U16.pack_into(page, OFF_LOWER, get_lower(page) - SIZEOF_ITEMID * nunusedend)
    flags = get_flags(page)
    if sethint:
        flags |= PD_HAS_FREE_LINES
    else:
        flags &= ~PD_HAS_FREE_LINES
    U16.pack_into(page, OFF_FLAGS, flags)


# --- free space ----------------------------------------------------------------------------------

def free_space(page: Buffer) -> int:
    """PageGetFreeSpace: hole size less one line pointer, never negative."""
    space = get_upper(page) - get_lower(page)
    return 0 if space < SIZEOF_ITEMID else space - SIZEOF_ITEMID


def heap_free_space(page: Buffer) -> int:
    """PageGetHeapFreeSpace: as free_space, but 0 when no line pointer can be added."""
    space = free_space(page)
    if space > 0:
        nline = max_offset(page)
        if nline >= MAX_HEAP_TUPLES_PER_PAGE:
            if get_flags(page) & PD_HAS_FREE_LINES:
                for i in range(1, nline + 1):
                    w = get_itemid(page, i)
                    if (w >> 15) & 3 == LP_UNUSED and (w >> 17) == 0:
                        return space
            return 0
    return space
