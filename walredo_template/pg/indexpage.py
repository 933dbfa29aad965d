"""The ``bufpage.c`` operations index redo uses, on a ``bytearray`` page (PostgreSQL 15 semantics).

Index access methods keep their line pointer arrays dense and ordered, so unlike heap redo they insert in
the middle of the array (shifting later pointers), delete items (compacting the tuple space) and
overwrite items in place. The byte-level effects here follow ``bufpage.c`` exactly, including where the
old bytes of a moved or shrunk item end up, because index masks (``btree_mask`` & co.) do not mask item
padding: the rebuilt page must match PostgreSQL's byte for byte.

Every function validates the page bounds and the line pointers it follows; where ``bufpage.c`` raises
"corrupted page pointers/line pointer" this raises :class:`InvalidPage`, and where the record asks for
something the page cannot do (offset out of range, item does not fit) :class:`InvalidRecord`.
"""

from __future__ import annotations

from collections.abc import Sequence

from .errors import InvalidPage, InvalidRecord
from .page import (
    _BOUNDS,
    _LU,
    _LUS,
    BLCKSZ,
    LP_NORMAL,
    LP_UNUSED,
    OFF_FLAGS,
    OFF_LOWER,
    OFF_UPPER,
    PD_HAS_FREE_LINES,
    SIZE_OF_PAGE_HEADER,
    SIZEOF_ITEMID,
    U16,
    U32,
    Buffer,
    lp_array,
)


def _bounds(page: bytearray) -> tuple[int, int, int, int]:
    """(flags, pd_lower, pd_upper, pd_special), checked as bufpage.c's paranoia checks do."""
    flags, lower, upper, special, _psv = _BOUNDS.unpack_from(page, OFF_FLAGS)
    if not (SIZE_OF_PAGE_HEADER <= lower <= upper <= special <= BLCKSZ) or special & 7:
        raise InvalidPage(f"corrupted page pointers: lower = {lower}, upper = {upper}, special = {special}")
    return flags, lower, upper, special


def check_line_pointers(page: bytearray, name: str) -> None:
    """Every line pointer with storage must lie inside pd_upper..pd_special (raises :class:`InvalidPage`
    naming the record ``name``): for the pages whose redo does not check every item it moves."""
    lower, upper, special = _LUS.unpack_from(page, OFF_LOWER)
    n = (lower - SIZE_OF_PAGE_HEADER) >> 2
    if n <= 0:
        return
    bad = [w for w in lp_array(n).unpack_from(page, SIZE_OF_PAGE_HEADER)
           if w >> 17 and not upper <= w & 0x7FFF <= special - (w >> 17)]
    if bad:
        raise InvalidPage(f"{name}: line pointer {bad[0]:#010x} lies outside the tuple space {upper}..{special}")


def _lp_pos(offnum: int) -> int:
    return SIZE_OF_PAGE_HEADER + (offnum - 1) * SIZEOF_ITEMID


def item(page: Buffer, offnum: int) -> memoryview:
    """The bytes of the item at 1-based ``offnum`` (any line pointer with storage), checked to lie inside
    the tuple space. Raises :class:`InvalidRecord` for an offset beyond the array, :class:`InvalidPage`
    for a pointer outside the page."""
    lower, upper, special = U16.unpack_from(page, OFF_LOWER)[0], U16.unpack_from(page, OFF_UPPER)[0], \
        U16.unpack_from(page, 16)[0]
    nline = (lower - SIZE_OF_PAGE_HEADER) >> 2 if lower > SIZE_OF_PAGE_HEADER else 0
    if offnum < 1 or offnum > nline:
        raise InvalidRecord(f"item {offnum} beyond the line pointer array ({nline} items)")
    w = U32.unpack_from(page, _lp_pos(offnum))[0]
    off, length = w & 0x7FFF, w >> 17
    if off < upper or off + length > special or length == 0:
        raise InvalidPage(f"item {offnum} at {off} length {length} lies outside the tuple space")
    return memoryview(page)[off:off + length]


