"""``apply_records``: the entry point's contract (LSN, images, typed errors) on real PostgreSQL 15 records,
and a hypothesis test that feeds it mutated records and pages."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from recordbuilder import Block, build_record

from walredo_template import BufferTag
from walredo_template.pg import page as P
from walredo_template.pg.crc32c import crc32c
from walredo_template.pg.errors import (
    BlockNotReferenced,
    InvalidPage,
    InvalidRecord,
    RedoError,
    UnsupportedRecord,
)
from walredo_template.pg.mask import mask_heap_page
from walredo_template.pg.xlogrecord import decode_record
from walredo_template.redo import apply_records


@pytest.fixture(scope="module")
def cases(oracle_results):
    """Real single-record redo cases: (tag, page before, end_lsn, record, kind), a few hundred of them
    over every heap record kind, the VM page and FPIs, with the page state built by the engine itself: the
    samples the shared oracle replay of the default capture keeps (``oracle.sample_key`` is the kind)."""
    res = oracle_results.get("default")
    out = [c for c in res.samples if not (c[4][0] == 0 and c[4][1] != 0xB0)]  # XLOG: FPI only
    assert len({c[4] for c in out}) >= 20
    return out


def _first(cases, pred):
    for c in cases:
        if pred(c):
            return c
    raise AssertionError("no such case")


def test_lsn_is_the_record_end(cases):
    tag, base, end, raw, _k = _first(cases, lambda c: c[4][:2] == (10, 0x00) and c[1] is not None)
    out = apply_records(tag, base, [(end, raw)])
    assert P.get_lsn(out) == end


def test_visible_stamps_heap_lsn_only_with_hint_logging(cases):
    tag, base, end, raw, _k = _first(cases, lambda c: c[4][:4] == (9, 0x40, 0, 1) and c[1] is not None
                                     and not decode_record(c[3]).blocks[1].apply_image)
    out = apply_records(tag, base, [(end, raw)])
    assert P.get_lsn(out) == P.get_lsn(base) and P.get_flags(out) & P.PD_ALL_VISIBLE
    out = apply_records(tag, base, [(end, raw)], wal_log_hints=True)
    assert P.get_lsn(out) == end


def test_applied_image_replaces_the_page_and_skips_redo(cases):
    tag, base, end, raw, _k = _first(
        cases,
        lambda c: c[4][0] == 10 and any(b.apply_image and b.tag == c[0] for b in decode_record(c[3]).blocks.values()),
    )
    rec = decode_record(raw)
    blk = next(b for b in rec.blocks.values() if b.tag == tag)
    out = apply_records(tag, None, [(end, raw)])
    expect = bytearray(blk.image())
    P.set_lsn(expect, end)
    assert out == bytes(expect)


def test_page_already_past_the_record_is_left_alone(cases):
    tag, base, end, raw, _k = _first(cases, lambda c: c[4][:2] == (10, 0x10) and c[1] is not None)
    newer = bytearray(base)
    P.set_lsn(newer, end + 8)
    assert apply_records(tag, bytes(newer), [(end, raw)]) == bytes(newer)


def test_records_chain_in_one_call(default_capture, cases):
    # Two consecutive records of one page in one call equal two calls.
    from walredo_tools.walreader import group_by_page

    groups = group_by_page(default_capture.records[:4000])
    for tag, recs in groups.items():
        if tag.forknum == 0 and len(recs) >= 3:
            first = decode_record(recs[0][1])
            blk = next((b for b in first.blocks.values() if b.tag == tag), None)
            if first.rmid in (9, 10) and blk is not None and (blk.will_init or blk.apply_image):
                try:
                    one = apply_records(tag, None, recs[:3])
                except RedoError:
                    continue
                a = apply_records(tag, None, recs[:1])
                b = apply_records(tag, a, recs[1:3])
                assert one == b
                return
    raise AssertionError("no chain found")


def test_block_not_referenced(cases):
    tag, base, end, raw, _k = _first(cases, lambda c: c[4][:2] == (10, 0x00) and c[1] is not None)
    other = tag._replace(blknum=tag.blknum + 100000)
    with pytest.raises(BlockNotReferenced):
        apply_records(other, base, [(end, raw)])
    with pytest.raises(BlockNotReferenced):  # the VM page of an unrelated heap block
        apply_records(tag._replace(forknum=2, blknum=7), base, [(end, raw)])


def test_unsupported_record_names_rmgr_and_info(default_capture):
    # An rmgr outside the table (Storage, 2) that references a page (hand-made: PostgreSQL's never do).
    tag = BufferTag(1663, 5, 16384, 0, 0)
    raw = build_record(2, 0x20, [Block(0, tag, data=b"x")], main_data=b"\0" * 20)
    with pytest.raises(UnsupportedRecord) as ei:
        apply_records(tag, None, [(0x1000100, raw)])
    assert ei.value.rmid == 2 and ei.value.info == 0x20
    assert "rmgr 2" in str(ei.value)
    for _s, end, raw in default_capture.records:
        rec = decode_record(raw)
        if rec.rmid == 0 and rec.info & 0xF0 == 0x00:  # CHECKPOINT_SHUTDOWN
            with pytest.raises(UnsupportedRecord, match="XLOG"):
                apply_records(BufferTag(1663, 5, 1, 0, 0), None, [(end, raw)])
            break


def test_bad_base_images(cases):
    tag, base, end, raw, _k = _first(cases, lambda c: c[4][:2] == (10, 0x10) and c[1] is not None)
    with pytest.raises(InvalidPage):
        apply_records(tag, base[:100], [(end, raw)])
    wrong = bytearray(base)
    struct.pack_into("<H", wrong, 18, 8192 | 5)
    with pytest.raises(InvalidPage, match="pd_pagesize_version"):
        apply_records(tag, bytes(wrong), [(end, raw)])
    with pytest.raises(InvalidPage, match="no base image"):
        apply_records(tag, None, [(end, raw)])
    with pytest.raises(InvalidPage):
        apply_records(tag, None, [])


def test_truncated_and_corrupt_records(cases):
    tag, base, end, raw, _k = _first(cases, lambda c: c[4][:2] == (10, 0x00) and c[1] is not None)
    with pytest.raises(InvalidRecord):
        apply_records(tag, base, [(end, raw[:-1])])
    flipped = bytearray(raw)
    flipped[-1] ^= 0xFF
    with pytest.raises(InvalidRecord):
        apply_records(tag, base, [(end, bytes(flipped))])
    with pytest.raises(InvalidRecord):
        apply_records(tag, base, [(-1, raw)])


def _recrc(buf: bytearray) -> bytes:
    struct.pack_into("<I", buf, 0, len(buf))
    struct.pack_into("<I", buf, 20, crc32c(bytes(buf[:20]), crc32c(bytes(buf[24:]))))
    return bytes(buf)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_records_give_a_page_or_a_typed_error(cases, data):
    tag, base, end, raw, _kind = data.draw(st.sampled_from(cases))
    buf = bytearray(raw)
    how = data.draw(st.sampled_from(["flip", "flip-recrc", "truncate-recrc", "extend-recrc", "base", "tag"]))
    if how.startswith("flip"):
        for _ in range(data.draw(st.integers(1, 4))):
            pos = data.draw(st.integers(0, len(buf) - 1))
            buf[pos] = data.draw(st.integers(0, 255))
    elif how == "truncate-recrc":
        del buf[data.draw(st.integers(24, len(buf) - 1)):]
    elif how == "extend-recrc":
        buf += data.draw(st.binary(min_size=1, max_size=64))
    if how.endswith("recrc"):
        raw2 = _recrc(buf)
    else:
        raw2 = bytes(buf)
    base2 = base
    if how == "base" and base is not None:
        b = bytearray(base)
        for _ in range(data.draw(st.integers(1, 8))):
            b[data.draw(st.integers(0, 8191))] = data.draw(st.integers(0, 255))
        base2 = bytes(b)
    tag2 = tag
    if how == "tag":
        tag2 = tag._replace(blknum=data.draw(st.integers(0, 2**32 - 1)),
                            forknum=data.draw(st.integers(0, 3)))
    try:
        out = apply_records(tag2, base2, [(end, raw2)])
    except RedoError:
        return
    assert isinstance(out, bytes) and len(out) == 8192


def test_unmutated_cases_match_postgres(cases):
    # The cases themselves replay to PostgreSQL's consistency image (sanity check of the fixture).
    n = 0
    for tag, base, end, raw, _k in cases:
        rec = decode_record(raw)
        blk = next((b for b in rec.blocks.values() if b.tag == tag), None)
        if tag.forknum == 0 and blk is not None and blk.has_image and not blk.apply_image:
            out = apply_records(tag, base, [(end, raw)])
            assert mask_heap_page(out, tag.blknum) == mask_heap_page(blk.image(), tag.blknum)
            n += 1
    assert n > 100


def _with_main(raw: bytes, main: bytes) -> bytes:
    """The record with its main data (the last bytes) replaced by ``main`` of the same length, CRC redone."""
    rec = decode_record(raw)
    assert len(main) == len(rec.main_data)
    buf = bytearray(raw)
    buf[len(buf) - len(main):] = main
    return _recrc(buf)


def _case(cases, rmid, op, pred=lambda c, rec: True):
    for c in cases:
        rec = decode_record(c[3])
        blk = next((b for b in rec.blocks.values() if b.tag == c[0]), None)
        if (c[1] is not None and rec.rmid == rmid and rec.info & 0x70 == op and blk is not None
                and not blk.apply_image and pred(c, rec)):
            return c, rec
    raise AssertionError(f"no case {rmid}/{op:#x}")


def test_super_delete_clears_xmin_not_xmax(cases):
    (tag, base, end, raw, _k), rec = _case(cases, 10, 0x10)
    md = bytearray(rec.main_data)
    md[7] |= 0x08  # XLH_DELETE_IS_SUPER: a speculative insertion killed by its own inserter
    xmax, offnum = struct.unpack_from("<IH", md)
    out = apply_records(tag, base, [(end, _with_main(raw, bytes(md)))])
    off = P.lp_off(P.get_itemid(out, offnum))
    old_xmax = struct.unpack_from("<I", base, P.lp_off(P.get_itemid(base, offnum)) + 4)[0]
    assert struct.unpack_from("<II", out, off) == (0, old_xmax)


def test_records_that_do_not_fit_the_page_are_invalid(cases):
    # VACUUM announcing more offsets than it carries
    (tag, base, end, raw, _k), rec = _case(cases, 9, 0x20)
    with pytest.raises(InvalidRecord, match="VACUUM"):
        apply_records(tag, base, [(end, _with_main(raw, struct.pack("<H", 60000)))])
    # PRUNE naming a redirect count beyond its offsets
    (tag, base, end, raw, _k), rec = _case(cases, 9, 0x10)
    md = bytearray(rec.main_data)
    struct.pack_into("<H", md, 4, 5000)
    with pytest.raises(InvalidRecord, match="PRUNE"):
        apply_records(tag, base, [(end, _with_main(raw, bytes(md)))])
    # INSERT at an offset past the end of the line pointer array
    (tag, base, end, raw, _k), rec = _case(cases, 10, 0x00, lambda c, r: not r.info & 0x80)
    with pytest.raises(InvalidRecord, match="too large"):
        apply_records(tag, base, [(end, _with_main(raw, struct.pack("<HB", 400, rec.main_data[2])))])
    # DELETE of an item that does not exist
    (tag, base, end, raw, _k), rec = _case(cases, 10, 0x10)
    md = bytearray(rec.main_data)
    struct.pack_into("<H", md, 4, P.max_offset(base) + 1)
    with pytest.raises(InvalidRecord, match="beyond the line pointer array"):
        apply_records(tag, base, [(end, _with_main(raw, bytes(md)))])
    # cross-page UPDATE claiming prefix compression (the old tuple is on another page)
    (tag, base, end, raw, _k), rec = _case(cases, 10, 0x20, lambda c, r: 1 in r.blocks and c[4][3] == 0)
    md = bytearray(rec.main_data)
    md[7] |= 0x20
    with pytest.raises(InvalidRecord, match="across pages"):
        apply_records(tag, base, [(end, _with_main(raw, bytes(md)))])
    # INIT_PAGE on a record type PostgreSQL never initializes with
    (tag, base, end, raw, _k), rec = _case(cases, 10, 0x10)
    buf = bytearray(raw)
    buf[16] |= 0x80
    with pytest.raises(UnsupportedRecord):
        apply_records(tag, base, [(end, _recrc(buf))])
