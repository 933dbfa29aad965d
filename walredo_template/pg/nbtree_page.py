"""B-tree page and tuple operations of PostgreSQL 15 that btree redo needs (helpers of :mod:`.nbtree`).

Page layout (``access/nbtree.h``): a standard page whose special space is ``BTPageOpaqueData`` (16 bytes at
pd_special = 8176)::

    u32 btpo_prev | u32 btpo_next | u32 btpo_level | u16 btpo_flags | u16 btpo_cycleid

The metapage (block 0) holds ``BTMetaPageData`` right after the page header (offset 24, 48 bytes: u32 magic,
version, root, level, fastroot, fastlevel, last_cleanup_num_delpages, 4 pad, f64
last_cleanup_num_heap_tuples, u8 allequalimage) with pd_lower just past it; a deleted page holds its 8-byte
safexid there (pd_lower = 32).

Index tuples (``IndexTupleData``): t_tid (u16 bi_hi, u16 bi_lo, u16 posid) then u16 t_info (size in the low
13 bits, 0x2000 INDEX_ALT_TID_MASK). A posting list tuple has ALT_TID set and BT_IS_POSTING (0x2000) in
posid, whose low 12 bits count its heap TIDs; its block number field is the offset of the 6-byte TID array.
A pivot tuple has ALT_TID without BT_IS_POSTING; its block number is the downlink (or, in a half-dead
page's high key, the top parent).

Here: the temporary-page builds redo uses (``PageGetTempPageCopySpecial`` + PageAddItem in item order +
``PageRestoreTempPage``; ``_bt_restore_page``), ``_bt_pageinit``/``_bt_restore_meta``, the posting list
operations of ``nbtdedup.c`` (``_bt_form_posting``, ``_bt_swap_posting``, ``_bt_update_posting`` and the
pending-list logic of ``_bt_dedup_start_pending``/``_bt_dedup_save_htid``/``_bt_dedup_finish_pending``), and
``btree_mask``. Everything read from a page or a record is bounds-checked first: a bad page raises
:class:`InvalidPage`, a record that does not fit :class:`InvalidRecord`.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from . import page as P
from .bufmgr import RedoContext, init_for_redo
from .errors import InvalidPage, InvalidRecord
from .mask import begin_index_mask, mask_lp_dead, mask_unused_space
from .page import BLCKSZ, U16
from .xlogrecord import BlockRef

BT_SPECIAL = BLCKSZ - 16  # pd_special of every btree page
P_NONE = 0
P_HIKEY = 1

BTP_LEAF = 1 << 0
BTP_ROOT = 1 << 1
BTP_DELETED = 1 << 2
BTP_META = 1 << 3
BTP_HALF_DEAD = 1 << 4
BTP_SPLIT_END = 1 << 5
BTP_HAS_GARBAGE = 1 << 6
BTP_INCOMPLETE_SPLIT = 1 << 7
BTP_HAS_FULLXID = 1 << 8

BTREE_MAGIC = 0x053162
INDEX_SIZE_MASK = 0x1FFF
INDEX_ALT_TID_MASK = 0x2000
BT_OFFSET_MASK = 0x0FFF
BT_IS_POSTING = 0x2000
SIZEOF_TID = 6
# BTMaxItemSize (2704): a third of the page less the header, three line pointers, three heap TIDs and the
# special space
BT_MAX_ITEM_SIZE = ((BLCKSZ - ((P.SIZE_OF_PAGE_HEADER + 3 * 4 + 3 * 6 + 7) & ~7) - 16) // 3) & ~7
MAX_INDEX_TUPLES_PER_PAGE = (BLCKSZ - P.SIZE_OF_PAGE_HEADER) // (16 + 4)
META_END = P.SIZE_OF_PAGE_HEADER + 48  # pd_lower of the metapage

OPAQUE = struct.Struct("<IIIHH")
FLAGS = struct.Struct("<H")
META = struct.Struct("<IIIIIII4xdB")  # BTMetaPageData at offset 24
XL_METADATA = struct.Struct("<IIIIIIB")  # xl_btree_metadata (sizeof 28 with padding)
XL_METADATA_SIZE = 28
TID_HEAD = struct.Struct("<HHHH")  # bi_hi, bi_lo, posid, t_info
_LU = struct.Struct("<HH")
_HEADER_TAIL = struct.Struct("<HHHH")  # pd_lower, pd_upper, pd_special, pd_pagesize_version


def maxalign(n: int) -> int:
    return (n + 7) & ~7


# --- special space ------------------------------------------------------------------------------

def special(page: bytearray) -> int:
    """Where the BTPageOpaqueData is. Raises :class:`InvalidPage` unless pd_special is the btree one
    (every btree page has a 16-byte special space; anything else cannot be a btree page)."""
    sp: int = U16.unpack_from(page, P.OFF_SPECIAL)[0]
    if sp != BT_SPECIAL:
        raise InvalidPage(f"pd_special is {sp}, not {BT_SPECIAL}: not a btree page")
    return sp


def clear_flags(page: bytearray, bits: int) -> None:
    pos = special(page) + 12
    FLAGS.pack_into(page, pos, FLAGS.unpack_from(page, pos)[0] & ~bits)


def init_page(ctx: RedoContext, blk: BlockRef, lsn: int) -> bytearray:
    """XLogInitBufferForRedo + _bt_pageinit: an image flagged for apply is restored first (as PostgreSQL
    does) and then overwritten like any other content, since redo rebuilds the page either way."""
    page = init_for_redo(ctx, blk, lsn)
    P.page_init(page, 16)
    ctx.checked = True
    return page


def restore_meta(ctx: RedoContext, blk: BlockRef, lsn: int) -> None:
    """_bt_restore_meta: rebuild the metapage from the block's xl_btree_metadata."""
    data = blk.data
    if data is None or len(data) != XL_METADATA_SIZE:
        raise InvalidRecord(f"Btree metapage block carries {0 if data is None else len(data)} bytes of "
                            f"metadata, expected {XL_METADATA_SIZE}")
    version, root, level, fastroot, fastlevel, delpages, allequal = XL_METADATA.unpack_from(data)
    page = init_page(ctx, blk, lsn)
    META.pack_into(page, P.SIZE_OF_PAGE_HEADER, BTREE_MAGIC, version, root, level, fastroot, fastlevel,
                   delpages, -1.0, allequal)
    OPAQUE.pack_into(page, BT_SPECIAL, 0, 0, 0, BTP_META, 0)
    U16.pack_into(page, P.OFF_LOWER, META_END)
    P.set_lsn(page, lsn)