def item_span(page: Buffer, offnum: int) -> tuple[int, int]:
    """(offset, length) of the item at ``offnum``; same checks as :func:`item`."""
    view = item(page, offnum)
    w = U32.unpack_from(page, _lp_pos(offnum))[0]
    return w & 0x7FFF, len(view)


def add_item(page: bytearray, data: Buffer, offnum: int, *, overwrite: bool = False) -> int:
    """PageAddItemExtended for index pages; returns the offset number used.

    ``offnum`` 0 (InvalidOffsetNumber) takes the first unused, storage-less line pointer if the page's
    PD_HAS_FREE_LINES hint says there may be one (clearing a wrong hint), else appends. A valid ``offnum``
    without ``overwrite`` inserts there and shifts later pointers up (the usual index case); with
    ``overwrite`` the slot must be unused or one past the end. Raises :class:`InvalidRecord` where
    PostgreSQL's PageAddItem would fail (PANIC in redo): slot in use, offset too large, no room.
    """
    size = len(data)
    if size == 0 or size > 0x7FFF:
        raise InvalidRecord(f"invalid item size {size}")
    flags, lower, upper, special = _bounds(page)
    limit = ((lower - SIZE_OF_PAGE_HEADER) >> 2) + 1
    shuffle = False
    if offnum:
        if overwrite:
            if offnum < limit and U32.unpack_from(page, _lp_pos(offnum))[0] & 0xFFFF8000:
                raise InvalidRecord(f"will not overwrite used item {offnum}")
        elif offnum < limit:
            shuffle = True
    elif flags & PD_HAS_FREE_LINES:
        for offnum in range(1, limit):
            if not U32.unpack_from(page, _lp_pos(offnum))[0] & 0xFFFF8000:
                break
        else:
            offnum = limit
            U16.pack_into(page, OFF_FLAGS, flags & ~PD_HAS_FREE_LINES)
    else:
        offnum = limit
    if offnum < 1 or offnum > limit:
        raise InvalidRecord(f"item offset {offnum} is too large (max {limit})")
    new_lower = lower + SIZEOF_ITEMID if (offnum == limit or shuffle) else lower
    new_upper = upper - ((size + 7) & ~7)
    if new_lower > new_upper:
        raise InvalidRecord(f"item of {size} bytes does not fit on the page (offset {offnum})")
    pos = _lp_pos(offnum)
    if shuffle:
        page[pos + SIZEOF_ITEMID:pos + SIZEOF_ITEMID + (limit - offnum) * SIZEOF_ITEMID] = \
            page[pos:pos + (limit - offnum) * SIZEOF_ITEMID]
    U32.pack_into(page, pos, new_upper | (LP_NORMAL << 15) | (size << 17))
    page[new_upper:new_upper + size] = data
    _LU.pack_into(page, OFF_LOWER, new_lower, new_upper)
    return offnum


def _checked_item(page: bytearray, offnum: int, nline: int, upper: int, special: int) -> tuple[int, int]:
    if offnum < 1 or offnum > nline:
        raise InvalidRecord(f"invalid index offnum: {offnum}")
    w = U32.unpack_from(page, _lp_pos(offnum))[0]
    off, size = w & 0x7FFF, w >> 17
    if off < upper or off + size > special or off & 7:
        raise InvalidPage(f"corrupted line pointer: offset = {off}, size = {size}")
    return off, size


def _close_gap(page: bytearray, upper: int, offset: int, size: int, nline: int, *, all_storage: bool) -> None:
    """Move the tuple space below a removed item of aligned ``size`` at ``offset`` up by ``size`` and fix
    the pointers of the moved items (the common tail of the retail delete/overwrite functions).

    The line pointer array is unpacked and packed whole (one Struct call each way): index redo deletes
    items on every placeholder replacement and vacuum, and a call per pointer dominated those records."""
    if offset > upper:
        page[upper + size:offset + size] = page[upper:offset]
    if not nline:
        return
    st = lp_array(nline)
    words = st.unpack_from(page, SIZE_OF_PAGE_HEADER)
    if all_storage:
        new = [w + size if w & 0x7FFF <= offset else w for w in words]
    else:
        new = [w + size if w >> 17 and w & 0x7FFF <= offset else w for w in words]
    st.pack_into(page, SIZE_OF_PAGE_HEADER, *new)


