"""GiST redo under mutation (walredo_template/pg/gist.py): the real GiST records of the ``indexes`` capture
with their data, main data or base page mutated by hypothesis must give a sane page or a RedoError.
"""

from __future__ import annotations

import struct

import pytest
from gistpages import assert_sane
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mutations import rebuild
from pgcluster import INDEX_CONFIG_NAMES

from walredo_template import BufferTag
from walredo_template.pg import gist
from walredo_template.pg import page as P
from walredo_template.pg.errors import RedoError
from walredo_template.pg.xlogrecord import decode_record
from walredo_template.redo import apply_records

# --- mutations of real records and pages ---------------------------------------------------------

class Samples(list):  # type: ignore[type-arg]
    """The real GiST redo cases, with a short repr for hypothesis's failure reports."""

    def __repr__(self) -> str:
        return f"<{len(self)} GiST samples>"


@pytest.fixture(scope="module")
def samples(oracle_results):
    got = Samples(s for s in oracle_results.get(INDEX_CONFIG_NAMES[0]).samples if s[4][0] == gist.RM_ID)
    kinds = {(k[1], k[3]) for *_x, k in got}
    assert {(0x00, 0), (0x00, 1), (0x10, 0), (0x30, 0), (0x30, 1), (0x30, 2), (0x60, 0), (0x60, 1)} <= kinds
    return got


def _rebuild(raw: bytes, target: object, mutate) -> bytes:
    """``raw`` rebuilt with the main data (target "main") or block ``target``'s data passed through
    ``mutate``; images stay as they are (uncompressed), so the record still decodes."""
    rec = decode_record(raw)
    if target == "main":
        return rebuild(rec, main=mutate(rec.main_data))
    blk = rec.blocks.get(target) if isinstance(target, int) else None
    return rebuild(rec, data={} if blk is None else {blk.block_id: mutate(blk.data or b"")})


def _check_outcome(tag: BufferTag, base: bytes | None, end: int, raw: bytes) -> None:
    try:
        out = apply_records(tag, base, [(end, raw)])
    except RedoError:
        return
    assert_sane(out)


def _mutator(kind: str, pos: int, val: int):
    def mutate(data: bytes) -> bytes:
        if not data:
            return bytes([val & 0xFF]) if kind == "extend" else data
        i = pos % len(data)
        if kind == "flip":
            return data[:i] + bytes([data[i] ^ (val & 0xFF or 1)]) + data[i + 1:]
        if kind == "u16":
            return data[:i] + struct.pack("<H", val & 0xFFFF) + data[i + 2:]
        if kind == "truncate":
            return data[:i]
        return data + bytes([val & 0xFF]) * (1 + val % 9)
    return mutate


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pick=st.integers(0, 10_000), target=st.sampled_from(["main", 0, 1, 2, 3]),
       kind=st.sampled_from(["flip", "u16", "truncate", "extend"]), pos=st.integers(0, 9000),
       val=st.integers(0, 0xFFFF))
def test_mutated_real_records_give_a_sane_page_or_a_redo_error(samples, pick, target, kind, pos, val):
    tag, base, end, raw, _key = samples[pick % len(samples)]
    _check_outcome(tag, base, end, _rebuild(raw, target, _mutator(kind, pos, val)))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pick=st.integers(0, 10_000), region=st.sampled_from(["header", "linp", "special", "any"]),
       pos=st.integers(0, 9000), val=st.integers(0, 0xFFFF))
def test_mutated_real_base_pages_give_a_sane_page_or_a_redo_error(samples, pick, region, pos, val):
    with_base = [s for s in samples if s[1] is not None]
    tag, base, end, raw, _key = with_base[pick % len(with_base)]
    page = bytearray(base)
    if region == "header":
        i = 8 + pos % 16
    elif region == "linp":
        i = 24 + pos % max(1, P.get_lower(page) - 24)
    elif region == "special":
        i = gist.MAX_SPECIAL + pos % 16
    else:
        i = pos % (P.BLCKSZ - 1)
    struct.pack_into("<H", page, min(i, P.BLCKSZ - 2), val)
    _check_outcome(tag, bytes(page), end, raw)
