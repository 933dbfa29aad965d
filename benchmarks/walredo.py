"""Benchmark 4: bench_walredo, like Neon's — ping, short and medium redo on one tenant, N = 1 … 64 clients.

Each point is a closed loop (:mod:`benchmarks.closed_loop`) of N clients on one tenant's walredo
process through the library API (``WalRedoManager.ping`` / ``request_redo``), for ``--seconds``. The raw
asyncio unix-socket echo (:mod:`benchmarks.echo_floor`) is measured at each N in the same run, interleaved
with the others, as the floor. ``short`` (2 records) and ``medium`` (~200 records) come from the real
PostgreSQL 15 WAL capture in ``tests/data/`` (:mod:`benchmarks.wal_inputs`; its consistency-check images
are cut out, as production WAL has none, unless ``--keep-check-images``); every redo answer is checked to be
a page once before its point is timed.

Run: ``scripts/bench_walredo [--quick] [--clients 1,2,4,...] [--seconds S] [--inputs ping,short,medium]``
"""

from __future__ import annotations

import argparse
import contextlib
import uuid
from typing import Any

from benchmarks import runner
from benchmarks.closed_loop import closed_loop
from benchmarks.echo_floor import EchoServer
from benchmarks.profiling import PySpy, py_spy_path, top_frames
from benchmarks.report import Table, plot_lines
from benchmarks.runner import log
from benchmarks.stats import fmt
from benchmarks.wal_inputs import load_inputs


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--clients", default=None, help="client counts (default 1,2,4,8,16,32,64; quick 1,4)")
    p.add_argument("--seconds", type=float, default=None, help="seconds per point (default 1.0; quick 0.1)")
    p.add_argument("--inputs", default="process-ping,ping,short,medium",
                   help="subset of process-ping,ping,short,medium (process-ping: WalRedoProcess.ping on its own "
                        "child, no manager: where the manager's share of the time shows)")
    p.add_argument("--medium-records", type=int, default=200, help="records in the medium redo")
    p.add_argument("--profile", action="store_true",
                   help="after the measurements, py-spy the parent and the child: ping at the most clients, "
                        "medium at 1")
    p.add_argument("--keep-check-images", action="store_true",
                   help="send the records as captured, with their wal_consistency_checking images")


async def _profile(args: argparse.Namespace, mgr: Any, tenant: str, calls: dict[str, Any],
                   clients: list[int]) -> list[Table]:
    """Ping at the largest client count (throughput: the parent's per-request CPU) and 1-client medium (the
    child's redo), not in the numbers above, under py-spy on this parent and the child."""
    if py_spy_path() is None:
        log("walredo: --profile needs py-spy (the bench extra); skipped")
        return []
    import os

    child_pid = mgr.processes()[tenant].pid
    tables = []
    for name, n in (("ping", max(clients)), ("medium", 1)):
        if name not in calls:
            continue
        out_p = args.out / f"profile-walredo-{name}-{n}-parent.txt"
        out_c = args.out / f"profile-walredo-{name}-{n}-child.txt"
        log(f"walredo: profiling {name} at {n} client(s) with py-spy")
        async with PySpy(os.getpid(), out_p) as spy_p, PySpy(child_pid, out_c) as spy_c:
            await closed_loop(calls[name], n, max(2.0, args.seconds or 0))
        if spy_p.ok:
            tables.append(top_frames(out_p, f"Where the parent's time goes: {name}, {n} client(s) (py-spy)"))
        if spy_c.ok:
            tables.append(top_frames(out_c, f"Where the child's time goes: {name}, {n} client(s) (py-spy)"))
    return tables


