"""Hash redo of bucket splits and overflow-page squeezes (walredo_template/pg/hash.py): SPLIT_ALLOCATE_PAGE,
SPLIT_PAGE, SPLIT_COMPLETE, MOVE_PAGE_CONTENTS and SQUEEZE_PAGE on hand-made pages and records.
"""

from __future__ import annotations

import struct

import pytest
from hashpages import (
    BITMAP,
    BUCKET,
    BUCKET2,
    INV,
    LSN,
    META,
    NEWMAP,
    OVFL,
    OVFL2,
    bitmap_page,
    bucket_page,
    codes,
    itup,
    meta_head,
    meta_page,
    moved_tuples,
    opaque,
    redo,
    squeeze_record,
    u32,
)
from recordbuilder import Block

from walredo_template.pg import hash_page as H
from walredo_template.pg import indexpage as IP
from walredo_template.pg import page as P
from walredo_template.pg.errors import InvalidPage, InvalidRecord

# SPLIT_ALLOCATE_PAGE, SPLIT_PAGE, SPLIT_COMPLETE

def _split_alloc(flags: int, data: bytes | None) -> tuple[list[Block], bytes]:
    blocks = [Block(0, BUCKET), Block(1, BUCKET2, will_init=True), Block(2, META, data=data)]
    return blocks, struct.pack("<IHHB", 2, 0x22, 0x12, flags)


def test_split_allocate_old_and_new_bucket():
    blocks, main = _split_alloc(0, None)
    old = redo(BUCKET, bucket_page(1, 2), 0x40, blocks, main)
    assert opaque(old) == (2, INV, 0, 0x22, 0xFF80) and codes(old) == [1, 2] and P.get_lsn(old) == LSN
    new = redo(BUCKET2, None, 0x40, blocks, main)
    assert opaque(new) == (2, INV, 2, 0x12, 0xFF80) and IP.items(new) == 0 and P.get_lsn(new) == LSN


def test_split_allocate_old_bucket_is_updated_after_its_image_is_restored():
    image = bucket_page(1, 2, 3, lsn=0)
    blocks = [Block(0, BUCKET, image=bytes(image)), Block(1, BUCKET2, will_init=True), Block(2, META)]
    main = struct.pack("<IHHB", 2, 0x22, 0x12, 0)
    old = redo(BUCKET, bucket_page(1), 0x40, blocks, main)
    assert codes(old) == [1, 2, 3] and opaque(old)[0] == 2 and opaque(old)[3] == 0x22 and P.get_lsn(old) == LSN


@pytest.mark.parametrize("flags, data, lowmask, highmask, spare_at, spare", [
    (0, None, 1, 3, None, None),
    (1, struct.pack("<II", 3, 7), 3, 7, None, None),  # masks alone: never produced (a new mask always
    (2, struct.pack("<II", 2, 5), 1, 3, 2, 5),  # starts a new splitpoint phase too)
    (3, struct.pack("<IIII", 3, 7, 2, 5), 3, 7, 2, 5),
])
def test_split_allocate_metapage(flags, data, lowmask, highmask, spare_at, spare):
    blocks, main = _split_alloc(flags, data)
    meta = redo(META, meta_page(), 0x40, blocks, main)
    head = meta_head(meta)
    assert head[7] == 2 and (head[9], head[8]) == (lowmask, highmask)
    if spare_at is not None:
        assert head[10] == spare_at and u32(meta, H.M_SPARES + 4 * spare_at) == spare
    else:
        assert head[10] == 1


def test_split_allocate_metapage_bad_data():
    blocks, main = _split_alloc(3, struct.pack("<III", 3, 7, 2))
    with pytest.raises(InvalidRecord, match="expected 16"):
        redo(META, meta_page(), 0x40, blocks, main)
    blocks, main = _split_alloc(2, struct.pack("<II", 98, 5))
    with pytest.raises(InvalidRecord, match="splitpoint 98"):
        redo(META, meta_page(), 0x40, blocks, main)
    blocks, main = _split_alloc(0, None)
    with pytest.raises(InvalidRecord, match="main data"):
        redo(BUCKET2, None, 0x40, blocks, main[:8])


