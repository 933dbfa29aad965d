"""The walredo child: a blocking request/response loop over one socket (runs in a forked child).

The template preloads this module (so the redo engine is imported once, before ``gc.freeze()``, and
every child shares those pages) and, after fork, calls :func:`main` with the child's end of the
socketpair. Child hygiene (closing fds, signals, ``os._exit``) is the template's job; this module only
serves the socket until it ends.

Sandbox: the template confines every child before this worker serves (:mod:`forkserver.sandbox`; an
allowlist of a dozen syscalls, no file can be opened). So everything the engine may need is imported here,
at import time — including the optional lz4/zstandard modules the record decoder imports lazily, which an
import after the sandbox would have to look up on disk. Within the child's memory limit, a frame that
announces more than :func:`forkserver.sandbox.request_budget` is refused unread (``too-large``, the child
keeps serving), and an allocation that fails anyway (``MemoryError``) ends the child with
:data:`forkserver.sandbox.EXIT_MEMORY_LIMIT`, which the manager reports as "memory limit".

The wire format is :mod:`walredo_template.protocol`. Responses are in request order. Everything decoded
from one ``recv`` is answered with one ``sendall``, so a parent that pipelines requests gets its
responses batched too — up to about a millisecond of work, so an answer computed early in a burst of
slow redo requests is not held back behind the whole burst.
"""

from __future__ import annotations

import importlib
import logging
import mmap
import os
import socket
import sys
import time

from forkserver import sandbox
from walredo_template import protocol
from walredo_template.pg import errors as pg_errors
from walredo_template.protocol import Ping, Redo

# Imported at module top so the template preloads the engine (and gc.freeze() shares it with children).
from walredo_template.redo import apply_records

log = logging.getLogger(__name__)


def _preload_optional(*names: str) -> None:
    """Import modules the engine imports lazily, now (in the template, before the sandbox). One that is not
    installed is recorded as missing in ``sys.modules`` (None), so that the engine's later ``import`` fails
    at once with ImportError instead of searching the disk, which the sandbox would punish with SIGSYS."""
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError:
            sys.modules.setdefault(name, None)  # type: ignore[arg-type]  # None: "known missing", by design


# walredo_template.pg.xlogrecord decompresses lz4/zstd full-page images with these.
_preload_optional("lz4", "lz4.block", "zstandard")

# One recv reads up to this much: big enough that a pipelined burst of requests arrives in one call.
RECV_SIZE = 1 << 20
# Answers computed from one recv are sent together (one syscall for a burst of pings), but not held back
# longer than this: the parent can use the first page of a burst of slow redos while the rest are done.
FLUSH_AFTER_SECONDS = 0.001

# Most specific first: the code tells the parent which kind of deterministic failure it was.
_REDO_ERROR_CODES: tuple[tuple[type[pg_errors.RedoError], str], ...] = (
    (pg_errors.UnsupportedRecord, "unsupported-record"),
    (pg_errors.BlockNotReferenced, "block-not-referenced"),
    (pg_errors.InvalidPage, "invalid-page"),
    (pg_errors.MissingCompressionLibrary, "missing-compression-library"),
    (pg_errors.InvalidRecord, "invalid-record"),
    (pg_errors.InvalidWal, "invalid-record"),
)


def redo_error_code(exc: pg_errors.RedoError) -> str:
    """The wire error code for a redo-engine error (``invalid-record`` for an unlisted subclass)."""
    for cls, code in _REDO_ERROR_CODES:
        if isinstance(exc, cls):
            return code
    return "invalid-record"


def handle_request(request: Ping | Redo) -> bytes:
    """Answer one decoded request with one encoded response frame. Never raises for bad input.

    A redo-engine error is a typed ``error`` response. ``MemoryError`` propagates (the memory limit: the
    caller ends the child). Any other exception from the engine is a bug: it is logged and answered
    ``internal`` — never a page, so a bug can cost a request but cannot return a
    wrong page. The engine is a pure function of its arguments, so the child keeps serving.
    """
    if isinstance(request, Ping):
        return protocol.encode_pong(request.id)
    rid = request.id
    if request.pg_version != protocol.SUPPORTED_PG_VERSION:
        return protocol.encode_error(
            "unsupported-pg-version",
            f"this walredo child serves PostgreSQL {protocol.SUPPORTED_PG_VERSION}, not {request.pg_version}",
            rid,
        )
    try:
        protocol.validate_redo(
            request.tag, request.lsn, request.base_image, request.records, request.pg_version
        )
    except (ValueError, TypeError) as e:
        return protocol.encode_error("bad-request", str(e), rid)
    try:
        page = apply_records(
            request.tag, request.base_image, request.records, wal_log_hints=request.wal_log_hints
        )
    except pg_errors.RedoError as e:
        return protocol.encode_error(redo_error_code(e), str(e) or type(e).__name__, rid)
    except MemoryError:
        raise  # the memory limit: main() ends the child (its state after a failed allocation is unknown)
    except Exception as e:  # a bug in the engine; BaseException (SystemExit, ...) still ends the child
        log.exception("redo engine failed on %s at %X", request.tag, request.lsn)
        return protocol.encode_error("internal", f"{type(e).__name__}: {e}", rid)
    if not isinstance(page, (bytes, bytearray)) or len(page) != protocol.PAGE_SIZE:
        # Belt and braces: a wrong-sized result is an engine bug, not a page.
        log.error("redo engine returned %r (%s bytes), not a page", type(page), getattr(page, "__len__", None))
        return protocol.encode_error("internal", "redo engine returned something that is not a page", rid)
    return protocol.encode_page(page, rid)


