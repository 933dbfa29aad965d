"""The physical floor of a spawn: raw ``fork()`` of a process the size of the template, in its own process.

Run as ``python -m benchmarks.rawfork --rss-mib X`` (by :mod:`benchmarks.pool_spawn`, with the template's
interpreter): it imports what the template imports (``forkserver.template`` and the worker module), pads its
heap with touched pages until its RSS is the template's, ``gc.freeze()``-s like the template, then measures

- ``seq``: ``--samples`` times fork → the child writes one byte to a pipe and ``_exit``-s → the parent read the
  byte (``ready``) → ``waitpid`` (``cycle``): the least a spawn that ends in a running child can cost;
- ``storm``: ``--storm`` children forked back to back that stay alive (each blocks on a shared pipe), the time
  until every one wrote its byte (forks/s with as many live children as the storm), then all released
  (EOF) and reaped.

Prints one JSON object on stdout. Every child it forks is reaped before it exits (also on error: the
release pipe's EOF ends them, and they are waited for).
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import mmap
import os
import sys
import time

PAGE = mmap.PAGESIZE


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE / 2**20


def _pad_to(rss_mib: float) -> bytearray | None:
    missing = int((rss_mib - _rss_mib()) * 2**20)
    if missing <= PAGE:
        return None
    buf = bytearray(missing)
    buf[::PAGE] = b"\x01" * len(range(0, missing, PAGE))
    return buf


def seq(samples: int) -> dict[str, list[float]]:
    ready: list[float] = []
    cycle: list[float] = []
    for _ in range(samples):
        r, w = os.pipe()
        t0 = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            os.write(w, b"x")
            os._exit(0)
        os.read(r, 1)
        t1 = time.perf_counter()
        os.waitpid(pid, 0)
        t2 = time.perf_counter()
        os.close(r)
        os.close(w)
        ready.append(t1 - t0)
        cycle.append(t2 - t0)
    return {"ready": ready, "cycle": cycle}


def storm(n: int) -> dict[str, float]:
    ready_r, ready_w = os.pipe()
    release_r, release_w = os.pipe()
    pids: list[int] = []
    t0 = time.perf_counter()
    try:
        for _ in range(n):
            pid = os.fork()
            if pid == 0:
                os.close(release_w)
                os.write(ready_w, b"x")
                os.read(release_r, 1)  # EOF when the parent closes release_w
                os._exit(0)
            pids.append(pid)
        forked = time.perf_counter() - t0
        got = 0
        while got < n:
            got += len(os.read(ready_r, 65536))
        last_ready = time.perf_counter() - t0
    finally:
        os.close(release_w)
        for pid in pids:
            os.waitpid(pid, 0)
        os.close(release_r)
        os.close(ready_r)
        os.close(ready_w)
    return {"n": n, "forked_s": forked, "last_ready_s": last_ready, "forks_per_s": n / last_ready}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rss-mib", type=float, default=0.0, help="pad this process to this RSS (the template's)")
    p.add_argument("--worker", default="walredo_template.worker", help="module the template preloads")
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--storm", type=int, default=0, help="live children forked back to back (0: skip)")
    args = p.parse_args(argv)
    importlib.import_module("forkserver.template")
    importlib.import_module(args.worker.split(":", 1)[0])
    pad = _pad_to(args.rss_mib)
    gc.collect()
    gc.freeze()
    out: dict[str, object] = {"rss_mib": _rss_mib(), "python": sys.version.split()[0]}
    seq(5)  # warm-up
    out.update(seq(args.samples))
    if args.storm:
        out["storm"] = storm(args.storm)
    del pad
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
