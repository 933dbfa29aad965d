"""pglz decompression: real pglz-compressed full-page images from a cluster run with
``wal_compression = pglz``, hand-made streams and corrupt input (only InvalidRecord, never a crash)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from walredo_template.pg.errors import InvalidRecord
from walredo_template.pg.page import BLCKSZ
from walredo_template.pg.pglz import pglz_compress_literal, pglz_decompress
from walredo_template.pg.xlogrecord import BKPIMAGE_COMPRESS_PGLZ, decode_record


@pytest.fixture(scope="module")
def pglz_images(wal_captures):
    """(stored bytes, raw size, block ref) of pglz-compressed images, a sample of each record type."""
    out = []
    per_kind: dict = {}
    for _s, _e, raw in wal_captures.get("pglz").records:
        rec = decode_record(raw)
        for b in rec.blocks.values():
            if b.has_image and b.bimg_info & BKPIMAGE_COMPRESS_PGLZ:
                key = (rec.rmid, rec.info & 0xF0, b.forknum)
                if per_kind.get(key, 0) < 40:
                    per_kind[key] = per_kind.get(key, 0) + 1
                    out.append((b.bimg, BLCKSZ - b.hole_length, b))
    assert len(out) > 200
    return out


def test_real_images_decompress_to_valid_pages(pglz_images):
    for stored, rawsize, blk in pglz_images:
        body = pglz_decompress(stored, rawsize)
        assert len(body) == rawsize
        page = blk.image()
        assert len(page) == BLCKSZ
        assert page[: blk.hole_offset] == body[: blk.hole_offset]
        assert page[blk.hole_offset : blk.hole_offset + blk.hole_length] == bytes(blk.hole_length)
        lower, upper, special, version = struct.unpack_from("<HHHH", page, 12)
        assert version == 0x2004 and 24 <= lower <= upper <= special <= BLCKSZ
        if blk.hole_length:
            # The hole PostgreSQL cut out is exactly the free space of a standard page.
            assert (blk.hole_offset, blk.hole_offset + blk.hole_length) == (lower, upper)


def test_decompress_without_check_complete_returns_prefix(pglz_images):
    stored, rawsize, _ = pglz_images[0]
    full = pglz_decompress(stored, rawsize)
    assert pglz_decompress(stored, 100, check_complete=False) == full[:100]
    with pytest.raises(InvalidRecord):
        pglz_decompress(stored, 100)  # input left over


def test_literal_stream_roundtrip():
    data = bytes(range(256)) * 5 + b"tail"
    assert pglz_decompress(pglz_compress_literal(data), len(data)) == data
    assert pglz_decompress(b"", 0) == b""


def test_overlapping_back_references():
    # 'ab' then a reference of length 10 at offset 2: a repeating pattern
    assert pglz_decompress(bytes([0b100, 0x61, 0x62, 0x07, 0x02]), 12) == b"ab" * 6
    # extended length: 18 + 200 bytes of the one-byte pattern 'z'
    stream = bytes([0b10, 0x7A, 0x0F, 0x01, 200])
    assert pglz_decompress(stream, 1 + 218) == b"z" * 219
    # a reference longer than the room left is clamped, as PostgreSQL does
    assert pglz_decompress(bytes([0b10, 0x7A, 0x0F, 0x01, 200]), 50, check_complete=False) == b"z" * 50


@pytest.mark.parametrize("stream, rawsize, match", [
    (bytes([0b1, 0x01]), 10, "truncated"),  # tag needs two bytes
    (bytes([0b10, 0x61, 0x0F, 0x01]), 100, "extended length"),
    (bytes([0b1, 0x00, 0x01]), 3, "offset 1 outside"),  # reference before any output
    (bytes([0b10, 0x61, 0x00, 0x00]), 4, "offset 0"),
    (bytes([0b10, 0x61, 0x00, 0x05]), 4, "offset 5"),
    (pglz_compress_literal(b"abc"), 5, "produced 3 of 5"),
    (pglz_compress_literal(b"abc") + b"\x00junk", 3, "consumed"),
])
def test_corrupt_streams(stream, rawsize, match):
    with pytest.raises(InvalidRecord, match=match):
        pglz_decompress(stream, rawsize)


def test_negative_rawsize():
    with pytest.raises(InvalidRecord):
        pglz_decompress(b"", -1)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300), st.integers(0, 9000), st.booleans())
def test_random_streams_only_raise_invalid_record(stream, rawsize, check):
    try:
        out = pglz_decompress(stream, rawsize, check_complete=check)
    except InvalidRecord:
        return
    assert len(out) <= rawsize
    if check:
        assert len(out) == rawsize


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_mutated_real_images(pglz_images, data):
    stored, rawsize, _ = data.draw(st.sampled_from(pglz_images))
    buf = bytearray(stored)
    for _ in range(data.draw(st.integers(1, 3))):
        buf[data.draw(st.integers(0, len(buf) - 1))] = data.draw(st.integers(0, 255))
    buf = buf[: data.draw(st.integers(0, len(buf)))]
    try:
        out = pglz_decompress(bytes(buf), rawsize)
    except InvalidRecord:
        return
    assert len(out) == rawsize


def _reference_decompress(src: bytes, rawsize: int) -> bytes | None:
    """PostgreSQL's loop, one item and one byte at a time; None where PostgreSQL would return -1 (or read
    past the input, which the real decoder reports as an error too)."""
    out = bytearray()
    sp = 0
    while sp < len(src) and len(out) < rawsize:
        ctrl = src[sp]
        sp += 1
        for _ in range(8):
            if not (sp < len(src) and len(out) < rawsize):
                break
            if ctrl & 1:
                if sp + 2 > len(src):
                    return None
                length = (src[sp] & 0x0F) + 3
                off = ((src[sp] & 0xF0) << 4) | src[sp + 1]
                sp += 2
                if length == 18:
                    if sp >= len(src):
                        return None
                    length += src[sp]
                    sp += 1
                if off == 0 or off > len(out):
                    return None
                length = min(length, rawsize - len(out))
                for _ in range(length):
                    out.append(out[-off])
            else:
                out.append(src[sp])
                sp += 1
            ctrl >>= 1
    if len(out) != rawsize or sp != len(src):
        return None
    return bytes(out)


def test_real_images_match_the_reference_loop(pglz_images):
    for stored, rawsize, _blk in pglz_images[:60]:
        assert pglz_decompress(stored, rawsize) == _reference_decompress(stored, rawsize)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.one_of(st.binary(min_size=1, max_size=1).map(lambda b: ("lit", b)),
                          st.tuples(st.just("ref"), st.integers(1, 300), st.integers(3, 273))),
                min_size=1, max_size=60))
def test_generated_streams_match_the_reference_loop(items):
    """Streams built from literals and references (possibly invalid offsets): same answer as the
    reference, or InvalidRecord exactly where the reference fails."""
    stream = bytearray()
    for i in range(0, len(items), 8):
        group = items[i : i + 8]
        ctrl = sum(1 << j for j, it in enumerate(group) if it[0] == "ref")
        stream.append(ctrl)
        for it in group:
            if it[0] == "lit":
                stream += it[1]
            else:
                _, off, length = it
                off &= 0xFFF
                if length >= 18:
                    stream += bytes([((off >> 4) & 0xF0) | 0x0F, off & 0xFF, length - 18])
                else:
                    stream += bytes([((off >> 4) & 0xF0) | (length - 3), off & 0xFF])
    # the raw size a complete decode would produce
    rawsize = sum(1 if it[0] == "lit" else it[2] for it in items)
    want = _reference_decompress(bytes(stream), rawsize)
    if want is None:
        with pytest.raises(InvalidRecord):
            pglz_decompress(bytes(stream), rawsize)
    else:
        assert pglz_decompress(bytes(stream), rawsize) == want