def delete_item(page: bytearray, offnum: int) -> None:
    """PageIndexTupleDelete: remove the item and its line pointer, closing both gaps."""
    _flags, lower, upper, special = _bounds(page)
    nline = (lower - SIZE_OF_PAGE_HEADER) >> 2
    offset, size = _checked_item(page, offnum, nline, upper, special)
    size = (size + 7) & ~7
    pos = _lp_pos(offnum)
    page[pos:lower - SIZEOF_ITEMID] = page[pos + SIZEOF_ITEMID:lower]
    lower -= SIZEOF_ITEMID
    _LU.pack_into(page, OFF_LOWER, lower, upper + size)
    if lower > SIZE_OF_PAGE_HEADER:  # !PageIsEmpty
        _close_gap(page, upper, offset, size, nline - 1, all_storage=True)
    elif offset > upper:
        page[upper + size:offset + size] = page[upper:offset]


def delete_item_no_compact(page: bytearray, offnum: int) -> None:
    """PageIndexTupleDeleteNoCompact: remove the item's storage; its line pointer becomes LP_UNUSED
    unless it is the last one, which is dropped."""
    _flags, lower, upper, special = _bounds(page)
    nline = (lower - SIZE_OF_PAGE_HEADER) >> 2
    offset, size = _checked_item(page, offnum, nline, upper, special)
    size = (size + 7) & ~7
    if offnum < nline:
        U32.pack_into(page, _lp_pos(offnum), 0)
    else:
        lower -= SIZEOF_ITEMID
        nline -= 1
    _LU.pack_into(page, OFF_LOWER, lower, upper + size)
    if lower > SIZE_OF_PAGE_HEADER:
        _close_gap(page, upper, offset, size, nline, all_storage=False)
    elif offset > upper:
        page[upper + size:offset + size] = page[upper:offset]


def overwrite_item(page: bytearray, offnum: int, data: Buffer) -> None:
    """PageIndexTupleOverwrite: replace the item at ``offnum`` in place, keeping its line pointer.
    Raises :class:`InvalidRecord` when the new item does not fit (PostgreSQL returns false, and redo
    PANICs)."""
    _flags, lower, upper, special = _bounds(page)
    nline = (lower - SIZE_OF_PAGE_HEADER) >> 2
    offset, oldsize = _checked_item(page, offnum, nline, upper, special)
    newsize = len(data)
    if newsize == 0 or newsize > 0x7FFF:
        raise InvalidRecord(f"invalid item size {newsize}")
    oldsize = (oldsize + 7) & ~7
    aligned = (newsize + 7) & ~7
    if aligned > oldsize + (upper - lower):
        raise InvalidRecord(f"replacement item of {newsize} bytes does not fit at offset {offnum}")
    diff = oldsize - aligned
    if diff:
        # bufpage.c moves the tuple space by a signed amount; the pointers of items at or below
        # ``offset`` (the replaced one included) follow.
        page[upper + diff:offset + diff] = page[upper:offset]
        U16.pack_into(page, OFF_UPPER, upper + diff)
        for i in range(1, nline + 1):
            p = _lp_pos(i)
            w = U32.unpack_from(page, p)[0]
            if w >> 17 and w & 0x7FFF <= offset:
                if w & 0x7FFF < upper:  # outside the tuple space: the shift could take it below 0
                    raise InvalidPage(f"corrupted line pointer {i}: offset {w & 0x7FFF} below pd_upper {upper}")
                U32.pack_into(page, p, (w & ~0x7FFF) | ((w & 0x7FFF) + diff))
    w = U32.unpack_from(page, _lp_pos(offnum))[0]
    U32.pack_into(page, _lp_pos(offnum), ((offset + diff) & 0x7FFF) | (w & 0x18000) | (newsize << 17))
    page[offset + diff:offset + diff + newsize] = data


