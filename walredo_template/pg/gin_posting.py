"""GIN posting lists (``ginpostinglist.c``) and the recompression of a posting-tree leaf page that INSERT
and VACUUM_DATA_LEAF_PAGE records describe (``ginRedoRecompress``), for :mod:`.gin`.

A posting tree leaf page (flags GIN_DATA | GIN_LEAF | GIN_COMPRESSED) holds, after the 24-byte page header,
the right bound item pointer (6 bytes, MAXALIGNed to 8) and then, from offset 32 up to pd_lower, a run of
compressed segments (``GinPostingList``)::

    0  first    ItemPointerData: u16 bi_hi, u16 bi_lo (block = bi_hi << 16 | bi_lo), u16 posid
    6  nbytes   u16, the length of the varbyte data
    8  bytes    varbyte-encoded deltas, then a zero byte if nbytes is odd (segment size 8 + SHORTALIGN(nbytes))

Each item pointer maps to the integer ``block << 11 | offset``; the deltas between consecutive integers are
written 7 bits a byte, low bits first, the high bit marking that another byte follows (the seventh byte is
taken whole). A pre-9.4 leaf (no GIN_COMPRESSED) instead holds ``maxoff`` plain 6-byte item pointers from
offset 32; the first recompression converts it.

The recompression data (block data of the record) is ``u16 nactions`` and then per action ``u8 segno, u8
type`` followed by, for INSERT (2) and REPLACE (3), a whole segment; for ADDITEMS (4), ``u16 nitems`` and
that many 6-byte item pointers to merge into the segment; for DELETE (1), nothing. Actions name segments of
the page as it was before the record, in ascending order; the page is rewritten from offset 32 and pd_lower
moved to the new end (bytes past it keep their old values, as PostgreSQL's in-place copy leaves them).

ADDITEMS is redone as PostgreSQL does it (decode the segment, merge, re-encode) except in its common case,
new items that all follow the segment's last one on a segment encoded the way PostgreSQL encodes: then the
new deltas are appended to the old bytes, which gives the same segment without decoding item by item.

Item pointers are handled here as ``block << 16 | offset`` ints, which sort as ``ginCompareItemPointers``.
Where PostgreSQL only asserts (items in ascending order, actions in segment order, an action other than
INSERT past the last segment, a merged segment larger than a page) the record is refused.
"""

from __future__ import annotations

import re
import struct

from .errors import InvalidPage, InvalidRecord
from .page import BLCKSZ, OFF_LOWER, OFF_SPECIAL, OFF_UPPER, U16

DATA_START = 32  # MAXALIGN(SizeOfPageHeaderData) + MAXALIGN(sizeof(ItemPointerData))
SEG_HEADER = struct.Struct("<HHHH")  # first (bi_hi, bi_lo, posid), nbytes
OPAQUE = struct.Struct("<IHH")  # GinPageOpaqueData: rightlink, maxoff, flags
GIN_COMPRESSED = 0x80
MAX_SEGMENT = BLCKSZ  # redo compresses with maxsize BLCKSZ

SEGMENT_DELETE = 1
SEGMENT_INSERT = 2
SEGMENT_REPLACE = 3
SEGMENT_ADDITEMS = 4

_MASK64 = (1 << 64) - 1
_HIGH_BYTES = bytes(range(0x80, 0x100))
_MULTI_BYTE = re.compile(rb"[\x80-\xff]+[\x00-\x7f]?")  # a varbyte integer of 2+ bytes (or a cut one)


def segment_size(buf: bytes | bytearray, pos: int, end: int) -> int:
    """SizeOfGinPostingList of the segment at ``pos``, checked to end at or before ``end``. Raises
    :class:`InvalidPage` (the segments come from the page)."""
    if pos + 8 > end:
        raise InvalidPage(f"GIN posting list segment header at {pos} runs past the end of the list ({end})")
    nbytes: int = U16.unpack_from(buf, pos + 6)[0]
    size = 8 + ((nbytes + 1) & ~1)
    if pos + size > end:
        raise InvalidPage(f"GIN posting list segment at {pos} of {size} bytes runs past the end of the list")
    return size


