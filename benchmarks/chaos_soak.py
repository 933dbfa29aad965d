"""The soak: minutes of load, child kills, template kills, tenant churn and idle quiesce, sampled; and
:func:`drift`, the verdict on the samples (does anything grow).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections.abc import Sequence

import psutil  # type: ignore[import-untyped]  # no stubs installed (types-psutil)

from benchmarks.chaos_figures import Figures, Sizes
from benchmarks.chaos_load import Load, cells, stop_count, stops_note, template_pid, tenant_ids
from benchmarks.chaos_procs import alive, descendants, rss, signal_mine
from forkserver import WalRedoManager

MiB = 2**20


async def soak(sz: Sizes, fig: Figures, rng: random.Random) -> None:
    """Load, child kills, template kills, tenant churn and idle quiesce for ``soak_seconds``, sampled."""
    async with WalRedoManager(request_timeout=sz.request_timeout, idle_timeout=sz.soak_idle,
                              quiesce_period=min(1.0, sz.soak_idle)) as mgr:
        active = tenant_ids(6, sz.soak_tenants)
        next_id = sz.soak_tenants
        await asyncio.gather(*(mgr.ping(t) for t in active))
        load = Load(mgr, fig, active, max_records=sz.max_records, rng=rng,
                    hang_after=(mgr.retries + 1) * sz.request_timeout + 5.0)
        load.start(sz.soak_concurrency)
        me = psutil.Process()
        samples: list[dict[str, float]] = []
        kills = tkills = 0
        t0 = time.monotonic()
        next_sample = next_rotate = next_kill = t0
        next_tkill = t0 + sz.soak_template_every
        try:
            while (now := time.monotonic()) < t0 + sz.soak_seconds:
                if now >= next_rotate:  # churn: a fresh tenant; the one it replaces goes idle and is quiesced
                    active[rng.randrange(len(active))] = tenant_ids(6, 1, next_id)[0]
                    next_id += 1
                    next_rotate += sz.soak_rotate
                if now >= next_kill:
                    procs = list(mgr.processes().values())
                    if procs and signal_mine(rng.choice(procs).pid, signal.SIGKILL):
                        kills += 1
                    next_kill += 1.0 / sz.soak_kill_rate
                if now >= next_tkill:
                    pid = template_pid(mgr)
                    if pid is not None and signal_mine(pid, signal.SIGKILL):
                        tkills += 1
                    next_tkill += sz.soak_template_every
                if now >= next_sample:
                    d = descendants().values()
                    zombies = sum(1 for p in d if not alive(p))
                    samples.append({"t": now - t0, "rss": me.memory_info().rss / MiB,
                                    "fds": len(os.listdir("/proc/self/fd")), "live": len(d) - zombies,
                                    "zombies": zombies, "template": (rss(template_pid(mgr)) or 0) / MiB,
                                    "cells": cells(mgr)})
                    next_sample += sz.sample_seconds
                await asyncio.sleep(0.02)
        finally:
            await load.stop()
        seen = next_id
        fig.notes += [f"{sz.soak_seconds:.0f} s, {sz.soak_tenants} active of {seen} tenants seen, "
                      f"{sz.soak_concurrency} in flight, {kills} child kills, {tkills} template kills, "
                      f"idle_timeout {sz.soak_idle} s", load.latency_note(), f"stops counted: {stops_note(mgr)}"]
        # Every child we SIGKILLed broke: it must be counted broken, whatever it was doing (idle, or being
        # retired at that moment). A few may be lost to true ties (our kill and the manager's at once) or to
        # a second kill landing on a child already dying.
        broken = stop_count(mgr, "broken")
        if broken < kills - max(2, kills // 50):
            fig.problems.append(f"stop causes misattributed: {kills} children killed, {broken} stops counted "
                                "broken")
    fig.drift, problems, table = drift(samples, live_bound=2 * sz.soak_tenants + 8)
    fig.notes += table
    fig.problems += problems


def drift(samples: Sequence[dict[str, float]], *, live_bound: int) -> tuple[str, list[str], list[str]]:
    """Verdict per sampled metric: "flat" = the end (the smallest of the last three samples) within a tolerance
    of the early ones (the first fifth, at least one, after the first sample). A leak stays in every late
    sample; a transient (a zombie sampled between a kill and its reap) does not fail the soak by landing on the
    very last one. Returns (verdict, problems, one line per metric)."""
    if len(samples) < 3:
        return "too few samples", ["too few soak samples"], []
    early = samples[1:max(2, len(samples) // 5 + 1)]
    # metric: (relative tolerance, absolute tolerance, unit)
    rules = {"rss": (0.10, 4.0, "MiB"), "fds": (0.0, 4.0, ""), "live": (0.0, 4.0, ""),
             "zombies": (0.0, 2.0, ""), "template": (0.10, 4.0, "MiB"), "cells": (0.0, 4.0, "")}
    verdicts, problems, lines = [], [], []
    for key, (rel, tol, unit) in rules.items():
        vals = [s[key] for s in samples]
        ref = max(s[key] for s in early)
        end = min(vals[-3:])
        flat = end <= ref * (1 + rel) + tol
        if key == "live":
            flat = flat or end <= live_bound
        verdict = "flat" if flat else "grows"
        lines.append(f"{key}: first {vals[0]:.1f}, last {vals[-1]:.1f}, max {max(vals):.1f} {unit} → {verdict}")
        verdicts.append(f"{key} {verdict}")
        if not flat:
            why = " (the manager never forgets a tenant)" if key == "cells" else ""
            problems.append(f"{key} grows: {vals[0]:.1f} → {end:.1f}{why}")
    flat_all = all(v.endswith("flat") for v in verdicts)
    return ("flat" if flat_all else ", ".join(v for v in verdicts if not v.endswith("flat"))), problems, lines
