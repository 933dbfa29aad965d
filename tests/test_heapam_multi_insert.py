"""MULTI_INSERT+INIT's uniform-length fast path (heapam2._multi_insert_uniform) against the general
tuple-by-tuple loop: same page bytes, or the same typed error, on generated and mutated block data."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from walredo_template.pg import heapam2
from walredo_template.pg import page as P
from walredo_template.pg.errors import InvalidRecord


def _block_data(tuples: list[tuple[int, int, int, bytes]]) -> bytes:
    """xl_multi_insert_tuple chunks (u16 datalen, u16 infomask2, u16 infomask, u8 hoff, data), SHORTALIGNed."""
    out = bytearray()
    for infomask2, infomask, hoff, body in tuples:
        if len(out) & 1:
            out += b"\0"
        out += struct.pack("<HHHB", len(body), infomask2, infomask, hoff) + body
    return bytes(out)


def _outcome(fn, data: bytes, ntuples: int):
    page = bytearray(P.BLCKSZ)
    P.page_init(page)
    try:
        fn(page, data, ntuples, 1234, 0x12345)
    except InvalidRecord as e:
        return ("error", str(e))
    return bytes(page)


@settings(max_examples=300, deadline=None)
@given(
    n=st.integers(1, 300),
    length=st.integers(0, 300),
    odd=st.lists(st.tuples(st.integers(0, 299), st.integers(0, 300)), max_size=2),
    flips=st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), max_size=3),
    cut=st.one_of(st.none(), st.integers(0, 1 << 20)),
    ntuples_delta=st.sampled_from([0, 0, 0, -1, 1]),
)
def test_uniform_fast_path_matches_general_loop(n, length, odd, flips, cut, ntuples_delta):
    lengths = [length] * n
    for i, other in odd:  # some lengths differ: the fast path must decline
        if i < n:
            lengths[i] = other
    tuples = [(0x0803, 0x0802, 24, bytes((j * 7 + k) & 0xFF for k in range(ln))) for j, ln in enumerate(lengths)]
    data = bytearray(_block_data(tuples))
    for pos, val in flips:
        if data:
            data[pos % len(data)] = val
    if cut is not None and data:
        del data[cut % len(data):]
    ntuples = max(0, n + ntuples_delta)
    fast = _outcome(heapam2._multi_insert_into_empty_page, bytes(data), ntuples)
    slow = _outcome(heapam2._multi_insert_general, bytes(data), ntuples)
    if ntuples > P.MAX_HEAP_TUPLES_PER_PAGE:
        assert fast == ("error", f"can't put more than {P.MAX_HEAP_TUPLES_PER_PAGE} items in a heap page")
    else:
        assert fast == slow


def test_uniform_fast_path_is_taken_for_equal_lengths():
    data = _block_data([(3, 0x0802, 24, b"x" * 97)] * 61)
    page = bytearray(P.BLCKSZ)
    P.page_init(page)
    assert heapam2._multi_insert_uniform(page, data, 61, 1234, 0x12345)
    assert bytes(page) == _outcome(heapam2._multi_insert_general, data, 61)
    assert not heapam2._multi_insert_uniform(page, data[:-1], 61, 1234, 0x12345)
