"""An async once-cell: at most one initialization in flight, coalesced waiters, compare-and-take.

This is the primitive the parent uses to hold one walredo process per tenant (after Neon's
``heavier_once_cell``). Its jobs:

1. Coalescing: when many callers ask for a cold tenant at once, exactly one factory call starts the process
   and the others wait for it asynchronously.
2. Replacement without ABA: a caller that saw *its* process die removes it with ``take_if(process)``, which
   never evicts a newer, healthy process that someone else already put there.

Lifecycle (``CellState``)::

    EMPTY ──get_or_init──▶ INITIALIZING ──factory returns──▶ SET ──take/take_if──▶ EMPTY
      ▲                        │  factory raises / cancelled                 │
      └────────────────────────┘                                             │
    any state ──close()──▶ CLOSED (terminal; the value, present or late, goes to ``dispose`` once)
    EMPTY, no waiter ──close_if_empty()──▶ CLOSED (synchronous: an owner forgets an idle cell)

Design choices, each behind a numbered test in ``tests/test_oncecell.py``:

- The attempt runs in a task the cell owns (``self._attempt``, a strong reference, so it is not garbage
  collected mid-flight). Callers only *wait* for it, each on a private future the attempt's end resolves:
  a caller's cancellation or timeout ends that caller's wait only.
- The attempt task updates the cell itself before it completes, so by the time any waiter resumes, the cell
  already holds the value, or is empty again after a failure. A waiter that retries in its ``except`` block
  therefore starts a fresh attempt instead of rejoining the failed one.
- A waiter re-checks that the attempt's value is still the cell's current value before returning it; if it
  was taken in the meantime, the waiter starts over (Neon #6722).
"""

from __future__ import annotations

import asyncio
import enum
import inspect
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Generic, TypeVar

from .errors import CellClosed, InitAborted

T = TypeVar("T")


class CellState(enum.Enum):
    EMPTY = "empty"
    INITIALIZING = "initializing"
    SET = "set"
    CLOSED = "closed"


_NOTHING = object()


class _Failed:
    """The outcome of an attempt whose factory raised: delivered to every waiter of that attempt."""

    __slots__ = ("exc", "tb")

    def __init__(self, exc: Exception, tb: TracebackType | None) -> None:
        self.exc = exc
        self.tb = tb


