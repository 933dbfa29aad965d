"""Is a page one PostgreSQL could read? Structural checks by page kind, run on every page the engine returns.

:func:`.redo.apply_records` refuses to return a page that fails them (:class:`InvalidPage`), whatever the
records did: a corrupt base image that no record touched, or a CRC-valid full-page image that PostgreSQL
could not read, must be an error, never an answer. ``scripts/fuzz`` holds the engine to the same checks.

:func:`page_problem` returns ``None`` for a valid page, else what is wrong. Every page must be 8192 bytes
and either all zeros (a new page: PostgreSQL's ``PageIsVerified`` accepts it) or pass
``walredo_template.pg.page.check_page`` (``pd_pagesize_version`` 8192|4, ``24 <= pd_lower <= pd_upper <=
pd_special <= 8192``, pd_special MAXALIGNed). Pages whose ``pd_lower`` ends a line pointer array then get
**every line pointer with storage** (``lp_len != 0``, whatever its flags) checked to lie in the tuple
space: ``pd_upper <= lp_off`` and ``lp_off + lp_len <= pd_special``, as ``PageRepairFragmentation`` and
the engine's own ``normal_item`` require.

The page kind comes from the access method of the relation (the ``rmgr`` a capture records per page) and
the page's special space, as PostgreSQL's own code tells them apart:

==========================  ================  =============================================================
access method (rmgr)        special size      line pointer array?
==========================  ================  =============================================================
visibility map (fork 2)     any               no: the bitmap follows the header (pd_lower = 24)
heap (Heap 10, Heap2 9)     0                 yes
btree (11)                  16                yes, except the metapage (BTP_META in btpo_flags) and
                                              deleted pages (BTP_DELETED: BTDeletedPageData)
hash (12)                   16                yes, except the metapage and bitmap pages (LH_META_PAGE,
                                              LH_BITMAP_PAGE in hasho_flag): pd_lower ends their contents
GIN (13)                    8                 entry and pending-list pages only; not the metapage
                                              (GIN_META) nor data pages (GIN_DATA: posting lists/items)
GiST (14)                   16                yes, except deleted pages (F_DELETED: GISTDeletedPageContents)
sequence (15)               8                 yes
SP-GiST (16)                8                 yes, except the metapage (SPGIST_META)
BRIN (17)                   8                 regular pages only; not the metapage nor revmap pages
generic (20: bloom)         8                 no: bloom packs its tuples after the header (pd_lower ends them)
==========================  ================  =============================================================

A page whose special size is not its access method's (a mutated base page the records never touched) is
judged by what its own special space says it is (:func:`infer_rmgr`), as is a page no record names (no
records, or XLOG full-page images only); a special space no access method has gets the header checks only.
"""

from __future__ import annotations

import struct

from .errors import InvalidPage
from .page import BLCKSZ, SIZE_OF_PAGE_HEADER, U16, U32, ZERO_PAGE, check_page, lp_array

VM_FORKNUM = 2
RM_HEAP2, RM_HEAP, RM_BTREE, RM_HASH, RM_GIN, RM_GIST, RM_SEQ, RM_SPGIST, RM_BRIN, RM_GENERIC = (
    9, 10, 11, 12, 13, 14, 15, 16, 17, 20)


BTP_DELETED, BTP_META = 1 << 2, 1 << 3
LH_BITMAP_PAGE = 1 << 2
LH_META_PAGE = 1 << 3
GIN_DATA, GIN_META = 0x01, 0x08
F_DELETED = 1 << 1  # GiST
SPGIST_META = 1
BRIN_PAGETYPE_REGULAR = 0xF093


# Index kinds told apart by a flag word in their special space: rmgr -> (special size, offset of the flags in
# it, the flag bits that make a page without a line-pointer array (first match wins), the ordinary kind).
_FLAGGED: dict[int, tuple[int, int, tuple[tuple[int, str], ...], str]] = {
    RM_BTREE: (16, 12, ((BTP_META, "btree-meta"), (BTP_DELETED, "btree-deleted")), "btree"),
    RM_HASH: (16, 12, ((LH_META_PAGE, "hash-meta"), (LH_BITMAP_PAGE, "hash-bitmap")), "hash"),
    RM_GIN: (8, 6, ((GIN_META, "gin-meta"), (GIN_DATA, "gin-data")), "gin-entry"),
    RM_GIST: (16, 12, ((F_DELETED, "gist-deleted"),), "gist"),
    RM_SPGIST: (8, 0, ((SPGIST_META, "spgist-meta"),), "spgist"),
}


def _flags_at(page: bytes, special: int, offset: int) -> int:
    value: int = U16.unpack_from(page, special + offset)[0]
    return value


HASHO_PAGE_ID, GIST_PAGE_ID, SPGIST_PAGE_ID, BLOOM_PAGE_ID = 0xFF80, 0xFF81, 0xFF82, 0xFF83
SEQ_MAGIC = 0x1717
BRIN_PAGETYPES = (0xF091, 0xF092, BRIN_PAGETYPE_REGULAR)


