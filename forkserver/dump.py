"""Failed-request dumps: the inputs of a request the engine refused, written for offline replay.

Runs in the parent (``WalRedoManager(dump_failed=PATH)``), off the event loop: writing is blocking I/O. A
dump is one msgpack file ``<tenant>-<lsn hex>-<n>.walredo-dump`` holding the tag, LSN, base image, records,
pg_version, wal_log_hints and the engine's error, written 0600 under a temporary name and renamed into place,
so a reader never sees half a dump. :func:`load_dump` reads one back and ``scripts/replay-dump`` replays it
in-process through :func:`walredo_template.redo.apply_records` to reproduce the error.

The directory gets at most ``max_files`` dumps (default 100): a tenant that sends broken WAL by the thousand
must not fill the disk. Beyond that, dumps are skipped (counted by the caller).

:class:`DumpWriter` is the manager's side: called on the event loop when a request failed, it copies the
inputs and writes them in the loop's default executor in the background, so the failed request is raised at
once and a dump that cannot be written (full disk, bad directory) is logged and counted, never raised.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import msgpack

from walredo_template import BufferTag

__all__ = ["FailedRequest", "write_dump", "load_dump", "DumpWriter", "DUMP_SUFFIX", "DEFAULT_MAX_FILES",
           "MAX_PENDING"]

log = logging.getLogger(__name__)

DUMP_SUFFIX = ".walredo-dump"
DEFAULT_MAX_FILES = 100
# Dumps being written at once by one DumpWriter; a failure while this many are pending is skipped, so a burst
# of failing requests queues a bounded amount of copied input (and executor work) behind the first ones.
MAX_PENDING = 4
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


class DumpWriter:
    """Writes failed-request dumps into ``directory`` in the background (the loop's default executor).

    ``count(result)`` is called once per :meth:`submit` on the loop thread, with ``"written"``, ``"skipped"``
    (``max_files`` reached, or ``MAX_PENDING`` writes already in flight) or ``"error"`` (the write raised:
    logged as a warning with the tenant and pid). Construct and use on the loop thread.
    """

    def __init__(self, directory: str | os.PathLike[str], count: Callable[[str], object], *,
                 max_files: int = DEFAULT_MAX_FILES) -> None:
        self.directory = os.fspath(directory)
        self.max_files = max_files
        self._count = count
        self._pending: set[asyncio.Future[str | None]] = set()

    def submit(self, tenant_id: str, pid: int, tag: BufferTag, lsn: int, base_image: bytes | None,
               records: Sequence[tuple[int, bytes]], pg_version: int, wal_log_hints: bool, error: str) -> None:
        """Start writing one dump; returns at once and never raises (except for a closed loop)."""
        if len(self._pending) >= MAX_PENDING:
            self._count("skipped")
            log.debug("tenant %s pid %d: failed request not dumped: %d dumps being written", tenant_id, pid,
                      len(self._pending))
            return
        # Copied now: the caller may reuse its buffers once its request has failed.
        copied = [(end, bytes(rec)) for end, rec in records]
        fut = asyncio.get_running_loop().run_in_executor(
            None, functools.partial(write_dump, self.directory, tenant_id, tag, lsn, base_image, copied,
                                    pg_version, wal_log_hints, error, max_files=self.max_files))
        self._pending.add(fut)
        fut.add_done_callback(functools.partial(self._done, tenant_id, pid))

    def _done(self, tenant_id: str, pid: int, fut: asyncio.Future[str | None]) -> None:
        self._pending.discard(fut)
        if fut.cancelled():  # the loop shut its executor down first
            self._count("error")
            return
        exc = fut.exception()
        if exc is not None:
            self._count("error")
            log.warning("tenant %s pid %d: could not dump the failed request into %s: %s", tenant_id, pid,
                        self.directory, exc)
        elif fut.result() is None:
            self._count("skipped")
            log.debug("tenant %s pid %d: failed request not dumped: %s holds %d dumps already", tenant_id, pid,
                      self.directory, self.max_files)
        else:
            self._count("written")
            log.info("tenant %s pid %d: failed request dumped to %s", tenant_id, pid, fut.result())

    @property
    def pending(self) -> int:
        """Dumps being written now."""
        return len(self._pending)

    async def aclose(self) -> None:
        """Wait until every dump already submitted is written (or failed). Never raises except
        ``CancelledError``; cancelling it leaves the writes going on in the executor."""
        while self._pending:
            await asyncio.wait(set(self._pending))