def decode_segment(buf: bytes | bytearray, pos: int) -> list[int]:
    """ginPostingListDecode of the (bounds-checked) segment at ``pos``. Raises :class:`InvalidPage` when
    the varbyte data ends inside an integer (PostgreSQL would read past the segment)."""
    hi, lo, posid, nbytes = SEG_HEADER.unpack_from(buf, pos)
    first = (hi << 16 | lo) << 16 | posid
    out = [first]
    append = out.append
    val = (hi << 16 | lo) << 11 | posid
    v = 0
    shift = 0
    for c in buf[pos + 8:pos + 8 + nbytes]:
        if c & 0x80 and shift < 42:
            v |= (c & 0x7F) << shift
            shift += 7
            continue
        val = (val + (v | c << shift)) & _MASK64
        append(((val >> 11) & 0xFFFFFFFF) << 16 | (val & 0x7FF))
        v = 0
        shift = 0
    if shift:
        raise InvalidPage(f"GIN posting list segment at {pos} ends inside a varbyte integer")
    return out


def _canonical_end(buf: bytes | bytearray, pos: int) -> int | None:
    """The integer form of the last item of the segment at ``pos`` when its encoding is exactly what
    :func:`encode_segment` writes for its items (minimal varbytes, every delta positive, no value past
    43 bits), else None. Lets ADDITEMS append to a segment without decoding it item by item: the bytes of
    the single-byte deltas are summed at C speed, only the rarer longer integers are taken apart here."""
    hi, lo, posid, nbytes = SEG_HEADER.unpack_from(buf, pos)
    if posid > 0x7FF:
        return None  # the first item's offset spills into the block bits of its integer form
    raw = bytes(buf[pos + 8:pos + 8 + nbytes])
    ends = raw.translate(None, _HIGH_BYTES)  # the last byte of every integer
    if b"\x00" in ends:
        return None  # a zero delta, or a longer encoding than needed
    total = sum(ends)
    for m in _MULTI_BYTE.findall(raw):
        last = m[-1]
        if len(m) > 7 or last & 0x80:
            return None  # cut short, or a seventh byte with its high bit set
        v = 0
        for i in range(len(m) - 1):
            v |= (m[i] & 0x7F) << (7 * i)
        total += v | last << (7 * (len(m) - 1))
        total -= last  # already counted in ``ends``
    val: int = ((hi << 16 | lo) << 11 | posid) + total
    return val if val < 1 << 43 else None


def _append_to_segment(buf: bytes, pos: int, last: int, items: list[int]) -> bytes | None:
    """The segment ``encode_segment(old items + items)`` gives, built from the old segment's bytes (whose
    last item is ``last`` in integer form) and the new items' deltas; None when they are not ascending
    (left to the general path, which refuses them). Raises :class:`InvalidRecord` when it exceeds a page."""
    nbytes = U16.unpack_from(buf, pos + 6)[0]
    out = bytearray(buf[pos:pos + 8 + nbytes])
    append = out.append
    prev = last
    for k in items:
        val = (k >> 16) << 11 | (k & 0xFFFF)
        delta = val - prev
        if delta <= 0:
            return None
        while delta > 0x7F:
            append(0x80 | (delta & 0x7F))
            delta >>= 7
        append(delta)
        prev = val
    total = len(out) - 8
    if total > MAX_SEGMENT - 8:
        raise InvalidRecord("GIN ADDITEMS segment does not fit in a page")
    U16.pack_into(out, 6, total)
    if total & 1:
        append(0)
    return bytes(out)


