"""Generic WAL redo (rmgr 20, ``walredo_template/pg/generic.py``) against real PostgreSQL 15.

* The shared access-method captures (``pgcluster.INDEX_CONFIG_NAMES``, tests/workloads/generic.sql: bloom
  indexes): every Generic consistency image matches, no redo errors, and each shape of record PostgreSQL
  writes (a delta, a full image, a delta beside a full image, a delta with a full-page write after a
  checkpoint, two deltas) is seen.
* Hand-made records for what bloom never writes (overlapping, empty and page-header fragments, deltas
  that run off the page or the data, WILL_INIT, a page past the record, block ids, info codes), and
  hypothesis mutations of real records and pages.
"""

from __future__ import annotations

import struct
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mutations import flipped_page, flipped_raw, mutate, rebuild
from pgcluster import INDEX_CONFIG_NAMES
from recordbuilder import Block, build_record

from walredo_template import BufferTag
from walredo_template.pg import generic as G
from walredo_template.pg import page as P
from walredo_template.pg.errors import BlockNotReferenced, InvalidPage, InvalidRecord, RedoError, UnsupportedRecord
from walredo_template.pg.xlogrecord import decode_record
from walredo_template.redo import RMGRS, apply_records

PREFIX = G.NAME + "/"
TAG = BufferTag(1663, 5, 41000, 0, 3)
LSN = 0x5000040


def base_page(special: int = 8) -> bytearray:
    """An initialized page with some contents above pd_upper and a 'dirty' hole (stale bytes)."""
    page = bytearray(8192)
    P.page_init(page, special)
    struct.pack_into("<HH", page, 12, 24 + 40, 8000)  # pd_lower, pd_upper as a bloom page keeps them
    page[24:64] = bytes(range(40))
    page[8000:8184] = b"\x11" * 184
    page[64:8000] = b"\xee" * (8000 - 64)  # stale bytes in the hole
    P.set_lsn(page, LSN - 1000)
    return page


def frag(offset: int, data: bytes) -> bytes:
    return struct.pack("<HH", offset, len(data)) + data


def generic_record(blocks: list[Block], info: int = 0) -> bytes:
    return build_record(G.RM_ID, info, blocks)


def redone(page: bytearray, fragments: list[tuple[int, bytes]], lsn: int = LSN) -> bytes:
    """What generic_redo makes of ``page``, computed here independently: copy, zero the hole, set the LSN."""
    out = bytearray(page)
    for off, data in fragments:
        out[off:off + len(data)] = data
    lower, upper = struct.unpack_from("<HH", out, 12)
    out[lower:upper] = bytes(upper - lower)
    P.set_lsn(out, lsn)
    return bytes(out)


def assert_sane(page: bytes, end: int | None = None) -> None:
    """check_page passes and the hole is zero (generic pages are opaque: bloom pages have no line
    pointers, pd_lower covers their tuples, so there are no line pointers to check)."""
    P.check_page(page)
    lower, upper = P.get_lower(page), P.get_upper(page)
    assert page[lower:upper] == bytes(upper - lower)


# --- the real captures ---------------------------------------------------------------------------------

def _shapes(records) -> Counter:
    """Per Generic record: the shape of its blocks ("delta" or "image" to apply), and "image of a page
    seen before" for the images that replace an existing page (a full-page write after a checkpoint, or
    a deleted page bloom reuses) rather than start a new one."""
    out: Counter = Counter()
    seen = set()
    for _s, _e, raw in records:
        if raw[17] != G.RM_ID:
            continue
        rec = decode_record(raw)
        shape = tuple("image" if b.apply_image else "delta" for b in rec.blocks.values())
        out[shape] += 1
        for b in rec.blocks.values():
            if b.apply_image and b.tag in seen:
                out["image of a page seen before"] += 1
            seen.add(b.tag)
    return out


@pytest.mark.parametrize("name", INDEX_CONFIG_NAMES)
def test_oracle_generic_records(oracle_results, wal_captures, name):
    res = oracle_results.get(name)
    compared, applied = res.rmgr_kinds(PREFIX)
    shapes = _shapes(wal_captures.get(name).records)
    print(f"[{name}] Generic compared: {compared}, applied: {applied}, block shapes: {dict(shapes)}")
    # the one info code, its pages as block 0 and (metapage first, then the data page) as block 1
    assert compared.get("Generic/Generic", 0) >= 1000
    assert compared.get("Generic/Generic [block 1]", 0) >= 1
    assert applied.get("Generic/Generic [block 1]", 0) > compared["Generic/Generic [block 1]"]  # images
    # a delta (insert, vacuum, metapage), a full image (build, new metapage, FPW after the CHECKPOINT),
    # the metapage's delta beside a new page's full image, two deltas (metapage + a not-full page)
    for shape in (("delta",), ("image",), ("delta", "image"), ("delta", "delta"), ("image", "image"),
                  "image of a page seen before"):
        assert shapes[shape] >= 1, shape
    disk = res.disk
    bloom = [m for m in disk.mismatches if res.page_rmgr.get(m[0]) == G.RM_ID]
    assert not bloom
    assert not [x for x in disk.exempt if res.page_rmgr.get(x[0]) == G.RM_ID]


