"""The fault campaign as bounded, repeatable scenarios (behind ``scripts/chaos``).

Each scenario runs real processes (a ``WalRedoManager`` with its template and children, or a parent in a
subprocess), injects one kind of fault, checks every page it gets back against PostgreSQL's own (the
committed capture, as ``scripts/demo.py`` does) and fills one :class:`Figures` row:

    kill-slow, kill-fast   SIGKILL random tenant children at two rates under load of concurrent request_redo
    template-kill          SIGKILL the template during a spawn storm, warm tenants under load
    template-stop          SIGSTOP the template during a spawn storm: warm tenants must keep answering; a cold
                           request must end within its bound (known hole: a stuck template is never noticed)
    child-stop             SIGSTOP a child: its request fails with RedoTimeout within about request_timeout
                           and the child is replaced
    parent-kill            SIGKILL a parent running in a subprocess: its template and children are gone
    emfile                 RLIMIT_NOFILE lowered in a subprocess parent: requests fail typed, nothing leaks
    soak                   minutes of load, child kills, template kills, tenant churn and idle quiesce, sampled

A row fails on any wrong page, hung request (no answer nor typed error within the scenario's bound; such a
request is cancelled, so nothing waits forever), leak, leftover process or an expectation of its scenario.

Bounds: every size (tenants, in-flight requests, kills, durations) is a field of :class:`Sizes`; every scenario
runs under a watchdog (``asyncio.timeout`` of its budget) that cancels it (the manager's ``aclose`` still
kills and reaps its processes); afterwards the process tree of what it started is walked and anything left is
SIGKILLed and counted. This process is a child subreaper while it runs, so orphans (children of a killed
template or parent) are re-parented here where they can be seen and reaped. Signals are only sent to pids
that are descendants of this process, through a pidfd opened before the check (never a recycled pid).

This module is the campaign (the scenario table, budgets, the watchdog, the CLI and the ``--role`` entry of
the re-executed subprocess parents); the rest lives beside it: ``chaos_figures`` (:class:`Sizes`,
:class:`Figures`, the table), ``chaos_procs`` (descendants, signals, the reaper), ``chaos_load`` (the checked
load), ``chaos_inprocess`` (kill storms, template and child faults), ``chaos_subprocess`` (parent-kill,
emfile and their subprocess roles) and ``chaos_soak`` (the soak and its drift verdict).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import random
import sys
import time
from collections.abc import Awaitable, Callable, Sequence

from benchmarks.chaos_figures import Figures, Sizes, table
from benchmarks.chaos_inprocess import child_stop, kill_storm, template_faults
from benchmarks.chaos_procs import Reaper, alive, descendants, settle, subreaper
from benchmarks.chaos_soak import drift, soak
from benchmarks.chaos_subprocess import emfile, emfile_role, parent_kill, parent_role

__all__ = ["Figures", "SCENARIOS", "Sizes", "budget", "campaign", "drift", "main", "run_scenario", "table"]


Scenario = Callable[[Sizes, Figures, random.Random, Reaper], Awaitable[None]]

SCENARIOS: dict[str, Scenario] = {
    "kill-slow": lambda sz, f, r, _: kill_storm(sz, f, sz.slow_kills, sz.slow_rate, r),
    "kill-fast": lambda sz, f, r, _: kill_storm(sz, f, sz.fast_kills, sz.fast_rate, r),
    "template-kill": lambda sz, f, r, _: template_faults(sz, f, r, stop=False),
    "template-stop": lambda sz, f, r, _: template_faults(sz, f, r, stop=True),
    "child-stop": lambda sz, f, r, _: child_stop(sz, f, r),
    "parent-kill": lambda sz, f, r, reaper: parent_kill(sz, f, reaper),
    "emfile": lambda sz, f, r, reaper: emfile(sz, f, reaper),
    "soak": lambda sz, f, r, _: soak(sz, f, r),
}


def budget(name: str, sz: Sizes) -> float:
    """Seconds the scenario may run before its watchdog fails it."""
    est = {
        "kill-slow": sz.slow_kills / sz.slow_rate,
        "kill-fast": sz.fast_kills / sz.fast_rate,
        "template-kill": sz.template_kills * (sz.template_kill_interval + 2.0),
        "template-stop": sz.stop_rounds * (sz.stop_max + sz.template_kill_interval + 10.0),
        "child-stop": sz.child_stops * (sz.child_stop_timeout + 3.0),
        "parent-kill": sz.parent_kills * (sz.parent_gone_bound + 10.0),
        "emfile": sz.emfile_levels * 10.0,
        "soak": sz.soak_seconds,
    }[name]
    return 2 * est + 60.0


async def run_scenario(name: str, sz: Sizes, reaper: Reaper, seed: int = 12) -> Figures:
    fig = Figures(name)
    before = set(descendants())
    t0 = time.monotonic()
    limit = budget(name, sz)
    try:
        async with asyncio.timeout(limit):
            await SCENARIOS[name](sz, fig, random.Random(seed), reaper)
    except TimeoutError:
        fig.problems.append(f"over its budget of {limit:.0f} s (watchdog)")
    except Exception as exc:
        fig.problems.append(f"crashed: {type(exc).__name__}: {exc}")
    left = await settle(before, reaper)
    fig.leftovers = len(left)
    if left:
        fig.notes.append(f"leftover processes (SIGKILLed): {'; '.join(left)}")
    fig.elapsed = time.monotonic() - t0
    return fig


async def campaign(names: Sequence[str], sz: Sizes, seed: int = 12) -> tuple[list[Figures], list[str]]:
    """Run the scenarios in order; returns their figures and what was left at the end (processes, zombies)."""
    prev = subreaper(True)
    reaper = Reaper()
    reaper.start()
    before = set(descendants())
    figs: list[Figures] = []
    try:
        for name in names:
            figs.append(await run_scenario(name, sz, reaper, seed))
    finally:
        await reaper.stop()
        final = await settle(before, reaper, bound=2.0)
        zombies = [f"zombie {pid}" for pid, p in descendants().items() if pid not in before and not alive(p)]
        subreaper(prev)
    return figs, final + zombies


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="scripts/chaos", description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenario", action="append", default=[],
                    help=f"one of {', '.join(SCENARIOS)} or all (repeatable; default all)")
    ap.add_argument("--short", action="store_true", help="the test suite's sizes (seconds per scenario)")
    ap.add_argument("--seed", type=int, default=12)
    ap.add_argument("--verbose", action="store_true", help="log the manager's warnings (every broken child)")
    ap.add_argument("--role", choices=["parent", "emfile"], help=argparse.SUPPRESS)
    ap.add_argument("--levels", type=int, default=12, help=argparse.SUPPRESS)
    ap.add_argument("--requests", type=int, default=16, help=argparse.SUPPRESS)
    defaults = Sizes()
    for f in dataclasses.fields(Sizes):
        ap.add_argument("--" + f.name.replace("_", "-"), type=type(getattr(defaults, f.name)), default=None,
                        help=f"(default {getattr(defaults, f.name)}; --short: {getattr(Sizes.short(), f.name)})")
    return ap.parse_args(argv)


def _sizes(args: argparse.Namespace) -> Sizes:
    sz = Sizes.short() if args.short else Sizes()
    for f in dataclasses.fields(Sizes):
        v = getattr(args, f.name)
        if v is not None:
            setattr(sz, f.name, v)
    if sz.concurrency > 64 or sz.soak_concurrency > 64:
        raise SystemExit("at most 64 requests in flight")
    if max(sz.tenants, sz.warm + sz.cold, sz.soak_tenants, sz.parent_tenants) > 50:
        raise SystemExit("at most 50 tenants")
    return sz


def _names(args: argparse.Namespace) -> list[str]:
    chosen = args.scenario or ["all"]
    names: list[str] = []
    for n in chosen:
        for part in n.split(","):
            if part == "all":
                names += list(SCENARIOS)
            elif part in SCENARIOS:
                names.append(part)
            else:
                raise SystemExit(f"unknown scenario {part!r}: choose from {', '.join(SCENARIOS)} or all")
    return list(dict.fromkeys(names))


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    if args.role == "parent":
        asyncio.run(parent_role(args.tenants or 8))
        return 0
    if args.role == "emfile":
        print(json.dumps(asyncio.run(emfile_role(args.levels, args.requests))), flush=True)
        return 0
    sz, names = _sizes(args), _names(args)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if not args.verbose:  # every injected fault is logged as a warning: thousands of lines
        logging.getLogger("forkserver").setLevel(logging.ERROR)
    total = sum(budget(n, sz) for n in names)
    print(f"chaos: {', '.join(names)} (watchdog budgets total {total:.0f} s)", file=sys.stderr, flush=True)
    import faulthandler

    faulthandler.dump_traceback_later(total + 120, exit=True)  # last resort if the event loop itself is stuck
    figs, leftover = asyncio.run(campaign(names, sz, args.seed))
    faulthandler.cancel_dump_traceback_later()
    print(table(figs, leftover), flush=True)
    return 0 if all(f.ok for f in figs) and not leftover else 1


if __name__ == "__main__":
    sys.exit(main())