def dummy_hikey(topparent: int) -> bytes:
    """The high key of a half-dead leaf: an 8-byte pivot with no key attributes whose block number is the
    top parent (BTreeTupleSetTopParent)."""
    return TID_HEAD.pack(topparent >> 16, topparent & 0xFFFF, 0, 8 | INDEX_ALT_TID_MASK)


# --- line pointer check -------------------------------------------------------------------------

# n -> per 32-bit lane of an n-lane integer: 1, 0x7FFF, bit 16, 0xFFFF - pd_special
_LANES: dict[int, tuple[int, int, int, int]] = {}


def check_items(page: bytearray) -> None:
    """Refuse a btree page (not a metapage or deleted page, whose "line pointers" are their data) with a
    line pointer whose storage does not lie inside pd_upper..pd_special. Run once on a page that came from
    outside (base image, restored image), so a record that leaves most items alone cannot pass a corrupt
    page on.

    No Python loop over the up to 400 items of a hot page: the array is read as one integer of 32-bit
    lanes and each bound is one carry test on all lanes at once (a + c carries into bit 16 of a lane,
    c = 0x10000 - limit, exactly when a >= limit): lp_off >= pd_upper, and lp_off + lp_len <= pd_special."""
    sp = special(page)
    if FLAGS.unpack_from(page, sp + 12)[0] & (BTP_META | BTP_DELETED):
        return
    lower, upper = _LU.unpack_from(page, P.OFF_LOWER)
    n = (lower - P.SIZE_OF_PAGE_HEADER) >> 2
    if n <= 0:
        return
    lanes = _LANES.get(n)
    if lanes is None:
        ones = ((1 << 32 * n) - 1) // 0xFFFFFFFF
        lanes = _LANES[n] = (ones, ones * 0x7FFF, ones << 16, ones * (0xFFFF - BT_SPECIAL))
    ones, m15, bit16, past = lanes
    x = int.from_bytes(page[P.SIZE_OF_PAGE_HEADER:lower], "little")
    off = x & m15
    if (off + ones * (0x10000 - upper)) & bit16 != bit16 or (off + ((x >> 17) & m15) + past) & bit16:
        raise InvalidPage("a btree line pointer's storage lies outside pd_upper..pd_special")