# --- hand-made records ---------------------------------------------------------------------------------

def test_delta_fragments_hole_and_lsn():
    page = base_page()
    frags = [(64, b"new tuple bytes!"), (12, struct.pack("<H", 80)), (8100, b"\x22" * 10)]
    raw = generic_record([Block(0, TAG, data=b"".join(frag(o, d) for o, d in frags))])
    out = apply_records(TAG, bytes(page), [(LSN, raw)])
    assert out == redone(page, frags)
    assert P.get_lower(out) == 80 and out[80:8000] == bytes(7920) and out[64:80] == b"new tuple bytes!"
    assert_sane(out)


def test_fragments_in_order_overlapping_empty_and_at_the_page_end():
    page = base_page()
    frags = [(100, b"aaaaaaaa"), (104, b"bb"), (0, b""), (8190, b"zz"), (8192, b""), (8000, b"")]
    raw = generic_record([Block(0, TAG, data=b"".join(frag(o, d) for o, d in frags))])
    out = apply_records(TAG, bytes(page), [(LSN, raw)])
    assert out == redone(page, frags)


def test_delta_may_move_the_hole():
    # a fragment that rewrites pd_upper: the hole is the one of the page after the delta
    page = base_page()
    frags = [(14, struct.pack("<H", 4000)), (4000, b"\x33" * 4000)]
    out = apply_records(TAG, bytes(page), [(LSN, generic_record([Block(0, TAG, data=b"".join(
        frag(o, d) for o, d in frags))]))])
    assert out == redone(page, frags) and out[64:4000] == bytes(3936) and out[4000:8000] == b"\x33" * 4000


def test_empty_delta_zeroes_the_hole_and_sets_the_lsn():
    # a block without data (BKPBLOCK_HAS_DATA with no bytes does not even decode)
    page = base_page()
    out = apply_records(TAG, bytes(page), [(LSN, generic_record([Block(0, TAG)]))])
    assert out == redone(page, [])


def test_fragments_that_do_not_fit():
    page = base_page()
    bad = [
        frag(8190, b"abc"),  # past the page
        frag(65535, b"x"),
        struct.pack("<HH", 8000, 100) + b"x" * 99,  # past the delta
        frag(100, b"ok") + b"\x01",  # trailing partial headers
        frag(100, b"ok") + b"\x01\x00\x02",
        b"\x00",
        frag(12, struct.pack("<HH", 9000, 8000)),  # pd_lower past pd_upper
        frag(14, struct.pack("<H", 8190)),  # pd_upper past pd_special
        frag(18, struct.pack("<H", 4096 | 4)),  # another page size
        frag(16, struct.pack("<H", 8180)),  # pd_special not MAXALIGNed
    ]
    for data in bad:
        with pytest.raises(InvalidRecord):
            apply_records(TAG, bytes(page), [(LSN, generic_record([Block(0, TAG, data=data)]))])


def test_image_is_restored_and_delta_skipped():
    img = base_page(16)
    img[5000:5010] = b"imageimage"
    raw = generic_record([Block(0, TAG, data=frag(5000, b"deltadelta"), image=bytes(img))])
    out = apply_records(TAG, bytes(base_page()), [(LSN, raw)])
    want = bytearray(img)
    P.set_lsn(want, LSN)
    assert out == bytes(want)  # the image as it is: its hole is not zeroed again, the delta not applied
    # an image of a never-initialized page is restored without an LSN (PageIsNew)
    raw = generic_record([Block(0, TAG, image=bytes(8192))])
    assert apply_records(TAG, None, [(LSN, raw)]) == bytes(8192)
    # a consistency image (not to apply) is only an answer key: the delta is redone
    page = base_page()
    raw = generic_record([Block(0, TAG, data=frag(64, b"x"), image=bytes(img), apply_image=False)], info=0x02)
    assert apply_records(TAG, bytes(page), [(LSN, raw)]) == redone(page, [(64, b"x")])


def test_page_at_or_past_the_record_is_left_alone():
    page = base_page()
    raw = generic_record([Block(0, TAG, data=frag(64, b"never"))])
    for lsn in (LSN, LSN + 1):
        P.set_lsn(page, lsn)
        assert apply_records(TAG, bytes(page), [(LSN, raw)]) == bytes(page)


def test_delta_needs_a_valid_page():
    raw = generic_record([Block(0, TAG, data=frag(64, b"x"))])
    with pytest.raises(InvalidPage):
        apply_records(TAG, None, [(LSN, raw)])
    with pytest.raises(InvalidPage):  # a new (all-zero) page is not a page a delta can apply to
        apply_records(TAG, bytes(8192), [(LSN, raw)])


def test_will_init_block_is_refused():
    raw = generic_record([Block(0, TAG, data=frag(64, b"x"), will_init=True)])
    with pytest.raises(InvalidRecord, match="WILL_INIT"):
        apply_records(TAG, bytes(base_page()), [(LSN, raw)])


