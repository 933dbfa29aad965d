"""A 1 ms ticker task that records how late the event loop wakes it: the loop-stall probe.

While the ticker runs, anything that blocks the loop thread (``fork()``, a ``Popen``, a blocking
``connect``/``recv``) shows up as a long gap between two ticks. The same probe run on an idle loop gives
the noise floor of this (shared, noisy) machine, to report next to it.
"""

from __future__ import annotations

import asyncio
import time

from benchmarks.stats import summarize


class LoopStallProbe:
    """Measure the gaps between ticks of a ``period``-second ticker while the ``async with`` body runs.

    ``gaps`` holds every interval between consecutive wake-ups (seconds, ≥ ``period``); ``summary()`` gives
    them in ms. ``cpu`` holds, per gap, the CPU time the loop thread used during it: a long gap with
    little CPU means the thread was off the CPU (descheduled on a busy machine, or asleep in a blocking
    call); a long gap with as much CPU means it was busy (running a callback, or in the kernel, as in
    ``fork()`` copying page tables). Entering starts the ticker task; leaving cancels it and waits for it
    (cancel-safe: leaving
    through an exception still stops the task).
    """

    def __init__(self, period: float = 0.001) -> None:
        self.period = period
        self.gaps: list[float] = []
        self.cpu: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        last = time.perf_counter()
        last_cpu = time.thread_time()
        while True:
            await asyncio.sleep(self.period)
            now = time.perf_counter()
            now_cpu = time.thread_time()
            self.gaps.append(now - last)
            self.cpu.append(now_cpu - last_cpu)
            last, last_cpu = now, now_cpu

    async def __aenter__(self) -> LoopStallProbe:
        self._task = asyncio.create_task(self._tick())
        # Let the ticker take its first timestamp before the measured work starts.
        await asyncio.sleep(0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass

    def summary(self) -> dict[str, float]:
        """Gap statistics in ms: n, min, p50, p90, p99, max, mean, and ``max_gap_cpu``: the loop thread's
        CPU time during the longest gap, and ``max_cpu``: the most CPU the thread used within any one gap
        (the longest the loop was kept busy, whatever the scheduler did)."""
        out = summarize(self.gaps)
        if self.gaps:
            i = max(range(len(self.gaps)), key=self.gaps.__getitem__)
            out["max_gap_cpu"] = self.cpu[i] * 1e3
            out["max_cpu"] = max(self.cpu) * 1e3
        return out


async def idle_floor(seconds: float, period: float = 0.001) -> dict[str, float]:
    """The probe on an otherwise idle loop for ``seconds``: the noise floor of this machine, in ms."""
    async with LoopStallProbe(period) as probe:
        await asyncio.sleep(seconds)
    return probe.summary()