# --- temporary pages ------------------------------------------------------------------------------

def build_page(page: bytearray, items: Sequence[bytes | bytearray | memoryview], opaque: bytes) -> None:
    """Replace ``page`` by an initialized page (special space ``opaque``) holding ``items`` in item order,
    each as PageAddItem places it (one below the other from pd_special, MAXALIGNed, padding zero): the
    temp page redo builds and then copies over the page (header reset: flags, prune xid, LSN zero). Raises
    :class:`InvalidRecord` when the items do not fit, as PageAddItem fails in redo."""
    n = len(items)
    upper = BT_SPECIAL
    words = []
    for it in items:
        size = len(it)
        if size == 0 or size > 0x7FFF:
            raise InvalidRecord(f"invalid index item size {size}")
        upper -= (size + 7) & ~7
        words.append(upper | 0x8000 | size << 17)
    lower = P.SIZE_OF_PAGE_HEADER + 4 * n
    if lower > upper or n > MAX_INDEX_TUPLES_PER_PAGE:
        raise InvalidRecord(f"{n} index items do not fit on the page")
    buf = bytearray(BLCKSZ)
    for w, it in zip(words, items):
        off = w & 0x7FFF
        buf[off:off + len(it)] = it
    if n:
        P.lp_array(n).pack_into(buf, P.SIZE_OF_PAGE_HEADER, *words)
    _HEADER_TAIL.pack_into(buf, P.OFF_LOWER, lower, upper, BT_SPECIAL, P.PAGESIZE_VERSION)
    buf[BT_SPECIAL:] = opaque
    page[:] = buf


def restore_items(page: bytearray, data: bytes) -> None:
    """_bt_restore_page onto a freshly initialized page: ``data`` is the old pd_upper..pd_special of the
    page, items in reverse item order, each MAXALIGN(IndexTupleSize) long; they land at the same place."""
    n = len(data)
    pos = 0
    starts = []
    while pos < n:
        if pos + 8 > n:
            raise InvalidRecord("btree page data ends inside an index tuple header")
        size = maxalign(U16.unpack_from(data, pos + 6)[0] & INDEX_SIZE_MASK)
        if size == 0 or pos + size > n:
            raise InvalidRecord(f"btree page data: index tuple of {size} bytes at {pos} of {n}")
        starts.append((pos, size))
        pos += size
    count = len(starts)
    upper = BT_SPECIAL - n
    lower = P.SIZE_OF_PAGE_HEADER + 4 * count
    if lower > upper or count > MAX_INDEX_TUPLES_PER_PAGE:
        raise InvalidRecord(f"{count} index items ({n} bytes) do not fit on the page")
    if count:
        words = [(upper + off) | 0x8000 | size << 17 for off, size in reversed(starts)]
        P.lp_array(count).pack_into(page, P.SIZE_OF_PAGE_HEADER, *words)
        page[upper:BT_SPECIAL] = data
    _LU.pack_into(page, P.OFF_LOWER, lower, upper)


# --- tuples --------------------------------------------------------------------------------------

def item_words(page: bytearray) -> tuple[int, ...]:
    """The line pointer words of the page (bounds already checked by check_page)."""
    lower = U16.unpack_from(page, P.OFF_LOWER)[0]
    nline = (lower - P.SIZE_OF_PAGE_HEADER) >> 2
    return P.lp_array(nline).unpack_from(page, P.SIZE_OF_PAGE_HEADER) if nline > 0 else ()


def stored(page: bytearray, word: int, offnum: int) -> tuple[int, int]:
    """(offset, lp_len) of the item a line pointer word points at, checked to lie in the tuple space."""
    off, length = word & 0x7FFF, word >> 17
    upper = U16.unpack_from(page, P.OFF_UPPER)[0]
    if length == 0 or off < upper or off + length > BT_SPECIAL:
        raise InvalidPage(f"btree item {offnum} at {off} length {length} lies outside the tuple space")
    return off, length