def prepare() -> None:
    """Warm a pre-forked child before it is given a tenant (called by the template's pool children).

    A forked child pays a copy-on-write page fault (4-6 µs on a VM) for every page of the template's memory
    it first writes to, and a Python process writes to every object it touches (reference counts). Running
    a ping and a small redo through the decoder, the engine and the encoders here takes those faults while
    the child waits in the pool, instead of on its first real request; the receive buffer is made here too.
    """
    global _prepared_buffer
    from walredo_template.pg.page import page_init

    page = bytearray(protocol.PAGE_SIZE)
    page_init(page)
    decoder = protocol.RequestDecoder()
    decoder.receive_data(protocol.encode_ping(0))
    decoder.receive_data(protocol.encode_redo((1663, 1, 1, 0, 0), 0, bytes(page), [], 15, id=1))
    for request in decoder:
        handle_request(request)  # type: ignore[arg-type]
    _prepared_buffer = mmap.mmap(-1, RECV_SIZE)
    _prepared_buffer[0] = 0  # its first page: every request lands there


_prepared_buffer: mmap.mmap | None = None


def main(sock: socket.socket, tenant: str) -> None:
    """Serve walredo requests on ``sock`` until EOF; the template child's entry point.

    Returns on EOF, when the peer resets the socket, or after answering a malformed frame with a
    ``protocol`` error (then the socket is closed: the stream cannot be resynchronised). Never raises
    for bad input. ``tenant`` is informational (log context).
    """
    # No sock.setblocking(): the template hands over a blocking socket, and the ioctl it would make is not
    # on the sandbox's allowlist.
    decoder = protocol.RequestDecoder(refuse_above=sandbox.request_budget())
    memory_message = f"walredo {tenant}: memory limit reached; exiting\n".encode()
    # One reusable receive buffer: recv(n) would allocate (and shrink) a fresh n-byte object per call.
    # Anonymous mmap, not bytearray: a bytearray is zero-filled at once (256 page faults, ~1.3 ms on the
    # path to the first answer, and 1 MiB of private memory per idle child); mmap pages appear only when a
    # recv first writes them, so a child that only ever gets small requests touches a page or two.
    global _prepared_buffer
    buf, _prepared_buffer = (_prepared_buffer or mmap.mmap(-1, RECV_SIZE)), None
    view = memoryview(buf)
    try:
        while True:
            try:
                n = sock.recv_into(buf)
            except ConnectionResetError:
                return
            if not n:
                return  # EOF: the parent closed its end or died
            decoder.receive_data(view[:n])
            out: list[bytes] = []
            broken = False
            since = time.perf_counter()
            try:
                for request in decoder:
                    if isinstance(request, protocol.Oversized):
                        out.append(protocol.encode_error(
                            "too-large", f"a request of {request.size} bytes is more than this walredo "
                            f"child's memory limit allows ({request.bound} bytes)"))
                        continue
                    try:
                        out.append(handle_request(request))
                    except MemoryError:
                        raise
                    except Exception as e:  # a bug outside the engine: still one answer per request
                        log.exception("walredo %s: failed to answer %r", tenant, type(request).__name__)
                        out.append(protocol.encode_error("internal", f"{type(e).__name__}: {e}", request.id))
                    if time.perf_counter() - since >= FLUSH_AFTER_SECONDS:
                        if not _send(sock, out):
                            return
                        out.clear()
                        since = time.perf_counter()
            except protocol.ProtocolError as e:
                log.warning("walredo %s: closing after a malformed frame: %s", tenant, e)
                out.append(protocol.encode_error("protocol", str(e)))
                broken = True
            if out and not _send(sock, out):
                return
            if broken:
                return
    except MemoryError:
        # Past the memory limit (RLIMIT_AS): a half-done allocation may have left any state behind, so the
        # child ends with the status the manager reports as "memory limit"; the parent's next request for
        # this tenant gets a new child. os._exit at once, with the socket still open: the parent sees EOF
        # only once the exit status is set, so its kill of the broken child cannot replace this status with
        # SIGKILL. The message was formatted before anything could fail.
        try:
            os.write(2, memory_message)
        except OSError:
            pass
        os._exit(sandbox.EXIT_MEMORY_LIMIT)
    finally:
        sock.close()


def _send(sock: socket.socket, frames: list[bytes]) -> bool:
    """Send ``frames`` in one call; False if the parent is gone."""
    try:
        # MSG_NOSIGNAL: the template restores SIGPIPE's default action in the child, and a parent that
        # went away must end the loop with EPIPE, not kill the child by signal.
        sock.sendall(b"".join(frames), socket.MSG_NOSIGNAL)
    except (BrokenPipeError, ConnectionResetError):
        return False
    return True


# The template's pool children call the worker function's ``prepare`` (if any) while they wait for a tenant.
main.prepare = prepare  # type: ignore[attr-defined]

__all__ = ["handle_request", "main", "prepare", "redo_error_code"]
