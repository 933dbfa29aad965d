"""Record decoding on real PostgreSQL 15 WAL, cross-checked field by field with pg_waldump; malformed
records (hand-made and hypothesis-mutated) raise only InvalidRecord."""

from __future__ import annotations

import re
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from walredo_template import BufferTag
from walredo_template.pg.crc32c import crc32c, crc32c_pure
from walredo_template.pg.errors import InvalidRecord, MissingCompressionLibrary
from walredo_template.pg.page import BLCKSZ
from walredo_template.pg.xlogrecord import DecodedRecord, decode_record
from walredo_tools.walreader import parse_lsn

RMGR_IDS = {"XLOG": 0, "Transaction": 1, "Storage": 2, "CLOG": 3, "Database": 4, "Tablespace": 5,
            "MultiXact": 6, "RelMap": 7, "Standby": 8, "Heap2": 9, "Heap": 10, "Btree": 11}
FORKS = {"": 0, "fsm": 1, "vm": 2, "init": 3}
_LINE = re.compile(
    r"rmgr: (\w+)\s+len \(rec/tot\):\s+(\d+)/\s*(\d+), tx:\s+(\d+), lsn: (\S+), prev (\S+), desc: (.*)$")
_BLK = re.compile(r"blkref #(\d+): rel (\d+)/(\d+)/(\d+)(?: fork (\w+))? blk (\d+)( FPW for WAL verification| FPW)?")


def _seal(body: bytearray) -> bytes:
    """Fix tot_len and CRC of a hand-made record."""
    struct.pack_into("<I", body, 0, len(body))
    struct.pack_into("<I", body, 20, crc32c(bytes(body[:20]), crc32c(bytes(body[24:]))))
    return bytes(body)


def _header(rmid=10, info=0, xid=7, prev=0x1000):
    return bytearray(struct.pack("<IIQBBxxI", 0, xid, prev, info, rmid, 0))


def test_crc32c_known_value_and_native_matches_pure():
    assert crc32c(b"123456789") == crc32c_pure(b"123456789") == 0xE3069283
    assert crc32c(b"456789", crc32c(b"123")) == 0xE3069283


def test_every_record_matches_pg_waldump(default_capture):
    cap = default_capture
    assert len(cap.records) == len(cap.waldump)
    checked_blocks = images = 0
    for (start, _end, raw), line in zip(cap.records, cap.waldump):
        m = _LINE.match(line)
        assert m, line
        rmgr, rec_len, tot_len, xid, lsn, prev, desc = m.groups()
        rec = decode_record(raw)
        assert parse_lsn(lsn) == start
        assert rec.prev == parse_lsn(prev)
        assert rec.xid == int(xid)
        assert rec.tot_len == int(tot_len)
        assert RMGR_IDS.get(rmgr, rec.rmid) == rec.rmid
        fpi_len = sum(len(b.bimg) for b in rec.blocks.values() if b.has_image)
        assert rec.tot_len - fpi_len == int(rec_len)
        refs = _BLK.findall(desc)
        assert len(refs) == len(rec.blocks), line
        for bid, spc, db, rel, fork, blk, fpw in refs:
            b = rec.blocks[int(bid)]
            assert (b.spcnode, b.dbnode, b.relnode, b.forknum, b.blkno) == (
                int(spc), int(db), int(rel), FORKS[fork], int(blk))
            assert b.tag == BufferTag(int(spc), int(db), int(rel), FORKS[fork], int(blk))
            assert b.has_image == bool(fpw)
            assert b.apply_image == (fpw == " FPW")
            if b.has_image:
                page = b.image()
                assert len(page) == BLCKSZ
                # pd_pagesize_version: 8192 | layout version 4; VM/heap pages all carry it
                assert struct.unpack_from("<H", page, 18)[0] == 0x2004
                images += 1
            checked_blocks += 1
    assert checked_blocks > 20_000 and images > 10_000


