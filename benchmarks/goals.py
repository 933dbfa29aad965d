"""The performance goals, checked against the results files of one ``scripts/bench`` run.

Each goal reads the JSON a benchmark wrote; a goal whose benchmark did not run (or lacks a row) is
reported as "not measured", never as met.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from benchmarks.report import Table


@dataclass
class Goal:
    goal: str
    measured: str
    met: bool | None  # None: not measured


def _rows(results: dict[str, Any], bench: str) -> list[dict[str, Any]]:
    return (results.get(bench) or {}).get("rows") or []


def _ok(x: float | None) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x))


def evaluate(results: dict[str, dict[str, Any]]) -> list[Goal]:
    goals: list[Goal] = []
    spawn = _rows(results, "cold_spawn")
    tmpl = {r["heap_gib"]: r for r in spawn if r["method"] == "template"}

    def p50(method: str, heap: float) -> float | None:
        for r in spawn:
            if r["method"] == method and r["heap_gib"] == heap:
                return r["spawn_ms"]["p50"]
        return None

    if tmpl:
        worst = max(r["spawn_ms"]["p50"] for r in tmpl.values())
        goals.append(Goal("cold spawn p50 ≤ 1.5 ms (template, every heap size)",
                          ", ".join(f"{h:g} GiB: {r['spawn_ms']['p50']:.2f} ms" for h, r in tmpl.items()),
                          worst <= 1.5))
        for method, factor in (("fresh interpreter", 25), ("mp forkserver", 3)):
            ratios = {h: p50(method, h) / r["spawn_ms"]["p50"] for h, r in tmpl.items() if _ok(p50(method, h))}
            if ratios:
                goals.append(Goal(f"cold spawn ≥ {factor}× faster than {method} (p50)",
                                  ", ".join(f"{h:g} GiB: {x:.1f}×" for h, x in ratios.items()),
                                  min(ratios.values()) >= factor))
            else:
                goals.append(Goal(f"cold spawn ≥ {factor}× faster than {method} (p50)", "not measured", None))
        # The machine is shared: the ticker also misses its tick when the loop thread is merely descheduled.
        # The stall attributed to spawning is the max gap beyond the idle floor's max of the same run.
        gaps = {h: r["loop_gap_ms"]["max"] for h, r in tmpl.items()}
        floors = (results.get("cold_spawn") or {}).get("idle_floor_ms") or {}
        floor_max = {h: (floors.get(f"{h:g}") or {}).get("max") for h in gaps}
        excess = {h: max(0.0, g - (floor_max[h] or 0.0)) for h, g in gaps.items()}
        goals.append(Goal("loop stall ≤ 5 ms during template spawns (max 1 ms-ticker gap beyond the idle floor's max)",
                          ", ".join(f"{h:g} GiB: {gaps[h]:.1f} ms (floor {floor_max[h] or float('nan'):.1f}, "
                                    f"excess {excess[h]:.1f}; "
                                    f"loop busy ≤ {tmpl[h]['loop_gap_ms'].get('max_cpu', 0):.1f})"
                                    for h in gaps),
                          max(excess.values()) <= 5.0))
        spread = max(excess.values()) - min(excess.values())
        goals.append(Goal("loop stall flat across heap sizes (excess over the floor varies ≤ 2 ms)",
                          f"spread {spread:.1f} ms over {', '.join(f'{h:g}' for h in gaps)} GiB",
                          spread <= 2.0 if len(gaps) > 1 else None))
    else:
        goals.append(Goal("cold spawn / loop stall goals", "not measured (template not run)", None))

    co = _rows(results, "coalescing")
    if co:
        spawns = sorted({r["spawns"] for r in co})
        n = co[0]["requests"]
        goals.append(Goal(f"exactly 1 spawn for {n:,} coalesced first requests",
                          f"spawns per round: {spawns} over {len(co)} rounds", spawns == [1]))
    else:
        goals.append(Goal("exactly 1 spawn for 1,000 coalesced requests", "not measured", None))

    wr = _rows(results, "walredo")
    echo1 = next((r for r in wr if r["input"] == "echo floor" and r["clients"] == 1), None)
    ping1 = next((r for r in wr if r["input"] == "ping" and r["clients"] == 1), None)
    proc1 = next((r for r in wr if r["input"] == "process-ping" and r["clients"] == 1), None)
    if echo1 and ping1:
        ratio = ping1["latency_us"]["p50"] / echo1["latency_us"]["p50"]
        extra = ""
        if proc1:
            extra = (f"; WalRedoProcess alone {proc1['latency_us']['p50']:.0f} µs = "
                     f"{proc1['latency_us']['p50'] / echo1['latency_us']['p50']:.2f}×")
        goals.append(Goal("ping p50 at 1 client ≤ 1.5× the raw echo (through WalRedoManager)",
                          f"{ping1['latency_us']['p50']:.0f} µs vs {echo1['latency_us']['p50']:.0f} µs = {ratio:.2f}×"
                          + extra, ratio <= 1.5))
    else:
        goals.append(Goal("ping p50 at 1 client ≤ 1.5× the raw echo", "not measured", None))
    ping64 = max((r for r in wr if r["input"] == "ping"), key=lambda r: r["clients"], default=None)
    if ping64 and ping64["clients"] == 64:
        goals.append(Goal("≥ 40k ping/s at 64 clients", f"{ping64['throughput_rps']:,.0f} ping/s",
                          ping64["throughput_rps"] >= 40_000))
    else:
        goals.append(Goal("≥ 40k ping/s at 64 clients", "not measured", None))

    mem = _rows(results, "memory")
    idle = next((r for r in mem if r["process"] == "template child, idle"), None)
    # PSS depends on how many processes share the template's pages: judged with idle siblings alive (as in
    # service), the lone-child figure shown beside it.
    fleet = next((r for r in mem if r["process"].startswith("template child, idle,")), None)
    if idle and fleet:
        goals.append(Goal("idle child PSS ≤ 2 MiB",
                          f"{fleet['pss']:.2f} MiB ({fleet['process'].split(', ', 2)[2]}; USS {fleet['uss']:.2f}); "
                          f"alone with the template: {idle['pss']:.2f} MiB", fleet["pss"] <= 2.0))
    else:
        goals.append(Goal("idle child PSS ≤ 2 MiB", "not measured", None))

    goals += _pool_goals(results, wr, fleet)

    sc = results.get("scale") or {}
    if sc.get("total_pss_mib") is not None:
        goals.append(Goal(f"{sc['tenants']:,} tenants in ≤ 4 GiB PSS total (target: 2,000)",
                          f"{sc['total_pss_mib'] / 1024:.2f} GiB; clean tear-down: {sc.get('clean')}",
                          sc["total_pss_mib"] <= 4096 and sc["tenants"] >= 2000))
    else:
        goals.append(Goal("2,000 tenants in ≤ 4 GiB PSS total", "not measured", None))
    return goals


def _pool_goals(results: dict[str, Any], wr: list[dict[str, Any]], fleet: dict[str, Any] | None) -> list[Goal]:
    """The cold-spawn-at-the-limit goals: pool hits, bursts and storms against a warm ping and a raw fork of
    the same run, idle child memory with siblings, 64-client ping throughput against the raw echo."""
    goals: list[Goal] = []
    pm = (results.get("cold_spawn") or {}).get("pool_modes") or {}

    def ratio_goal(name: str, key: str, value_key: str, factor: float) -> None:
        d = pm.get(key)
        if not d:
            goals.append(Goal(name, "not measured", None))
            return
        value, warm = d[value_key]["p50"], d["warm_ms"]["p50"]
        goals.append(Goal(name, f"{value:.2f} ms vs warm ping {warm:.3f} ms = {value / warm:.0f}×",
                          value <= factor * warm))

    ratio_goal("sporadic cold spawn p50 ≤ 4× a warm ping (pool hits, 10 ms apart)", "sporadic", "ready_ms", 4)
    ratio_goal(f"a burst of pool_size ({pm.get('pool', '?')}) cold tenants all ready ≤ 10× a warm ping (p50)",
               "burst", "last_ready_ms", 10)
    storm, raw = pm.get("storm"), (pm.get("raw_fork") or {}).get("storm")
    if storm and raw:
        share = storm["spawns_per_s"] / raw["forks_per_s"]
        goals.append(Goal(f"a storm of {storm['n']:,} cold tenants sustains ≥ 70% of the raw fork rate",
                          f"{storm['spawns_per_s']:,.0f}/s vs raw {raw['forks_per_s']:,.0f}/s = {share:.0%}",
                          share >= 0.7))
        goals.append(Goal("the parent's loop stall during the storm ≤ 5 ms over its idle floor",
                          f"{storm['stall_over_floor_ms']:.1f} ms", storm["stall_over_floor_ms"] <= 5.0))
    else:
        goals.append(Goal("storm ≥ 70% of the raw fork rate, loop stall ≤ 5 ms over the floor", "not measured", None))
    if fleet:
        goals.append(Goal("idle child USS ≤ 1.5 MiB and PSS ≤ 1.5 MiB with siblings",
                          f"USS {fleet['uss']:.2f} MiB, PSS {fleet['pss']:.2f} MiB "
                          f"({fleet['process'].split(', ', 2)[2]})", fleet["uss"] <= 1.5 and fleet["pss"] <= 1.5))
    else:
        goals.append(Goal("idle child USS and PSS ≤ 1.5 MiB with siblings", "not measured", None))
    echo64 = next((r for r in wr if r["input"] == "echo floor" and r["clients"] == 64), None)
    ping64 = next((r for r in wr if r["input"] == "ping" and r["clients"] == 64), None)
    if echo64 and ping64:
        share = ping64["throughput_rps"] / echo64["throughput_rps"]
        goals.append(Goal("64-client ping throughput ≥ 50% of the raw echo (through WalRedoManager)",
                          f"{ping64['throughput_rps']:,.0f}/s vs {echo64['throughput_rps']:,.0f}/s = {share:.0%}",
                          share >= 0.5))
    else:
        goals.append(Goal("64-client ping throughput ≥ 50% of the raw echo", "not measured", None))
    return goals


def goals_table(goals: list[Goal]) -> Table:
    t = Table("Goals on this machine", ["goal", "measured", "met"])
    for g in goals:
        t.add(g.goal, g.measured, {True: "yes", False: "**no**", None: "–"}[g.met])
    return t
