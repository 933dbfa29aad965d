"""Benchmark 6: scale — N (2,000) live tenants through one ``WalRedoManager``.

Starts ``--tenants`` tenants (``ping`` each, ``--concurrency`` cold starts in flight), then reports:
spawn rate, total PSS of every child plus the template, the template's RSS, the parent's open fd count;
then the tear-down time (leaving the manager: every child killed and reaped) and a check that no child
and no template process remains (psutil). ``RLIMIT_NOFILE`` is raised to what the tenants need (each
holds a socket and a pidfd in the parent).

Run: ``scripts/bench_scale [--quick] [--tenants N] [--concurrency C]``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import time
import uuid
from typing import Any

import psutil

from benchmarks import runner
from benchmarks.proc_memory import MIB, total_pss_mib
from benchmarks.report import Table
from benchmarks.runner import log
from benchmarks.spawn_methods import manager_class, template_client_class
from benchmarks.stats import fmt

FDS_PER_TENANT = 3  # socket + pidfd, and headroom for the loop's own


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tenants", type=int, default=None, help="live tenants (default 2000; quick 50)")
    p.add_argument("--concurrency", type=int, default=64, help="cold starts in flight at once")


def raise_nofile(needed: int) -> tuple[int, int]:
    """Raise the soft (and, as root, hard) ``RLIMIT_NOFILE`` to at least ``needed``; return the new limits.

    Raises ``ValueError``/``OSError`` when the hard limit is lower and cannot be raised.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return soft, hard
    if hard != resource.RLIM_INFINITY and hard < needed:
        hard = needed  # only root may do this; the error says so otherwise
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def run(args: argparse.Namespace) -> tuple[dict[str, Any], list[Table]]:
    tenants = args.tenants or (50 if args.quick else 2000)
    limits = raise_nofile(tenants * FDS_PER_TENANT + 256)
    fds_before = open_fds()
    client = await template_client_class().launch()
    template_pid = client.template_pid
    data: dict[str, Any] = {"tenants": tenants, "nofile": list(limits), "template_pid": template_pid}
    child_pids: list[int] = []
    try:
        # Long idle timeout: nothing may be quiesced while we count.
        mgr = manager_class()(template=client, request_timeout=120.0, idle_timeout=3600.0)
        await mgr.start()
        try:
            ids = [uuid.uuid4().hex for _ in range(tenants)]
            sem = asyncio.Semaphore(args.concurrency)

            async def start(tenant: str) -> None:
                async with sem:
                    await mgr.ping(tenant)

            log(f"scale: starting {tenants} tenants, {args.concurrency} at a time")
            t0 = time.perf_counter()
            await asyncio.gather(*(start(t) for t in ids))
            elapsed = time.perf_counter() - t0
            procs = mgr.processes()
            child_pids = [info.pid for info in procs.values()]
            stats = await client.stats()
            log(f"scale: {len(procs)} live in {elapsed:.2f} s; measuring memory")
            children_pss = total_pss_mib(child_pids)
            template_mem = psutil.Process(template_pid).memory_full_info()
            data.update({
                "live": len(procs),
                "template_spawns": stats.get("spawns"),
                "template_live": stats.get("live"),
                "spawn_seconds": elapsed,
                "spawn_rate_per_s": tenants / elapsed,
                "children_pss_mib": children_pss,
                "template_pss_mib": template_mem.pss / MIB,
                "template_rss_mib": template_mem.rss / MIB,
                "total_pss_mib": children_pss + template_mem.pss / MIB,
                "pss_per_child_mib": children_pss / max(1, len(child_pids)),
                "parent_fds": open_fds(),
                "parent_fds_before": fds_before,
                "parent_rss_mib": psutil.Process().memory_info().rss / MIB,
            })
            # Every tenant still answers.
            await asyncio.gather(*(mgr.ping(t) for t in ids))
        finally:
            log("scale: tearing down")
            t0 = time.perf_counter()
            await mgr.aclose()
            data["teardown_seconds"] = time.perf_counter() - t0
    finally:
        await client.aclose()
    await asyncio.sleep(0.2)  # the template is reaped by the client; give the kernel a beat to settle
    left_children = [p for p in child_pids if _alive(p)]
    left_template = _alive(template_pid) if template_pid else False
    own_children = [c.pid for c in psutil.Process().children(recursive=True) if c.status() != psutil.STATUS_ZOMBIE]
    data.update({"remaining_children": left_children, "template_remains": left_template,
                 "remaining_descendants": own_children,
                 "clean": not left_children and not left_template and not own_children})

    table = Table(f"Scale: {tenants:,} live tenants on one template", ["measure", "value"])
    table.add("spawn rate (tenants/s, ping answered)", fmt(data.get("spawn_rate_per_s", float("nan")), 0))
    table.add("time to start all tenants (s)", fmt(data.get("spawn_seconds", float("nan"))))
    table.add("spawns counted by the template", data.get("template_spawns", "–"))
    table.add("total PSS, children + template (MiB)", fmt(data.get("total_pss_mib", float("nan")), 0))
    table.add("PSS per child (MiB)", fmt(data.get("pss_per_child_mib", float("nan"))))
    table.add("template RSS (MiB)", fmt(data.get("template_rss_mib", float("nan")), 1))
    table.add("parent open fds (before → with tenants)", f"{fds_before} → {data.get('parent_fds', '–')}")
    table.add("tear-down: manager exit, all children killed and reaped (s)", fmt(data.get("teardown_seconds",
                                                                                       float("nan"))))
    table.add("processes left after tear-down", "none" if data["clean"] else
              f"children {left_children[:5]}, template {left_template}, descendants {own_children[:5]}")
    return data, [table]


def main(argv: list[str] | None = None) -> int:
    return runner.main("scale", __doc__.splitlines()[0], add_arguments, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