def encode_segment(items: list[int], maxsize: int = MAX_SEGMENT) -> tuple[bytes, int]:
    """ginCompressPostingList: (segment bytes, number of items that fit in ``maxsize`` bytes). ``items`` is
    non-empty. Raises :class:`InvalidRecord` when the items are not strictly ascending (PostgreSQL asserts
    that; the encoding of a negative delta is undefined)."""
    first = items[0]
    prev = (first >> 16) << 11 | (first & 0xFFFF)
    maxbytes = (maxsize & ~1) - 8
    out = bytearray()
    append = out.append
    n = 1
    for k in items[1:]:
        val = (k >> 16) << 11 | (k & 0xFFFF)
        delta = val - prev
        if delta <= 0:
            raise InvalidRecord("GIN posting list items are not in ascending order")
        if delta < 0x80:
            if len(out) >= maxbytes:
                break
            append(delta)
        else:
            start = len(out)
            while delta > 0x7F:
                append(0x80 | (delta & 0x7F))
                delta >>= 7
            append(delta)
            if len(out) > maxbytes:
                del out[start:]
                break
        prev = val
        n += 1
    nbytes = len(out)
    if nbytes & 1:
        append(0)
    blk = first >> 16
    return SEG_HEADER.pack(blk >> 16, blk & 0xFFFF, first & 0xFFFF, nbytes) + out, n


def merge_items(a: list[int], b: list[int]) -> list[int]:
    """ginMergeItemPointers(a, b): both ascending; an item in both is kept once."""
    if not a or not b or a[-1] < b[0]:
        return a + b
    if b[-1] < a[0]:
        return b + a
    out: list[int] = []
    append = out.append
    i = j = 0
    na, nb = len(a), len(b)
    while i < na and j < nb:
        x, y = a[i], b[j]
        if x > y:
            append(y)
            j += 1
        elif x == y:
            append(y)
            i += 1
            j += 1
        else:
            append(x)
            i += 1
    out.extend(a[i:])
    out.extend(b[j:])
    return out


def _convert_uncompressed(page: bytearray, special: int) -> None:
    """Turn a pre-9.4 leaf (``maxoff`` plain item pointers) into one compressed segment."""
    rightlink, maxoff, flags = OPAQUE.unpack_from(page, special)
    if DATA_START + 6 * maxoff > special:
        raise InvalidPage(f"uncompressed GIN leaf claims {maxoff} items, more than the page holds")
    total = 0
    if maxoff:
        items = [(hi << 16 | lo) << 16 | posid for hi, lo, posid in
                 struct.iter_unpack("<HHH", page[DATA_START:DATA_START + 6 * maxoff])]
        try:
            seg, npacked = encode_segment(items)
        except InvalidRecord as e:
            raise InvalidPage(f"uncompressed GIN leaf: {e}") from None
        if npacked != maxoff or DATA_START + len(seg) > U16.unpack_from(page, OFF_UPPER)[0]:
            raise InvalidPage("uncompressed GIN leaf items do not fit the page once compressed")
        page[DATA_START:DATA_START + len(seg)] = seg
        total = len(seg)
    U16.pack_into(page, OFF_LOWER, DATA_START + total)
    OPAQUE.pack_into(page, special, rightlink, 0, flags | GIN_COMPRESSED)