async def run(args: argparse.Namespace) -> tuple[dict[str, Any], list[Table]]:
    from benchmarks.spawn_methods import manager_class

    WalRedoManager = manager_class()
    clients = [int(c) for c in (args.clients or ("1,4" if args.quick else "1,2,4,8,16,32,64")).split(",")]
    seconds = args.seconds or (0.1 if args.quick else 1.0)
    wanted = [i.strip() for i in args.inputs.split(",") if i.strip()]
    redo_inputs, source = load_inputs(medium_records=args.medium_records, keep_check_images=args.keep_check_images)
    notes = [f"WAL inputs: {source}"]
    for name in ("short", "medium"):
        if name in wanted and name not in redo_inputs:
            wanted.remove(name)
            notes.append(f"{name}: not measured (no suitable page in {source})")
    for inp in redo_inputs.values():
        notes.append(inp.describe())
    for n in notes:
        log(f"walredo: {n}")

    rows: list[dict[str, Any]] = []
    profile_tables: list[Table] = []
    echo = await EchoServer.start()
    try:
        # The exit stack closes the bare process (kill + reap) before the manager stops the template.
        async with WalRedoManager(request_timeout=60.0) as mgr, contextlib.AsyncExitStack() as stack:
            tenant = uuid.uuid4().hex
            await mgr.ping(tenant)  # the spawn is not part of any point
            calls = {}
            if "process-ping" in wanted:
                from forkserver.process import WalRedoProcess

                bare = WalRedoProcess(await mgr.template.spawn(uuid.uuid4().hex))
                stack.push_async_callback(bare.aclose)
                calls["process-ping"] = bare.ping
            calls["ping"] = lambda: mgr.ping(tenant)
            for name in ("short", "medium"):
                if name not in wanted:
                    continue
                inp = redo_inputs[name]

                def call(inp=inp):
                    return mgr.request_redo(tenant, inp.tag, inp.lsn, inp.base_image, inp.records, pg_version=15)

                try:
                    page = await call()
                    if len(page) != 8192:
                        raise ValueError(f"answer of {len(page)} bytes")
                except Exception as e:  # an engine that cannot redo this input yet: report, don't time
                    notes.append(f"{name}: not measured, the redo failed: {type(e).__name__}: {e}")
                    log(f"walredo: {notes[-1]}")
                    continue
                calls[name] = call
            await closed_loop(echo.ping, 1, min(0.2, seconds))  # warm both paths up
            for call in calls.values():
                await closed_loop(call, 1, min(0.2, seconds))
            for n in clients:
                log(f"walredo: {n} client(s)")
                rows.append({"input": "echo floor", **await closed_loop(echo.ping, n, seconds)})
                for name in wanted:
                    if name in calls:
                        rows.append({"input": name, **await closed_loop(calls[name], n, seconds)})
            if args.profile:
                profile_tables = await _profile(args, mgr, tenant, calls, clients)
    finally:
        await echo.aclose()

    table = Table(
        "bench_walredo: one tenant, N concurrent clients (latency per request in µs)",
        ["input", "clients", "p50 µs", "p99 µs", "req/s", "p50 vs echo"],
        note=f"Closed loop, {seconds:g} s per point, through `WalRedoManager` (ping / request_redo). "
             "'echo floor' is a raw asyncio unix-socket echo of the same ping frame, measured in the same run; "
             "'process-ping' is `WalRedoProcess.ping` on a child of its own, without the manager.",
    )
    echo_p50 = {r["clients"]: r["latency_us"]["p50"] for r in rows if r["input"] == "echo floor"}
    order = ["echo floor", "process-ping", "ping", "short", "medium"]
    for r in sorted(rows, key=lambda r: (order.index(r["input"]), r["clients"])):
        lat = r["latency_us"]
        base = echo_p50.get(r["clients"])
        ratio = f"{lat['p50'] / base:.2f}×" if base and r["input"] != "echo floor" else "–"
        table.add(r["input"], r["clients"], fmt(lat["p50"], 1), fmt(lat["p99"], 1), f"{r['throughput_rps']:,.0f}",
                  ratio)

    plots = []
    if not args.no_plots:
        args.out.mkdir(parents=True, exist_ok=True)
        names = [n for n in order if any(r["input"] == n for r in rows)]
        tput = {n: [next(r["throughput_rps"] for r in rows if r["input"] == n and r["clients"] == c) for c in clients]
                for n in names}
        p50 = {n: [next(r["latency_us"]["p50"] for r in rows if r["input"] == n and r["clients"] == c)
                   for c in clients] for n in names}
        for p in (
            plot_lines(args.out / "walredo_throughput.png", "bench_walredo throughput", "clients", "req/s",
                       clients, tput, logx=True, logy=True),
            plot_lines(args.out / "walredo_latency.png", "bench_walredo p50 latency", "clients", "µs",
                       clients, p50, logx=True, logy=True),
        ):
            if p:
                plots.append(str(p))
    return {"rows": rows, "notes": notes, "plots": plots}, [table, *profile_tables]


def main(argv: list[str] | None = None) -> int:
    return runner.main("walredo", __doc__.splitlines()[0], add_arguments, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
