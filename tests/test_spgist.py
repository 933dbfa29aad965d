"""SP-GiST redo (walredo_template/pg/spgist.py, spgist_page.py) against real PostgreSQL 15 and by hand.

* The shared ``indexes*`` captures (tests/workloads/spgist.sql among the others): every SP-GiST record's
  consistency image matches, each info code (and block role) the workload is meant to produce was
  compared, the pages on disk match, and the exempt metapages differ from the engine's at most in their
  unlogged last-used-page cache.
* Hand-made records for the paths PostgreSQL never produced there: a new page whose block also carries
  an image, MOVE_LEAFS replacing a DEAD tuple, the isBuild variants (an index build logs no SP-GiST
  records), ADD_NODE's parent on the page the tuple moves to, a root split's ignored block 0, roles the
  redo does not touch, VACUUM_REDIRECT's odd firstPlaceholder, malformed records; and, again by hand,
  paths the workload does produce (PICKSPLIT re-initializing its source, ADD_NODE's parent on a third
  page) with exact expectations.
* Hypothesis mutations of real records and base pages: a structurally valid page or a RedoError.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mutations import assert_sane, rebuild
from pgcluster import INDEX_CONFIG_NAMES
from recordbuilder import Block, build_record

from walredo_template import BufferTag
from walredo_template.pg import indexpage as IP
from walredo_template.pg import page as P
from walredo_template.pg import spgist as G
from walredo_template.pg import spgist_page as S
from walredo_template.pg.errors import BlockNotReferenced, InvalidRecord, RedoError, UnsupportedRecord
from walredo_template.pg.xlogrecord import decode_record
from walredo_template.redo import apply_records

PREFIX = G.NAME + "/"
RM = G.RM_ID
LSN0 = 0x5000000
END = 0x6000000
TAGS = [BufferTag(1663, 5, 77777, 0, b) for b in range(6)]
XID = 4242

# every kind (record and block role) tests/workloads/spgist.sql produces
EXPECTED_KINDS = [
    "SPGist/ADD_LEAF", "SPGist/ADD_LEAF [block 1]",
    "SPGist/MOVE_LEAFS", "SPGist/MOVE_LEAFS [block 1]", "SPGist/MOVE_LEAFS [block 2]",
    "SPGist/ADD_NODE", "SPGist/ADD_NODE [block 1]", "SPGist/ADD_NODE [block 2]",
    "SPGist/SPLIT_TUPLE", "SPGist/SPLIT_TUPLE [block 1]",
    "SPGist/PICKSPLIT", "SPGist/PICKSPLIT [block 1]", "SPGist/PICKSPLIT [block 2]", "SPGist/PICKSPLIT [block 3]",
    "SPGist/VACUUM_LEAF", "SPGist/VACUUM_ROOT", "SPGist/VACUUM_REDIRECT",
]
META_CACHE = slice(28, 28 + 8 * 8)  # SpGistMetaPageData.lastUsedPages: after the u32 magic at 24


# --- builders ------------------------------------------------------------------------------------

def leaf(n: int, nxt: int = 0) -> bytes:
    """A live leaf tuple for heap TID (n, 1) with an 8-byte datum."""
    return struct.pack("<IHHHH4sQ", 24 << 2, nxt, n >> 16, n & 0xFFFF, 1, b"\0" * 4, n)


def inner(nnodes: int, prefix: bytes = b"") -> bytes:
    """A live inner tuple with ``nnodes`` nodes (each 16 bytes: TID, t_info = 16, label) with invalid links."""
    size = 8 + len(prefix) + 16 * nnodes
    head = struct.pack("<IH2x", (nnodes << 3) | (len(prefix) << 16), size)
    nodes = b"".join(struct.pack("<HHHHQ", 0xFFFF, 0xFFFF, 0, 16, i) for i in range(nnodes))
    return head + prefix + nodes


def placeholder() -> bytes:
    return S.dead_tuple(S.SPGIST_PLACEHOLDER)


def spg_page(flags: int, tuples: list[bytes], *, nred: int = 0, nph: int = 0, lsn: int = LSN0) -> bytes:
    page = bytearray(P.BLCKSZ)
    S.init_page(page, flags)
    for i, t in enumerate(tuples, 1):
        IP.add_item(page, t, i)
    struct.pack_into("<HH", page, P.BLCKSZ - 6, nred, nph)
    P.set_lsn(page, lsn)
    return bytes(page)


def item(page: bytes, offnum: int) -> bytes:
    return bytes(IP.item(page, offnum))


def counts(page: bytes) -> tuple[int, int]:
    return struct.unpack_from("<HH", page, P.get_special(page) + 2)


def node_tid(page: bytes, offnum: int, node: int) -> tuple[int, int]:
    off, _ = IP.item_span(page, offnum)
    bits = struct.unpack_from("<I", page, off)[0]
    pos = off + 8 + (bits >> 16)
    for _ in range(node):
        pos += struct.unpack_from("<H", page, pos + 6)[0] & 0x1FFF
    hi, lo, o = struct.unpack_from("<HHH", page, pos)
    return hi << 16 | lo, o


def redo(tag: BufferTag, base: bytes | None, info: int, blocks: list[Block], main: bytes) -> bytes:
    return apply_records(tag, base, [(END, build_record(RM, info, blocks, main))])


# --- the real captures ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", INDEX_CONFIG_NAMES)
def test_oracle_spgist_records(oracle_results, name):
    res = oracle_results.get(name)
    compared, _applied = res.rmgr_kinds(PREFIX)
    print(f"[{name}] SPGist compared: {compared}")
    missing = [k for k in EXPECTED_KINDS if not compared.get(k)]
    assert not missing, f"the workload no longer produces {missing}"


@pytest.mark.parametrize("name", INDEX_CONFIG_NAMES)
def test_spgist_pages_on_disk(oracle_results, name):
    res = oracle_results.get(name)
    disk = res.disk
    mine = {t for t, r in res.page_rmgr.items() if r == RM}
    assert mine
    assert not [m for m in disk.mismatches if m[0] in mine]
    assert not [m for m in disk.lsn_mismatches if m[0] in mine]
    metas = [(tag, page, on_disk) for tag, page, on_disk, why in disk.exempt if why.startswith("SP-GiST")]
    assert metas, "no SP-GiST metapage was set aside"
    for tag, page, on_disk in metas:
        assert tag.blknum == 0
        a, b = bytearray(page), bytearray(on_disk)
        assert struct.unpack_from("<I", a, 24)[0] == 0xBA0BABEE
        assert struct.unpack_from("<H", a, P.get_special(a))[0] & S.SPGIST_META
        for buf in (a, b):
            buf[8:10] = b"\0\0"  # pd_checksum is computed when the page is written out
            buf[META_CACHE] = bytes(META_CACHE.stop - META_CACHE.start)
        assert a == b, f"metapage {tuple(tag)} differs outside lastUsedPages"


# --- hand-made records ---------------------------------------------------------------------------

def _add_leaf_main(new: int, nulls: int, off_leaf: int, off_head: int, off_parent: int, node: int) -> bytes:
    return G._ADD_LEAF.pack(new, nulls, off_leaf, off_head, off_parent, node)


def test_add_leaf_new_page_is_initialized_even_with_an_image():
    tup = leaf(7)
    junk = spg_page(0, [inner(3)])
    main = _add_leaf_main(1, 1, 1, 0, 0, 0) + tup
    out = redo(TAGS[3], None, 0x10, [Block(0, TAGS[3], will_init=True, image=junk)], main)
    assert struct.unpack_from("<HHHH", out, P.BLCKSZ - 8) == (S.SPGIST_LEAF | S.SPGIST_NULLS, 0, 0, 0xFF82)
    assert IP.items(out) == 1 and item(out, 1) == tup and P.get_lsn(out) == END
    with pytest.raises(InvalidRecord):  # newPage needs WILL_INIT, and WILL_INIT needs newPage
        redo(TAGS[3], junk, 0x10, [Block(0, TAGS[3])], main)
    with pytest.raises(InvalidRecord):
        redo(TAGS[3], None, 0x10, [Block(0, TAGS[3], will_init=True)], _add_leaf_main(0, 0, 1, 0, 0, 0) + tup)


def test_add_leaf_over_placeholder_and_chain_link():
    base = spg_page(S.SPGIST_LEAF, [leaf(1), placeholder(), leaf(3)], nph=1)
    main = _add_leaf_main(0, 0, 2, 1, 0, 0) + leaf(9, nxt=0)
    out = redo(TAGS[4], base, 0x10, [Block(0, TAGS[4])], main)
    assert item(out, 2) == leaf(9) and counts(out) == (0, 0)
    assert struct.unpack_from("<H", out, IP.item_span(out, 1)[0] + 4)[0] == 2
    assert item(out, 3) == leaf(3) and IP.items(out) == 3
    with pytest.raises(InvalidRecord, match="not a placeholder"):
        redo(TAGS[4], base, 0x10, [Block(0, TAGS[4])], _add_leaf_main(0, 0, 3, 0, 0, 0) + leaf(9))
    # offnumLeaf == offnumHeadLeaf: the DEAD head is replaced in place, no placeholder count change
    dead = spg_page(S.SPGIST_LEAF, [leaf(1), S.dead_tuple(S.SPGIST_DEAD)], nph=1)
    out = redo(TAGS[4], dead, 0x10, [Block(0, TAGS[4])], _add_leaf_main(0, 0, 2, 2, 0, 0) + leaf(5))
    assert item(out, 2) == leaf(5) and counts(out) == (0, 1)


def test_add_leaf_parent_role_only_with_a_parent():
    parent = spg_page(0, [inner(4)])
    main = _add_leaf_main(0, 0, 6, 0, 1, 2) + leaf(9)
    blocks = [Block(0, TAGS[3]), Block(1, TAGS[4])]
    out = redo(TAGS[4], parent, 0x10, blocks, main)
    assert node_tid(out, 1, 2) == (3, 6) and node_tid(out, 1, 1) == (0xFFFFFFFF, 0) and P.get_lsn(out) == END
    # no parent to update: block 1 is left alone, LSN included
    out = redo(TAGS[4], parent, 0x10, blocks, _add_leaf_main(0, 0, 6, 0, 0, 2) + leaf(9))
    assert out == parent
    with pytest.raises(InvalidRecord, match="failed to find requested node 4"):
        redo(TAGS[4], parent, 0x10, blocks, _add_leaf_main(0, 0, 6, 0, 1, 4) + leaf(9))
    with pytest.raises(InvalidRecord, match="block 0"):
        redo(TAGS[4], parent, 0x10, [Block(1, TAGS[4])], main)


def _move_main(nmoves: int, new: int, replace_dead: int, off_parent: int, node: int, is_build: int,
               to_delete: list[int], to_insert: list[int], tuples: list[bytes]) -> bytes:
    return (G._MOVE_LEAFS.pack(nmoves, new, replace_dead, 0, off_parent, node, XID, is_build)
            + struct.pack(f"<{len(to_delete)}H", *to_delete) + struct.pack(f"<{len(to_insert)}H", *to_insert)
            + b"".join(tuples))


def test_move_leafs_replace_dead_and_build():
    src = spg_page(S.SPGIST_LEAF, [leaf(1), leaf(2), leaf(3)])
    dst = spg_page(S.SPGIST_LEAF, [leaf(10)])
    par = spg_page(0, [inner(2), inner(3)])
    blocks = [Block(0, TAGS[3]), Block(1, TAGS[4]), Block(2, TAGS[5])]
    # replaceDead: one tuple number and one tuple only, whatever nMoves says
    main = _move_main(2, 0, 1, 2, 1, 0, [3, 2], [2], [leaf(4)])
    out = redo(TAGS[4], dst, 0x20, blocks, main)
    assert IP.items(out) == 2 and item(out, 2) == leaf(4)
    out = redo(TAGS[3], src, 0x20, blocks, main)
    # the first listed (3) becomes the redirect to the last inserted tuple, the other a placeholder
    assert item(out, 3) == S.dead_tuple(S.SPGIST_REDIRECT, 4, 2, XID) and item(out, 2) == placeholder()
    assert counts(out) == (1, 1) and item(out, 1) == leaf(1)
    out = redo(TAGS[5], par, 0x20, blocks, main)
    assert node_tid(out, 2, 1) == (4, 2)
    # in a build the moved tuples all become placeholders
    out = redo(TAGS[3], src, 0x20, blocks, _move_main(2, 0, 1, 2, 1, 1, [3, 2], [2], [leaf(4)]))
    assert item(out, 3) == placeholder() and item(out, 2) == placeholder() and counts(out) == (0, 2)
    with pytest.raises(InvalidRecord, match="block 1"):
        redo(TAGS[3], src, 0x20, [Block(0, TAGS[3]), Block(2, TAGS[5])], main)
    with pytest.raises(InvalidRecord):  # the second leaf tuple is missing
        redo(TAGS[4], dst, 0x20, blocks, _move_main(1, 0, 0, 2, 1, 0, [3], [2, 3], [leaf(4)]))


def _add_node_main(offnum: int, off_new: int, new: int, parent_blk: int, off_parent: int, node: int,
                   is_build: int, tup: bytes) -> bytes:
    return G._ADD_NODE.pack(offnum, off_new, new, parent_blk, off_parent, node, XID, is_build) + tup


def test_add_node_parent_on_new_page_third_page_and_build():
    old = spg_page(0, [inner(2), inner(3)])
    new = spg_page(0, [inner(5)])
    third = spg_page(0, [inner(1), inner(2)])
    grown = inner(4)
    blocks = [Block(0, TAGS[3]), Block(1, TAGS[4]), Block(2, TAGS[5])]
    # parentBlk 1: the parent is on the page the tuple moves to
    main = _add_node_main(2, 2, 0, 1, 1, 3, 0, grown)
    out = redo(TAGS[4], new, 0x30, blocks[:2], main)
    assert item(out, 2) == grown and node_tid(out, 1, 3) == (4, 2)
    out = redo(TAGS[3], old, 0x30, blocks[:2], main)
    assert item(out, 2) == S.dead_tuple(S.SPGIST_REDIRECT, 4, 2, XID) and counts(out) == (1, 0)
    # parentBlk 2: a third page; with another parentBlk block 2 is not touched
    main = _add_node_main(2, 2, 0, 2, 2, 1, 0, grown)
    out = redo(TAGS[5], third, 0x30, blocks, main)
    assert node_tid(out, 2, 1) == (4, 2) and P.get_lsn(out) == END
    assert redo(TAGS[5], third, 0x30, blocks, _add_node_main(2, 2, 0, 0, 1, 1, 0, grown)) == third
    # parentBlk 0 on the old page, in a build: a placeholder and no redirect
    out = redo(TAGS[3], old, 0x30, blocks[:2], _add_node_main(2, 2, 0, 0, 1, 0, 1, grown))
    assert item(out, 2) == placeholder() and counts(out) == (0, 1) and node_tid(out, 1, 0) == (4, 2)
    # a new page is a plain inner page
    out = redo(TAGS[4], None, 0x30, [Block(0, TAGS[3]), Block(1, TAGS[4], will_init=True)],
               _add_node_main(2, 1, 1, -1, 0, 0, 0, grown))
    assert struct.unpack_from("<H", out, P.BLCKSZ - 8)[0] == 0 and item(out, 1) == grown
    # in place (no block 1): block 2 would not be looked at
    assert redo(TAGS[5], third, 0x30, [Block(0, TAGS[3]), Block(2, TAGS[5])],
                _add_node_main(2, 0, 0, -1, 0, 0, 0, grown)) == third


def test_split_tuple_same_page_leaves_block_1_alone():
    page = spg_page(0, [inner(2, b"abcdefgh"), inner(1)])
    prefix, postfix = inner(1, b"abcd\0\0\0\0"), inner(2, b"efgh\0\0\0\0")
    main = G._SPLIT_TUPLE.pack(1, 3, 0, 1) + prefix + postfix
    other = spg_page(0, [inner(1)])
    assert redo(TAGS[4], other, 0x40, [Block(0, TAGS[3]), Block(1, TAGS[4])], main) == other
    out = redo(TAGS[3], page, 0x40, [Block(0, TAGS[3])], main)
    assert item(out, 1) == prefix and item(out, 3) == postfix and item(out, 2) == inner(1)
    with pytest.raises(InvalidRecord):  # postfix tuple cut short
        redo(TAGS[3], page, 0x40, [Block(0, TAGS[3])], main[:-1])


def _pick_main(root: int, to_delete: list[int], to_insert: list[int], select: list[int], init_src: int,
               init_dest: int, off_inner: int, init_inner: int, inner_is_parent: int, off_parent: int,
               is_build: int, inner_tup: bytes, leaves: list[bytes]) -> bytes:
    head = G._PICKSPLIT.pack(root, len(to_delete), len(to_insert), init_src, init_dest, off_inner, init_inner,
                             0, inner_is_parent, off_parent, 0, XID, is_build)
    n = len(to_insert)
    return (head + struct.pack(f"<{len(to_delete)}H", *to_delete) + struct.pack(f"<{n}H", *to_insert)
            + bytes(select) + inner_tup + b"".join(leaves))


def test_picksplit_init_src_build_and_root_split():
    src = spg_page(S.SPGIST_LEAF, [leaf(1), leaf(2), leaf(3)])
    blocks = [Block(0, TAGS[3], will_init=True), Block(1, TAGS[4], will_init=True), Block(2, TAGS[5])]
    main = _pick_main(0, [], [1, 1, 2], [0, 1, 0], 1, 1, 1, 0, 0, 0, 0, inner(2), [leaf(7), leaf(8), leaf(9)])
    out = redo(TAGS[3], src, 0x50, blocks, main)
    assert IP.items(out) == 2 and item(out, 1) == leaf(7) and item(out, 2) == leaf(9) and counts(out) == (0, 0)
    out = redo(TAGS[4], None, 0x50, blocks, main)
    assert IP.items(out) == 1 and item(out, 1) == leaf(8)
    # isBuild without re-initializing: the moved tuples become placeholders, no redirect
    blocks = [Block(0, TAGS[3]), Block(2, TAGS[5])]
    main = _pick_main(0, [2, 1], [1], [0], 0, 0, 1, 0, 0, 0, 1, inner(2), [leaf(7)])
    out = redo(TAGS[3], src, 0x50, blocks, main)
    assert item(out, 1) == leaf(7) and item(out, 2) == placeholder() and counts(out) == (0, 1)
    main = _pick_main(0, [2, 1], [1], [0], 0, 0, 1, 0, 0, 0, 0, inner(2), [leaf(7)])
    out = redo(TAGS[3], src, 0x50, blocks, main)
    assert item(out, 2) == S.dead_tuple(S.SPGIST_REDIRECT, 5, 1, XID) and counts(out) == (1, 0)
    # a root split touches the root only as block 2: a block 0 is ignored
    main = _pick_main(1, [], [1], [1], 0, 1, 1, 1, 0, 0, 0, inner(2), [leaf(7)])
    assert redo(TAGS[3], src, 0x50, blocks, main) == src
    with pytest.raises(InvalidRecord, match="block 2"):
        redo(TAGS[3], src, 0x50, [Block(0, TAGS[3])], main)


def test_vacuum_redirect_first_placeholder_bounds():
    page = spg_page(S.SPGIST_LEAF, [leaf(1), S.dead_tuple(S.SPGIST_REDIRECT, 9, 9, XID), placeholder()],
                    nred=1, nph=1)
    out = redo(TAGS[3], page, 0x80, [Block(0, TAGS[3])], G._VACUUM_REDIRECT.pack(1, 2, XID) + struct.pack("<H", 2))
    assert IP.items(out) == 1 and counts(out) == (0, 0)
    out = redo(TAGS[3], page, 0x80, [Block(0, TAGS[3])], G._VACUUM_REDIRECT.pack(1, 0, XID) + struct.pack("<H", 2))
    # the xid stays, the pointer is invalidated
    assert item(out, 2) == struct.pack("<IHHHHI", 3 | 16 << 2, 0, 0xFFFF, 0xFFFF, 0, XID)
    out = redo(TAGS[3], page, 0x80, [Block(0, TAGS[3])], G._VACUUM_REDIRECT.pack(0, 4, 0))
    assert IP.items(out) == 3 and counts(out) == (1, 1)
    with pytest.raises(InvalidRecord, match="first placeholder"):
        redo(TAGS[3], page, 0x80, [Block(0, TAGS[3])], G._VACUUM_REDIRECT.pack(0, 5, 0))
    with pytest.raises(InvalidRecord):
        redo(TAGS[3], page, 0x80, [Block(0, TAGS[3])], G._VACUUM_REDIRECT.pack(1, 0, 0) + struct.pack("<H", 4))


def test_vacuum_leaf_moves_and_chains():
    page = spg_page(S.SPGIST_LEAF, [leaf(1, nxt=2), leaf(2, nxt=3), leaf(3), leaf(4), leaf(5)])
    # 5 becomes DEAD, 4 a placeholder, 3 moves into 2's slot (3 then becomes a placeholder), 1 links to 2
    main = G._VACUUM_LEAF.pack(1, 1, 1, 1, 0, 0) + struct.pack("<6H", 5, 4, 3, 2, 1, 2)
    out = redo(TAGS[3], page, 0x60, [Block(0, TAGS[3])], main)
    assert item(out, 5) == S.dead_tuple(S.SPGIST_DEAD) and item(out, 2) == leaf(3)
    assert item(out, 3) == placeholder() and item(out, 4) == placeholder() and counts(out) == (0, 2)
    assert item(out, 1) == leaf(1, nxt=2)
    with pytest.raises(InvalidRecord):  # a move from beyond the line pointer array
        redo(TAGS[3], page, 0x60, [Block(0, TAGS[3])], G._VACUUM_LEAF.pack(0, 0, 1, 0, 0, 0) + struct.pack("<2H", 6, 1))


def test_unknown_info_codes_are_unsupported():
    page = spg_page(S.SPGIST_LEAF, [leaf(1)])
    for info in (0x00, 0x90, 0xA0, 0xF0):
        with pytest.raises(UnsupportedRecord) as ei:
            redo(TAGS[3], page, info, [Block(0, TAGS[3])], b"\0" * 32)
        assert ei.value.rmid == RM and ei.value.info == info
        assert "SPGist" in str(ei.value) and f"{info:#04x}" in str(ei.value)
    assert G.record_name(0x90) == "SPGist/UNKNOWN (90)"
    assert [G.record_name(i) for i in range(0x10, 0x90, 0x10)] == [
        "SPGist/ADD_LEAF", "SPGist/MOVE_LEAFS", "SPGist/ADD_NODE", "SPGist/SPLIT_TUPLE", "SPGist/PICKSPLIT",
        "SPGist/VACUUM_LEAF", "SPGist/VACUUM_ROOT", "SPGist/VACUUM_REDIRECT"]
    assert G.record_name(0x12) == "SPGist/ADD_LEAF"  # XLR_CHECK_CONSISTENCY is not part of the name


def test_record_not_referencing_the_page():
    with pytest.raises(BlockNotReferenced):
        redo(TAGS[2], spg_page(0, []), 0x70, [Block(0, TAGS[3])], G._VACUUM_ROOT.pack(0, 0, 0))


def test_mask_follows_spg_mask():
    page = bytearray(spg_page(S.SPGIST_LEAF, [leaf(1)]))
    lower, upper = P.get_lower(page), P.get_upper(page)
    page[lower:upper] = b"\x55" * (upper - lower)
    struct.pack_into("<HH", page, 8, 0x1234, P.PD_HAS_FREE_LINES | P.PD_PAGE_FULL)
    struct.pack_into("<I", page, 20, 77)
    G.mask(page, 3)
    assert page[lower:upper] == bytes(upper - lower) and P.get_lsn(page) == 0
    assert struct.unpack_from("<HHI", page, 8)[0:2] == (0, 0) and P.get_prune_xid(page) == 0
    assert item(page, 1) == leaf(1)
    zero = bytearray(P.BLCKSZ)
    G.mask(zero, 0)
    assert zero == bytes(P.BLCKSZ)


# --- mutations of real records and pages ---------------------------------------------------------

@pytest.fixture(scope="module")
def samples(oracle_results):
    out = [s for s in oracle_results.get("indexes").samples if s[4][0] == RM]
    assert len({s[4][:2] for s in out}) >= 8, "every SP-GiST info code should have samples"
    return out


def _mutate(data: st.DataObject, blob: bytes) -> bytes:
    b = bytearray(blob)
    if b and data.draw(st.booleans()):
        for _ in range(data.draw(st.integers(1, 4))):
            b[data.draw(st.integers(0, len(b) - 1))] = data.draw(st.integers(0, 255))
        return bytes(b)
    return bytes(b[:data.draw(st.integers(0, len(b)))])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(data=st.data())
def test_mutations_give_a_valid_page_or_a_typed_error(samples, data):
    tag, base, end, raw, _key = data.draw(st.sampled_from(samples))
    where = data.draw(st.sampled_from(["main", "main", "block-data", "base"]))
    if where == "main":
        raw = rebuild(raw, main=_mutate(data, decode_record(raw).main_data))
    elif where == "block-data":
        raw = rebuild(raw, data={0: data.draw(st.binary(max_size=40))})
    elif base is not None:
        b = bytearray(base)
        for _ in range(data.draw(st.integers(1, 8))):
            pos = data.draw(st.sampled_from([data.draw(st.integers(0, 8191)), data.draw(st.integers(12, 40)),
                                             data.draw(st.integers(8184, 8191))]))
            b[pos] = data.draw(st.integers(0, 255))
        base = bytes(b)
    try:
        out = apply_records(tag, base, [(end, raw)])
    except RedoError:
        return
    assert_sane(out)
