"""The ``short`` and ``medium`` redo inputs of bench_walredo, cut from the committed real WAL capture.

Like Neon's ``bench_walredo`` inputs: ``short`` is a 2-record redo of one heap page, ``medium`` a redo of
~200 records on one heap page.

The capture was made with ``wal_consistency_checking``, so nearly every heap record also carries
PostgreSQL's image of the page after it (flagged "not to be applied"). Production WAL — and Neon's inputs —
have no such images, so by default they are cut out (:func:`strip_check_images`: the record PostgreSQL
writes without consistency checking, with its length and CRC recomputed); each stripped input is checked
to redo to the same page as the captured one before it is used. ``--keep-check-images`` measures the
records as captured. Both start at a record that initialises the page (``BKPBLOCK_WILL_INIT``)
or carries an applicable full-page image, so they need no base image: the request is exactly what a
pageserver would send for a page whose history starts there.

The capture is ``tests/data/*/capture.msgpack`` (the committed real PostgreSQL 15 capture: its records as
``[start_lsn, end_lsn, bytes]``; see the README beside it), or a PostgreSQL 15 ``pg_wal`` directory read
with the project's own WAL reader. ``WALREDO_BENCH_WAL=PATH`` points at another capture file or directory.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

from walredo_template import BufferTag
from walredo_template.pg.crc32c import crc32c
from walredo_template.pg.xlogrecord import RM_HEAP2_ID, RM_HEAP_ID, decode_record
from walredo_tools.capture import load_capture
from walredo_tools.walreader import group_by_page, read_wal

DATA_DIR = Path(__file__).resolve().parent.parent / "tests" / "data"
MAIN_FORK = 0
FIRST_NORMAL_OID = 16384


@dataclass(frozen=True)
class RedoInput:
    """One redo request: ``request_redo(tenant, tag, lsn, base_image, records)``."""

    name: str
    tag: BufferTag
    lsn: int
    base_image: bytes | None
    records: list[tuple[int, bytes]]

    def describe(self) -> str:
        size = sum(len(r) for _, r in self.records)
        checks = sum(1 for _, r in self.records if _has_check_image(r))
        extra = (f"; {checks} carry a wal_consistency_checking page image (not applied, but sent)"
                 if checks else "")
        return f"{self.name}: {len(self.records)} records ({size:,} bytes of WAL) on {tuple(self.tag)}{extra}"


_HDR = struct.Struct("<IIQBBxxI")
_BLK = struct.Struct("<BH")
_IMG = struct.Struct("<HHB")
XLR_CHECK_CONSISTENCY = 0x02
BKPBLOCK_HAS_IMAGE = 0x10
BKPBLOCK_SAME_REL = 0x80
BKPIMAGE_HAS_HOLE = 0x01
BKPIMAGE_APPLY = 0x02
BKPIMAGE_COMPRESSED = 0x04 | 0x08 | 0x10


def strip_check_images(raw: bytes) -> bytes:
    """``raw`` without its consistency-check page images: the record PostgreSQL 15 writes when
    ``wal_consistency_checking`` is off (images it must apply are kept). Length and CRC are recomputed.

    Raises ``ValueError`` (or the decoder's ``InvalidRecord``) on a record it cannot walk.
    """
    decode_record(raw)  # validates the layout and CRC before we rewrite it
    tot_len, xid, prev, info, rmid, _crc = _HDR.unpack_from(raw)
    pos = _HDR.size
    headers = bytearray()
    main_len = 0
    blocks = []  # (data_len, image_len, keep_image)
    announced = 0
    # As PostgreSQL's decoder: fragment headers go on while more bytes remain than the payloads announced.
    while len(raw) - pos > announced:
        block_id = raw[pos]
        if block_id == 255:  # short main data
            main_len = raw[pos + 1]
            headers += raw[pos:pos + 2]
            pos += 2
            break
        if block_id == 254:  # long main data
            (main_len,) = struct.unpack_from("<I", raw, pos + 1)
            headers += raw[pos:pos + 5]
            pos += 5
            break
        if block_id == 253:  # origin
            headers += raw[pos:pos + 3]
            pos += 3
            continue
        if block_id == 252:  # top-level xid
            headers += raw[pos:pos + 5]
            pos += 5
            continue
        if block_id > 32:
            raise ValueError(f"unexpected fragment id {block_id}")
        fork_flags, data_len = _BLK.unpack_from(raw, pos + 1)
        start = pos
        pos += 1 + _BLK.size
        image_len = 0
        keep_image = True
        if fork_flags & BKPBLOCK_HAS_IMAGE:
            image_len, _hole_off, bimg_info = _IMG.unpack_from(raw, pos)
            pos += _IMG.size + (2 if (bimg_info & BKPIMAGE_COMPRESSED and bimg_info & BKPIMAGE_HAS_HOLE) else 0)
            keep_image = bool(bimg_info & BKPIMAGE_APPLY)
        rel_len = 4 if fork_flags & BKPBLOCK_SAME_REL else 16
        pos += rel_len
        if keep_image:
            headers += raw[start:pos]
        else:  # the same block header without HAS_IMAGE and without the image header
            headers += bytes([block_id, fork_flags & ~BKPBLOCK_HAS_IMAGE]) + raw[start + 2:start + 4]
            headers += raw[pos - rel_len:pos]
        blocks.append((data_len, image_len, keep_image))
        announced += data_len + image_len
    body = bytearray(headers)
    for data_len, image_len, keep_image in blocks:
        if keep_image:
            body += raw[pos:pos + image_len]
        pos += image_len
        body += raw[pos:pos + data_len]
        pos += data_len
    body += raw[pos:pos + main_len]
    pos += main_len
    if pos != len(raw):
        raise ValueError(f"record walk ended at {pos} of {len(raw)} bytes")
    new_len = _HDR.size + len(body)
    head = struct.pack("<IIQBBxx", new_len, xid, prev, info & ~XLR_CHECK_CONSISTENCY, rmid)
    crc = crc32c(head, crc32c(bytes(body)))
    return head + struct.pack("<I", crc) + bytes(body)


def _has_check_image(raw: bytes) -> bool:
    return any(b.has_image and not b.apply_image for b in decode_record(raw, verify_crc=False).blocks.values())


def find_wal_dirs(root: Path = DATA_DIR) -> list[Path]:
    """Directories under ``root`` holding WAL segment files (24 hex digits), shallowest first."""
    found = []
    if not root.is_dir():
        return found
    for dirpath, _dirs, files in os.walk(root):
        if any(len(f) == 24 and all(c in "0123456789ABCDEF" for c in f) for f in files):
            found.append(Path(dirpath))
    return sorted(found, key=lambda p: (len(p.parts), str(p)))


def _starts_page(raw: bytes, tag: BufferTag) -> bool:
    """Whether redo of this record rebuilds ``tag`` from nothing (init or an applicable image)."""
    rec = decode_record(raw, verify_crc=False)
    for b in rec.blocks.values():
        if b.tag == tag:
            return b.will_init or (b.has_image and b.apply_image)
    return False


def _runs(per_page: dict[BufferTag, list[tuple[int, bytes]]]) -> list[tuple[BufferTag, list[tuple[int, bytes]]]]:
    """Per heap main-fork page: its records from the first one that starts the page."""
    out = []
    for tag, recs in per_page.items():
        if tag.forknum != MAIN_FORK:
            continue
        for i, (_end, raw) in enumerate(recs):
            if _starts_page(raw, tag):
                out.append((tag, recs[i:]))
                break
    return out


def find_capture_files(root: Path = DATA_DIR) -> list[Path]:
    """``capture.msgpack`` files under ``root`` (or ``root`` itself if it is one), sorted."""
    if root.is_file():
        return [root]
    return sorted(root.glob("*/capture.msgpack")) + sorted(root.glob("capture.msgpack"))


def records_from_capture(path: Path) -> list[tuple[int, int, bytes]]:
    """The Heap/Heap2 ``(start_lsn, end_lsn, bytes)`` records of a capture file (the inputs stay heap
    pages, as Neon's bench_walredo inputs are, whatever index records the capture also holds). Raises
    ``ValueError`` for another format or PostgreSQL version."""
    doc = load_capture(str(path))
    return [(start, end, raw) for start, end, raw in doc["records"] if raw[17] in (RM_HEAP2_ID, RM_HEAP_ID)]


def inputs_from_records(records, medium_records: int = 200) -> dict[str, RedoInput]:
    """``{"short": ..., "medium": ...}`` from ``(start_lsn, end_lsn, bytes)`` records in WAL order; a
    missing key means no page fits.

    ``medium`` is the page with the longest run, cut to ``medium_records`` (fewer if no page has that
    many). Raises ``InvalidRecord`` on a record that does not decode.
    """
    runs = _runs(group_by_page(records))
    out: dict[str, RedoInput] = {}
    # Prefer a user table's page (relfilenode ≥ FirstNormalObjectId) to a catalog's, as Neon's inputs are.
    runs.sort(key=lambda r: r[0].relnode < FIRST_NORMAL_OID)
    shorts = [(tag, recs) for tag, recs in runs if len(recs) >= 2]
    if shorts:
        tag, recs = shorts[0]
        out["short"] = RedoInput("short", tag, recs[1][0], None, recs[:2])
    if runs:
        tag, recs = max(runs, key=lambda r: len(r[1]))
        recs = recs[:medium_records]
        if len(recs) > 2:
            out["medium"] = RedoInput("medium", tag, recs[-1][0], None, recs)
    return out


def inputs_from_wal(wal_dir: Path, medium_records: int = 200) -> dict[str, RedoInput]:
    """As :func:`inputs_from_records`, reading a ``pg_wal`` directory. Raises ``InvalidWal``/``InvalidRecord``."""
    return inputs_from_records(read_wal(wal_dir), medium_records)


def without_check_images(inp: RedoInput) -> RedoInput:
    """``inp`` with every record passed through :func:`strip_check_images`, after checking that both redo
    to the same page with the project's engine. Raises ``ValueError`` if they do not."""
    from walredo_template.redo import apply_records

    records = [(end, strip_check_images(raw)) for end, raw in inp.records]
    if apply_records(inp.tag, inp.base_image, records) != apply_records(inp.tag, inp.base_image, inp.records):
        raise ValueError(f"{inp.name}: stripping consistency images changed the redo result")
    return RedoInput(inp.name, inp.tag, inp.lsn, inp.base_image, records)


def load_inputs(root: Path | None = None, medium_records: int = 200,
                keep_check_images: bool = False) -> tuple[dict[str, RedoInput], str]:
    """The inputs from the first capture under ``root`` (default: ``$WALREDO_BENCH_WAL`` if set, else
    ``tests/data``): a ``capture.msgpack`` file, else a ``pg_wal`` directory; and where they came from (or
    why there are none). Consistency-check images are cut out unless ``keep_check_images``."""
    if root is None:
        root = Path(os.environ.get("WALREDO_BENCH_WAL") or DATA_DIR)
    files = find_capture_files(root)
    if files:
        inputs, source = inputs_from_records(records_from_capture(files[0]), medium_records), str(files[0])
    else:
        dirs = find_wal_dirs(root)
        if not dirs:
            return {}, f"no PostgreSQL WAL capture under {root}"
        inputs, source = inputs_from_wal(dirs[0], medium_records), str(dirs[0])
    if not keep_check_images:
        inputs = {name: without_check_images(inp) for name, inp in inputs.items()}
        source += " (consistency-check images cut out)"
    return inputs, source