def test_fields_of_a_heap_insert(default_capture):
    for _s, _e, raw in default_capture.records:
        rec = decode_record(raw)
        if rec.rmid == 10 and rec.info & 0xF0 == 0x00 and 0 in rec.blocks and rec.blocks[0].data:
            b = rec.blocks[0]
            assert len(rec.main_data) == 3  # xl_heap_insert: offnum u16, flags u8
            assert len(b.data) > 5  # xl_heap_header (5 bytes) + tuple data
            assert b.forknum == 0 and not b.will_init
            break
    else:
        pytest.fail("no heap INSERT with data")


def test_multi_insert_init_sets_will_init(default_capture):
    seen = 0
    for _s, _e, raw in default_capture.records:
        rec = decode_record(raw)
        if rec.rmid == 9 and rec.info & 0xF0 == 0xD0:  # MULTI_INSERT | INIT_PAGE
            assert rec.blocks[0].will_init and rec.blocks[0].fork_flags & 0x40
            seen += 1
    assert seen > 0


# -- hand-made malformed records -----------------------------------------------------------------------

def _block_with_data(data=b"abcdef", block_id=0, flags=0x20, rnode=(1663, 5, 16384), blkno=3):
    return struct.pack("<BBH", block_id, flags, len(data)) + struct.pack("<III", *rnode) + struct.pack("<I", blkno)


def test_hand_made_record_decodes():
    r = _header()
    r += _block_with_data(b"abcdef")
    r += struct.pack("<BB", 1, 0x20 | 0x80 | 2) + struct.pack("<H", 2) + struct.pack("<I", 9)  # same rel, vm
    r += bytes([253]) + struct.pack("<H", 42)
    r += bytes([252]) + struct.pack("<I", 777)
    r += bytes([255, 3])
    r += b"abcdef" + b"xy" + b"mdt"
    rec = decode_record(_seal(r))
    assert rec.main_data == b"mdt" and rec.origin == 42 and rec.toplevel_xid == 777
    assert rec.blocks[0].data == b"abcdef" and rec.blocks[0].tag == BufferTag(1663, 5, 16384, 0, 3)
    assert rec.blocks[1].data == b"xy" and rec.blocks[1].tag == BufferTag(1663, 5, 16384, 2, 9)


def _image_block(bimg_len, hole_off, info, hole_len=None):
    h = struct.pack("<BBH", 0, 0x10, 0) + struct.pack("<HHB", bimg_len, hole_off, info)
    if hole_len is not None:
        h += struct.pack("<H", hole_len)
    return h + struct.pack("<IIII", 1663, 5, 16384, 0)


@pytest.mark.parametrize("make, match", [
    (lambda: b"\x00" * 10, "shorter"),
    (lambda: _header() + b"\xff\x00", "tot_len"),  # not sealed: tot_len 0
    (lambda: _seal(_header() + bytes([200])), "invalid block_id"),
    (lambda: _seal(_header() + _block_with_data(block_id=1) + _block_with_data(block_id=1)[:0]
                   + _block_with_data(block_id=0) + b"abcdef" * 2), "out-of-order"),
    (lambda: _seal(_header() + struct.pack("<BBH", 0, 0x80 | 0x20, 1) + struct.pack("<I", 1) + b"x"),
     "SAME_REL"),
    (lambda: _seal(_header() + struct.pack("<BBH", 0, 0x20, 0) + bytes(16)), "no data"),
    (lambda: _seal(_header() + struct.pack("<BBH", 0, 0x00, 5) + bytes(16) + bytes(5)), "HAS_DATA not set"),
    (lambda: _seal(_header() + struct.pack("<BBH", 0, 0x0F, 0) + bytes(16)), "fork"),
    (lambda: _seal(_header() + _image_block(9000, 0, 0x02) + bytes(9000)), "image length"),
    (lambda: _seal(_header() + _image_block(100, 8150, 0x03) + bytes(100)), "hole"),
    (lambda: _seal(_header() + _image_block(100, 0, 0x03) + bytes(100)), "HAS_HOLE set"),
    (lambda: _seal(_header() + _image_block(100, 0, 0x02) + bytes(100)), "HAS_HOLE not set"),
    (lambda: _seal(_header() + _image_block(8192, 0, 0x06) + bytes(8192)), "compressed image"),
    (lambda: _seal(_header() + _block_with_data() + b"abc"), "payload"),
    (lambda: _seal(_header() + _block_with_data() + b"abcdefgh"), "block_id"),
    (lambda: _seal(_header() + bytes([254]) + struct.pack("<I", 1 << 30)), "payload"),
    (lambda: _seal(_header() + _block_with_data()[:5]), "truncated"),
])
def test_malformed_records(make, match):
    with pytest.raises(InvalidRecord, match=match):
        decode_record(make())


