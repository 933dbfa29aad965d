"""Mutations of real records and base pages, for the per-access-method hypothesis tests that hold the engine
to "a valid page or a typed RedoError".

A sample is one entry of an oracle capture's ``samples``: ``(tag, base, end, raw, key)``, the page a record
was written for, as it was before the record, and the record. A mutated record is rebuilt from its decoded
parts (:func:`rebuild`, images uncompressed) so it still decodes, CRC included; a mutated base page keeps
its pd_lsn (bytes 0..7), so the record is still replayed onto it.

    raw = mutated_record(data, raw)               # main data / a block's data changed, a block dropped, ...
    check_outcome(tag, base, end, raw, RM_BTREE)  # applies it: a RedoError, or a page pagecheck accepts
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from hypothesis import strategies as st
from recordbuilder import Block, build_record, finish_record

from walredo_template import BufferTag
from walredo_template.pg import page as P
from walredo_template.pg.errors import RedoError
from walredo_template.pg.pagecheck import page_problem
from walredo_template.pg.xlogrecord import DecodedRecord, decode_record
from walredo_template.redo import apply_records

Sample = tuple[BufferTag, "bytes | None", int, bytes, tuple[int, ...]]


def rebuild(raw: bytes | DecodedRecord, *, main: bytes | None = None, data: dict[int, bytes | None] | None = None,
            drop: int | None = None, toggle_init: int | None = None) -> bytes:
    """The record rebuilt from its decoded parts (images uncompressed): ``main`` replaces the main data,
    ``data`` some blocks' data (block ids the record lacks are ignored), block ``drop`` is left out and
    block ``toggle_init``'s WILL_INIT flag is flipped."""
    rec = decode_record(raw) if isinstance(raw, bytes) else raw
    data = data or {}
    blocks = [Block(bid, b.tag, data=data.get(bid, b.data), will_init=b.will_init != (bid == toggle_init),
                    image=b.image() if b.has_image else None, apply_image=b.apply_image)
              for bid, b in sorted(rec.blocks.items()) if bid != drop]
    return build_record(rec.rmid, rec.info, blocks, rec.main_data if main is None else main, xid=rec.xid)


def mutate(data: st.DataObject, buf: bytes, lo: int = 0, extend: int = 16) -> bytes:
    """``buf`` with 1-4 bytes from ``lo`` on changed, cut short, or extended by up to ``extend`` bytes."""
    out = bytearray(buf)
    kind = data.draw(st.sampled_from(["flip", "truncate", "extend"]))
    if kind == "flip" and len(out) > lo:
        for _ in range(data.draw(st.integers(1, 4))):
            out[data.draw(st.integers(lo, len(out) - 1))] = data.draw(st.integers(0, 255))
    elif kind == "truncate":
        out = out[:data.draw(st.integers(0, max(0, len(out) - 1)))]
    else:
        out += data.draw(st.binary(min_size=1, max_size=extend))
    return bytes(out)


def mutated_record(data: st.DataObject, raw: bytes,
                   what: Sequence[str] = ("main", "block", "drop", "init")) -> bytes:
    """``raw`` with its main data or one block's data mutated (:func:`mutate`), a block dropped or its
    WILL_INIT flag toggled (one of ``what``, drawn), rebuilt so it still decodes."""
    rec = decode_record(raw)
    how = data.draw(st.sampled_from(list(what)))
    if how == "main":
        return rebuild(rec, main=mutate(data, rec.main_data))
    bid = data.draw(st.sampled_from(sorted(rec.blocks)))
    if how == "block":
        return rebuild(rec, data={bid: mutate(data, rec.blocks[bid].data or b"") or None})
    if how == "drop":
        return rebuild(rec, drop=bid)
    return rebuild(rec, toggle_init=bid)


def flipped_raw(data: st.DataObject, raw: bytes) -> bytes:
    """1-4 bytes of the record after its first 16 changed; the CRC recomputed or not (drawn)."""
    buf = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 4))):
        buf[data.draw(st.integers(16, len(buf) - 1))] = data.draw(st.integers(0, 255))
    return finish_record(buf) if data.draw(st.booleans()) else bytes(buf)


def flipped_page(data: st.DataObject, base: bytes, positions: st.SearchStrategy[int] | None = None,
                 most: int = 8) -> bytes:
    """1..``most`` bytes of ``base`` changed, at positions drawn from ``positions`` (default: anywhere)."""
    page = bytearray(base)
    where = st.integers(0, P.BLCKSZ - 1) if positions is None else positions
    for _ in range(data.draw(st.integers(1, most))):
        page[data.draw(where)] = data.draw(st.integers(0, 255))
    return bytes(page)


def header_and_special(header_end: int, special: int) -> st.SearchStrategy[int]:
    """Positions past pd_lsn weighted towards the page header (up to ``header_end``) and the last ``special``
    bytes (the special space), where one changed byte does most."""
    return st.one_of(st.integers(8, header_end), st.integers(8, P.BLCKSZ - 1),
                     st.integers(P.BLCKSZ - special, P.BLCKSZ - 1))


def assert_valid(page: bytes, tag: BufferTag, rmgr: int) -> None:
    """``page`` passes the checks the engine promises for a page of ``rmgr`` (:mod:`.pg.pagecheck`)."""
    problem = page_problem(page, tag.forknum, rmgr)
    assert problem is None, problem


def assert_sane(page: bytes) -> None:
    """check_page passes and every line pointer with storage lies inside the tuple space, whatever the page
    kind (for access methods whose every page has a line pointer array)."""
    P.check_page(page)
    upper, special = P.get_upper(page), P.get_special(page)
    for off in range(1, P.max_offset(page) + 1):
        w = P.get_itemid(page, off)
        if P.lp_flags(w) == P.LP_NORMAL or P.lp_len(w):
            assert upper <= P.lp_off(w) and P.lp_off(w) + P.lp_len(w) <= special


def check_outcome(tag: BufferTag, base: bytes | None, end: int, raw: bytes, rmgr: int) -> bytes | None:
    """Apply ``raw`` to ``base``: a RedoError (None), or a page :func:`assert_valid` accepts (the page)."""
    try:
        out = apply_records(tag, base, [(end, raw)])
    except RedoError:
        return None
    assert_valid(out, tag, rmgr)
    return out


def check_rebuilt_samples(samples: Sequence[Sample], mask: Callable[[bytearray, int], None]) -> None:
    """The rebuilt-record path the mutation tests take gives the same page as the original record when
    nothing is mutated, and that page is PostgreSQL's (masked) where the record carries its image."""
    for tag, base, end, raw, _key in samples:
        rec = decode_record(raw)
        a = apply_records(tag, base, [(end, raw)])
        assert apply_records(tag, base, [(end, rebuild(rec))]) == a
        blk = next(b for b in rec.blocks.values() if b.tag == tag)
        if blk.has_image and not blk.apply_image:
            x, y = bytearray(a), bytearray(blk.image())
            mask(x, tag.blknum)
            mask(y, tag.blknum)
            assert x == y
