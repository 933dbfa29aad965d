"""Benchmark 3: coalescing — 1,000 concurrent first requests for one cold tenant.

All requests are issued at once through ``WalRedoManager`` for a tenant with no process yet; exactly one
spawn must happen, counted from the template's side (``TemplateClient.stats()["spawns"]`` before and
after). Reported per round: spawns, and the latency of the first and of the last reply (from the moment
the requests were issued). Rounds use ``ping`` and, when the WAL capture is there, the ``short`` redo.

Run: ``scripts/bench_coalescing [--quick] [--requests N] [--rounds R]``
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from typing import Any

from benchmarks import runner
from benchmarks.report import Table
from benchmarks.runner import log
from benchmarks.spawn_methods import manager_class, template_client_class
from benchmarks.stats import fmt, summarize
from benchmarks.wal_inputs import load_inputs


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--requests", type=int, default=None, help="concurrent first requests (default 1000; quick 100)")
    p.add_argument("--rounds", type=int, default=None, help="cold tenants per input (default 5; quick 2)")


async def run(args: argparse.Namespace) -> tuple[dict[str, Any], list[Table]]:
    requests = args.requests or (100 if args.quick else 1000)
    rounds = args.rounds or (2 if args.quick else 5)
    inputs, source = load_inputs()
    notes = [f"WAL inputs: {source}"]
    client = await template_client_class().launch()
    rows: list[dict[str, Any]] = []
    try:
        async with manager_class()(template=client, request_timeout=60.0) as mgr:
            kinds: dict[str, Any] = {"ping": lambda tenant: mgr.ping(tenant)}
            short = inputs.get("short")
            if short is not None:
                kinds["short redo"] = lambda tenant: mgr.request_redo(
                    tenant, short.tag, short.lsn, short.base_image, short.records, pg_version=15)
            else:
                notes.append("short redo: not measured (no WAL capture)")
            for kind, call in kinds.items():
                for r in range(rounds):
                    tenant = uuid.uuid4().hex
                    before = (await client.stats())["spawns"]
                    t0 = time.perf_counter()

                    async def one(call=call, tenant=tenant, t0=t0) -> float:
                        await call(tenant)
                        return time.perf_counter() - t0

                    latencies = await asyncio.gather(*(one() for _ in range(requests)))
                    spawns = (await client.stats())["spawns"] - before
                    s = summarize(latencies)
                    rows.append({"input": kind, "round": r, "requests": requests, "spawns": spawns,
                                 "first_ms": s["min"], "p50_ms": s["p50"], "last_ms": s["max"]})
                    log(f"coalescing: {kind} round {r}: {spawns} spawn(s), first {s['min']:.2f} ms, "
                        f"last {s['max']:.2f} ms")
    finally:
        await client.aclose()

    table = Table(
        f"Coalescing: {requests:,} concurrent first requests for one cold tenant",
        ["input", "round", "spawns (template's count)", "first reply ms", "median reply ms", "last reply ms"],
        note="Spawns are counted by the template (`TemplateClient.stats()`), before and after each round; "
             "latencies are from issuing all requests to each reply.",
    )
    for row in rows:
        table.add(row["input"], row["round"], row["spawns"], fmt(row["first_ms"]), fmt(row["p50_ms"]),
                  fmt(row["last_ms"]))
    return {"rows": rows, "notes": notes, "all_single_spawn": all(r["spawns"] == 1 for r in rows)}, [table]


def main(argv: list[str] | None = None) -> int:
    return runner.main("coalescing", __doc__.splitlines()[0], add_arguments, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