def recompress(page: bytearray, data: bytes, pos: int) -> None:
    """ginRedoRecompress: apply the segment actions at ``data[pos:]`` to the leaf ``page`` (the caller has
    checked it is a GIN data leaf with a valid special space). Raises :class:`InvalidRecord` for actions the
    page cannot take (truncated, unknown type, segment out of order or beyond the page, result too large)
    and :class:`InvalidPage` for a page whose segments cannot be walked."""
    special = U16.unpack_from(page, OFF_SPECIAL)[0]
    if not OPAQUE.unpack_from(page, special)[2] & GIN_COMPRESSED:
        _convert_uncompressed(page, special)
    lower = U16.unpack_from(page, OFF_LOWER)[0]
    if lower < DATA_START:
        raise InvalidPage(f"GIN data leaf page has pd_lower {lower}, below its posting lists ({DATA_START})")
    # Read the old segments from a copy, as PostgreSQL copies the page's tail once it starts rewriting.
    old = bytes(page[DATA_START:lower])
    oldend = len(old)
    out: list[bytes] = []
    rpos = 0
    segno = 0
    copied = False
    dlen = len(data)
    if pos + 2 > dlen:
        raise InvalidRecord("GIN recompress data is truncated (no action count)")
    nactions = U16.unpack_from(data, pos)[0]
    p = pos + 2
    for _ in range(nactions):
        if p + 2 > dlen:
            raise InvalidRecord("GIN recompress data is truncated (action header)")
        a_segno, action = data[p], data[p + 1]
        p += 2
        newseg = b""
        additems: list[int] = []
        if action == SEGMENT_INSERT or action == SEGMENT_REPLACE:
            if p + 8 > dlen:
                raise InvalidRecord("GIN recompress data is truncated (segment header)")
            size = 8 + ((U16.unpack_from(data, p + 6)[0] + 1) & ~1)
            if p + size > dlen:
                raise InvalidRecord("GIN recompress data is truncated (segment)")
            newseg = data[p:p + size]
            p += size
        elif action == SEGMENT_ADDITEMS:
            if p + 2 > dlen:
                raise InvalidRecord("GIN recompress data is truncated (item count)")
            nitems = U16.unpack_from(data, p)[0]
            p += 2
            if p + 6 * nitems > dlen:
                raise InvalidRecord("GIN recompress data is truncated (items)")
            additems = [(hi << 16 | lo) << 16 | posid for hi, lo, posid in
                        struct.iter_unpack("<HHH", data[p:p + 6 * nitems])]
            p += 6 * nitems
        if a_segno < segno:
            raise InvalidRecord(f"GIN recompress action for segment {a_segno} after segment {segno}")
        while segno < a_segno:
            if rpos >= oldend:
                raise InvalidRecord(f"GIN recompress action for segment {a_segno}, the page has {segno}")
            size = segment_size(old, rpos, oldend)
            out.append(old[rpos:rpos + size])
            rpos += size
            segno += 1
        if rpos < oldend:
            segsize = segment_size(old, rpos, oldend)
            copied = True
        elif action != SEGMENT_INSERT:
            raise InvalidRecord(f"GIN recompress action {action} for segment {a_segno} past the last segment")
        else:
            segsize = 0
        if action == SEGMENT_ADDITEMS:
            # Usually the new items all follow the segment's last one: append their deltas to its bytes,
            # which is what re-encoding the merged list gives when the old encoding is canonical.
            last = _canonical_end(old, rpos) if additems else None
            fast = None
            if last is not None and additems[0] > ((last >> 11) << 16 | (last & 0x7FF)):
                fast = _append_to_segment(old, rpos, last, additems)
            if fast is not None:
                newseg = fast
            else:
                olditems = decode_segment(old, rpos)
                merged = merge_items(additems, olditems)
                newseg, npacked = encode_segment(merged)
                if npacked != len(merged):
                    raise InvalidRecord("GIN ADDITEMS segment does not fit in a page")
            action = SEGMENT_REPLACE
        if action == SEGMENT_DELETE:
            rpos += segsize
            segno += 1
        elif action == SEGMENT_INSERT:
            out.append(newseg)
        elif action == SEGMENT_REPLACE:
            out.append(newseg)
            rpos += segsize
            segno += 1
        else:
            raise InvalidRecord(f"unexpected GIN leaf action: {action}")
    if copied and rpos < oldend:
        out.append(old[rpos:])
    new = b"".join(out)
    end = DATA_START + len(new)
    if end > U16.unpack_from(page, OFF_UPPER)[0]:
        raise InvalidRecord(f"GIN recompressed posting lists ({len(new)} bytes) do not fit the page")
    page[DATA_START:end] = new
    U16.pack_into(page, OFF_LOWER, end)