def test_bad_crc():
    raw = bytearray(_seal(_header() + bytes([255, 2]) + b"hi"))
    raw[-1] ^= 1
    with pytest.raises(InvalidRecord, match="checksum"):
        decode_record(bytes(raw))
    assert decode_record(bytes(raw), verify_crc=False).main_data == b"hh"


def test_corrupt_images_raise_invalid_record():
    # pglz stream that references before the start of output
    bad = bytes([0x01, 0x0F, 0x01]) + bytes(50)
    rec = decode_record(_seal(_header() + _image_block(len(bad), 100, 0x07, 4000) + bad))
    with pytest.raises(InvalidRecord, match="pglz"):
        rec.blocks[0].image()
    for info, name in ((0x0B, "lz4"), (0x13, "zstd")):
        rec = decode_record(_seal(_header() + _image_block(len(bad), 100, info, 4000) + bad))
        with pytest.raises((InvalidRecord, MissingCompressionLibrary), match=name):
            rec.blocks[0].image()


# -- hypothesis: mutations of real records --------------------------------------------------------------

@pytest.fixture(scope="module")
def sample_records(default_capture):
    """A few records of each shape: with data, with images (hole / no hole), with both, main data only."""
    seen: dict = {}
    for _s, _e, raw in default_capture.records:
        rec = decode_record(raw)
        shape = (rec.rmid, rec.info & 0xF0, tuple((b.has_image, b.data is not None) for b in rec.blocks.values()))
        if len(seen.get(shape, ())) < 2 and len(raw) < 20000:
            seen.setdefault(shape, []).append(raw)
    return [r for rs in seen.values() for r in rs]


def _exercise(raw: bytes, verify_crc: bool) -> None:
    try:
        rec = decode_record(raw, verify_crc=verify_crc)
    except InvalidRecord:
        return
    for b in rec.blocks.values():
        if b.has_image:
            try:
                assert len(b.image()) == BLCKSZ
            except (InvalidRecord, MissingCompressionLibrary):
                pass


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_records_only_raise_invalid_record(sample_records, data):
    raw = bytearray(data.draw(st.sampled_from(sample_records)))
    kind = data.draw(st.sampled_from(["flip", "truncate", "extend", "flip_fix_len", "truncate_fix_len"]))
    if kind.startswith("flip"):
        for _ in range(data.draw(st.integers(1, 4))):
            i = data.draw(st.integers(0, len(raw) - 1))
            raw[i] = data.draw(st.integers(0, 255))
    elif kind.startswith("truncate"):
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
    else:
        raw += data.draw(st.binary(min_size=1, max_size=40))
    if kind.endswith("fix_len") and len(raw) >= 4:
        struct.pack_into("<I", raw, 0, len(raw))  # get past the length check into the fragment parser
    _exercise(bytes(raw), verify_crc=False)
    _exercise(bytes(raw), verify_crc=True)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=200))
def test_random_bytes_only_raise_invalid_record(blob):
    raw = bytearray(_header()) + blob
    struct.pack_into("<I", raw, 0, len(raw))
    _exercise(bytes(raw), verify_crc=False)


@pytest.fixture(scope="module")
def compressed_image_records(wal_captures):
    """Small records carrying a pglz / lz4 / zstd image, a few of each."""
    out = []
    for name, bit in (("pglz", 0x04), ("lz4", 0x08), ("zstd", 0x10)):
        n = 0
        for _s, _e, raw in wal_captures.get(name).records:
            if len(raw) > 3000:
                continue
            rec = decode_record(raw)
            if any(b.has_image and b.bimg_info & bit for b in rec.blocks.values()):
                out.append(raw)
                n += 1
                if n == 15:
                    break
        assert n == 15, name
    return out


