"""Benchmarks 1 and 2: cold spawn latency and the parent's loop stall during each spawn storm.

For each parent heap size (0, 1, 4 GiB touched) and each spawn method (:mod:`benchmarks.spawn_methods`):
``--spawns`` sequential spawns, each timed from the request to the child's first pong (the parent's
view of "ready"), then closed (EOF) and reaped before the next. A 1 ms ticker runs in the parent during
the whole storm (:mod:`benchmarks.loopstall`); the same ticker on the idle loop, measured for each heap
size in the same run, is the noise floor.

The template and the multiprocessing forkserver are started before the heap is allocated (as a service
would start them at boot), so neither inherits it; fresh interpreters are exec'd, and ``os.fork`` forks
the whole heap — that is what is compared.

The pool modes (:mod:`benchmarks.pool_spawn`) measure cold tenants through ``WalRedoManager``:
*sporadic* (10 ms apart: pool hits), *bursts* of ``--pool`` tenants at once, and a *storm* of ``--storm``
(≤ 2,000) tenants requested together, each next to a warm ping and a raw fork of a process the template's
size (:mod:`benchmarks.rawfork`), all measured in this run.

Run: ``scripts/bench_cold_spawn [--quick] [--modes methods,sporadic,burst,storm] [--pool N] [--storm N]
[--spawns N] [--heaps 0,1,4] [--methods template,fresh,mp,fork]``
"""

from __future__ import annotations

import argparse
import gc
import time
import uuid
from typing import Any

from benchmarks import pool_spawn, runner
from benchmarks.heap import touched_heap
from benchmarks.loopstall import LoopStallProbe, idle_floor
from benchmarks.pagefaults import fault_cost_us, minor_faults
from benchmarks.profiling import PySpy, py_spy_path, top_frames
from benchmarks.report import Table, plot_bars
from benchmarks.runner import log
from benchmarks.spawn_methods import (
    FreshInterpreterSpawn,
    MultiprocessingForkserverSpawn,
    OsForkSpawn,
    SpawnMethod,
    TemplateSpawn,
    template_available,
)
from benchmarks.stats import fmt, summarize

METHODS = {
    "template": TemplateSpawn,
    "fresh": FreshInterpreterSpawn,
    "mp": MultiprocessingForkserverSpawn,
    "fork": OsForkSpawn,
}
WARMUP = 3
FAULT_SAMPLES = 15
MODES = ("methods", "sporadic", "burst", "storm")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--spawns", type=int, default=None, help="spawns per method and heap (default 200; quick 20)")
    p.add_argument("--heaps", default=None, help="parent heap sizes in GiB, comma-separated (default 0,1,4)")
    p.add_argument("--methods", default="template,fresh,mp,fork", help="subset of: " + ",".join(METHODS))
    p.add_argument("--floor-seconds", type=float, default=None, help="idle ticker duration (default 1; quick 0.3)")
    p.add_argument("--modes", default=",".join(MODES),
                   help="subset of: methods (the spawn-method × heap matrix), sporadic, burst, storm")
    p.add_argument("--pool", type=int, default=None,
                   help="pre-forked children of the pool modes' template (via $WALREDO_TEMPLATE_POOL; default: "
                        "the template's)")
    p.add_argument("--sporadic", type=int, default=None, help="sporadic cold tenants (default 200; quick 30)")
    p.add_argument("--bursts", type=int, default=None, help="burst rounds of --pool tenants (default 30; quick 5)")
    p.add_argument("--burst-size", type=int, default=None,
                   help="cold tenants per burst (default: the pool size; larger: the rest fork on request)")
    p.add_argument("--storm", type=int, default=None,
                   help=f"cold tenants in the storm (default 2000; quick 200; capped at {pool_spawn.STORM_MAX})")
    p.add_argument("--raw-samples", type=int, default=None, help="raw fork samples (default 300; quick 50)")
    p.add_argument("--profile", action="store_true",
                   help="after the measurements, one more template storm under py-spy (template and parent)")


