"""PostgreSQL's pglz decompression (the format of ``wal_compression = pglz`` full-page images).

Format (src/common/pg_lzcompress.c): a sequence of groups, each a control byte followed by up to eight
items, one per control bit, least significant bit first:

- bit 0: a literal byte, copied as is;
- bit 1: a back-reference of 2 or 3 bytes: ``len = (b0 & 0x0f) + 3``, ``off = ((b0 & 0xf0) << 4) | b1``;
  when ``len == 18`` a third byte adds to the length (up to 273). The ``len`` bytes are copied from ``off``
  bytes back in the output; the ranges may overlap (a repeating pattern), exactly like a byte-by-byte copy.

Unlike PostgreSQL, which trusts its buffer sizes, every read here is bounds-checked: a reference before the
start of the output, a truncated tag or trailing garbage raises :class:`InvalidRecord`.
"""

from __future__ import annotations

from .errors import InvalidRecord

# Number of low zero bits of a control byte (8 for 0): how many literal items come next.
_TRAILING_ZEROS = tuple(8 if c == 0 else (c & -c).bit_length() - 1 for c in range(256))


def pglz_decompress(src: bytes | bytearray | memoryview, rawsize: int, *, check_complete: bool = True) -> bytes:
    """Decompress ``src`` into exactly ``rawsize`` bytes.

    With ``check_complete`` (what WAL image restore uses) the input must be consumed completely and produce
    exactly ``rawsize`` bytes. Without it, decoding stops at ``rawsize`` output bytes or end of input and
    returns what was produced.

    Raises :class:`InvalidRecord` on a corrupt stream: an offset of 0 or pointing before the output start, a
    tag cut off by the end of input, output shorter than ``rawsize`` or input left over (with
    ``check_complete``).
    """
    if rawsize < 0:
        raise InvalidRecord(f"pglz: negative raw size {rawsize}")
    src = bytes(src)
    srcend = len(src)
    out = bytearray()
    sp = 0
    dlen = 0
    tz = _TRAILING_ZEROS
    while sp < srcend and dlen < rawsize:
        ctrl = src[sp]
        sp += 1
        bits = 8
        while bits and sp < srcend and dlen < rawsize:
            if ctrl & 1 == 0:
                # A run of literal items (the low zero bits of the control byte): one slice for all.
                k = min(tz[ctrl], bits, srcend - sp, rawsize - dlen)
                out += src[sp : sp + k]
                sp += k
                dlen += k
                ctrl >>= k
                bits -= k
                continue
            if sp + 2 > srcend:
                raise InvalidRecord("pglz: back-reference tag truncated at end of input")
            b0 = src[sp]
            length = (b0 & 0x0F) + 3
            off = ((b0 & 0xF0) << 4) | src[sp + 1]
            sp += 2
            if length == 18:
                if sp >= srcend:
                    raise InvalidRecord("pglz: extended length byte missing at end of input")
                length += src[sp]
                sp += 1
            if off == 0 or off > dlen:
                raise InvalidRecord(f"pglz: back-reference offset {off} outside the {dlen} bytes produced")
            # PostgreSQL clamps the copy to the room left in the destination.
            if length > rawsize - dlen:
                length = rawsize - dlen
            start = dlen - off
            if off >= length:
                out += out[start : start + length]
            else:
                # Overlapping copy == repeating the last `off` bytes.
                pattern = out[start:dlen]
                reps, rest = divmod(length, off)
                out += pattern * reps + pattern[:rest]
            dlen += length
            ctrl >>= 1
            bits -= 1
    if check_complete and (dlen != rawsize or sp != srcend):
        raise InvalidRecord(
            f"pglz: stream produced {dlen} of {rawsize} bytes and consumed {sp} of {srcend} input bytes"
        )
    return bytes(out)


def pglz_compress_literal(data: bytes) -> bytes:
    """Encode ``data`` as all-literal pglz (no back-references): a valid, uncompressed pglz stream.

    For tests: PostgreSQL never writes this (it falls back to storing uncompressed), but every decoder must
    accept it. Never raises.
    """
    out = bytearray()
    for i in range(0, len(data), 8):
        out.append(0)
        out += data[i : i + 8]
    return bytes(out)


__all__ = ["pglz_decompress", "pglz_compress_literal"]
