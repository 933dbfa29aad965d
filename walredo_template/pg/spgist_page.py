"""SP-GiST page and tuple operations for redo (PostgreSQL 15 ``spgutils.c``, ``spgdoinsert.c``).

Page layout: an ordinary index page whose 8-byte special space (``SpGistPageOpaqueData``) is::

    pd_special+0  u16 flags          SPGIST_META 1, SPGIST_DELETED 2, SPGIST_LEAF 4, SPGIST_NULLS 8
    pd_special+2  u16 nRedirection   REDIRECT tuples on the page
    pd_special+4  u16 nPlaceholder   PLACEHOLDER tuples on the page
    pd_special+6  u16 spgist_page_id 0xFF82

Every tuple starts with a u32 whose two low bits are the tuple state (LIVE 0, REDIRECT 1, DEAD 2,
PLACEHOLDER 3; gcc's little-endian bitfield order). The rest of that word is, for a leaf or dead tuple,
the tuple size (``size:30``), for an inner tuple ``allTheSame:1, nNodes:13, prefixSize:16`` with the size
in the following u16. Leaf tuple: u32 state|size, u16 t_info (next offset in the chain: low 14 bits),
6-byte heap TID, then the datum at 16 (or 24 with a nulls bitmap). Inner tuple: 8-byte header, the
MAXALIGNed prefix, then ``nNodes`` node tuples, each an IndexTupleData (6-byte TID, u16 t_info whose low
13 bits are its size) plus its label. Dead tuple (``spgFormDeadTuple``, 16 bytes): u32 state|16<<2, u16
t_info 0, TID (the redirect target, else invalid: block 0xFFFFFFFF, offset 0), u32 xid (the redirecting
transaction, else 0).

Redo never looks inside datums: it places the tuples the record carries, converts tuples to dead ones,
and rewrites TIDs and chain links. Every offset and length taken from a record or a page is checked before
use: a record that names an item the page lacks, or whose item is too short for the field written, raises
:class:`InvalidRecord`; corrupt page bounds or line pointers raise :class:`InvalidPage` (from
:mod:`.indexpage`).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from operator import le

from . import indexpage as IP
from . import page as P
from .errors import InvalidPage, InvalidRecord
from .mask import mask_page_hint_bits, mask_page_lsn_and_checksum, mask_unused_space

SPGIST_META = 1
SPGIST_LEAF = 4
SPGIST_NULLS = 8
SPGIST_PAGE_ID = 0xFF82
OPAQUE_SIZE = 8

SPGIST_LIVE = 0
SPGIST_REDIRECT = 1
SPGIST_DEAD = 2
SPGIST_PLACEHOLDER = 3

SGDTSIZE = 16  # MAXALIGN(sizeof(SpGistDeadTupleData))
SGITHDRSZ = 8  # MAXALIGN(sizeof(SpGistInnerTupleData))
LEAF_HEADER = 12  # sizeof(SpGistLeafTupleData): the bytes redo copies to read the size
INVALID_BLOCK = 0xFFFFFFFF

_OPAQUE = struct.Struct("<HHHH")  # flags, nRedirection, nPlaceholder, spgist_page_id
_COUNTS = struct.Struct("<HH")  # nRedirection, nPlaceholder
_TID = struct.Struct("<HHH")  # ItemPointerData: block hi, block lo, offset
_INVALID_TID = _TID.pack(0xFFFF, 0xFFFF, 0)
_DEAD = struct.Struct("<IHHHHI")  # state|size<<2, t_info, TID, xid
_U16 = P.U16
_U32 = P.U32


def _dead(state: int, blkno: int, offnum: int, xid: int) -> bytes:
    if state == SPGIST_REDIRECT:
        return _DEAD.pack(state | SGDTSIZE << 2, 0, blkno >> 16 & 0xFFFF, blkno & 0xFFFF, offnum, xid)
    return _DEAD.pack(state | SGDTSIZE << 2, 0, 0xFFFF, 0xFFFF, 0, 0)


_PLAIN_DEAD = {s: _dead(s, 0, 0, 0) for s in (SPGIST_DEAD, SPGIST_PLACEHOLDER)}


def dead_tuple(state: int, blkno: int = INVALID_BLOCK, offnum: int = 0, xid: int = 0) -> bytes:
    """spgFormDeadTuple: a REDIRECT to (blkno, offnum) made by ``xid``, or a DEAD / PLACEHOLDER tuple
    (invalid pointer, xid 0)."""
    plain = _PLAIN_DEAD.get(state)
    return plain if plain is not None else _dead(state, blkno, offnum, xid)


# --- page ----------------------------------------------------------------------------------------

def init_page(page: bytearray, flags: int) -> None:
    """SpGistInitPage: an empty page with the 8-byte opaque area (flags, zero counters, page id)."""
    P.page_init(page, OPAQUE_SIZE)
    _OPAQUE.pack_into(page, P.BLCKSZ - OPAQUE_SIZE, flags, 0, 0, SPGIST_PAGE_ID)


def _opaque_pos(page: bytearray) -> int:
    special: int = _U16.unpack_from(page, P.OFF_SPECIAL)[0]
    if special + OPAQUE_SIZE > P.BLCKSZ:
        raise InvalidPage(f"pd_special {special} leaves no room for the SP-GiST opaque area")
    return special


def add_counts(page: bytearray, redirections: int, placeholders: int) -> None:
    """Adjust nRedirection and nPlaceholder. They are uint16 in PostgreSQL, which only Asserts they do not
    go below zero; a production server wraps them, and so does this."""
    pos = _opaque_pos(page) + 2
    nred, nph = _COUNTS.unpack_from(page, pos)
    _COUNTS.pack_into(page, pos, (nred + redirections) & 0xFFFF, (nph + placeholders) & 0xFFFF)


def _item(page: bytearray, offnum: int, need: int) -> int:
    """Where the item at ``offnum`` starts, checked to be on the page with at least ``need`` bytes."""
    off, length = IP.item_span(page, offnum)
    if length < need:
        raise InvalidRecord(f"item {offnum} has {length} bytes, too short for the {need} redo writes")
    return off


def check_items(page: bytearray) -> None:
    """The items of a page from outside (a base image, a restored image) are as PostgreSQL lays them out:
    MAXALIGNed, within the tuple space, not overlapping, and the opaque area fits. Run once per request,
    so a corrupt page is refused before redo moves its items around (a compaction would carry an
    overlapping item past pd_special)."""
    lower, upper, special = P._LUS.unpack_from(page, P.OFF_LOWER)
    if special + OPAQUE_SIZE > P.BLCKSZ:
        raise InvalidPage(f"pd_special {special} leaves no room for the SP-GiST opaque area")
    nline = (lower - P.SIZE_OF_PAGE_HEADER) >> 2
    if nline <= 0:
        return
    words = P.lp_array(nline).unpack_from(page, P.SIZE_OF_PAGE_HEADER)
    # SP-GiST pages hold only LP_NORMAL items with storage (deletes remove the line pointer itself)
    odd = [w for w in words if w & 0xFFFF8000 and (w & 0x18000 != 0x8000 or not w >> 17)]
    if odd:
        raise InvalidPage(f"line pointer {odd[0]:#010x} is not a normal item with storage")
    # (offset << 15 | length) sorts by offset in C; then each item must start MAXALIGNed, at or after the
    # end of the one below it (the comparisons run in map, not in a Python loop)
    keys = sorted([(w & 0x7FFF) << 15 | w >> 17 for w in words if w >> 17])
    if not keys:
        return
    offs = [k >> 15 for k in keys]
    ends = [(k >> 15) + ((k & 0x7FFF) + 7 & ~7) for k in keys]
    if offs[0] < upper or ends[-1] > special or not all(map(le, ends, offs[1:])) or any(o & 7 for o in offs):
        raise InvalidPage(f"items overlap, are not MAXALIGNed or lie outside the tuple space {upper}..{special}")


def check_offsets(page: bytearray, offnums: Sequence[int]) -> None:
    """Every offset names an existing line pointer (redo reads or swaps it)."""
    maxoff = IP.items(page)
    for o in offnums:
        if not 1 <= o <= maxoff:
            raise InvalidRecord(f"item {o} beyond the line pointer array ({maxoff} items)")


# --- tuples --------------------------------------------------------------------------------------

def leaf_size(data: bytes | memoryview, pos: int, what: str) -> int:
    """The size field of the unaligned leaf tuple at ``data[pos:]``, checked to lie within ``data``."""
    if pos + LEAF_HEADER > len(data):
        raise InvalidRecord(f"{what}: leaf tuple header at {pos} runs past the record's {len(data)} bytes")
    size: int = _U32.unpack_from(data, pos)[0] >> 2
    if size < LEAF_HEADER or pos + size > len(data):
        raise InvalidRecord(f"{what}: leaf tuple of {size} bytes at {pos} does not fit the record")
    return size


def inner_size(data: bytes | memoryview, pos: int, what: str) -> int:
    """The size field of the unaligned inner tuple at ``data[pos:]``, checked to lie within ``data``."""
    if pos + SGITHDRSZ > len(data):
        raise InvalidRecord(f"{what}: inner tuple header at {pos} runs past the record's {len(data)} bytes")
    size: int = _U16.unpack_from(data, pos + 4)[0]
    if size < SGITHDRSZ or pos + size > len(data):
        raise InvalidRecord(f"{what}: inner tuple of {size} bytes at {pos} does not fit the record")
    return size


def put_at(page: bytearray, offnum: int, tup: bytes | memoryview) -> None:
    """PageAddItem at ``offnum`` without overwrite (later line pointers shift up); it must land there."""
    if offnum < 1:
        raise InvalidRecord(f"invalid item offset {offnum}")
    IP.add_item(page, tup, offnum)


def replace_at(page: bytearray, offnum: int, tup: bytes | memoryview) -> None:
    """PageIndexTupleDelete + PageAddItem at the same offset: the tuple at ``offnum`` is replaced and the
    new one placed at the top of the tuple space (not PageIndexTupleOverwrite: the bytes differ)."""
    IP.delete_item(page, offnum)
    put_at(page, offnum, tup)


def add_or_replace(page: bytearray, offnum: int, tup: bytes | memoryview) -> None:
    """addOrReplaceTuple: place ``tup`` at ``offnum``, past the end or over a PLACEHOLDER (whose count
    drops). Any other tuple there is refused, as PostgreSQL does."""
    if offnum < 1:
        raise InvalidRecord(f"invalid item offset {offnum}")
    if offnum <= IP.items(page):
        off = _item(page, offnum, 4)
        if page[off] & 3 != SPGIST_PLACEHOLDER:
            raise InvalidRecord(f"SPGiST tuple to be replaced at {offnum} is not a placeholder")
        add_counts(page, 0, -1)
        IP.delete_item(page, offnum)
    IP.add_item(page, tup, offnum)


def multi_delete(page: bytearray, offnums: Sequence[int], first_state: int, rest_state: int,
                 blkno: int = INVALID_BLOCK, offnum: int = 0, xid: int = 0) -> None:
    """spgPageIndexMultiDelete: replace the tuples at ``offnums`` by dead tuples — the one listed first
    (before sorting) in ``first_state``, the others in ``rest_state`` — keeping their offsets, and count the
    new redirects and placeholders. Redirects point to (blkno, offnum) and carry ``xid``."""
    if not offnums:
        return
    ordered = sorted(offnums)
    IP.multi_delete(page, ordered)
    first = offnums[0]
    nred = nph = 0
    for o in ordered:
        state = first_state if o == first else rest_state
        put_at(page, o, dead_tuple(state, blkno, offnum, xid))
        if state == SPGIST_REDIRECT:
            nred += 1
        elif state == SPGIST_PLACEHOLDER:
            nph += 1
    add_counts(page, nred, nph)


def set_next_offset(page: bytearray, offnum: int, nxt: int) -> None:
    """SGLT_SET_NEXTOFFSET on the leaf tuple at ``offnum``: the chain link, keeping t_info's flag bits."""
    pos = _item(page, offnum, 6) + 4
    t_info = _U16.unpack_from(page, pos)[0]
    _U16.pack_into(page, pos, (t_info & 0xC000) | (nxt & 0x3FFF))


