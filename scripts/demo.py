"""Demo: real WAL redo through WalRedoManager, several tenants, every page checked (heap, visibility-map,
index, sequence and bloom pages).

Each tenant replays the whole committed capture (tests/data/wal-small): one request per PostgreSQL
consistency image (page at that record's LSN, from the last materialized image plus the records since)
and one per page on disk (the page's whole history, no base image). Every answer is compared, masked,
with PostgreSQL's own page.
"""

import argparse
import asyncio
import os
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from collections import Counter  # noqa: E402

from forkserver import WalRedoManager  # noqa: E402
from walredo_template.redo import RMGRS  # noqa: E402
from walredo_tools.capture import load_capture, page_requests, pages_match  # noqa: E402

DEFAULT_CAPTURE = os.path.join(REPO, "tests", "data", "wal-small", "capture.msgpack")


def _kind(req) -> str:
    """The page's kind for the table: its access method (Heap and Heap2 both write heap pages)."""
    if req.tag.forknum == 2:
        return "visibility map"
    return "Heap" if req.rmgr == 9 else RMGRS[req.rmgr].name


async def replay_tenant(mgr, tenant, requests, concurrency, wal_log_hints):
    mismatches = []
    queue = iter(requests)

    async def client():
        for req in queue:
            page = await mgr.request_redo(
                tenant, req.tag, req.lsn, req.base_image, req.records, wal_log_hints=wal_log_hints
            )
            if not pages_match(req.tag, page, req.expected, req.rmgr):
                mismatches.append((tenant, req.tag, req.lsn, req.source))

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return mismatches


async def main(args) -> int:
    doc = load_capture(args.capture)
    requests = page_requests(doc)
    tenants = [f"{i:032x}" for i in range(1, args.tenants + 1)]
    async with WalRedoManager() as mgr:
        spawn_ms = []
        for tenant in tenants:  # cold: spawn + first answer, one tenant at a time
            t0 = time.perf_counter()
            await mgr.ping(tenant)
            spawn_ms.append((time.perf_counter() - t0) * 1e3)
        t0 = time.perf_counter()
        results = await asyncio.gather(
            *(replay_tenant(mgr, t, requests, args.concurrency, doc["checksums"]) for t in tenants)
        )
        elapsed = time.perf_counter() - t0
        pids = {t: info.pid for t, info in mgr.processes().items()}
    mismatches = [m for r in results for m in r]
    total = len(requests) * len(tenants)
    records = sum(len(r.records) for r in requests) * len(tenants)
    rows = [
        ("tenants", f"{len(tenants)} (pids {', '.join(str(p) for p in pids.values())})"),
        ("spawn latency (cold ping)", f"p50 {statistics.median(spawn_ms):.2f} ms, max {max(spawn_ms):.2f} ms"),
        ("WAL capture", f"{len(doc['records'])} records, {len(doc['pages'])} pages, "
                        f"wal_compression={doc['wal_compression']}"),
        ("pages reconstructed", f"{total} ({records} records applied)"),
        ("pages by access method", ", ".join(f"{k} {v * len(tenants)}" for k, v in sorted(
            Counter(_kind(r) for r in requests).items()))),
        ("mismatches", str(len(mismatches))),
        ("requests/s", f"{total / elapsed:,.0f} ({records / elapsed:,.0f} records/s, {elapsed:.2f} s)"),
    ]
    width = max(len(k) for k, _ in rows)
    print(f"| {'what'.ljust(width)} | result")
    print(f"|{'-' * (width + 2)}|{'-' * 40}")
    for k, v in rows:
        print(f"| {k.ljust(width)} | {v}")
    for m in mismatches[:10]:
        print("MISMATCH", m, file=sys.stderr)
    return 1 if mismatches else 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tenants", type=int, default=4)
    ap.add_argument("--concurrency", type=int, default=8, help="concurrent requests per tenant")
    ap.add_argument("--capture", default=DEFAULT_CAPTURE)
    sys.exit(asyncio.run(main(ap.parse_args())))