async def fault_samples(method: SpawnMethod, samples: int = FAULT_SAMPLES) -> dict[str, int | None]:
    """Minor faults of ``samples`` children (an untimed pass, so reading /proc does not touch the latencies):
    p50 when the spawn call returned and when the child answered its first ping."""
    at_return: list[int] = []
    at_ready: list[int] = []
    for _ in range(samples):
        child = await method.spawn(uuid.uuid4().hex)
        try:
            a = minor_faults(child.pid)
            await child.ping()
            at_ready.append(minor_faults(child.pid))
            at_return.append(a)
        except OSError:
            pass
        finally:
            await child.close()
    at_return.sort()
    at_ready.sort()
    return {"at_return": at_return[len(at_return) // 2] if at_return else None,
            "at_ready": at_ready[len(at_ready) // 2] if at_ready else None}


async def storm(method: SpawnMethod, spawns: int) -> tuple[list[float], list[float], LoopStallProbe]:
    """``spawns`` sequential spawn → first pong → close cycles under the loop-stall probe.

    Returns the ready latencies (request → first pong), the spawn-call latencies (request → the method
    returned a pid and socket; the rest of "ready" is the child coming up and answering) and the probe.
    """
    for _ in range(WARMUP):  # first spawns pay one-off costs (imports, page faults in the template)
        child = await method.spawn(uuid.uuid4().hex)
        try:
            await child.ping()
        finally:
            await child.close()
    latencies: list[float] = []
    returned: list[float] = []
    async with LoopStallProbe() as probe:
        for _ in range(spawns):
            tenant = uuid.uuid4().hex
            t0 = time.perf_counter()
            child = await method.spawn(tenant)
            t1 = time.perf_counter()
            try:
                await child.ping()
                latencies.append(time.perf_counter() - t0)
                returned.append(t1 - t0)
            finally:
                await child.close()
    return latencies, returned, probe


async def _profile(args: argparse.Namespace, methods: list[SpawnMethod], spawns: int) -> list[Table]:
    """One extra template storm (not in the numbers above) with py-spy on the template and on this parent."""
    tmpl = next((m for m in methods if isinstance(m, TemplateSpawn)), None)
    if tmpl is None or py_spy_path() is None:
        log("cold_spawn: --profile needs the template and py-spy (the bench extra); skipped")
        return []
    import os

    out_t = args.out / "profile-cold_spawn-template.txt"
    out_p = args.out / "profile-cold_spawn-parent.txt"
    log(f"cold_spawn: profiling {spawns} template spawns with py-spy")
    async with PySpy(tmpl.client.template_pid, out_t, native=True) as spy_t, PySpy(os.getpid(), out_p) as spy_p:
        await storm(tmpl, spawns)
    tables = []
    if spy_t.ok:
        tables.append(top_frames(out_t, "Where the template's time goes during a spawn storm (py-spy --native)"))
    if spy_p.ok:
        tables.append(top_frames(out_p, "Where the parent's time goes during a template spawn storm (py-spy)"))
    return tables


async def run(args: argparse.Namespace) -> tuple[dict[str, Any], list[Table]]:
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = set(modes) - set(MODES)
    if bad:
        raise SystemExit(f"unknown modes {sorted(bad)}; choose from {list(MODES)}")
    pool_data: dict[str, Any] = {}
    pool_tables: list[Table] = []
    if set(modes) & {"sporadic", "burst", "storm"}:
        pool_data, pool_tables = await run_pool_modes(args, modes)
    if "methods" not in modes:
        return {"rows": [], "pool_modes": pool_data}, pool_tables
    data, tables = await run_methods(args)
    data["pool_modes"] = pool_data
    return data, [*pool_tables, *tables]


async def run_pool_modes(args: argparse.Namespace, modes: list[str]) -> tuple[dict[str, Any], list[Table]]:
    """The pool modes through ``WalRedoManager``, each next to a warm ping and a raw fork of this run."""
    import sys

    q = args.quick
    sporadic_n = args.sporadic or (30 if q else 200)
    rounds = args.bursts or (5 if q else 30)
    storm_n, cut = pool_spawn.storm_cap(args.storm or (200 if q else 2000))
    raw_samples = args.raw_samples or (50 if q else 300)
    floor_seconds = args.floor_seconds or (0.3 if q else 1.0)
    data: dict[str, Any] = {"notes": [cut] if cut else []}
    async with pool_spawn.launched_template(args.pool) as client:
        # Without --pool the template's own default applies: read its size from the template itself.
        size = args.pool
        if size is None:
            size = int((await pool_spawn.template_stats(client)).get("pool_size", 1))
        st = await pool_spawn.wait_settled(client, size)
        pool = int(st.get("idle", size))
        data["pool"] = pool
        tmpl_mem = pool_spawn.memory_mib(client.template_pid)
        data["template_mem"] = tmpl_mem
        log(f"cold_spawn: pool modes, pool {pool}, template RSS {tmpl_mem['rss']:.1f} MiB")
        log(f"cold_spawn: raw fork of a {tmpl_mem['rss']:.1f} MiB process ({raw_samples} + storm of "
            f"{storm_n if 'storm' in modes else 0})")
        data["raw_fork"] = await pool_spawn.raw_fork(sys.executable, tmpl_mem["rss"], raw_samples,
                                                     storm_n if "storm" in modes else 0)
        if "sporadic" in modes:
            log(f"cold_spawn: {sporadic_n} sporadic cold tenants, 10 ms apart")
            data["sporadic"] = await pool_spawn.sporadic(client, pool, sporadic_n)
            log(f"cold_spawn: {sporadic_n} sporadic cold tenants, the template's request path pre-faulted")
            data["sporadic_prefaulted"] = await pool_spawn.sporadic(client, pool, sporadic_n, prefault=True)
            log(f"cold_spawn: {sporadic_n} sporadic pool hits split (TemplateClient.spawn, WalRedoProcess, pings)")
            data["hit_split"] = await pool_spawn.hit_split(client, pool, sporadic_n)
            log(f"cold_spawn: {sporadic_n} back-to-back cold tenants")
            data["back_to_back"] = await pool_spawn.back_to_back(client, pool, sporadic_n)
        if "burst" in modes:
            log(f"cold_spawn: {rounds} bursts of {max(1, args.burst_size or pool)} cold tenants")
            data["burst"] = await pool_spawn.burst(client, pool, rounds, size=args.burst_size)
        if "storm" in modes:
            log(f"cold_spawn: storm of {storm_n} cold tenants")
            data["storm"] = await pool_spawn.storm(client, pool, storm_n, floor_seconds)
    return data, pool_tables(data)


def pool_tables(d: dict[str, Any]) -> list[Table]:
    raw = d["raw_fork"]
    raw_ready = raw["ready_ms"]["p50"]
    tables = []
    t = Table(
        f"Cold tenants through WalRedoManager, pool {d['pool']} (ms; × = ratio to the warm ping of the same phase)",
        ["mode", "n", "warm ping p50", "p50", "p99", "max", "p50 × warm", "p50 × raw fork→ready",
         "child faults on the request path / at ready (p50)", "template faults per spawn (p50)"],
        note=f"Raw fork: a {raw['rss_mib']:.1f} MiB process (the template's RSS, same imports, gc.freeze) forks a "
             f"child that writes one byte to a pipe: fork→ready p50 {fmt(raw_ready, 3)} ms, fork+exit+reap p50 "
             f"{fmt(raw['cycle_ms']['p50'], 3)} ms. Warm ping: `mgr.ping` of a live tenant, p50 of 200, measured "
             "on the phase's manager right before it. Sporadic: one cold tenant every 10 ms (pool hits: the "
             "pool was full 10 ms before the request in the count shown); back to back: no pause. Faults on the "
             "path: the pool child's minor faults after its first pong minus those it had while idle, read just "
             "before the request. Template faults: the template's minor faults over the request (it forked the pool "
             "child since the last spawn, so every page its spawn path writes is copy-on-write again).")
    if "sporadic" in d:
        s = d["sporadic"]
        w = s["warm_ms"]["p50"]
        r = s["ready_ms"]
        t.add(f"sporadic (pool hits: {s['pool_hits']}/{s['n']})", s["n"], fmt(w, 3), fmt(r["p50"], 3),
              fmt(r["p99"], 3), fmt(r["max"], 3), f"{r['p50'] / w:.1f}×", f"{r['p50'] / raw_ready:.1f}×",
              f"{fmt(s['faults_on_path']['p50'], 0)} / {fmt(s['faults_at_ready']['p50'], 0)}",
              fmt(s["template_faults"]["p50"], 0))
        sp = d.get("sporadic_prefaulted")
        if sp:
            r2 = sp["ready_ms"]
            t.add(f"sporadic, template pre-faulted by a stats request 10 ms before (pool hits: {sp['pool_hits']})",
                  sp["n"], fmt(sp["warm_ms"]["p50"], 3), fmt(r2["p50"], 3), fmt(r2["p99"], 3), fmt(r2["max"], 3),
                  f"{r2['p50'] / sp['warm_ms']['p50']:.1f}×", f"{r2['p50'] / raw_ready:.1f}×",
                  f"{fmt(sp['faults_on_path']['p50'], 0)} / {fmt(sp['faults_at_ready']['p50'], 0)}",
                  fmt(sp["template_faults"]["p50"], 0))
        wg = s["warm_after_gap_ms"]
        t.add("warm ping after the same 10 ms pause", wg["n"], fmt(w, 3), fmt(wg["p50"], 3), fmt(wg["p99"], 3),
              fmt(wg["max"], 3), f"{wg['p50'] / w:.1f}×", f"{wg['p50'] / raw_ready:.1f}×", "–", "–")
        b = d["back_to_back"]["ready_ms"]
        t.add("back to back", d["back_to_back"]["n"], fmt(w, 3), fmt(b["p50"], 3), fmt(b["p99"], 3),
              fmt(b["max"], 3), f"{b['p50'] / w:.1f}×", f"{b['p50'] / raw_ready:.1f}×", "–", "–")
    if "burst" in d:
        b = d["burst"]
        w = b["warm_ms"]["p50"]
        r = b["last_ready_ms"]
        t.add(f"burst of {b['size']}: last ready ({b['rounds']} rounds)", b["rounds"], fmt(w, 3), fmt(r["p50"], 3),
              fmt(r["p99"], 3), fmt(r["max"], 3), f"{r['p50'] / w:.1f}×", f"{r['p50'] / raw_ready:.1f}×", "–", "–")
        e = b["each_ready_ms"]
        t.add(f"burst of {b['size']}: each tenant", e["n"], fmt(w, 3), fmt(e["p50"], 3), fmt(e["p99"], 3),
              fmt(e["max"], 3), f"{e['p50'] / w:.1f}×", f"{e['p50'] / raw_ready:.1f}×", "–", "–")
    tables.append(t)
    if "hit_split" in d:
        h = d["hit_split"]
        ht = Table("Where a sporadic pool hit goes, seen from the parent (ms; below the manager)",
                   ["part", "p50", "p90", "p99"],
                   note="`TemplateClient.spawn` (request → the template's `spawned` reply with the pidfd), then "
                        "`WalRedoProcess(handle)`, its first ping and a second one, for cold tenants 10 ms apart.")
        for k, label in (("reply", "TemplateClient.spawn: request → reply"), ("process", "WalRedoProcess(handle)"),
                         ("first_ping", "first ping"), ("second_ping", "second ping (warm)")):
            ht.add(label, fmt(h[k]["p50"], 3), fmt(h[k]["p90"], 3), fmt(h[k]["p99"], 3))
        tables.append(ht)
    if "storm" in d:
        s = d["storm"]
        rs = raw.get("storm") or {}
        raw_rate = rs.get("forks_per_s")
        st = Table(
            f"Storm: {s['n']} cold tenants requested together through WalRedoManager, pool {d['pool']}",
            ["what", "value"],
            note="Raw fork storm: the same number of live children forked back to back by the template-sized "
                 "process, until each wrote its byte. Loop stall: max gap of a 1 ms ticker in the parent during "
                 "the storm; idle floor: the same ticker on the idle loop right before. 'loop busy' is the "
                 "most CPU the loop thread used between two ticks. " + " ".join(d.get("notes", [])))
        g, f = s["loop_gap_ms"], s["idle_floor_ms"]
        st.add("last tenant ready (ms)", fmt(s["last_ready_ms"], 1))
        st.add("spawns/s (n / last ready)", f"{s['spawns_per_s']:.0f}")
        st.add("raw fork storm: forks/s to all ready", f"{raw_rate:.0f}" if raw_rate else "–")
        st.add("spawn rate vs raw fork rate", f"{s['spawns_per_s'] / raw_rate:.0%}" if raw_rate else "–")
        st.add("tenant ready p50 / p99 (ms)", f"{fmt(s['ready_ms']['p50'], 1)} / {fmt(s['ready_ms']['p99'], 1)}")
        st.add("warm ping p50 before (ms)", fmt(s["warm_ms"]["p50"], 3))
        st.add("loop gap max / p99 (ms)", f"{fmt(g['max'], 1)} / {fmt(g['p99'], 1)}")
        st.add("idle floor gap max (ms)", fmt(f["max"], 1))
        st.add("stall over the idle floor (ms)", fmt(s["stall_over_floor_ms"], 1))
        st.add("loop busy in one gap, max (ms)", fmt(g.get("max_cpu", float("nan")), 1))
        st.add("live tenants at the end", s["live_at_end"])
        tables.append(st)
    return tables


async def run_methods(args: argparse.Namespace) -> tuple[dict[str, Any], list[Table]]:
    spawns = args.spawns or (20 if args.quick else 200)
    heaps = [float(h) for h in (args.heaps or ("0,0.25" if args.quick else "0,1,4")).split(",")]
    floor_seconds = args.floor_seconds or (0.3 if args.quick else 1.0)
    names = [n.strip() for n in args.methods.split(",") if n.strip()]
    unknown = set(names) - set(METHODS)
    if unknown:
        raise SystemExit(f"unknown methods {sorted(unknown)}; choose from {sorted(METHODS)}")
    notes = []
    if "template" in names and not template_available():
        names.remove("template")
        notes.append("forkserver.TemplateClient is not in this tree: template not measured")
        log(notes[-1])
    methods = [METHODS[n]() for n in names]

    rows: list[dict[str, Any]] = []
    floors: dict[float, dict[str, float]] = {}
    fault_cost = fault_cost_us()
    log(f"cold_spawn: a page fault costs {fault_cost['cow']:.2f} µs (copy-on-write) on this machine")
    started: list[SpawnMethod] = []
    try:
        for m in methods:
            await m.start()
            started.append(m)
        for gib in heaps:
            log(f"cold_spawn: allocating and touching a {gib} GiB parent heap")
            heap = touched_heap(gib)
            try:
                floors[gib] = await idle_floor(floor_seconds)
                for m in methods:
                    log(f"cold_spawn: {m.name}, heap {gib} GiB, {spawns} spawns")
                    latencies, returned, probe = await storm(m, spawns)
                    faults = await fault_samples(m, min(FAULT_SAMPLES, spawns))
                    rows.append({
                        "child_minor_faults_p50": faults,
                        "method": m.name, "heap_gib": gib, "spawn_ms": summarize(latencies),
                        "spawn_call_ms": summarize(returned),
                        "loop_gap_ms": probe.summary(),
                    })
            finally:
                del heap
                gc.collect()
        profile_tables = await _profile(args, methods, spawns) if args.profile else []
    finally:
        for m in reversed(started):
            await m.aclose()

    spawn_table = Table(
        "Cold spawn: request → child answered its first ping (ms)",
        ["method", "parent heap", "p50", "p99", "max", "p50 vs template", "spawn call p50",
         "child page faults: at spawn return / at ready (p50)"],
        note=f"{spawns} sequential spawns per cell after {WARMUP} warm-up spawns; each child is closed and reaped "
             "before the next spawn. 'spawn call' is the part until the method returned a pid and a socket "
             "(template: the template's reply; fresh: the exec; mp: `Process.start()`; os.fork: the fork); "
             "the rest is the child coming up and answering its first ping. Page faults: the child's minor faults "
             f"since its fork (p50 of {FAULT_SAMPLES} extra, untimed spawns); on this machine one costs ≈ "
             f"{fault_cost['cow']:.1f} µs (copy-on-write, measured in this run; first touch "
             f"{fault_cost['first_touch']:.1f} µs). A pre-forked (pooled) child has taken most of its faults "
             "before the request; a child forked on request takes them all on the request path.",
    )
    template_p50 = {r["heap_gib"]: r["spawn_ms"]["p50"] for r in rows if r["method"] == "template"}
    for r in rows:
        s = r["spawn_ms"]
        base = template_p50.get(r["heap_gib"])
        ratio = f"{s['p50'] / base:.1f}×" if base else "–"
        nf = r["child_minor_faults_p50"]
        spawn_table.add(r["method"], f"{r['heap_gib']:g} GiB", fmt(s["p50"]), fmt(s["p99"]), fmt(s["max"]), ratio,
                        fmt(r["spawn_call_ms"]["p50"]),
                        f"{nf['at_return'] if nf['at_return'] is not None else '–'} / "
                        f"{nf['at_ready'] if nf['at_ready'] is not None else '–'}")

    stall_table = Table(
        "Loop stall: gaps of a 1 ms ticker in the parent during each spawn storm (ms)",
        ["method", "parent heap", "gap p50", "gap p99", "gap max", "loop-thread CPU in the max gap",
         "max loop-thread CPU in one gap"],
        note="A gap is the time between two wake-ups of an `asyncio.sleep(0.001)` loop (≥ 1 ms by construction). "
             "'idle floor' is the same ticker on an idle loop, measured in the same run. 'CPU in the max gap' tells "
             "blocking from starvation: a long gap with little CPU is the thread being descheduled (busy shared "
             "machine) or asleep in a blocking call; with as much CPU, it was busy (e.g. `fork()` copying page "
             "tables). The last column is the longest the loop thread was kept busy between two ticks.",
    )
    for gib in heaps:
        f = floors[gib]
        stall_table.add("idle floor", f"{gib:g} GiB", fmt(f["p50"]), fmt(f["p99"]), fmt(f["max"]),
                        fmt(f.get("max_gap_cpu", float("nan"))), fmt(f.get("max_cpu", float("nan"))))
        for r in rows:
            if r["heap_gib"] == gib:
                g = r["loop_gap_ms"]
                stall_table.add(r["method"], f"{gib:g} GiB", fmt(g["p50"]), fmt(g["p99"]), fmt(g["max"]),
                                fmt(g.get("max_gap_cpu", float("nan"))), fmt(g.get("max_cpu", float("nan"))))

    plots = []
    if not args.no_plots:
        groups = [f"{g:g} GiB" for g in heaps]
        by_method = {m.name: [next((r["spawn_ms"]["p50"] for r in rows if r["method"] == m.name
                                    and r["heap_gib"] == g), float("nan")) for g in heaps] for m in methods}
        stall = {m.name: [next((r["loop_gap_ms"]["max"] for r in rows if r["method"] == m.name
                                and r["heap_gib"] == g), float("nan")) for g in heaps] for m in methods}
        stall["idle floor"] = [floors[g]["max"] for g in heaps]
        args.out.mkdir(parents=True, exist_ok=True)
        for p in (
            plot_bars(args.out / "cold_spawn.png", "Cold spawn p50 (ms, log)", "ms", groups, by_method, log=True),
            plot_bars(args.out / "loop_stall.png", "Max loop gap during spawn storm (ms, log)", "ms", groups,
                      stall, log=True),
        ):
            if p:
                plots.append(str(p))
    data = {"rows": rows, "idle_floor_ms": {f"{g:g}": floors[g] for g in heaps}, "fault_cost_us": fault_cost,
            "notes": notes, "plots": plots}
    return data, [spawn_table, stall_table, *profile_tables]


def main(argv: list[str] | None = None) -> int:
    return runner.main("cold_spawn", __doc__.splitlines()[0], add_arguments, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
