"""Reading a PostgreSQL 15 ``pg_wal`` directory, as a pageserver's WAL ingestion does.

Layout: segment files named ``TTTTTTTTXXXXXXXXYYYYYYYY`` (timeline, segment number / segments-per-xlogid,
segment number % segments-per-xlogid), each ``seg_size`` bytes (16 MiB by default; the size is taken from
the first page's long header), made of ``XLOG_BLCKSZ`` pages. Every page starts with a header::

    u16 xlp_magic (0xD110 = PostgreSQL 15) | u16 xlp_info | u32 xlp_tli | u64 xlp_pageaddr | u32 xlp_rem_len
    pad to 24 bytes; the first page of a segment (xlp_info & 0x2 XLP_LONG_HEADER) adds
    u64 xlp_sysid | u32 xlp_seg_size | u32 xlp_xlog_blcksz, 40 bytes in all.

Records start 8-byte aligned and continue across pages (and segments): a page whose first bytes continue
the previous record has ``XLP_FIRST_IS_CONTRECORD`` (0x1) and ``xlp_rem_len`` = the bytes still missing.
A record's end LSN is PostgreSQL's ``EndRecPtr``: just past its last byte, rounded up to 8 (an
``XLOG_SWITCH`` record extends to the end of its segment).

End of WAL, as PostgreSQL's reader decides it: a zeroed page or record header, a page whose address is not
its own (a recycled segment), a record header that is not plausible, a bad CRC, or the last segment file.
:attr:`WalReader.end_reason` says which. With ``strict=True`` the ways WAL normally ends (a zero record
length, a zeroed page, a page with another address or timeline, no next segment file) still end it, and
everything else (bad CRC, implausible header, broken continuation) raises :class:`InvalidWal`. A page magic
of another PostgreSQL version always raises :class:`InvalidWal` naming that version; so does a segment file
whose size is not the segment size.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Iterable, Iterator

from walredo_template import BufferTag
from walredo_template.pg import visibilitymap as VM
from walredo_template.pg.crc32c import crc32c
from walredo_template.pg.errors import InvalidRecord, InvalidWal
from walredo_template.pg.heapam_vm import vm_clears
from walredo_template.pg.heapam_xlog import VISIBILITYMAP_FORKNUM
from walredo_template.pg.xlogrecord import RM_XLOG_ID, decode_record

XLOG_PAGE_MAGIC_15 = 0xD110
_KNOWN_MAGICS = {0xD101: 11, 0xD104: 12, 0xD106: 13, 0xD10D: 14, 0xD110: 15, 0xD113: 16, 0xD116: 17}
XLP_FIRST_IS_CONTRECORD = 0x0001
XLP_LONG_HEADER = 0x0002
SIZE_OF_SHORT_PHD = 24
SIZE_OF_LONG_PHD = 40
SIZE_OF_XLOG_RECORD = 24
XLOG_SWITCH = 0x40
RM_MAX_BUILTIN_ID = 21  # PostgreSQL 15: rmgrlist.h has 22 built-in resource managers
RM_MIN_CUSTOM_ID = 128

_PHD = struct.Struct("<HHIQI")
_LONG_PHD_TAIL = struct.Struct("<QII")
_REC_HDR = struct.Struct("<IIQBB")
_SEG_NAME = re.compile(r"^[0-9A-F]{24}$")


def _maxalign(x: int) -> int:
    return (x + 7) & ~7


def format_lsn(lsn: int) -> str:
    """``X/X`` as PostgreSQL prints an LSN."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def parse_lsn(text: str) -> int:
    """Parse ``X/X``. Raises ValueError on anything else."""
    hi, lo = text.strip().split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


class _EndOfWal(Exception):
    """Internal: the reader reached the end of valid WAL; the argument is the reason."""


