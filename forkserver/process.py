"""The parent's connection to one walredo child: pipelined requests over the child socket.

Runs in the parent process on its asyncio loop. One :class:`WalRedoProcess` wraps one child handle (from
:meth:`forkserver.TemplateClient.spawn`, or anything with the same duck type: ``pid``, ``socket`` — the
parent end of the child's socketpair —, ``kill(sig)`` and ``async wait()``) and speaks
:mod:`walredo_template.protocol` on its socket.

Pipelining: a caller queues its request's slot in a FIFO and its frame in the output buffer in one
synchronous step, so frame order on the wire always equals slot order; frames queued during one loop
iteration leave in one ``send`` on the next (corking: 64 callers woken by one batch of responses cost
one syscall, and the child reads them in one ``recv``). The child answers in order. One reader — a loop reader
callback on the socket, so there is no task to leak or cancel — decodes responses and resolves slots front to
back. A caller cancelled mid-request leaves its slot in the FIFO: its response is still read and dropped, so
the stream stays in sync for everyone else.

Failure: if the stream breaks (EOF, reset, an undecodable or unexpected response) the process becomes
BROKEN — every pending and later request raises :class:`~forkserver.errors.ProcessBroken`, the child is
killed and reaping starts at once so a broken child never lingers. :meth:`WalRedoProcess.aclose` kills
and reaps; it is idempotent.

Lifecycle::

    RUNNING ──stream breaks──▶ BROKEN ──close()/aclose()──▶ CLOSED
       └───────────────close()/aclose()─────────────────────────┘

Who ended it (``broke_first``): True when the stream broke on its own (the child died, was killed by someone
else, or sent something unusable) before this side closed the process — also when ``close()`` finds the
child's end of the socket already hung up, a death whose EOF the reader had not seen yet. A caller that
counts stops by cause (the manager) reads it with the exit status, so a child killed while idle is a broken
child, not an idle stop. ``on_stop`` (optional) is called once, synchronously, when the process leaves
RUNNING, so an owner can drop it at once instead of finding it dead on its next request.

Arguments are checked before any I/O, including ``protocol.check_record_lsns`` (records in ascending LSN
order, the last one ending at or before the request's LSN).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from walredo_template import protocol
from walredo_template.protocol import SUPPORTED_PG_VERSION

from .errors import ProcessBroken, ProcessClosed, RedoFailed, TemplateUnavailable

log = logging.getLogger(__name__)

# One recv reads up to this much: 32 pipelined pages per call. The buffer is shared by every process
# served by the same thread (reads run one callback at a time and the decoder copies what it is given), so
# a parent holding thousands of children holds one buffer per loop thread, not one per child.
RECV_SIZE = 256 << 10

_thread_state = threading.local()


def _recv_buffer() -> tuple[bytearray, memoryview]:
    state: tuple[bytearray, memoryview]
    try:
        state = _thread_state.recv_buffer
    except AttributeError:
        buf = bytearray(RECV_SIZE)
        state = _thread_state.recv_buffer = (buf, memoryview(buf))
    return state


class ChildHandleLike(Protocol):
    """What :class:`WalRedoProcess` needs from a child handle (``forkserver.client.ChildHandle``)."""

    pid: int
    socket: socket.socket

    def kill(self, sig: int) -> None: ...

    async def wait(self) -> int: ...


class ProcessState(enum.Enum):
    RUNNING = "running"  # requests are accepted
    BROKEN = "broken"  # the stream failed; the child was killed and is being reaped
    CLOSED = "closed"  # closed by this side; the child was killed and is being (or was) reaped


class _Kind(enum.Enum):
    PING = "ping"
    REDO = "redo"


class _Slot:
    """One request in flight. Stays queued until its response arrives, even if its caller is gone."""

    __slots__ = ("kind", "id", "future", "sent_at")

    def __init__(self, kind: _Kind, id: int, future: asyncio.Future[bytes | None], sent_at: float) -> None:
        self.kind = kind
        self.id = id
        self.future = future
        self.sent_at = sent_at  # time.monotonic(): what expire() judges a request's age by


@dataclass(frozen=True)
class ProcessStats:
    """A snapshot of one process; times are ``time.time()`` seconds."""

    pid: int
    tenant: str | None
    state: ProcessState
    started_at: float
    requests_served: int
    last_request_at: float | None
    in_flight: int
    exit_status: int | None
    broke_first: bool


class WalRedoProcess:
    """A pipelined connection to one walredo child.

    ``WalRedoProcess(handle, tenant=None, on_stop=None)`` takes ownership of ``handle`` and its socket (made
    non-blocking and watched by the running loop, so construct it on the loop thread). Many requests may be
    in flight. ``on_stop(process)`` is called once, synchronously, when it leaves RUNNING (broken or closed).
    ``tenant`` defaults to the handle's own ``tenant`` (a ``ChildHandle`` has one): every log line names the
    tenant and the pid (``tenant <id> pid <pid>: ...``).

    Size: ~365 lines, half docstrings: the send path, the read path and the shutdown each touch the same
    slot queue, whose order is the protocol's correctness (responses are matched by position and id).

    Attributes (read-only): ``pid``, ``tenant``, ``state``, ``started_at`` and ``last_request_at``
    (``time.time()``; the latter ``None`` until the first request), ``requests_served`` (responses read,
    including dropped ones), ``in_flight`` (requests sent and not yet answered), ``exit_status``
    (``None`` until reaped), ``broke_first`` (the stream broke before this side closed it: see the module
    docstring).
    """

    def __init__(self, handle: ChildHandleLike, *, tenant: str | None = None,
                 on_stop: Callable[[WalRedoProcess], object] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        self._handle = handle
        self._sock = handle.socket
        if self._sock.gettimeout() != 0.0:  # a ChildHandle's already is: skip the ioctl
            self._sock.setblocking(False)
        self.pid: int = handle.pid
        # Named in every log line: the handle's own tenant when none is given (a ChildHandle has one).
        self.tenant: str | None = tenant if tenant is not None else getattr(handle, "tenant", None)
        self.started_at = time.time()
        self.last_request_at: float | None = None
        self.requests_served = 0
        self.exit_status: int | None = None
        self.broke_first = False
        self._on_stop = on_stop
        self._state = ProcessState.RUNNING
        # Why the stream broke (or ProcessClosed): raised to every later caller.
        self._error: ProcessBroken | None = None
        self._decoder = protocol.ResponseDecoder()
        self._pending: deque[_Slot] = deque()
        self._next_id = 0
        # Bytes the socket did not take yet (whole frames or a frame's tail), written when it is writable.
        self._wbuf: deque[memoryview] = deque()
        self._cork: list[bytes] = []
        self._flush_scheduled = False
        self._reap_task: asyncio.Task[None] | None = None
        self._loop.add_reader(self._sock.fileno(), self._on_readable)

    # ------------------------------------------------------------------ public API

    @property
    def state(self) -> ProcessState:
        return self._state

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def stats(self) -> ProcessStats:
        return ProcessStats(
            pid=self.pid,
            tenant=self.tenant,
            state=self._state,
            started_at=self.started_at,
            requests_served=self.requests_served,
            last_request_at=self.last_request_at,
            in_flight=len(self._pending),
            exit_status=self.exit_status,
            broke_first=self.broke_first,
        )

    async def ping(self) -> None:
        """Round-trip a ping through the child.

        Raises ``ProcessBroken`` (``ProcessClosed`` after ``close()``) if the stream is or becomes unusable.
        Cancellation: cancel-safe; the request stays queued and its pong is read and dropped, so the stream
        stays in sync. No timeout of its own: wrap it in ``asyncio.timeout``.
        """
        await self._request(_Kind.PING, protocol.encode_ping)

    async def redo(
        self,
        tag: Sequence[int],
        lsn: int,
        base_image: bytes | None,
        records: Sequence[tuple[int, bytes]],
        pg_version: int = SUPPORTED_PG_VERSION,
        *,
        wal_log_hints: bool = False,
    ) -> bytes:
        """Have the child apply ``records`` (``(end_lsn, raw XLogRecord)`` pairs) to ``base_image`` (or to
        nothing: the first record must then initialise the page) and return the 8192-byte page.
        ``wal_log_hints``: the cluster had data checksums or wal_log_hints on (changes Heap2 VISIBLE redo).

        Raises, before any I/O, ``TypeError`` or ``ValueError`` (``BadRedoRequest``, ``FrameTooLarge``) for
        invalid arguments, among them records not in ascending end-LSN order or ending after ``lsn``
        (``protocol.check_record_lsns``); ``RedoFailed(code, message)`` when the child refuses the request (a
        redo-engine error, unsupported pg_version, ...; deterministic, the process stays usable); ``ProcessBroken``
        (``ProcessClosed`` after ``close()``) when the stream is or becomes unusable (retry on a new process).
        Cancellation: cancel-safe; the request stays queued and its response is read and dropped. No
        timeout of its own: wrap it in ``asyncio.timeout`` and close the process if it fires.
        """
        request = protocol.RedoRequest(tag, lsn, base_image, records, pg_version, wal_log_hints=wal_log_hints)
        return await self.send_redo(request)

    async def send_redo(self, request: protocol.RedoRequest) -> bytes:
        """:meth:`redo` for a request already built (and so already checked), e.g. by a caller that checks
        its arguments before it has a process. Raises
        ``FrameTooLarge`` before any I/O, then as :meth:`redo`. Cancellation: as :meth:`redo`.
        """
        page = await self._request(_Kind.REDO, request.frame)
        assert page is not None  # a redo slot is only ever resolved with a Page's bytes (_dispatch)
        return page

    def close(self) -> None:
        """Stop the process now, without waiting: fail pending requests with ``ProcessClosed``, close the
        socket, SIGKILL the child and start reaping it in the background. Idempotent; never raises."""
        if self._state is ProcessState.CLOSED:
            return
        self._shutdown(ProcessClosed(f"walredo process {self.pid} was closed"), ProcessState.CLOSED)

    def expire(self, sent_before: float, make_error: Callable[[], BaseException]) -> int:
        """Time out requests sent before ``sent_before`` (``time.monotonic()``), if there are any.

        Each such request still waiting fails with its own ``make_error()``, then the process is closed as
        by :meth:`close` (younger requests get ``ProcessClosed``, which a caller may retry elsewhere).
        Returns how many requests timed out; 0 means nothing was done. Responses are in order, so checking
        the oldest request is enough: one timer for the whole process instead of one per request.
        """
        if self._state is not ProcessState.RUNNING or not self._pending:
            return 0
        if self._pending[0].sent_at >= sent_before:
            return 0
        expired = 0
        for slot in self._pending:
            if slot.sent_at >= sent_before:
                break
            if not slot.future.done():
                slot.future.set_exception(make_error())
            expired += 1
        self.close()
        return expired

    async def aclose(self) -> int | None:
        """:meth:`close`, then wait until the child is reaped; returns its exit status (``None`` if the
        handle could not report it). Idempotent and safe to call concurrently; never raises except
        ``CancelledError``.

        Cancellation: the kill has already happened and the reap is shielded: it completes in the
        background and a later ``aclose()`` returns its result.
        """
        self.close()
        if self._reap_task is None:  # closed after its loop ended: nothing can reap here
            return self.exit_status
        await asyncio.shield(self._reap_task)
        return self.exit_status

    async def __aenter__(self) -> WalRedoProcess:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"<WalRedoProcess pid={self.pid} tenant={self.tenant} {self._state.value} in_flight={self.in_flight}>"

    # ------------------------------------------------------------------ requests

    async def _request(self, kind: _Kind, frame_for: Callable[[int], bytes]) -> bytes | None:
        # The result is None for a ping and the page for a redo (see _dispatch).
        rid = self._next_id
        self._next_id = (rid + 1) & 0xFFFF_FFFF_FFFF_FFFF
        # Encoding validates a redo's arguments (TypeError/ValueError) before the slot is queued, so a bad
        # argument leaves no trace on the stream; the id it consumed is simply never used.
        frame = frame_for(rid)
        if self._state is not ProcessState.RUNNING:
            raise self._fresh_error()
        fut: asyncio.Future[bytes | None] = self._loop.create_future()
        # Queue the slot and write the frame with no await in between: wire order == slot order.
        self._pending.append(_Slot(kind, rid, fut, time.monotonic()))
        self.last_request_at = time.time()
        self._write(frame)
        # If the caller is cancelled here, awaiting fut cancels it; the slot stays and the response is
        # dropped when it arrives (see _dispatch).
        return await fut

    def _write(self, frame: bytes) -> None:
        # Corking: frames written in one loop iteration (e.g. 64 callers woken by one batch of responses)
        # go out in one send on the next iteration, and reach the child in one recv.
        self._cork.append(frame)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._state is not ProcessState.RUNNING or not self._cork:
            return
        frame = self._cork[0] if len(self._cork) == 1 else b"".join(self._cork)
        self._cork.clear()
        if not self._wbuf:
            try:
                # MSG_NOSIGNAL: a host program that restored SIGPIPE's default must not die of a dead child.
                n = self._sock.send(frame, socket.MSG_NOSIGNAL)
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError as e:
                self._break(f"write to the child failed: {e!r}")
                return
            if n == len(frame):
                return
            self._loop.add_writer(self._sock.fileno(), self._on_writable)
            self._wbuf.append(memoryview(frame)[n:])
        else:
            self._wbuf.append(memoryview(frame))

    def _on_writable(self) -> None:
        while self._wbuf:
            chunk = self._wbuf[0]
            try:
                n = self._sock.send(chunk, socket.MSG_NOSIGNAL)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                self._break(f"write to the child failed: {e!r}")
                return
            if n < len(chunk):
                self._wbuf[0] = chunk[n:]
                return
            self._wbuf.popleft()
        self._loop.remove_writer(self._sock.fileno())

    # ------------------------------------------------------------------ responses

    def _on_readable(self) -> None:
        # A reusable receive buffer: recv(n) would allocate (and shrink) a fresh n-byte object per call.
        rbuf, rview = _recv_buffer()
        try:
            n = self._sock.recv_into(rbuf)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self._break(f"read from the child failed: {e!r}")
            return
        if not n:
            self._break("the child closed its socket (EOF): it exited or was killed")
            return
        self._decoder.receive_data(rview[:n])  # copied: the buffer is free for the next reader
        try:
            for event in self._decoder:
                if not self._dispatch(event):  # type: ignore[arg-type]
                    return
        except protocol.ProtocolError as e:
            self._break(f"the child sent a malformed frame: {e}")

    def _dispatch(self, event: protocol.Response) -> bool:
        """Resolve the oldest slot with ``event``. Returns False if the stream broke."""
        if isinstance(event, protocol.Error) and event.code == "protocol":
            # The child could not decode something we sent and closes: nothing more will come.
            self._break(f"the child reported a protocol error: {event.message}")
            return False
        if not self._pending:
            self._break(f"the child sent a response with no request in flight: {event!r:.100}")
            return False
        slot = self._pending[0]
        # `too-large` is the one response without an id: the child refused the frame unread (its memory
        # limit), so it never saw the id; responses are in order, so it answers this slot.
        refused_unread = (event.id is None and slot.kind is _Kind.REDO and isinstance(event, protocol.Error)
                          and event.code == "too-large")
        if event.id != slot.id and not refused_unread:
            self._break(f"response id {event.id} does not match request id {slot.id}")
            return False
        if slot.kind is _Kind.PING:
            ok = isinstance(event, protocol.Pong)
        else:
            ok = isinstance(event, (protocol.Page, protocol.Error))
        if not ok:
            self._break(f"the child answered a {slot.kind.value} request with {type(event).__name__}")
            return False
        self._pending.popleft()
        self.requests_served += 1
        if slot.future.done():  # its caller was cancelled: drop the response
            return True
        if isinstance(event, protocol.Pong):
            slot.future.set_result(None)
        elif isinstance(event, protocol.Page):
            slot.future.set_result(event.page)
        else:
            slot.future.set_exception(RedoFailed(event.code, event.message))
        return True

    # ------------------------------------------------------------------ teardown

    def _break(self, reason: str) -> None:
        if self._state is not ProcessState.RUNNING:
            return
        self.broke_first = True
        log.warning("tenant %s pid %d: broke: %s", self.tenant, self.pid, reason)
        self._shutdown(ProcessBroken(f"walredo process {self.pid}: {reason}"), ProcessState.BROKEN)

    def _shutdown(self, error: ProcessBroken, state: ProcessState) -> None:
        """Enter ``state`` (BROKEN or CLOSED) and do every synchronous part of stopping: fail pending
        requests, drop the socket, kill the child, start the reap. Each part runs at most once."""
        first = self._state is ProcessState.RUNNING
        if first and state is ProcessState.CLOSED and self._child_hung_up():
            self.broke_first = True  # it died before our kill: its EOF was waiting, unread
        self._state = state
        self._error = error
        while self._pending:
            fut = self._pending.popleft().future
            if not fut.done():
                fut.set_exception(self._fresh_error())
        if not first:
            return  # BROKEN → CLOSED: the rest was done when it broke
        fd = self._sock.fileno()
        loop_open = not self._loop.is_closed()  # close() after the loop ended still kills the child
        if fd >= 0 and loop_open:
            self._loop.remove_reader(fd)
            self._loop.remove_writer(fd)
        self._wbuf.clear()
        self._cork.clear()
        try:
            # SIGKILL also ends a stopped (SIGSTOP) or wedged child, which EOF alone would not. Killing
            # before closing the socket makes the exit status say "killed", not a race with EOF.
            self._handle.kill(signal.SIGKILL)
        except ProcessLookupError:
            pass  # already gone
        except Exception as e:  # the handle's own error (e.g. already reaped): the child is gone
            log.debug("tenant %s pid %d: kill: %r", self.tenant, self.pid, e)
        self._sock.close()
        if loop_open:
            self._reap_task = self._loop.create_task(self._reap(), name=f"walredo-reap-{self.pid}")
        if self._on_stop is not None:
            on_stop, self._on_stop = self._on_stop, None
            try:
                on_stop(self)
            except Exception:
                log.exception("tenant %s pid %d: on_stop failed", self.tenant, self.pid)

    def _child_hung_up(self) -> bool:
        """Whether the child already closed its end of the socket (it exited, or someone else killed it),
        judged without blocking before this side kills it. What it sent meanwhile is read and dropped: the
        process is being closed, no request will get it. Bounded: a child still writing counts as alive."""
        rbuf, _view = _recv_buffer()
        for _ in range(16):
            try:
                n = self._sock.recv_into(rbuf, 0, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return False
            except OSError:
                return True  # reset (it died with our data unread) or the socket is unusable
            if not n:
                return True
        return False

    def _fresh_error(self) -> ProcessBroken:
        # One instance per caller: re-raising a shared instance prepends each raiser's frames to its
        # traceback, so one exception would keep every failed caller's frames (and their arguments) alive.
        assert self._error is not None
        return type(self._error)(*self._error.args)

    async def _reap(self) -> None:
        try:
            self.exit_status = await self._handle.wait()
        except TemplateUnavailable as e:
            # Expected after a template loss: the child is gone (or the client closed), its status with it.
            log.debug("tenant %s pid %d: exit status unknown: %s", self.tenant, self.pid, e)
        except Exception:
            log.exception("tenant %s pid %d: could not reap", self.tenant, self.pid)


__all__ = ["ProcessState", "ProcessStats", "WalRedoProcess"]