def test_compressed_images_restore(compressed_image_records):
    for raw in compressed_image_records:
        for b in decode_record(raw).blocks.values():
            if b.has_image:
                page = b.image()
                assert struct.unpack_from("<H", page, 18)[0] == 0x2004


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_compressed_images_only_raise_invalid_record(compressed_image_records, data):
    raw = bytearray(data.draw(st.sampled_from(compressed_image_records)))
    rec = decode_record(bytes(raw))
    # Payload layout: for each block in id order its image then its data, then main data.
    payload = sum(len(b.bimg or b"") + len(b.data or b"") for b in rec.blocks.values()) + len(rec.main_data)
    pos = len(raw) - payload
    images = []
    for b in sorted(rec.blocks.values(), key=lambda b: b.block_id):
        if b.has_image:
            images.append((pos, b))
            pos += len(b.bimg)
        pos += len(b.data or b"")
    start, blk = data.draw(st.sampled_from(images))
    assert bytes(raw[start : start + len(blk.bimg)]) == blk.bimg
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(start, start + len(blk.bimg) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    _exercise(bytes(raw), verify_crc=False)


def test_decoded_records_are_immutable_and_equal_to_constructed_ones():
    """decode_record builds BlockRef/DecodedRecord with tuple.__new__: the results must be the ordinary
    immutable objects the constructors give."""
    from walredo_template.pg.xlogrecord import BlockRef, DecodedRecord

    rec = decode_record(_seal(_header() + _block_with_data(b"abc") + bytes([255, 2]) + b"abcmd"))
    blk = rec.blocks[0]
    assert type(rec) is DecodedRecord and type(blk) is BlockRef
    assert blk == BlockRef(*(getattr(blk, f) for f in BlockRef._fields))
    assert rec == DecodedRecord(*(getattr(rec, f) for f in DecodedRecord._fields))
    with pytest.raises(AttributeError):
        blk.blkno = 8
    with pytest.raises(AttributeError):
        rec.info = 0


def _general(raw: bytes):
    """decode_record without its fast paths (the general fragment loop), or the error it raises."""
    from walredo_template.pg.xlogrecord import _HDR, _decode_general

    try:
        tot_len, xid, prev, info, rmid, _crc = _HDR.unpack_from(raw)
        if tot_len != len(raw):
            raise InvalidRecord("tot_len")
        return _decode_general(raw, tot_len, xid, prev, info, rmid)
    except InvalidRecord as e:
        return type(e)


def _fast(raw: bytes):
    try:
        return decode_record(raw, verify_crc=False)
    except InvalidRecord as e:
        return type(e)


def test_fast_paths_agree_with_the_general_loop(sample_records):
    """The one- and two-block fast paths of decode_record return exactly what the general loop returns."""
    for raw in sample_records:
        assert _fast(raw) == _general(raw)
    one = _header() + _block_with_data(b"abc") + bytes([255, 2]) + b"abcmd"
    two = (_header() + _block_with_data(b"abc") + struct.pack("<BBHI", 1, 0x20 | 0x80, 2, 9)
           + bytes([255, 2]) + b"abcxymd")
    for raw in (one, two):
        assert _fast(_seal(raw)) == _general(_seal(raw))
        assert isinstance(_fast(_seal(raw)), DecodedRecord)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fast_paths_agree_with_the_general_loop_on_mutated_headers(sample_records, data):
    raw = bytearray(data.draw(st.sampled_from(sample_records)))
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(4, min(len(raw), 60) - 1))  # the fragment headers, not tot_len
        raw[i] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        del raw[data.draw(st.integers(24, len(raw))):]
        struct.pack_into("<I", raw, 0, len(raw))
    assert _fast(bytes(raw)) == _general(bytes(raw))