def test_split_page_is_an_image_or_an_error():
    image = bucket_page(4, 5, lsn=0)
    assert codes(redo(BUCKET2, bucket_page(1), 0x50, [Block(0, BUCKET2, image=bytes(image))], b"")) == [4, 5]
    with pytest.raises(InvalidRecord, match="full-page image"):
        redo(BUCKET2, bucket_page(1), 0x50, [Block(0, BUCKET2)], b"")
    with pytest.raises(InvalidRecord, match="full-page image"):
        redo(BUCKET2, bucket_page(1), 0x50, [Block(0, BUCKET2, image=bytes(image), apply_image=False)], b"")


def test_split_complete_sets_both_flags_even_over_a_restored_image():
    main = struct.pack("<HH", H.LH_BUCKET_PAGE | H.LH_BUCKET_NEEDS_SPLIT_CLEANUP, H.LH_BUCKET_PAGE)
    blocks = [Block(0, BUCKET), Block(1, BUCKET2, image=bytes(bucket_page(7, flag=0x12, lsn=0)))]
    old = redo(BUCKET, bucket_page(1, flag=0x22), 0x60, blocks, main)
    assert opaque(old)[3] == 0x42 and codes(old) == [1]
    new = redo(BUCKET2, bucket_page(1), 0x60, blocks, main)
    assert opaque(new)[3] == H.LH_BUCKET_PAGE and codes(new) == [7] and P.get_lsn(new) == LSN
    odd = bucket_page()
    struct.pack_into("<H", odd, 16, 8184)
    struct.pack_into("<H", odd, 14, 8184)
    with pytest.raises(InvalidPage, match="pd_special"):
        redo(BUCKET, odd, 0x60, blocks, main)


# MOVE_PAGE_CONTENTS, SQUEEZE_PAGE


def test_move_page_contents_write_and_read_pages():
    main = struct.pack("<HB", 2, 0)
    blocks = [Block(0, BUCKET), Block(1, OVFL, data=moved_tuples([1, 3], [itup(5), itup(25)])),
              Block(2, OVFL2, data=struct.pack("<3H", 1, 2, 4))]
    page = redo(OVFL, bucket_page(10, 20, flag=H.LH_OVERFLOW_PAGE), 0x70, blocks, main)
    assert codes(page) == [5, 10, 25, 20]
    page = redo(OVFL2, bucket_page(5, 25, 30, 40, flag=H.LH_OVERFLOW_PAGE), 0x70, blocks, main)
    assert codes(page) == [30]
    # the primary bucket page is only locked: untouched, its LSN too, unless an image comes with it
    base = bucket_page(1)
    assert redo(BUCKET, base, 0x70, blocks, main) == base
    image = bucket_page(1, 2, lsn=0)
    with_image = [Block(0, BUCKET, image=bytes(image))] + blocks[1:]
    page = redo(BUCKET, base, 0x70, with_image, main)
    assert codes(page) == [1, 2] and P.get_lsn(page) == LSN
    # when the write page is the primary bucket page, PostgreSQL does not read block 0 at all
    assert redo(BUCKET, base, 0x70, with_image, struct.pack("<HB", 2, 1)) == base
    # a read page without data deletes nothing
    page = redo(OVFL2, bucket_page(5, flag=H.LH_OVERFLOW_PAGE), 0x70, blocks[:2] + [Block(2, OVFL2)], main)
    assert codes(page) == [5] and P.get_lsn(page) == LSN


