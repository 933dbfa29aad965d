"""Closed-loop load: N concurrent clients, each sending its next request when the previous one returns.

This is how Neon's ``bench_walredo`` drives one walredo process (N tasks sharing it); we report each
request's latency (p50/p99) and the aggregate throughput.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from benchmarks.stats import summarize


async def closed_loop(call: Callable[[], Awaitable[object]], clients: int, seconds: float,
                      min_requests: int = 1) -> dict[str, Any]:
    """Run ``clients`` loops of ``await call()`` for ``seconds`` (each client does at least
    ``min_requests``). Returns requests, elapsed seconds, throughput (req/s) and latency in µs.

    The first exception from ``call`` cancels the other clients and propagates.
    """
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        done = 0
        perf = time.perf_counter
        while done < min_requests or perf() < deadline:
            t0 = perf()
            await call()
            latencies.append(perf() - t0)
            done += 1

    start = time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        for _ in range(clients):
            tg.create_task(client())
    elapsed = time.perf_counter() - start
    return {
        "clients": clients,
        "requests": len(latencies),
        "seconds": elapsed,
        "throughput_rps": len(latencies) / elapsed if elapsed > 0 else 0.0,
        "latency_us": summarize(latencies, scale=1e6),
    }