def update_node_link(page: bytearray, offnum: int, node: int, blkno: int, target: int) -> None:
    """spgUpdateNodeLink: point node ``node`` of the inner tuple at ``offnum`` to (blkno, target)."""
    off, length = IP.item_span(page, offnum)
    end = off + length
    if length < SGITHDRSZ:
        raise InvalidRecord(f"inner tuple {offnum} has {length} bytes")
    bits = _U32.unpack_from(page, off)[0]
    nnodes = bits >> 3 & 0x1FFF
    if node >= nnodes:
        raise InvalidRecord(f"failed to find requested node {node} in SPGiST inner tuple {offnum} "
                            f"({nnodes} nodes)")
    pos = off + SGITHDRSZ + (bits >> 16)
    for _ in range(node):
        if pos + 8 > end:
            break
        pos += _U16.unpack_from(page, pos + 6)[0] & 0x1FFF
    if pos + 8 > end:
        raise InvalidRecord(f"the nodes of inner tuple {offnum} run past its {length} bytes")
    _TID.pack_into(page, pos, blkno >> 16 & 0xFFFF, blkno & 0xFFFF, target)


def swap_line_pointers(page: bytearray, a: int, b: int) -> None:
    """Exchange two line pointers (VACUUM_LEAF's move of a live tuple into a chain's head slot)."""
    pa = P.SIZE_OF_PAGE_HEADER + (a - 1) * 4
    pb = P.SIZE_OF_PAGE_HEADER + (b - 1) * 4
    page[pa:pa + 4], page[pb:pb + 4] = page[pb:pb + 4], page[pa:pa + 4]


def redirect_to_placeholder(page: bytearray, offnum: int) -> None:
    """VACUUM_REDIRECT's conversion: tuple state PLACEHOLDER, pointer invalid; the xid stays."""
    off = _item(page, offnum, 12)
    page[off] |= SPGIST_PLACEHOLDER  # both state bits set
    page[off + 6:off + 12] = _INVALID_TID


# --- mask ----------------------------------------------------------------------------------------

def spg_mask(page: bytearray) -> None:
    """spg_mask: LSN and checksum, the hint bits, and the hole between pd_lower and pd_upper when
    pd_lower is at least the header size (a page whose pd_lower is not set keeps its hole)."""
    if len(page) != P.BLCKSZ:
        raise InvalidPage(f"page has {len(page)} bytes, expected {P.BLCKSZ}")
    mask_page_lsn_and_checksum(page)
    mask_page_hint_bits(page)
    if _U16.unpack_from(page, P.OFF_LOWER)[0] >= P.SIZE_OF_PAGE_HEADER:
        mask_unused_space(page)