def tuple_at(page: bytearray, word: int, offnum: int) -> tuple[int, bytes]:
    """(offset, bytes) of the index tuple (IndexTupleSize bytes) an item holds: PageGetItem read as an
    IndexTuple. Raises :class:`InvalidPage` when the tuple's own size does not fit its line pointer."""
    off, length = stored(page, word, offnum)
    size = U16.unpack_from(page, off + 6)[0] & INDEX_SIZE_MASK if length >= 8 else 0
    if size < 8 or size > length:
        raise InvalidPage(f"btree item {offnum}: tuple size {size} does not fit its {length}-byte item")
    return off, bytes(page[off:off + size])


def tuple_size(data: bytes | memoryview, pos: int, what: str) -> int:
    """IndexTupleSize of a tuple in record data, checked to lie within the data."""
    if pos + 8 > len(data):
        raise InvalidRecord(f"{what}: record data ends inside an index tuple header")
    size: int = U16.unpack_from(data, pos + 6)[0] & INDEX_SIZE_MASK
    if size < 8 or pos + size > len(data):
        raise InvalidRecord(f"{what}: index tuple of {size} bytes at {pos} of {len(data)}")
    return size


def is_posting(tup: bytes | bytearray) -> bool:
    bi_hi, bi_lo, posid, t_info = TID_HEAD.unpack_from(tup)
    return bool(t_info & INDEX_ALT_TID_MASK and posid & BT_IS_POSTING)


def posting(tup: bytes | bytearray, what: str) -> tuple[int, int]:
    """(offset of the TID array, number of TIDs) of a posting list tuple, checked to lie in the tuple.
    Raises :class:`InvalidRecord` when the tuple is not a posting list (the record names the wrong item)."""
    bi_hi, bi_lo, posid, t_info = TID_HEAD.unpack_from(tup)
    if not (t_info & INDEX_ALT_TID_MASK and posid & BT_IS_POSTING):
        raise InvalidRecord(f"{what}: the item is not a posting list tuple")
    off, n = bi_hi << 16 | bi_lo, posid & BT_OFFSET_MASK
    if off < 8 or off + n * SIZEOF_TID > len(tup):
        raise InvalidPage(f"{what}: posting list of {n} TIDs at {off} overruns its {len(tup)}-byte tuple")
    return off, n


def form_posting(base: bytes, keysize: int, htids: bytes | bytearray, nhtids: int) -> bytes:
    """_bt_form_posting (also the tuple _bt_update_posting forms): ``base``'s first ``keysize`` bytes, then
    the ``nhtids`` 6-byte heap TIDs ``htids`` as a MAXALIGNed posting list; with a single TID a plain
    non-pivot tuple of ``keysize`` bytes whose t_tid is that TID."""
    t_info = U16.unpack_from(base, 6)[0] & ~INDEX_SIZE_MASK
    if nhtids > 1:
        newsize = maxalign(keysize + nhtids * SIZEOF_TID)
        tup = bytearray(newsize)
        tup[:keysize] = base[:keysize]
        TID_HEAD.pack_into(tup, 0, keysize >> 16, keysize & 0xFFFF, nhtids | BT_IS_POSTING,
                           t_info | newsize | INDEX_ALT_TID_MASK)
        tup[keysize:keysize + nhtids * SIZEOF_TID] = htids
        return bytes(tup)
    tup = bytearray(base[:keysize])
    tup[:SIZEOF_TID] = htids[:SIZEOF_TID]
    U16.pack_into(tup, 6, (t_info & ~INDEX_ALT_TID_MASK) | keysize)
    return bytes(tup)


def swap_posting(newitem: bytes, oposting: bytes, postingoff: int, what: str) -> tuple[bytes, bytes]:
    """_bt_swap_posting: (the new posting list, the final new item). The new item's heap TID goes into the
    posting list at ``postingoff`` (later TIDs move right, the last one drops out) and the new item takes
    the dropped, highest TID."""
    off, n = posting(oposting, what)
    if not 0 < postingoff < n:
        raise InvalidRecord(f"{what}: posting list tuple with {n} items cannot be split at offset {postingoff}")
    nposting = bytearray(oposting)
    at = off + postingoff * SIZEOF_TID
    last = off + (n - 1) * SIZEOF_TID
    nposting[at + SIZEOF_TID:last + SIZEOF_TID] = oposting[at:last]
    nposting[at:at + SIZEOF_TID] = newitem[:SIZEOF_TID]
    return bytes(nposting), oposting[last:last + SIZEOF_TID] + newitem[SIZEOF_TID:]


