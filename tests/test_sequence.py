"""Sequence redo (rmgr 15, ``walredo_template/pg/sequence.py``) against real PostgreSQL 15.

* The shared access-method captures (``pgcluster.INDEX_CONFIG_NAMES``, tests/workloads/sequence.sql): every
  Sequence/LOG consistency image matches, no redo errors.
* The disk check: sequence pages are exempt from the oracle's final comparison because ``nextval`` changes
  them without WAL; here the relation between the engine's last logged state and the page on disk is
  asserted for every sequence of the workload (see :func:`check_disk_relation`).
* Hand-made records for what PostgreSQL never writes (no WILL_INIT, an image to apply, a page newer than
  the record, block ids, sizes, unknown info codes), and hypothesis mutations of real records and pages.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mutations import assert_sane, flipped_page, flipped_raw, mutate, rebuild
from pgcluster import INDEX_CONFIG_NAMES
from recordbuilder import Block, build_record, finish_record

from walredo_template import BufferTag
from walredo_template.pg import page as P
from walredo_template.pg import sequence as S
from walredo_template.pg.errors import BlockNotReferenced, InvalidRecord, RedoError, UnsupportedRecord
from walredo_template.pg.xlogrecord import decode_record
from walredo_template.redo import RMGRS, apply_records

PREFIX = S.NAME + "/"
SEQ_LOG_VALS = 32
FROZEN_XID = 2
HEAP_XMIN_FROZEN = 0x0300
HEAP_XMAX_INVALID = 0x0800
HEAP_NATTS_MASK = 0x07FF
# name -> (MINVALUE, MAXVALUE, INCREMENT, CACHE), as tests/workloads/sequence.sql creates them; the value
# ranges are disjoint, so a sequence page's last_value says which sequence it is
SEQUENCES = {
    "seq_a": (1000000, 1999999, 1, 1),
    "seq_b": (2000000, 2999999, 3, 20),
    "seq_c": (3000000, 3999999, 7, 50),
    "seq_d": (-4999999, -4000000, -2, 5),
    "seq_e": (5000000, 5999999, 1, 1),
    "seq_f": (6000000, 6999999, 1, 1),
    "seq_t_id_seq": (7000000, 7999999, 1, 1),
    "seq_t_j_seq": (8000000, 8999999, 1, 10),
    "seq_g": (9000000, 9000040, 1, 1),
}
TAG = BufferTag(1663, 5, 40000, 0, 0)
LSN = 0x3000028


def _which(last_value: int) -> str | None:
    for name, (lo, hi, _inc, _cache) in SEQUENCES.items():
        if lo <= last_value <= hi:
            return name
    return None


def seq_state(page: bytes) -> tuple[int, int, bool]:
    """(last_value, log_cnt, is_called) of a sequence page."""
    w = P.get_itemid(page, 1)
    off = P.lp_off(w)
    hoff = page[off + P.T_HOFF]
    return S.SEQ_DATA.unpack_from(page, off + hoff)


def seq_tuple(last_value: int, log_cnt: int, is_called: bool) -> bytes:
    """A sequence tuple as the backend logs it: frozen xmin, invalid xmax, ctid (0,1), 3 attributes."""
    header = P.TUPLE_HEADER.pack(FROZEN_XID, 0, 0, 0, 0, 1, 3, HEAP_XMIN_FROZEN | HEAP_XMAX_INVALID, 24)
    return header + b"\0" + S.SEQ_DATA.pack(last_value, log_cnt, is_called)


def seq_record(tup: bytes, tag: BufferTag = TAG, *, info: int = 0, will_init: bool = True, block_id: int = 0,
               image: bytes | None = None, extra: tuple[Block, ...] = ()) -> bytes:
    main = struct.pack("<III", tag.spcnode, tag.dbnode, tag.relnode) + tup
    return build_record(S.RM_ID, info, [Block(block_id, tag, will_init=will_init, image=image), *extra], main)


def expected_page(tup: bytes, lsn: int) -> bytes:
    """The page seq_redo builds, assembled byte by byte independently of the module."""
    page = bytearray(8192)
    special = 8192 - 8
    upper = special - ((len(tup) + 7) & ~7)
    struct.pack_into("<IIHHHHHHI", page, 0, lsn >> 32, lsn & 0xFFFFFFFF, 0, 0, 28, upper, special, 8192 | 4, 0)
    struct.pack_into("<I", page, 24, upper | (1 << 15) | (len(tup) << 17))
    page[upper:upper + len(tup)] = tup
    struct.pack_into("<I", page, special, 0x1717)
    return bytes(page)


# --- the real captures ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", INDEX_CONFIG_NAMES)
def test_oracle_sequence_records(oracle_results, name):
    res = oracle_results.get(name)
    compared, applied = res.rmgr_kinds(PREFIX)
    print(f"[{name}] Sequence compared: {compared}, applied: {applied}")
    # the one info code, from CREATE/ALTER SEQUENCE, setval, nextval, TRUNCATE … RESTART IDENTITY
    assert compared.get("Sequence/LOG", 0) >= 40
    assert set(compared) == {"Sequence/LOG"}


def _check_structure(tag, engine: bytes, disk: bytes) -> None:
    """What nextval may not change: everything but the tuple's last_value/log_cnt/is_called (and pd_checksum,
    computed at write-out). pd_lsn included: nextval only sets it when it logs."""
    for page in (engine, disk):
        assert_sane(page)
        assert P.get_special(page) == 8184 and struct.unpack_from("<II", page, 8184) == (0x1717, 0)
        assert P.max_offset(page) == 1
    off = P.lp_off(P.get_itemid(engine, 1))
    hoff = engine[off + P.T_HOFF]
    data = off + hoff
    a, b = bytearray(engine), bytearray(disk)
    for buf in (a, b):
        buf[8:10] = b"\0\0"
        buf[data:data + S.SEQ_DATA.size] = bytes(S.SEQ_DATA.size)
    assert a == b, f"{tuple(tag)}: sequence page differs outside the sequence data"
    xmin, xmax, _cid, _bh, _bl, posid, infomask2, infomask, _hoff = P.TUPLE_HEADER.unpack_from(engine, off)
    assert (xmin, xmax, posid, infomask2 & HEAP_NATTS_MASK) == (FROZEN_XID, 0, 1, 3)
    assert infomask & (HEAP_XMIN_FROZEN | HEAP_XMAX_INVALID) == HEAP_XMIN_FROZEN | HEAP_XMAX_INVALID


def check_disk_relation(tag, engine: bytes, disk: bytes) -> str | None:
    """Assert what sequence.c guarantees between the last logged state of a sequence page (the engine's
    page) and the page on disk after a clean shutdown; return the workload sequence's name (None for a
    sequence of another workload, which gets the checks that need no increment).

    A logged state is (L, k, called). ``nextval`` logs the state SEQ_LOG_VALS fetches ahead with log_cnt 0
    (setval, CREATE and RESTART log log_cnt 0 too; only ALTER … START WITH copies a log_cnt > 0), and
    then, without WAL, moves last_value by ``increment`` per value and takes one off log_cnt, so
    last_value + log_cnt * increment stays at the logged total; a nextval that finds log_cnt too small
    (or the first one after a checkpoint) logs again. Hence, with d = the disk state (no CYCLE):
    d.last + d.log_cnt * inc == L + k * inc; d.last is at or before that total (ascending: <=,
    descending: >=); when k > 0, d.last is at or past L and d.log_cnt <= k (it only moves on without
    WAL), else d.log_cnt < cache + SEQ_LOG_VALS; a disk page not is_called was never
    fetched from after its last record, so it equals it; the engine page of a differing disk page is
    is_called (the first nextval after an is_called = false state always logs).
    """
    _check_structure(tag, engine, disk)
    e_last, e_log, e_called = seq_state(engine)
    d_last, d_log, d_called = seq_state(disk)
    assert e_log >= 0 and d_log >= 0
    if (d_last, d_log, d_called) != (e_last, e_log, e_called):
        assert d_called and e_called, (tuple(tag), seq_state(engine), seq_state(disk))
    elif not d_called:
        assert (d_last, d_log) == (e_last, e_log)
    name = _which(e_last)
    if name is None:
        if e_log == 0 and d_log:
            q, r = divmod(e_last - d_last, d_log)
            assert r == 0 and q != 0, (tuple(tag), seq_state(engine), seq_state(disk))
        return None
    lo, hi, inc, cache = SEQUENCES[name]
    assert lo <= d_last <= hi, (name, seq_state(disk))
    assert d_last + d_log * inc == e_last + e_log * inc, (name, seq_state(engine), seq_state(disk))
    total = e_last + e_log * inc
    assert (d_last <= total) if inc > 0 else (d_last >= total), (name, seq_state(engine), seq_state(disk))
    if e_log > 0:
        # a logged state with values left (ALTER … START WITH): the disk page can only have moved on
        assert d_log <= e_log and ((d_last >= e_last) if inc > 0 else (d_last <= e_last)), \
            (name, seq_state(engine), seq_state(disk))
    else:
        assert d_log < cache + SEQ_LOG_VALS, (name, seq_state(engine), seq_state(disk))
    return name


@pytest.mark.parametrize("name", INDEX_CONFIG_NAMES)
def test_sequence_pages_on_disk(oracle_results, name):
    res = oracle_results.get(name)
    disk = res.disk
    seen: dict[str, tuple[tuple[int, int, bool], tuple[int, int, bool]]] = {}
    n = 0
    for tag, engine, page, why in disk.exempt:
        if res.page_rmgr.get(tag) != S.RM_ID:
            continue
        assert why.startswith("sequence page")
        n += 1
        seq = check_disk_relation(tag, engine, page)
        if seq is not None:
            assert seq not in seen, f"two live relfilenodes for {seq}"
            seen[seq] = (seq_state(engine), seq_state(page))
    print(f"[{name}] {n} sequence pages on disk checked: {seen}")
    assert set(seen) == set(SEQUENCES), set(SEQUENCES) - set(seen)
    # the relation is not vacuous: nextval left most pages ahead of their last record
    differ = {s for s, (e, d) in seen.items() if e != d}
    assert {"seq_a", "seq_b", "seq_c", "seq_d", "seq_f", "seq_g", "seq_t_j_seq"} <= differ, differ
    assert seen["seq_e"] == ((5000500, 0, False),) * 2  # setval(…, false), never fetched from again
    assert seen["seq_g"][0] == (9000040, 0, True)  # logging ahead stops at MAXVALUE
    assert seen["seq_t_id_seq"][0][0] >= 7000000 and seen["seq_t_j_seq"][0][0] >= 8000000


@pytest.mark.parametrize("name", INDEX_CONFIG_NAMES)
def test_logged_states(wal_captures, name):
    # Every Sequence/LOG record carries a whole sequence tuple; ALTER SEQUENCE … START WITH rewrites the
    # sequence keeping its log_cnt, the only record with log_cnt > 0 (seq_f).
    states = []
    for _s, _e, raw in wal_captures.get(name).records:
        if raw[17] == S.RM_ID:
            rec = decode_record(raw)
            assert rec.info & 0xF0 == 0 and list(rec.blocks) == [0] and rec.blocks[0].will_init
            tup = rec.main_data[12:]
            states.append(S.SEQ_DATA.unpack_from(tup, tup[P.T_HOFF]))
    assert any(log > 0 and _which(last) == "seq_f" for last, log, _c in states)
    # seq_a (cache 1) over its first 100 nextvals: the first logs SEQ_LOG_VALS values past the start, each
    # later one when those are used up, SEQ_LOG_VALS + 1 further (sooner only after a checkpoint)
    a = [last for last, _log, called in states if called and 1000000 < last <= 1000100 + SEQ_LOG_VALS]
    assert a[0] == 1000000 + SEQ_LOG_VALS and len(a) >= 100 // (SEQ_LOG_VALS + 1) + 1, a
    assert all(0 < y - x <= SEQ_LOG_VALS + 1 for x, y in zip(a, a[1:])), a
    assert any(not called for _l, _g, called in states) and any(called for _l, _g, called in states)


# --- hand-made records ---------------------------------------------------------------------------------

def test_rebuilds_the_page_from_the_record_alone():
    tup = seq_tuple(1234, 0, True)
    want = expected_page(tup, LSN)
    assert apply_records(TAG, None, [(LSN, seq_record(tup))]) == want
    # whatever the page held before: another sequence state, a heap page, garbage in the hole
    old = bytearray(apply_records(TAG, None, [(LSN - 100, seq_record(seq_tuple(7, 3, False)))]))
    old[100:200] = b"\xaa" * 100
    assert apply_records(TAG, bytes(old), [(LSN, seq_record(tup))]) == want
    heap = bytearray(8192)
    P.page_init(heap)
    P.add_item(heap, b"\x55" * 60, 1)
    P.add_item(heap, b"\x66" * 90, 2)
    assert apply_records(TAG, bytes(heap), [(LSN, seq_record(tup))]) == want


def test_page_newer_than_the_record_is_rebuilt_anyway():
    # seq_redo ignores XLogInitBufferForRedo's BLK_DONE: the page is rebuilt and its LSN set back
    newer = apply_records(TAG, None, [(LSN + 5000, seq_record(seq_tuple(99, 0, True)))])
    tup = seq_tuple(50, 0, True)
    assert apply_records(TAG, newer, [(LSN, seq_record(tup))]) == expected_page(tup, LSN)


def test_image_to_apply_is_restored_then_replaced():
    img = bytearray(8192)
    P.page_init(img, 16)
    img[40:48] = b"imagebyt"
    tup = seq_tuple(-77, 5, True)
    raw = seq_record(tup, image=bytes(img))
    assert decode_record(raw).blocks[0].apply_image
    assert apply_records(TAG, None, [(LSN, raw)]) == expected_page(tup, LSN)
    # a consistency image (not to apply) is only an answer key
    raw = build_record(S.RM_ID, 0x02, [Block(0, TAG, will_init=True, image=bytes(img), apply_image=False)],
                       struct.pack("<III", *TAG[:3]) + tup)
    assert apply_records(TAG, None, [(LSN, raw)]) == expected_page(tup, LSN)
    # a corrupt image to apply is an error (RestoreBlockImage's), not a rebuilt page
    cut = bytearray(seq_record(tup, image=bytes(img)))
    cut[24 + 4:24 + 6] = struct.pack("<H", 8000)  # image length no longer the bytes that follow
    with pytest.raises(RedoError):
        apply_records(TAG, None, [(LSN, finish_record(cut))])


def test_any_tag_fork_and_block_number():
    # the init fork of an unlogged sequence, and a block number other than 0 (only the record decides)
    tup = seq_tuple(1, 0, False)
    for tag in (TAG._replace(forknum=3), TAG._replace(blknum=9), BufferTag(1664, 0, 1, 0, 0)):
        assert apply_records(tag, None, [(LSN, seq_record(tup, tag))]) == expected_page(tup, LSN)


def test_main_data_node_is_not_checked():
    tup = seq_tuple(3, 0, True)
    main = struct.pack("<III", 1, 2, 3) + tup
    raw = build_record(S.RM_ID, 0, [Block(0, TAG, will_init=True)], main)
    assert apply_records(TAG, None, [(LSN, raw)]) == expected_page(tup, LSN)


def test_tuple_sizes():
    # any tuple PageAddItem can place: 1 byte up to MAX_TUPLE_SIZE (8152); nothing else
    for size in (1, 7, 8, 41, S.MAX_TUPLE_SIZE):
        tup = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
        out = apply_records(TAG, None, [(LSN, seq_record(tup))])
        assert out == expected_page(tup, LSN)
        assert_sane(out)
    for size in (0, S.MAX_TUPLE_SIZE + 1, 8192, 40000):
        with pytest.raises(InvalidRecord):
            apply_records(TAG, None, [(LSN, seq_record(b"\1" * size))])
    for main in (b"", b"\0" * 4, b"\0" * 11, b"\0" * 12):  # no room for xl_seq_rec and a tuple
        raw = build_record(S.RM_ID, 0, [Block(0, TAG, will_init=True)], main)
        with pytest.raises(InvalidRecord):
            apply_records(TAG, None, [(LSN, raw)])


def test_block_must_be_will_init():
    with pytest.raises(InvalidRecord, match="WILL_INIT"):
        apply_records(TAG, expected_page(seq_tuple(1, 0, True), 5), [(LSN, seq_record(seq_tuple(2, 0, True),
                                                                                       will_init=False))])


def test_only_block_zero_is_redone():
    tup = seq_tuple(10, 0, True)
    other = TAG._replace(relnode=TAG.relnode + 1)
    raw = seq_record(tup, other, extra=(Block(1, TAG, will_init=True),))
    assert apply_records(other, None, [(LSN, raw)]) == expected_page(tup, LSN)
    with pytest.raises(InvalidRecord, match="block 1"):
        apply_records(TAG, None, [(LSN, raw)])
    with pytest.raises(BlockNotReferenced):
        apply_records(TAG._replace(blknum=1), None, [(LSN, raw)])
    with pytest.raises(InvalidRecord, match="block 2"):  # the page as block 2 with no block 0 at all
        apply_records(TAG, None, [(LSN, seq_record(tup, block_id=2))])


def test_unknown_info_codes():
    tup = seq_tuple(1, 0, True)
    for info in range(0x10, 0x100, 0x10):
        with pytest.raises(UnsupportedRecord, match="Sequence") as ei:
            apply_records(TAG, None, [(LSN, seq_record(tup, info=info))])
        assert ei.value.rmid == S.RM_ID and ei.value.info == info and f"{info:#04x}" in str(ei.value)
        assert S.record_name(info) == f"Sequence/UNKNOWN ({info:x})"
    # the low bits are the record machinery's (XLR_SPECIAL_REL_UPDATE, XLR_CHECK_CONSISTENCY)
    for info in (0x01, 0x02, 0x03):
        assert apply_records(TAG, None, [(LSN, seq_record(tup, info=info))]) == expected_page(tup, LSN)
        assert S.record_name(info) == "Sequence/LOG"
    assert RMGRS[15].record_name(0) == "Sequence/LOG"


def test_mask():
    page = bytearray(expected_page(seq_tuple(1, 0, True), LSN))
    struct.pack_into("<H", page, 8, 0xBEEF)
    page[28:60] = b"\xff" * 32  # the hole
    S.mask(page, 0)
    want = bytearray(expected_page(seq_tuple(1, 0, True), 0))
    assert page == want
    # the tuple itself is compared: a different last_value stays different
    a, b = bytearray(expected_page(seq_tuple(1, 0, True), LSN)), bytearray(expected_page(seq_tuple(2, 0, True), LSN))
    S.mask(a, 0)
    S.mask(b, 0)
    assert a != b
    new = bytearray(8192)
    new[0:4] = b"\1\2\3\4"
    S.mask(new, 0)  # a never-initialized page: LSN and checksum only, no error
    assert new == bytearray(8192)


# --- mutations of real records and pages ---------------------------------------------------------------

@pytest.fixture(scope="module")
def samples(oracle_results):
    out = [s for s in oracle_results.get(INDEX_CONFIG_NAMES[0]).samples if s[4][0] == S.RM_ID]
    assert len(out) >= 10
    return out


def test_samples_replay_to_postgres_images(samples):
    for tag, base, end, raw, _key in samples:
        blk = decode_record(raw).blocks[0]
        assert blk.has_image and not blk.apply_image
        out = bytearray(apply_records(tag, base, [(end, raw)]))
        img = bytearray(blk.image())
        S.mask(out, 0)
        S.mask(img, 0)
        assert out == img


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(data=st.data())
def test_mutations_give_a_valid_page_or_a_typed_error(samples, data):
    tag, base, end, raw, _key = data.draw(st.sampled_from(samples))
    where = data.draw(st.sampled_from(["main", "raw", "base", "block-data"]))
    if where == "main":
        raw = rebuild(raw, main=mutate(data, decode_record(raw).main_data, extend=64))
    elif where == "block-data":
        raw = rebuild(raw, data={0: data.draw(st.binary(max_size=40))})
    elif where == "raw":
        raw = flipped_raw(data, raw)
    elif base is not None:
        base = flipped_page(data, base)
    try:
        out = apply_records(tag, base, [(end, raw)])
    except RedoError:
        return
    if raw[17] != 15:
        # The mutation changed the rmgr id: the record is now another rmgr's (e.g. Generic, whose deltas may
        # write any bytes by design), so only "a page or a RedoError" holds, as it just did.
        assert len(out) == P.BLCKSZ
        return
    assert_sane(out)
    assert struct.unpack_from("<I", out, P.get_special(out))[0] == 0x1717 and P.get_lsn(out) == end
