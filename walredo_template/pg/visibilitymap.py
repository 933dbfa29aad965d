"""Visibility-map pages (PostgreSQL 15 ``access/heap/visibilitymap.c``).

A VM page is a standard page header (24 bytes) followed by a bitmap of two bits per heap block
(bit 0 all-visible, bit 1 all-frozen), so one VM page covers ``HEAPBLOCKS_PER_PAGE`` = 8168 * 4 = 32672
heap blocks. Heap block N lives on VM block ``N // HEAPBLOCKS_PER_PAGE``, byte
``(N % HEAPBLOCKS_PER_PAGE) // 4`` of the map, bits ``(N % 4) * 2``.

Two kinds of change reach a VM page during redo:

* ``XLOG_HEAP2_VISIBLE`` references the VM block (block 0) and sets bits, stamping the VM page's LSN
  when the bits change.
* INSERT/MULTI_INSERT/UPDATE/DELETE with an ``*_ALL_VISIBLE_CLEARED`` flag, and LOCK/LOCK_UPDATED with
  ``XLH_LOCK_ALL_FROZEN_CLEARED``, clear bits without referencing the VM block at all: the record names
  only the heap block, and the VM block must be derived from it (Neon's ``ClearVisibilityMapFlags``).
  PostgreSQL's ``visibilitymap_clear`` does not touch the VM page's LSN, so neither do we.
"""

from __future__ import annotations

from .page import BLCKSZ, SIZE_OF_PAGE_HEADER, Buffer

MAPSIZE = BLCKSZ - SIZE_OF_PAGE_HEADER  # MAXALIGN(SizeOfPageHeaderData) == 24
HEAPBLOCKS_PER_BYTE = 4
HEAPBLOCKS_PER_PAGE = MAPSIZE * HEAPBLOCKS_PER_BYTE

VISIBILITYMAP_ALL_VISIBLE = 0x01
VISIBILITYMAP_ALL_FROZEN = 0x02
VISIBILITYMAP_VALID_BITS = 0x03


def vm_block_of(heap_blkno: int) -> int:
    """HEAPBLK_TO_MAPBLOCK: the VM block that holds heap block ``heap_blkno``'s bits."""
    return heap_blkno // HEAPBLOCKS_PER_PAGE


def _position(heap_blkno: int) -> tuple[int, int]:
    """(absolute byte offset in the page, bit shift) of the heap block's bit pair."""
    byte = (heap_blkno % HEAPBLOCKS_PER_PAGE) // HEAPBLOCKS_PER_BYTE
    shift = (heap_blkno % HEAPBLOCKS_PER_BYTE) * 2
    return SIZE_OF_PAGE_HEADER + byte, shift


def get_bits(page: Buffer, heap_blkno: int) -> int:
    pos, shift = _position(heap_blkno)
    return (page[pos] >> shift) & VISIBILITYMAP_VALID_BITS


def clear_bits(page: bytearray, heap_blkno: int, flags: int) -> bool:
    """visibilitymap_clear: clear ``flags`` for ``heap_blkno``; True if a bit changed. LSN untouched."""
    pos, shift = _position(heap_blkno)
    mask = (flags & VISIBILITYMAP_VALID_BITS) << shift
    if page[pos] & mask:
        page[pos] &= ~mask & 0xFF
        return True
    return False


def set_bits(page: bytearray, heap_blkno: int, flags: int) -> bool:
    """visibilitymap_set's bitmap part: OR in ``flags``; True if the stored pair differed from ``flags``.

    PostgreSQL sets the VM page's LSN exactly when this returns True (the caller does that).
    """
    pos, shift = _position(heap_blkno)
    flags &= VISIBILITYMAP_VALID_BITS
    if flags != (page[pos] >> shift) & VISIBILITYMAP_VALID_BITS:
        page[pos] |= flags << shift
        return True
    return False