def test_only_the_requested_block_is_redone():
    pages = [base_page(), base_page(16), base_page(), base_page()]
    tags = [TAG._replace(blknum=n) for n in (0, 7, 8, 9)]
    data = [frag(64, bytes([n]) * 8) for n in range(4)]
    raw = generic_record([Block(i, tags[i], data=data[i]) for i in range(4)])
    for i in range(4):
        assert apply_records(tags[i], bytes(pages[i]), [(LSN, raw)]) == redone(pages[i], [(64, bytes([i]) * 8)])
    with pytest.raises(BlockNotReferenced):
        apply_records(TAG._replace(blknum=1), bytes(base_page()), [(LSN, raw)])
    # block ids past MAX_GENERIC_XLOG_PAGES (generic_redo's buffer array)
    raw = generic_record([Block(4, TAG, data=data[0])])
    with pytest.raises(InvalidRecord, match="block id 4"):
        apply_records(TAG, bytes(base_page()), [(LSN, raw)])


def test_main_data_is_ignored():
    page = base_page()
    raw = build_record(G.RM_ID, 0, [Block(0, TAG, data=frag(64, b"y"))], main_data=b"whatever")
    assert apply_records(TAG, bytes(page), [(LSN, raw)]) == redone(page, [(64, b"y")])


def test_unknown_info_codes():
    page = bytes(base_page())
    for info in range(0x10, 0x100, 0x10):
        raw = generic_record([Block(0, TAG, data=frag(64, b"x"))], info=info)
        with pytest.raises(UnsupportedRecord, match="Generic") as ei:
            apply_records(TAG, page, [(LSN, raw)])
        assert ei.value.rmid == G.RM_ID and ei.value.info == info and f"{info:#04x}" in str(ei.value)
    for info in (0x01, 0x02, 0x03):  # the record machinery's low bits
        raw = generic_record([Block(0, TAG, data=frag(64, b"x"))], info=info)
        assert apply_records(TAG, page, [(LSN, raw)]) == redone(bytearray(page), [(64, b"x")])
    assert G.record_name(0) == RMGRS[20].record_name(0x02) == "Generic/Generic"


def test_mask():
    page = base_page()
    struct.pack_into("<H", page, 8, 0x1234)
    struct.pack_into("<H", page, 10, P.PD_PAGE_FULL)
    masked = bytearray(page)
    G.mask(masked, 0)
    assert masked[:10] == bytes(10) and masked[64:8000] == bytes(7936)
    # PostgreSQL 15's generic_mask keeps pd_flags (no mask_page_hint_bits)
    assert struct.unpack_from("<H", masked, 10)[0] == P.PD_PAGE_FULL
    assert masked[8000:] == page[8000:] and masked[10:64] == page[10:64]
    new = bytearray(8192)
    new[0:8] = b"\1" * 8
    G.mask(new, 0)  # a never-initialized page: only the LSN, no error
    assert new == bytearray(8192)
    bad = base_page()
    struct.pack_into("<H", bad, 12, 8100)
    with pytest.raises(InvalidPage):
        G.mask(bad, 0)


# --- mutations of real records and pages ---------------------------------------------------------------

@pytest.fixture(scope="module")
def samples(oracle_results):
    out = [s for s in oracle_results.get(INDEX_CONFIG_NAMES[0]).samples if s[4][0] == G.RM_ID]
    assert len(out) >= 10 and any(s[1] is not None for s in out)
    return out


def test_samples_replay_to_postgres_images(samples):
    n = 0
    for tag, base, end, raw, _key in samples:
        blk = next(b for b in decode_record(raw).blocks.values() if b.tag == tag)
        if blk.has_image and not blk.apply_image:
            out = bytearray(apply_records(tag, base, [(end, raw)]))
            img = bytearray(blk.image())
            G.mask(out, 0)
            G.mask(img, 0)
            assert out == img
            n += 1
    assert n >= 10


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(data=st.data())
def test_mutations_give_a_valid_page_or_a_typed_error(samples, data):
    tag, base, end, raw, _key = data.draw(st.sampled_from(samples))
    rec = decode_record(raw)
    blk = next(b for b in rec.blocks.values() if b.tag == tag)
    where = data.draw(st.sampled_from(["block-data", "fragment", "raw", "base"]))
    delta = bytearray(blk.data or b"")
    if where == "block-data":
        raw = rebuild(raw, data={blk.block_id: mutate(data, bytes(delta), extend=64)})
    elif where == "fragment":  # a well-formed fragment anywhere on the page, e.g. into the header
        off = data.draw(st.integers(0, 8192))
        body = data.draw(st.binary(max_size=min(64, 8192 - off)))
        raw = rebuild(raw, data={blk.block_id: bytes(delta) + frag(off, body)})
    elif where == "raw":
        raw = flipped_raw(data, raw)
    elif base is not None:
        base = flipped_page(data, base)
    try:
        out = apply_records(tag, base, [(end, raw)])
    except RedoError:
        return
    if P.is_new(out):
        assert out == bytes(8192)  # only an image of a new page gives one
        return
    P.check_page(out)
    if P.get_lsn(out) == end and not decode_record(raw).blocks[blk.block_id].apply_image:
        assert_sane(out)