def update_posting(orig: bytes, deletetids: Sequence[int], what: str) -> bytes:
    """_bt_update_posting: ``orig`` without the TIDs at the (ascending) posting list positions
    ``deletetids``, MAXALIGNed. Raises :class:`InvalidRecord` for positions that are not ascending, out of
    range, or that would delete every TID (PostgreSQL would write past its buffer)."""
    off, n = posting(orig, what)
    ndel = len(deletetids)
    nhtids = n - ndel
    if nhtids < 1 or (ndel and (deletetids[-1] >= n or any(a >= b for a, b in zip(deletetids, deletetids[1:])))):
        raise InvalidRecord(f"{what}: cannot delete TIDs {list(deletetids)} from a posting list of {n}")
    keep = bytearray()
    prev = 0
    for d in deletetids:
        keep += orig[off + prev * SIZEOF_TID:off + d * SIZEOF_TID]
        prev = d + 1
    keep += orig[off + prev * SIZEOF_TID:off + n * SIZEOF_TID]
    return form_posting(orig, off, keep, nhtids)


class Dedup:
    """The pending posting list of a deduplication pass (BTDedupStateData, the parts redo uses)."""

    __slots__ = ("base", "baseoff", "basetupsize", "htids", "nhtids", "nitems", "nintervals", "out")

    def __init__(self, out: list[bytes]) -> None:
        self.out = out  # the temp page's items, in item order
        self.base = b""
        self.baseoff = 0
        self.basetupsize = 0
        self.htids = bytearray()
        self.nhtids = 0
        self.nitems = 0
        self.nintervals = 0

    def start(self, tup: bytes, offnum: int) -> None:
        """_bt_dedup_start_pending."""
        if is_posting(tup):
            off, n = posting(tup, "DEDUP")
            self.htids = bytearray(tup[off:off + n * SIZEOF_TID])
            self.nhtids = n
            self.basetupsize = off
        else:
            self.htids = bytearray(tup[:SIZEOF_TID])
            self.nhtids = 1
            self.basetupsize = len(tup)
        self.nitems = 1
        self.base = tup
        self.baseoff = offnum

    def save(self, tup: bytes) -> None:
        """_bt_dedup_save_htid; its refusal (the merged tuple would pass BTMaxItemSize) is an error in
        redo."""
        if is_posting(tup):
            off, n = posting(tup, "DEDUP")
            tids = tup[off:off + n * SIZEOF_TID]
        else:
            n, tids = 1, tup[:SIZEOF_TID]
        if maxalign(self.basetupsize + (self.nhtids + n) * SIZEOF_TID) > BT_MAX_ITEM_SIZE:
            raise InvalidRecord("deduplication failed to add heap tid to pending posting list")
        self.nitems += 1
        self.htids += tids
        self.nhtids += n

    def finish(self) -> None:
        """_bt_dedup_finish_pending: the base tuple as it was, or the posting list formed from it."""
        if self.nitems == 1:
            self.out.append(self.base)
        else:
            self.out.append(form_posting(self.base, self.basetupsize, self.htids, self.nhtids))
            self.nintervals += 1
        self.nhtids = 0
        self.nitems = 0


# --- mask --------------------------------------------------------------------------------------

def btree_mask(page: bytearray) -> None:
    """btree_mask (see :func:`.nbtree.mask` for where it is stricter than PostgreSQL)."""
    if not begin_index_mask(page):
        return  # a never-initialized page: nothing else to mask
    mask_unused_space(page)
    sp = special(page)
    prev, nxt, level, flags, _cycle = OPAQUE.unpack_from(page, sp)
    if flags & BTP_LEAF and not flags & BTP_DELETED:
        mask_lp_dead(page)  # items are killed without WAL; btree pages hold no other kind
    OPAQUE.pack_into(page, sp, prev, nxt, level, flags & ~(BTP_HAS_GARBAGE | BTP_SPLIT_END), 0)
