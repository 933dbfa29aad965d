"""The apply_records target's input, and seeds for it built from the committed WAL capture.

An input is one msgpack array (so mutators can take it apart and put it back together)::

    [tag: [spc, db, rel, fork, blk], rmgr: int, wal_log_hints: bool,
     base: nil | [hole_offset, hole_length, bytes],      # the page with a zero hole cut out
     records: [[end_lsn, raw, fix_crc: bool], ...]]

``rmgr`` is the access method of the relation (it decides the page kind, :mod:`fuzzing.pagecheck`).
``base`` is stored without its hole (the free space between pd_lower and pd_upper, all zeros) to keep
inputs small; rebuilt, it need not be 8192 bytes. With ``fix_crc`` the harness sets each record's
``xl_tot_len`` and CRC before redo, so a mutation of the record's bytes reaches the redo routines.

Seeds (:func:`apply_seeds`): the capture's pages are replayed record by record; each record becomes a
request of that one record onto the page before it (or none, when it initialises the page), without its
consistency-check images. The smallest two per (access method, fork, rmgr, info, page kind) are kept.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import msgpack

from walredo_template import BufferTag
from walredo_template.pg.errors import RedoError
from walredo_template.pg.page import BLCKSZ, ZERO_PAGE
from walredo_template.pg.pagecheck import page_kind, page_problem
from walredo_template.pg.xlogrecord import decode_record
from walredo_template.redo import apply_records
from walredo_tools.walreader import group_by_page

from .records import finish_record, strip_check_images

_U32 = 0xFFFFFFFF


@dataclass
class ApplyInput:
    tag: BufferTag
    rmgr: int
    wal_log_hints: bool
    base: bytes | None
    records: list[tuple[int, bytes, bool]]  # (end_lsn, raw, fix_crc)

    def request(self) -> tuple[BufferTag, bytes | None, list[tuple[int, bytes]]]:
        """What apply_records gets: the records with their CRC fixed where asked."""
        recs = [(lsn, finish_record(raw) if fix and len(raw) >= 24 else raw) for lsn, raw, fix in self.records]
        return self.tag, self.base, recs


def _cut_hole(page: bytes) -> tuple[int, int, bytes]:
    lower, upper = struct.unpack_from("<HH", page, 12) if len(page) == BLCKSZ else (0, 0)
    if 24 <= lower < upper <= BLCKSZ and page[lower:upper] == ZERO_PAGE[: upper - lower]:
        return lower, upper - lower, page[:lower] + page[upper:]
    return 0, 0, page


def encode_apply(inp: ApplyInput) -> bytes:
    base = None if inp.base is None else list(_cut_hole(inp.base))
    doc = [list(inp.tag), inp.rmgr, inp.wal_log_hints, base, [[lsn, raw, fix] for lsn, raw, fix in inp.records]]
    out: bytes = msgpack.packb(doc, use_bin_type=True)
    return out


def _is_int(v: object) -> bool:
    return type(v) is int


def decode_apply(data: bytes) -> ApplyInput | None:
    """The input in ``data``, or None if it is not one (an uninteresting input, not an error)."""
    try:
        doc: Any = msgpack.unpackb(data, raw=False, strict_map_key=True, max_bin_len=1 << 20,
                                   max_array_len=4096)
    except Exception:  # msgpack raises a zoo of types for garbage
        return None
    if type(doc) is not list or len(doc) != 5:
        return None
    tag, rmgr, hints, base, records = doc
    if type(tag) is not list or len(tag) != 5 or not all(_is_int(v) for v in tag) or not _is_int(rmgr):
        return None
    if type(hints) is not bool or type(records) is not list:
        return None
    page: bytes | None = None
    if base is not None:
        if type(base) is not list or len(base) != 3 or not _is_int(base[0]) or not _is_int(base[1]):
            return None
        off, hole, body = base
        if type(body) is not bytes or not 0 <= off <= len(body) or not 0 <= hole <= BLCKSZ:
            return None
        page = body[:off] + ZERO_PAGE[:hole] + body[off:]
    recs: list[tuple[int, bytes, bool]] = []
    for r in records:
        if type(r) is not list or len(r) != 3 or not _is_int(r[0]) or type(r[1]) is not bytes:
            return None
        if type(r[2]) is not bool:
            return None
        recs.append((r[0], r[1], r[2]))
    # The child validates the tag (5 u32s) before the engine sees it: model that, not a wider domain.
    return ApplyInput(BufferTag(*(v & _U32 for v in tag)), rmgr, hints, page, recs)


def _block_starts_page(tag: BufferTag, raw: bytes) -> bool:
    for b in decode_record(raw, verify_crc=False).blocks.values():
        if b.tag == tag:
            return b.will_init or (b.has_image and b.apply_image)
    return False


def page_histories(doc: dict[str, Any]) -> Iterator[tuple[BufferTag, int, bool, list[tuple[int, bytes]]]]:
    """For each page of the capture: its tag, access method, wal_log_hints and its records from the first
    one that initialises it (or carries an image to apply)."""
    records = [tuple(r) for r in doc["records"]]
    groups = group_by_page(records)
    hints = bool(doc.get("checksums", False))
    for page in doc["pages"]:
        tag = BufferTag(*page["tag"])
        chain = groups.get(tag, [])
        for i, (_end, raw) in enumerate(chain):
            if _block_starts_page(tag, raw):
                yield tag, int(page.get("rmgr", 10)), hints, list(chain[i:])
                break


def apply_seeds(doc: dict[str, Any], per_key: int = 2) -> list[ApplyInput]:
    """Seeds for the apply_records target (module docstring), smallest first within each key."""
    best: dict[tuple[object, ...], list[tuple[int, ApplyInput]]] = {}
    for tag, rmgr, hints, chain in page_histories(doc):
        page: bytes | None = None
        for end_lsn, raw in chain:
            rec = decode_record(raw, verify_crc=False)
            stripped = strip_check_images(raw)
            base = None if _block_starts_page(tag, raw) else page
            inp = ApplyInput(tag, rmgr, hints, base, [(end_lsn, stripped, True)])
            try:
                page = apply_records(tag, page, [(end_lsn, raw)], wal_log_hints=hints)
            except RedoError:
                break  # the rest of this page's history is not replayable in isolation
            if page_problem(page, tag.forknum, rmgr) is not None:
                break  # never seed with an input whose answer is already invalid
            kind = "none" if base is None else page_kind(base, tag.forknum, rmgr)[0]
            key = (rmgr, tag.forknum, rec.rmid, rec.info, kind)
            size = len(encode_apply(inp))
            cands = best.setdefault(key, [])
            cands.append((size, inp))
            cands.sort(key=lambda c: c[0])
            del cands[per_key:]
    return [inp for key in sorted(best, key=repr) for _size, inp in best[key]]