def infer_rmgr(page: bytes) -> int:
    """The access method a page's special space says it belongs to, for a page no record named (a request
    with no records, or XLOG full-page images only): the page ids PostgreSQL's own tools read — hash, GiST,
    SP-GiST and bloom stamp one in the special space, BRIN a page type, sequences a magic; a 16-byte special
    without an id is btree's, an 8-byte one GIN's, none heap's; -1 for anything else."""
    special = U16.unpack_from(page, 16)[0]
    size = BLCKSZ - special
    if size == 0:
        return RM_HEAP
    if size == 16:
        page_id = U16.unpack_from(page, special + 14)[0]
        return {HASHO_PAGE_ID: RM_HASH, GIST_PAGE_ID: RM_GIST}.get(page_id, RM_BTREE)
    if size == 8:
        if U32.unpack_from(page, special)[0] == SEQ_MAGIC:
            return RM_SEQ
        last = U16.unpack_from(page, special + 6)[0]
        if last in BRIN_PAGETYPES:
            return RM_BRIN
        return {SPGIST_PAGE_ID: RM_SPGIST, BLOOM_PAGE_ID: RM_GENERIC}.get(last, RM_GIN)
    return -1


def page_kind(page: bytes, forknum: int, rmgr: int) -> tuple[str, bool]:
    """``(kind, has_line_pointers)`` for a page that passed the header checks (module docstring); ``rmgr``
    below 0 means not known: it is inferred from the page (:func:`infer_rmgr`)."""
    special = U16.unpack_from(page, 16)[0]
    size = BLCKSZ - special
    if forknum == VM_FORKNUM:
        return "vm", False
    inferred = rmgr < 0
    if inferred:
        rmgr = infer_rmgr(page)
    if rmgr in (RM_HEAP, RM_HEAP2) and size == 0:
        return "heap", True
    flagged = _FLAGGED.get(rmgr)
    if flagged is not None and size == flagged[0]:
        _size, offset, special_kinds, ordinary = flagged
        flags = _flags_at(page, special, offset)
        for bit, special_kind in special_kinds:
            if flags & bit:
                return special_kind, False
        return ordinary, True
    if rmgr == RM_SEQ and size == 8:
        return "sequence", True
    if rmgr == RM_BRIN and size == 8:
        kind = _flags_at(page, special, 6)
        return ("brin", True) if kind == BRIN_PAGETYPE_REGULAR else (f"brin-{kind:#06x}", False)
    if rmgr == RM_GENERIC:
        # Generic WAL is written for any extension's pages (bloom's have an 8-byte special space and no line
        # pointer array); their layout is the extension's own: header checks only, never inferred.
        return ("bloom", False) if size == 8 else (f"generic(special size {size})", False)
    if not inferred:
        # The special space is not the named rmgr's (a record of another rmgr, a page that is not what the
        # record says): judge the page by what its own special space says it is.
        return page_kind(page, forknum, -1)
    return f"unknown(rmgr {rmgr}, special size {size})", False


def bad_line_pointer(page: bytes, forknum: int, rmgr: int) -> tuple[int, int] | None:
    """``(item, word)`` of the first line pointer with storage outside the tuple space of a page of a kind
    with a line pointer array (1-based item, raw word), else None. The page must pass the header checks."""
    _kind, has_lps = page_kind(page, forknum, rmgr)
    if not has_lps:
        return None
    lower, upper, special = struct.unpack_from("<HHH", page, 12)
    nline = (lower - SIZE_OF_PAGE_HEADER) // 4
    if nline <= 0:
        return None
    # One unpack of the whole array; the per-item test only for the rare page that fails the fast one.
    words = lp_array(nline).unpack_from(page, SIZE_OF_PAGE_HEADER)
    for i, w in enumerate(words):
        length = w >> 17
        if length and ((w & 0x7FFF) < upper or (w & 0x7FFF) + length > special):
            return i + 1, w
    return None


def page_problem(page: bytes, forknum: int, rmgr: int) -> str | None:
    """``None`` if ``page`` is structurally valid for its kind, else a short description of the fault
    (its first word names the fault class, for grouping crashes)."""
    if len(page) != BLCKSZ:
        return f"size: page has {len(page)} bytes"
    if page == ZERO_PAGE:
        return None
    try:
        check_page(page)
    except InvalidPage as e:
        return f"header: {e}"
    bad = bad_line_pointer(page, forknum, rmgr)
    if bad is None:
        return None
    item, w = bad
    upper, special = struct.unpack_from("<HH", page, 14)
    return (f"line-pointer: {page_kind(page, forknum, rmgr)[0]} page item {item} at {w & 0x7FFF} length {w >> 17} "
            f"is outside the tuple space [{upper}, {special})")
