"""Page layout and bufpage operations (PageInit, PageAddItem, PageRepairFragmentation,
PageTruncateLinePointerArray) on synthetic pages; the real-PostgreSQL checks are in test_heapam."""

from __future__ import annotations

import struct

import pytest

from walredo_template.pg import page as P
from walredo_template.pg.errors import InvalidPage, InvalidRecord


def new_page() -> bytearray:
    page = bytearray(P.BLCKSZ)
    P.page_init(page)
    return page


def tuple_bytes(n: int, fill: int) -> bytes:
    return bytes([fill]) * n


def items(page):
    out = []
    for i in range(1, P.max_offset(page) + 1):
        w = P.get_itemid(page, i)
        out.append((P.lp_flags(w), P.lp_off(w), P.lp_len(w)))
    return out


def test_page_init_header():
    page = new_page()
    assert P.get_lower(page) == 24 and P.get_upper(page) == 8192 and P.get_special(page) == 8192
    assert struct.unpack_from("<H", page, 18)[0] == 8192 | 4
    assert P.get_lsn(page) == 0 and P.max_offset(page) == 0 and not P.is_new(page)
    P.check_page(page)
    P.set_lsn(page, 0x1_0000_0028)
    assert page[0:8] == struct.pack("<II", 1, 0x28)
    assert P.get_lsn(page) == 0x1_0000_0028


def test_check_page_refuses_other_layouts_and_bad_bounds():
    page = new_page()
    struct.pack_into("<H", page, 18, 8192 | 3)  # pre-8.3 layout
    with pytest.raises(InvalidPage, match="pd_pagesize_version"):
        P.check_page(page)
    page = new_page()
    struct.pack_into("<H", page, 18, 4096 | 4)
    with pytest.raises(InvalidPage):
        P.check_page(page)
    page = new_page()
    struct.pack_into("<H", page, 12, 9000)
    with pytest.raises(InvalidPage, match="corrupted page pointers"):
        P.check_page(page)
    with pytest.raises(InvalidPage):
        P.check_page(bytes(100))


def test_add_item_appends_and_maxaligns():
    page = new_page()
    assert P.add_item(page, tuple_bytes(30, 1), 1) == 1
    assert P.add_item(page, tuple_bytes(41, 2), 2) == 2
    assert items(page) == [(P.LP_NORMAL, 8192 - 32, 30), (P.LP_NORMAL, 8192 - 32 - 48, 41)]
    assert P.get_upper(page) == 8192 - 80 and P.get_lower(page) == 32
    assert page[8192 - 32:8192 - 2] == tuple_bytes(30, 1)


def test_add_item_overwrite_rules():
    page = new_page()
    P.add_item(page, tuple_bytes(24, 1), 1)
    with pytest.raises(InvalidRecord, match="overwrite"):
        P.add_item(page, tuple_bytes(24, 2), 1)
    with pytest.raises(InvalidRecord, match="too large"):
        P.add_item(page, tuple_bytes(24, 2), 3)
    P.set_itemid(page, 1, 0, P.LP_UNUSED, 0)  # unused slot may be reused without growing pd_lower
    lower = P.get_lower(page)
    P.add_item(page, tuple_bytes(24, 3), 1)
    assert P.get_lower(page) == lower
    with pytest.raises(InvalidRecord):
        P.add_item(page, tuple_bytes(0, 0), 2)


def test_add_item_refuses_when_full():
    page = new_page()
    with pytest.raises(InvalidRecord, match="does not fit"):
        P.add_item(page, tuple_bytes(8170, 1), 1)
    n = 0
    while True:
        try:
            P.add_item(page, tuple_bytes(24, 1), n + 1)
        except InvalidRecord:
            break
        n += 1
    assert n == P.MAX_HEAP_TUPLES_PER_PAGE


def test_repair_fragmentation_compacts_in_line_pointer_order():
    page = new_page()
    for i in range(1, 6):
        P.add_item(page, tuple_bytes(24 + i, i), i)
    # 2 dead, 3 and the last one (5) unused
    P.set_itemid(page, 2, 0, P.LP_DEAD, 0)
    P.set_itemid(page, 3, 0, P.LP_UNUSED, 0)
    P.set_itemid(page, 5, 0, P.LP_UNUSED, 0)
    P.repair_fragmentation(page)
    its = items(page)
    # trailing unused pointer 5 dropped (PostgreSQL 15), 3 kept as unused
    assert len(its) == 4
    assert its[1] == (P.LP_DEAD, 0, 0) and its[2] == (P.LP_UNUSED, 0, 0)
    assert its[0] == (P.LP_NORMAL, 8192 - 32, 25)
    assert its[3] == (P.LP_NORMAL, 8192 - 64, 28)
    assert page[8192 - 64:8192 - 64 + 28] == tuple_bytes(28, 4)
    assert P.get_upper(page) == 8192 - 64
    assert P.get_flags(page) & P.PD_HAS_FREE_LINES
    # all trailing pointers unused: every one after the last used goes
    P.set_itemid(page, 4, 0, P.LP_UNUSED, 0)
    P.repair_fragmentation(page)
    assert P.max_offset(page) == 2 and not P.get_flags(page) & P.PD_HAS_FREE_LINES


