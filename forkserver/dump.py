"""Failed-request dumps: the inputs of a request the engine refused, written for offline replay.

Runs in the parent (``WalRedoManager(dump_failed=PATH)``), off the event loop: writing is blocking I/O. A
dump is one msgpack file ``<tenant>-<lsn hex>-<n>.walredo-dump`` holding the tag, LSN, base image, records,
pg_version, wal_log_hints and the engine's error, written 0600 under a temporary name and renamed into place,
so a reader never sees half a dump. :func:`load_dump` reads one back and ``scripts/replay-dump`` replays it
in-process through :func:`walredo_template.redo.apply_records` to reproduce the error.

The directory gets at most ``max_files`` dumps (default 100): a tenant that sends broken WAL by the thousand
must not fill the disk. Beyond that, dumps are skipped (counted by the caller).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from dataclasses import dataclass

import msgpack

from walredo_template import BufferTag

__all__ = ["FailedRequest", "write_dump", "load_dump", "DUMP_SUFFIX", "DEFAULT_MAX_FILES"]

DUMP_SUFFIX = ".walredo-dump"
DEFAULT_MAX_FILES = 100
_FORMAT = 1
_counter = itertools.count()


@dataclass(frozen=True)
class FailedRequest:
    """What :func:`load_dump` gives back: the request's inputs and the error it met."""

    tenant_id: str
    tag: BufferTag
    lsn: int
    base_image: bytes | None
    records: list[tuple[int, bytes]]
    pg_version: int
    wal_log_hints: bool
    error: str


def write_dump(directory: str, tenant_id: str, tag: BufferTag, lsn: int, base_image: bytes | None,
               records: Sequence[tuple[int, bytes]], pg_version: int, wal_log_hints: bool, error: str,
               *, max_files: int = DEFAULT_MAX_FILES) -> str | None:
    """Write one dump into ``directory`` (created 0700 if missing) and return its path, or None when the
    directory already holds ``max_files`` dumps. Errors: ``OSError`` from the file system."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    with os.scandir(directory) as it:
        if sum(1 for e in it if e.name.endswith(DUMP_SUFFIX)) >= max_files:
            return None
    body = msgpack.packb({
        "format": _FORMAT, "tenant": tenant_id, "tag": list(tag), "lsn": lsn, "base_image": base_image,
        "records": [[end, bytes(rec)] for end, rec in records], "pg_version": pg_version,
        "wal_log_hints": wal_log_hints, "error": error,
    }, use_bin_type=True)
    name = f"{tenant_id}-{lsn:016x}-{os.getpid()}-{next(_counter)}{DUMP_SUFFIX}"
    path = os.path.join(directory, name)
    tmp = os.path.join(directory, "." + name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(body)
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def load_dump(path: str) -> FailedRequest:
    """Read a dump written by :func:`write_dump`. Errors: ``OSError``; ``ValueError`` for a file that is not
    a dump of this format."""
    with open(path, "rb") as f:
        try:
            m = msgpack.unpackb(f.read(), raw=False)
        except Exception as e:
            raise ValueError(f"{path}: not a walredo dump: {e}") from None
    if not isinstance(m, dict) or m.get("format") != _FORMAT:
        raise ValueError(f"{path}: not a walredo dump of format {_FORMAT}")
    try:
        return FailedRequest(
            tenant_id=str(m["tenant"]), tag=BufferTag(*m["tag"]), lsn=int(m["lsn"]),
            base_image=m["base_image"], records=[(int(end), bytes(rec)) for end, rec in m["records"]],
            pg_version=int(m["pg_version"]), wal_log_hints=bool(m["wal_log_hints"]), error=str(m["error"]),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: malformed walredo dump: {e}") from None