class OnceCell(Generic[T]):
    """Holds at most one value of type ``T``, created at most once per generation by ``get_or_init``.

    ``dispose`` (optional) receives each value the cell still owns when it is closed: the stored value at
    ``close()``, and the value of an attempt that finishes after ``close()``. It may be a plain callable or
    return an awaitable, which is awaited. Values removed with ``take``/``take_if`` belong to the caller and
    are never disposed by the cell.
    """

    def __init__(self, dispose: Callable[[T], object] | None = None) -> None:
        self._dispose = dispose
        self._value: object = _NOTHING
        # The in-flight attempt. Held strongly: asyncio keeps only weak references to tasks. Its result is
        # the value or a _Failed record (see _run_attempt).
        self._attempt: asyncio.Task[T | _Failed] | None = None
        self._closed = False
        # One private future per waiter blocked on the attempt; all are resolved when the attempt ends, and
        # by close() so that waiters wake up with CellClosed at once.
        self._wakeups: set[asyncio.Future[None]] = set()
        self._waiters = 0
        self._generation = 0
        # close()'s dispose of the stored value, when ``dispose`` is async. A task the cell holds, so that
        # cancelling close() does not cancel it: the value is already out of the cell and nobody else would
        # dispose it. Later close() calls wait for it.
        self._disposal: asyncio.Future[object] | None = None

    # ------------------------------------------------------------------ introspection

    @property
    def state(self) -> CellState:
        if self._closed:
            return CellState.CLOSED
        if self._attempt is not None:
            return CellState.INITIALIZING
        if self._value is not _NOTHING:
            return CellState.SET
        return CellState.EMPTY

    @property
    def initializing(self) -> bool:
        """True while an attempt is in flight (including one still running after ``close()``)."""
        return self._attempt is not None

    @property
    def waiters(self) -> int:
        """The number of ``get_or_init`` callers currently waiting on an attempt."""
        return self._waiters

    @property
    def generation(self) -> int:
        """How many attempts have been started so far (one factory call each)."""
        return self._generation

    def get(self) -> T | None:
        """Return the current value, or None while empty, initializing or closed. Never waits."""
        value = self._value
        return None if value is _NOTHING else value  # type: ignore[return-value]

    # ------------------------------------------------------------------ removal

    def take(self) -> T | None:
        """Remove and return the current value; the caller now owns it. None if there is none.

        An attempt in flight is not affected: it fills the cell when it finishes.
        """
        value = self._value
        self._value = _NOTHING
        return None if value is _NOTHING else value  # type: ignore[return-value]

    def take_if(self, value: T) -> bool:
        """Remove the current value only if it *is* ``value`` (identity). Returns whether it did.

        A caller holding a stale value (say, a process that died and was already replaced by another caller)
        can never evict the fresh replacement.
        """
        if self._value is not _NOTHING and self._value is value:
            self._value = _NOTHING
            return True
        return False

    def close_if_empty(self) -> bool:
        """Close the cell at once if it is idle: no value, no attempt in flight, no waiter still to resume.
        Returns whether this call closed it (False if it holds or is making a value, or was closed already).

        Synchronous, so an owner can drop an idle cell from its map and close it in one step, with no await in
        between: a caller still holding the dropped cell gets ``CellClosed`` from ``get_or_init`` (and goes
        back to the map), and never starts an attempt in a cell nobody owns. There is nothing to dispose.
        """
        if self._closed or self._attempt is not None or self._value is not _NOTHING or self._waiters:
            return False
        self._closed = True
        return True

    # ------------------------------------------------------------------ initialization

    async def get_or_init(self, factory: Callable[[], Awaitable[T]]) -> T:
        """Return the current value, starting ``factory()`` if the cell is empty, and waiting for it.

        Exactly one factory call is made per generation whatever the number of concurrent callers; the
        others wait for that attempt and get the same object.

        Errors:
            - the factory's exception, the same object for every caller that waited on that attempt; the cell
              is already empty again when it is raised;
            - ``InitAborted`` if the attempt ended cancelled (the factory raised ``CancelledError`` itself);
            - ``CellClosed`` if the cell is closed, before or while waiting; the factory is not called;
            - ``RuntimeError`` if called from inside this cell's own factory (it would wait on itself).

        Cancellation: cancel-safe. Cancelling the caller (or an ``asyncio.timeout`` around it) ends only this
        caller's wait and re-raises ``CancelledError`` in it; the attempt goes on in the cell's own task, and
        its value is stored even if every caller has gone away. The waiter count is restored.
        """
        while True:
            if self._closed:
                raise CellClosed("once-cell is closed")
            if self._value is not _NOTHING:
                return self._value  # type: ignore[return-value]
            attempt = self._attempt
            if attempt is None:
                attempt = self._start_attempt(factory)
            elif attempt is asyncio.current_task():
                raise RuntimeError("get_or_init called from inside this cell's own factory")
            while not (attempt.done() or self._closed):
                # Wake-ups are per cell, not per attempt: one from an earlier attempt ending is spurious.
                await self._wait_for()
            if self._closed:
                raise CellClosed("once-cell was closed while waiting")
            if attempt.cancelled():
                raise InitAborted("the initialization attempt was cancelled")
            outcome = attempt.result()
            del attempt
            if isinstance(outcome, _Failed):
                exc, tb = outcome.exc, outcome.tb
                del outcome
                try:
                    # Every waiter raises from the attempt's own traceback, so the traceback does not grow
                    # by one chain of waiter frames per waiter.
                    raise exc.with_traceback(tb)
                finally:
                    # Break the frame -> exception -> traceback -> frame cycle: nothing retained.
                    del exc, tb
            if self._value is outcome:
                return outcome
            # Taken (or replaced) between the attempt finishing and this waiter running: start over rather
            # than hand out a value the cell no longer holds.
            del outcome

    def _start_attempt(self, factory: Callable[[], Awaitable[T]]) -> asyncio.Task[T | _Failed]:
        self._generation += 1
        attempt = asyncio.get_running_loop().create_task(
            self._run_attempt(factory), name=f"oncecell-attempt-{self._generation}"
        )
        self._attempt = attempt
        attempt.add_done_callback(self._wake_all)
        return attempt

    async def _run_attempt(self, factory: Callable[[], Awaitable[T]]) -> T | _Failed:
        # The task's result is the value or a _Failed record, never a raised Exception: waiters re-raise it
        # themselves, and asyncio does not log "exception never retrieved" when nobody was left waiting.
        # CancelledError (and KeyboardInterrupt/SystemExit) propagate: the task ends cancelled/failed.
        try:
            value = await factory()
        except Exception as exc:
            self._attempt = None  # before any waiter resumes: the cell is empty again
            return _Failed(exc, exc.__traceback__)
        except BaseException:
            self._attempt = None
            raise
        if self._closed:
            # Nobody can receive it any more; the cell still owns it, so it is disposed exactly once. The
            # attempt stays in flight until that is done, so every close() call waits for the dispose.
            try:
                await self._dispose_value(value)
            finally:
                self._attempt = None
        else:
            self._attempt = None
            self._value = value
        return value

    async def _wait_for(self) -> None:
        # Each waiter awaits a private future, woken when the attempt ends (_wake_all, a done callback of
        # the attempt) or when the cell closes. Cancelling a waiter cancels only its own future, never the
        # attempt. (asyncio.wait would add and then remove a done callback on the shared attempt per waiter:
        # quadratic in the number of waiters, ~100 ms for 1,000 coalesced callers.)
        waiter = asyncio.get_running_loop().create_future()
        self._wakeups.add(waiter)
        self._waiters += 1
        try:
            await waiter
        finally:
            self._waiters -= 1
            self._wakeups.discard(waiter)

    def _wake_all(self, _attempt: object = None) -> None:
        wakeups, self._wakeups = self._wakeups, set()
        for waiter in wakeups:
            if not waiter.done():
                waiter.set_result(None)

    # ------------------------------------------------------------------ close

    async def close(self, *, cancel_attempt: bool = False) -> None:
        """Close the cell for good. Idempotent.

        Waiters get ``CellClosed`` at once; later calls of ``get_or_init`` raise ``CellClosed`` without calling
        the factory. The stored value is passed to ``dispose``; an attempt still in flight is awaited and its
        value, if any, is disposed too (with ``cancel_attempt=True`` the attempt is cancelled first). Each
        value is disposed exactly once.

        Errors: an exception raised by ``dispose`` propagates (the cell is closed regardless).

        Cancellation: the cell is closed as soon as this is called; cancelling the call only stops waiting
        for an in-flight attempt or a pending (async) dispose: that dispose goes on in a task the cell holds
        (a later ``close()`` waits for it), and the attempt still disposes its value when it ends.
        """
        if not self._closed:
            self._closed = True
            self._wake_all()
            value, self._value = self._value, _NOTHING
            if value is not _NOTHING and self._dispose is not None:
                result = self._dispose(value)  # type: ignore[arg-type]
                del value
                if inspect.isawaitable(result):
                    self._disposal = asyncio.ensure_future(result)
        if self._disposal is not None:
            await asyncio.shield(self._disposal)
        attempt = self._attempt
        if attempt is not None:
            if cancel_attempt:
                attempt.cancel()
            await asyncio.wait((attempt,))
            # The attempt disposed its late value itself; if that dispose raised, report it here as promised.
            if not attempt.cancelled() and (exc := attempt.exception()) is not None:
                raise exc

    async def _dispose_value(self, value: T) -> None:
        if self._dispose is None:
            return
        result = self._dispose(value)
        if inspect.isawaitable(result):
            await result

    def __repr__(self) -> str:
        return f"<OnceCell {self.state.value} gen={self._generation} waiters={self._waiters}>"