class WalReader:
    """Iterate over the records of a ``pg_wal`` directory: yields ``(start_lsn, end_lsn, record_bytes)``.

    ``start_lsn`` defaults to the first record that begins in the oldest segment. ``record_bytes`` is the
    whole record (``xl_tot_len`` bytes) and has passed its CRC check unless ``verify_crc=False``.

    Raises :class:`InvalidWal` when the directory has no segments, the first long header is malformed, a
    page carries another PostgreSQL version's magic, or (``strict``) a record or page is invalid before a
    clean end. After iteration, :attr:`end_reason` says why reading stopped and :attr:`end_lsn` where.
    """

    def __init__(self, wal_dir: str | os.PathLike[str], *, start_lsn: int | None = None,
                 verify_crc: bool = True, strict: bool = False):
        self.wal_dir = os.fspath(wal_dir)
        self.verify_crc = verify_crc
        self.strict = strict
        self.end_reason: str | None = None
        self.end_lsn: int | None = None
        names = sorted(n for n in os.listdir(self.wal_dir) if _SEG_NAME.match(n))
        if not names:
            raise InvalidWal(f"no WAL segment files in {self.wal_dir}")
        first = os.path.join(self.wal_dir, names[0])
        with open(first, "rb") as f:
            head = f.read(SIZE_OF_LONG_PHD)
        if len(head) < SIZE_OF_LONG_PHD:
            raise InvalidWal(f"{first}: shorter than a long page header")
        magic, info, tli, pageaddr, _rem = _PHD.unpack_from(head)
        self._check_magic(magic, pageaddr)
        if not info & XLP_LONG_HEADER:
            raise InvalidWal(f"{first}: first page has no long header")
        self.system_id: int
        self.segment_size: int
        self.page_size: int
        self.system_id, self.segment_size, self.page_size = _LONG_PHD_TAIL.unpack_from(head, SIZE_OF_SHORT_PHD)
        ss, ps = self.segment_size, self.page_size
        if ps < 1024 or ps & (ps - 1) or ss < ps or ss & (ss - 1) or ss % ps:
            raise InvalidWal(f"{first}: implausible segment size {ss} / page size {ps}")
        self.timeline = tli
        segs_per_id = 0x100000000 // ss
        self._files: dict[int, str] = {}
        for n in names:
            if int(n[:8], 16) != tli:
                continue  # another timeline: not followed
            segno = int(n[8:16], 16) * segs_per_id + int(n[16:24], 16)
            self._files[segno] = os.path.join(self.wal_dir, n)
        self.first_segno = int(names[0][8:16], 16) * segs_per_id + int(names[0][16:24], 16)
        self._seg_cache: tuple[int, bytes] | None = None
        self.start_lsn = start_lsn

    @staticmethod
    def _check_magic(magic: int, pageaddr: int) -> None:
        if magic != XLOG_PAGE_MAGIC_15:
            ver = _KNOWN_MAGICS.get(magic)
            what = f"PostgreSQL {ver}" if ver else "an unknown version"
            raise InvalidWal(
                f"WAL page at {format_lsn(pageaddr)} has magic 0x{magic:04X} ({what}); "
                f"only PostgreSQL 15 (0x{XLOG_PAGE_MAGIC_15:04X}) is supported"
            )

    # -- page access ---------------------------------------------------------------------------------
    def _segment(self, segno: int) -> bytes:
        cache = self._seg_cache
        if cache is not None and cache[0] == segno:
            return cache[1]
        path = self._files.get(segno)
        if path is None:
            raise _EndOfWal(f"segment {segno:X} not present")
        with open(path, "rb") as f:
            data = f.read()
        if len(data) != self.segment_size:
            raise InvalidWal(f"{path}: {len(data)} bytes, expected segment size {self.segment_size}")
        self._seg_cache = (segno, data)
        return data

    def _page(self, page_lsn: int) -> tuple[bytes, int, int, int, int]:
        """(segment bytes, offset of the page in it, header size, xlp_info, xlp_rem_len) of a valid page;
        raises _EndOfWal where WAL ends, InvalidWal (or _EndOfWal unless strict) for a broken header."""
        seg = self._segment(page_lsn // self.segment_size)
        off = page_lsn % self.segment_size
        magic, info, tli, pageaddr, rem_len = _PHD.unpack_from(seg, off)
        if magic == 0 and info == 0 and pageaddr == 0:
            raise _EndOfWal(f"zeroed page at {format_lsn(page_lsn)}")
        self._check_magic(magic, page_lsn)
        if pageaddr != page_lsn:
            # A recycled segment still holds pages of an older position: that is where WAL ends.
            raise _EndOfWal(f"page at {format_lsn(page_lsn)} has address {format_lsn(pageaddr)}")
        if tli != self.timeline:
            raise _EndOfWal(f"page at {format_lsn(page_lsn)} is on timeline {tli}, not {self.timeline}")
        if info & ~0x7:
            self._bad(f"page at {format_lsn(page_lsn)} has invalid info bits 0x{info:04X}")
        is_long = bool(info & XLP_LONG_HEADER)
        if is_long != (off == 0):
            self._bad(f"page at {format_lsn(page_lsn)}: long header flag {is_long} at segment offset {off}")
        hdr = SIZE_OF_LONG_PHD if is_long else SIZE_OF_SHORT_PHD
        return seg, off, hdr, info, rem_len

    def _bad(self, reason: str) -> None:
        if self.strict:
            raise InvalidWal(reason)
        raise _EndOfWal(reason)

    # -- iteration -----------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[tuple[int, int, bytes]]:
        pos = self.start_lsn
        try:
            if pos is None:
                pos = self._first_record_lsn()
            prev = None
            while True:
                start, end, raw = self._read_record(pos, prev)
                yield start, end, raw
                prev = start
                pos = end
        except _EndOfWal as e:
            self.end_reason = str(e.args[0])
            self.end_lsn = pos

    def _first_record_lsn(self) -> int:
        base = self.first_segno * self.segment_size
        _seg, _off, hdr, info, rem_len = self._page(base)
        pos = base + hdr
        if info & XLP_FIRST_IS_CONTRECORD and rem_len:
            # Skip the tail of a record that began in an older (removed) segment.
            pos = self._skip(pos, rem_len)
        return pos

    def _skip(self, pos: int, nbytes: int) -> int:
        ps = self.page_size
        while True:
            room = ps - pos % ps
            if nbytes <= room:
                return _maxalign(pos + nbytes)
            nbytes -= room
            pos += room
            hdr = self._page(pos)[2]
            pos += hdr

    def _read_record(self, pos: int, prev: int | None) -> tuple[int, int, bytes]:
        ps = self.page_size
        ss = self.segment_size
        if pos % ps == 0:
            _seg, _off, hdr, info, rem_len = self._page(pos)
            if info & XLP_FIRST_IS_CONTRECORD and rem_len:
                self._bad(f"record expected at {format_lsn(pos)} but the page starts with a continuation")
            pos += hdr
        else:
            # Make sure the page we are on is valid (it was when we read the previous record, but the
            # first record may start mid-page with a caller-given start_lsn).
            if self.start_lsn is not None and prev is None:
                self._page(pos - pos % ps)
        start = pos
        seg = self._segment(pos // ss)
        off = pos % ss
        room = ps - pos % ps
        # pos is 8-aligned past a header, so at least 8 bytes (tot_len and xid) are on this page.
        (tot_len,) = struct.unpack_from("<I", seg, off)
        if tot_len == 0:
            raise _EndOfWal(f"zero record length at {format_lsn(start)}")
        if tot_len < SIZE_OF_XLOG_RECORD:
            self._bad(f"invalid record length {tot_len} at {format_lsn(start)}")
        if tot_len <= room:
            raw = seg[off : off + tot_len]
            end = start + tot_len
        else:
            parts = [seg[off : off + room]]
            got = room
            p = pos + room
            while got < tot_len:
                seg2, off2, hdr, info, rem_len = self._page(p)
                if not info & XLP_FIRST_IS_CONTRECORD:
                    self._bad(f"there is no contrecord flag at {format_lsn(p)}")
                if rem_len == 0 or rem_len != tot_len - got:
                    self._bad(f"invalid contrecord length {rem_len} (expected {tot_len - got}) at {format_lsn(p)}")
                take = min(ps - hdr, tot_len - got)
                parts.append(seg2[off2 + hdr : off2 + hdr + take])
                got += take
                end = p + hdr + take
                p += ps
            raw = b"".join(parts)
        _tl, _xid, xl_prev, info, rmid = _REC_HDR.unpack_from(raw)
        if prev is not None and xl_prev != prev:
            self._bad(f"record at {format_lsn(start)} has incorrect prev-link {format_lsn(xl_prev)}")
        if rmid > RM_MAX_BUILTIN_ID and rmid < RM_MIN_CUSTOM_ID:
            self._bad(f"invalid resource manager ID {rmid} at {format_lsn(start)}")
        if self.verify_crc:
            (want,) = struct.unpack_from("<I", raw, 20)
            if crc32c(raw[:20], crc32c(raw[SIZE_OF_XLOG_RECORD:])) != want:
                self._bad(f"incorrect resource manager data checksum in record at {format_lsn(start)}")
        end = _maxalign(end)
        if rmid == RM_XLOG_ID and info & 0xF0 == XLOG_SWITCH:
            end = (end + ss - 1) // ss * ss  # the rest of the segment is padding
        return start, end, raw


def read_wal(wal_dir: str | os.PathLike[str], *, start_lsn: int | None = None, verify_crc: bool = True,
             strict: bool = False) -> Iterator[tuple[int, int, bytes]]:
    """Shorthand for ``iter(WalReader(wal_dir, ...))``; see :class:`WalReader` for errors."""
    return iter(WalReader(wal_dir, start_lsn=start_lsn, verify_crc=verify_crc, strict=strict))


# Heap blocks per VM page (the engine's visibilitymap.HEAPBLOCKS_PER_PAGE), exported for the harness:
# tests/oracle.py sizes VM pages with it.
HEAPBLOCKS_PER_VM_PAGE = VM.HEAPBLOCKS_PER_PAGE


def pages_touched(raw: bytes, *, include_vm_clears: bool = True) -> list[BufferTag]:
    """The pages a record must be applied to: each block reference's page, plus (``include_vm_clears``)
    the visibility-map page of a heap block whose VM bits the record clears implicitly (heap_xlog_insert &
    co. call visibilitymap_clear on their own): the clears are the engine's own ``heapam_vm.vm_clears``, so
    a VM page gets exactly the records its redo acts on.

    Raises :class:`InvalidRecord` if the record does not decode (a heap record too short to hold its flags
    included, as the engine's redo of it does).
    """
    rec = decode_record(raw, verify_crc=False)
    tags = [b.tag for b in rec.blocks.values()]
    if include_vm_clears:
        for b, heap_blkno, _flags in vm_clears(rec):
            vm = BufferTag(b.spcnode, b.dbnode, b.relnode, VISIBILITYMAP_FORKNUM, VM.vm_block_of(heap_blkno))
            if vm not in tags:
                tags.append(vm)
    return tags


def group_by_page(records: Iterable[tuple[int, int, bytes]], *,
                  include_vm_clears: bool = True) -> dict[BufferTag, list[tuple[int, bytes]]]:
    """Group ``(start_lsn, end_lsn, record_bytes)`` by page, as a pageserver files WAL under page keys.

    Returns ``{tag: [(end_lsn, record_bytes), ...]}`` in WAL order — the ``records`` argument that
    ``walredo_template.redo.apply_records(tag, base_image, records)`` takes. Records with no block
    references (commits, checkpoints) appear nowhere. Raises :class:`InvalidRecord` on a record that does
    not decode.
    """
    out: dict[BufferTag, list[tuple[int, bytes]]] = {}
    for _start, end, raw in records:
        for tag in pages_touched(raw, include_vm_clears=include_vm_clears):
            lst = out.get(tag)
            if lst is None:
                out[tag] = lst = []
            lst.append((end, raw))
    return out


__all__ = [
    "WalReader", "read_wal", "group_by_page", "pages_touched", "format_lsn", "parse_lsn",
    "XLOG_PAGE_MAGIC_15", "HEAPBLOCKS_PER_VM_PAGE", "InvalidWal", "InvalidRecord",
]
