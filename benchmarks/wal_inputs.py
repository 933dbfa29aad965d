"""The ``short`` and ``medium`` redo inputs of bench_walredo, cut from the committed real WAL capture.

Like Neon's ``bench_walredo`` inputs: ``short`` is a 2-record redo of one heap page, ``medium`` a redo of
~200 records on one heap page. Both start at a record that initialises the page (``BKPBLOCK_WILL_INIT``)
or carries an applicable full-page image, so they need no base image: the request is exactly what a
pageserver would send for a page whose history starts there.

The capture is a PostgreSQL 15 ``pg_wal`` directory under ``tests/data/`` (found by its segment files;
``WALREDO_BENCH_WAL=DIR`` points elsewhere); the records are read with the project's own WAL reader.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from walredo_template import BufferTag
from walredo_template.pg.walreader import group_by_page, read_wal
from walredo_template.pg.xlogrecord import decode_record

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


def inputs_from_wal(wal_dir: Path, medium_records: int = 200) -> dict[str, RedoInput]:
    """``{"short": ..., "medium": ...}`` from the WAL in ``wal_dir``; a missing one means no page fits.

    ``medium`` is the page with the longest run, cut to ``medium_records`` (fewer if no page has that
    many). Raises the reader's ``InvalidWal``/``InvalidRecord`` on a corrupt capture.
    """
    runs = _runs(group_by_page(read_wal(wal_dir)))
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


def load_inputs(root: Path | None = None, medium_records: int = 200) -> tuple[dict[str, RedoInput], str]:
    """The inputs from the first WAL capture under ``root`` (default: ``$WALREDO_BENCH_WAL`` if set, else
    ``tests/data``), and where they came from (or why there are none)."""
    if root is None:
        root = Path(os.environ.get("WALREDO_BENCH_WAL") or DATA_DIR)
    dirs = find_wal_dirs(root)
    if not dirs:
        return {}, f"no PostgreSQL WAL capture under {root}"
    return inputs_from_wal(dirs[0], medium_records), str(dirs[0])
