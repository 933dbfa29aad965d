"""apply_records' verify_crc flag: on by default (a damaged record is an InvalidRecord), off only on request."""

from __future__ import annotations

import pytest

from walredo_template.pg.errors import InvalidRecord
from walredo_template.pg.xlogrecord import decode_record
from walredo_template.redo import apply_records
from walredo_tools.walreader import group_by_page


def test_crc_is_verified_unless_the_caller_opts_out(default_capture):
    def initializes(tag, raw):  # a heap record that builds the page from nothing
        rec = decode_record(raw)
        return rec.rmid in (9, 10) and any(b.tag == tag and b.will_init for b in rec.blocks.values())

    tag, end, raw = next(
        (t, e, r) for t, recs in group_by_page(default_capture.records).items() for e, r in recs if initializes(t, r)
    )
    expected = apply_records(tag, None, [(end, raw)])
    damaged = bytearray(raw)
    damaged[20] ^= 0xFF  # the stored CRC itself: the record's content is intact
    with pytest.raises(InvalidRecord, match="checksum"):
        apply_records(tag, None, [(end, bytes(damaged))])
    assert apply_records(tag, None, [(end, bytes(damaged))], verify_crc=False) == expected