@pytest.mark.parametrize("ntups, data, match", [
    (3, moved_tuples([1, 2, 3], [itup(5), itup(6)]), "2 tuples for 3"),
    (1, moved_tuples([1], [itup(5), itup(6)]), "more tuples"),
    (2, moved_tuples([1], []), "do not fit"),
    (1, moved_tuples([1], [itup(5)[:12]]), "does not fit"),
    (1, moved_tuples([1], [itup(5)[:6]]), "truncated"),
    (1, moved_tuples([1], [struct.pack("<HHHHI", 0, 7, 1, 0, 5)]), "index tuple of 0 bytes"),
    (1, moved_tuples([9], [itup(5)]), "too large"),
])
def test_moved_tuples_that_do_not_add_up(ntups, data, match):
    blocks = [Block(1, OVFL, data=data), Block(2, OVFL2)]
    for info, main in ((0x70, struct.pack("<HB", ntups, 1)), (0x80, struct.pack("<IIHBB", 1, INV, ntups, 1, 0))):
        with pytest.raises(InvalidRecord, match=match):
            redo(OVFL, bucket_page(10, flag=H.LH_OVERFLOW_PAGE), info, blocks, main)


def test_squeeze_page_frees_the_overflow_page():
    """The freed page is re-initialised by redo only when it comes without an image, which PostgreSQL never
    writes (it re-initialises the page, LSN 0, before logging): hand-made."""
    blocks, main = squeeze_record(0, 0)
    page = redo(OVFL2, bucket_page(1, 2, flag=H.LH_OVERFLOW_PAGE), 0x80, blocks, main)
    assert opaque(page) == (INV, INV, INV, H.LH_UNUSED_PAGE, 0xFF80) and IP.items(page) == 0
    assert P.get_lower(page) == 24 and P.get_upper(page) == 8176 and P.get_lsn(page) == LSN
    assert not any(page[24:8176])


def test_squeeze_page_links_bitmap_and_metapage():
    blocks, main = squeeze_record(0, 0)
    write = redo(OVFL, bucket_page(10, 20, flag=H.LH_OVERFLOW_PAGE, nxt=77), 0x80, blocks, main)
    assert codes(write) == [10, 15, 20] and opaque(write)[1] == 77  # next link kept: prev page is block 3
    prev = redo(BUCKET2, bucket_page(1, flag=H.LH_OVERFLOW_PAGE, nxt=OVFL2.blknum), 0x80, blocks, main)
    assert opaque(prev)[1] == NEWMAP.blknum
    # block 4, the page after the freed one: the freed page is always a chain's last, so hand-made
    nxt = redo(NEWMAP, bucket_page(1, flag=H.LH_OVERFLOW_PAGE, prev=OVFL2.blknum), 0x80, blocks, main)
    assert opaque(nxt)[0] == BUCKET2.blknum
    bitmap = redo(BITMAP, bitmap_page(), 0x80, blocks, main)
    assert bitmap[24 + 1] == 0xFD and bitmap[24] == 0xFF
    meta = redo(META, meta_page(), 0x80, blocks, main)
    assert u32(meta, H.M_FIRSTFREE) == 9
    base = bucket_page(1)
    assert redo(BUCKET, base, 0x80, blocks, main) == base  # cleanup lock only


def test_squeeze_page_writing_to_the_previous_page():
    blocks, main = squeeze_record(1, 1, ntups=0, next_page=False)
    write = redo(OVFL, bucket_page(10, flag=H.LH_OVERFLOW_PAGE, nxt=OVFL2.blknum), 0x80, blocks, main)
    assert codes(write) == [10] and opaque(write)[1] == NEWMAP.blknum and P.get_lsn(write) == LSN
    # a block 3 PostgreSQL would not read, and block 0 when the write page is the primary: left alone
    extra = sorted(blocks + [Block(3, BUCKET2), Block(0, BUCKET)], key=lambda b: b.block_id)
    base = bucket_page(1)
    assert redo(BUCKET2, base, 0x80, extra, main) == base
    assert redo(BUCKET, base, 0x80, extra, main) == base
    with pytest.raises(InvalidRecord, match="main data"):
        redo(OVFL, base, 0x80, blocks, main[:11])