def compactify(page: bytearray, items: Sequence[tuple[int, int, int]], special: int) -> int:
    """compactify_tuples: place ``items`` — (1-based offnum, old offset, aligned length), in line pointer
    order — one below the other from ``special`` down, each keeping its aligned bytes, and point each line
    pointer at its new place. Returns the new pd_upper (the caller stores it)."""
    pieces = []
    upper = special
    for offnum, off, alen in items:
        upper -= alen
        pieces.append(bytes(page[off:off + alen]))
        p = _lp_pos(offnum)
        w = U32.unpack_from(page, p)[0]
        U32.pack_into(page, p, (w & ~0x7FFF) | upper)
    pos = special
    for piece in pieces:
        pos -= len(piece)
        page[pos:pos + len(piece)] = piece
    return upper


def multi_delete(page: bytearray, offnums: Sequence[int]) -> None:
    """PageIndexMultiDelete: remove the items at ``offnums`` (ascending) and compact the page.

    Two or fewer go through :func:`delete_item` in reverse order, as PostgreSQL does (the byte layout of
    the result differs between the two paths). Raises :class:`InvalidRecord` for offsets that are not
    ascending or not on the page.
    """
    n = len(offnums)
    if n <= 2:
        for offnum in reversed(offnums):
            delete_item(page, offnum)
        return
    _flags, lower, upper, special = _bounds(page)
    nline = (lower - SIZE_OF_PAGE_HEADER) >> 2
    kept_words: list[int] = []
    kept: list[tuple[int, int, int]] = []
    total = 0
    nxt = 0
    for offnum in range(1, nline + 1):
        w = U32.unpack_from(page, _lp_pos(offnum))[0]
        off, size = w & 0x7FFF, w >> 17
        if off < upper or off + size > special or off & 7:
            raise InvalidPage(f"corrupted line pointer: offset = {off}, size = {size}")
        if nxt < n and offnums[nxt] == offnum:
            nxt += 1
            continue
        alen = (size + 7) & ~7
        total += alen
        kept_words.append(w)
        kept.append((len(kept) + 1, off, alen))
    if nxt != n:
        raise InvalidRecord("incorrect index offsets supplied")
    if total > special - lower:
        raise InvalidPage(f"corrupted item lengths: total {total}, available space {special - lower}")
    for i, w in enumerate(kept_words):
        U32.pack_into(page, _lp_pos(i + 1), w)
    new_lower = SIZE_OF_PAGE_HEADER + len(kept) * SIZEOF_ITEMID
    new_upper = compactify(page, kept, special) if kept else special
    _LU.pack_into(page, OFF_LOWER, new_lower, new_upper)


def set_item_flags(page: bytearray, offnum: int, flags: int) -> None:
    """Set lp_flags of the line pointer at ``offnum`` (e.g. ItemIdMarkDead: LP_DEAD), keeping offset and
    length. Raises :class:`InvalidRecord` for an offset beyond the array."""
    lower = U16.unpack_from(page, OFF_LOWER)[0]
    nline = (lower - SIZE_OF_PAGE_HEADER) >> 2 if lower > SIZE_OF_PAGE_HEADER else 0
    if offnum < 1 or offnum > nline:
        raise InvalidRecord(f"item {offnum} beyond the line pointer array ({nline} items)")
    p = _lp_pos(offnum)
    w = U32.unpack_from(page, p)[0]
    U32.pack_into(page, p, (w & ~0x18000) | (flags << 15))


def items(page: Buffer) -> int:
    """PageGetMaxOffsetNumber."""
    lower = U16.unpack_from(page, OFF_LOWER)[0]
    return (lower - SIZE_OF_PAGE_HEADER) >> 2 if lower > SIZE_OF_PAGE_HEADER else 0


__all__ = [
    "add_item", "compactify", "delete_item", "delete_item_no_compact", "item", "item_span", "items",
    "multi_delete", "overwrite_item", "set_item_flags", "LP_UNUSED",
]