def test_repair_fragmentation_reorders_unsorted_items():
    page = new_page()
    # items whose storage is not in descending line pointer order (as after redo into reused slots)
    P.add_item(page, tuple_bytes(24, 1), 1)
    P.add_item(page, tuple_bytes(24, 2), 2)
    P.set_itemid(page, 1, 0, P.LP_UNUSED, 0)
    P.add_item(page, tuple_bytes(40, 3), 1)  # item 1 now lies below item 2
    P.add_item(page, tuple_bytes(24, 4), 3)
    P.set_itemid(page, 3, 0, P.LP_UNUSED, 0)
    P.repair_fragmentation(page)
    its = items(page)
    assert its == [(P.LP_NORMAL, 8192 - 40, 40), (P.LP_NORMAL, 8192 - 64, 24)]
    assert page[8192 - 40:8192] == tuple_bytes(40, 3)
    assert page[8192 - 64:8192 - 40] == tuple_bytes(24, 2)
    assert not P.get_flags(page) & P.PD_HAS_FREE_LINES


def test_repair_fragmentation_empty_and_corrupt():
    page = new_page()
    P.add_item(page, tuple_bytes(24, 1), 1)
    P.set_itemid(page, 1, 0, P.LP_UNUSED, 0)
    P.repair_fragmentation(page)
    assert P.get_upper(page) == 8192 and P.max_offset(page) == 0
    page = new_page()
    P.add_item(page, tuple_bytes(24, 1), 1)
    P.set_itemid(page, 1, 100, P.LP_NORMAL, 24)  # points below pd_upper
    with pytest.raises(InvalidPage, match="corrupted line pointer"):
        P.repair_fragmentation(page)


def test_truncate_line_pointer_array_keeps_item_one():
    page = new_page()
    for i in range(1, 5):
        P.add_item(page, tuple_bytes(24, i), i)
    for i in range(1, 5):
        P.set_itemid(page, i, 0, P.LP_UNUSED, 0)
    P.truncate_line_pointer_array(page)
    assert P.max_offset(page) == 1  # unlike PageRepairFragmentation, item 1 always stays
    assert P.get_flags(page) & P.PD_HAS_FREE_LINES  # ... and, being unused, is a free line
    page = new_page()
    for i in range(1, 5):
        P.add_item(page, tuple_bytes(24, i), i)
    P.set_itemid(page, 2, 0, P.LP_UNUSED, 0)
    P.set_itemid(page, 4, 0, P.LP_UNUSED, 0)
    P.truncate_line_pointer_array(page)
    assert P.max_offset(page) == 3
    assert P.get_flags(page) & P.PD_HAS_FREE_LINES


def test_free_space_helpers():
    page = new_page()
    assert P.free_space(page) == 8192 - 24 - 4
    assert P.heap_free_space(page) == 8192 - 24 - 4
    P.add_item(page, tuple_bytes(8100, 1), 1)
    assert P.free_space(page) == 8192 - 8104 - 28 - 4


def test_normal_item_checks():
    page = new_page()
    P.add_item(page, tuple_bytes(24, 1), 1)
    assert P.normal_item(page, 1) == (8192 - 24, 24)
    with pytest.raises(InvalidRecord):
        P.normal_item(page, 2)
    with pytest.raises(InvalidRecord):
        P.normal_item(page, 0)
    P.set_itemid(page, 1, 0, P.LP_DEAD, 0)
    with pytest.raises(InvalidRecord, match="not a normal"):
        P.normal_item(page, 1)


def test_xid_precedes_wraps():
    assert P.xid_precedes(3, 4)
    assert P.xid_precedes(0xFFFFFFF0, 5)  # modulo-2^32
    assert not P.xid_precedes(5, 0xFFFFFFF0)
    assert P.xid_precedes(2, 100) and not P.xid_precedes(100, 2)
    page = new_page()
    P.set_prunable(page, 100)
    P.set_prunable(page, 200)
    assert P.get_prune_xid(page) == 100
    P.set_prunable(page, 50)
    assert P.get_prune_xid(page) == 50
