"""Benchmark 5: memory of one walredo child — USS/PSS/RSS (psutil), side by side.

- ``template child, idle``: spawned by our template, answered one ping; sampled again with ``--siblings``
  (100) idle template children alive, because PSS charges each shared page to all its sharers;
- ``template child, after N requests``: the same child after ``--requests`` (10,000) requests — short redos
  with a medium redo every 50th when the WAL capture is there, pings otherwise — sent pipelined on its
  socket with the child protocol;
- ``fresh interpreter``: the same worker in a fresh ``python`` per tenant, after one ping;
- ``mp forkserver child`` and ``os.fork child`` (of this small benchmark parent), after one ping;
- the ``template`` process itself.

Run: ``scripts/bench_memory [--quick] [--requests N] [--siblings N]``
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import uuid
from typing import Any

import msgpack

from benchmarks import runner
from benchmarks.framed_client import FramedClient
from benchmarks.proc_memory import memory_mib
from benchmarks.report import Table
from benchmarks.runner import log
from benchmarks.spawn_methods import (
    FreshInterpreterSpawn,
    MultiprocessingForkserverSpawn,
    OsForkSpawn,
    SpawnedChild,
    SpawnMethod,
    TemplateSpawn,
    template_available,
)
from benchmarks.stats import fmt
from benchmarks.wal_inputs import load_inputs
from walredo_template import protocol

SETTLE_SECONDS = 0.2  # let a child finish its start-up allocations before sampling


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--requests", type=int, default=None, help="requests before the second sample (default 10000; "
                   "quick 200)")
    p.add_argument("--pipeline", type=int, default=16, help="requests in flight while loading the child")
    p.add_argument("--siblings", type=int, default=None, help="idle template children alive for the 'with "
                   "siblings' sample (default 100; quick 10)")


def _request_frames(count: int) -> tuple[list[bytes], str]:
    inputs, source = load_inputs()
    short, medium = inputs.get("short"), inputs.get("medium")
    if short is None:
        return [protocol.encode_ping()] * count, f"pings ({source})"
    s = protocol.encode_redo(short.tag, short.lsn, None, short.records)
    m = protocol.encode_redo(medium.tag, medium.lsn, None, medium.records) if medium else s
    return [m if i % 50 == 49 else s for i in range(count)], f"short redos, a medium one every 50th ({source})"


async def _load(client: FramedClient, frames: list[bytes], pipeline: int) -> dict[str, int]:
    """Send every frame on ``client``, ``pipeline`` in flight; count the kinds of answers."""
    counts: dict[str, int] = {}
    it = iter(frames)

    async def sender() -> None:
        for frame in it:
            answer = msgpack.unpackb(await client.request(frame))
            kind = answer["type"] if answer["type"] != "error" else f"error:{answer['code']}"
            counts[kind] = counts.get(kind, 0) + 1

    await asyncio.gather(*(sender() for _ in range(pipeline)))
    return counts


async def run(args: argparse.Namespace) -> tuple[dict[str, Any], list[Table]]:
    requests = args.requests or (200 if args.quick else 10_000)
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    methods: list[SpawnMethod] = []
    children: list[SpawnedChild] = []

    async def one(method: SpawnMethod, label: str) -> SpawnedChild:
        child = await method.spawn(uuid.uuid4().hex)
        children.append(child)
        await child.ping()
        await asyncio.sleep(SETTLE_SECONDS)
        rows.append({"process": label, "pid": child.pid, **memory_mib(child.pid)})
        return child

    try:
        if template_available():
            tmpl = TemplateSpawn()
            methods.append(tmpl)
            await tmpl.start()
            first = await one(tmpl, "template child, idle")
            loaded = await one(tmpl, "template child (to load)")
            rows.pop()
            frames, what = _request_frames(requests)
            log(f"memory: {requests} requests ({what}) to one template child")
            # The client's transport takes over the child's socket; closing the client closes it.
            client = await FramedClient.open(loaded.sock)
            try:
                counts = await _load(client, frames, args.pipeline)
                notes.append(f"load: {requests} requests of {what}; answers {counts}.")
                await asyncio.sleep(SETTLE_SECONDS)
                rows.append({"process": f"template child, after {requests:,} requests", "pid": loaded.pid,
                             **memory_mib(loaded.pid)})
            finally:
                await client.aclose()
            # PSS splits each shared page among its sharers: one child next to the template is charged half
            # of every page it shares with it; in a fleet of tenants that share shrinks toward zero. Sample
            # the idle child again with siblings alive, as it would be in service.
            siblings = args.siblings if args.siblings is not None else (10 if args.quick else 100)
            for _ in range(siblings):
                sib = await tmpl.spawn(uuid.uuid4().hex)
                children.append(sib)
                await sib.ping()
            await asyncio.sleep(SETTLE_SECONDS)
            rows.append({"process": f"template child, idle, {siblings} idle siblings", "pid": first.pid,
                         **memory_mib(first.pid)})
            pid = getattr(tmpl.client, "template_pid", None) or getattr(tmpl.client, "pid", None)
            if pid:
                rows.append({"process": "template process", "pid": pid, **memory_mib(pid)})
        else:
            notes.append("forkserver.TemplateClient is not in this tree: template rows missing")
        for method, label in ((FreshInterpreterSpawn(), "fresh interpreter worker, idle"),
                              (MultiprocessingForkserverSpawn(), "mp forkserver child, idle"),
                              (OsForkSpawn(), "os.fork child of the benchmark parent, idle")):
            methods.append(method)
            await method.start()
            await one(method, label)
    finally:
        for child in children:
            await child.close()
        for method in reversed(methods):
            await method.aclose()
        gc.collect()

    table = Table("Memory of one walredo child (MiB)", ["process", "USS", "PSS", "RSS"],
                  note="psutil `memory_full_info()` (smaps_rollup). " + " ".join(notes))
    for r in rows:
        table.add(r["process"], fmt(r["uss"]), fmt(r["pss"]), fmt(r["rss"]))
    return {"rows": rows, "notes": notes}, [table]


def main(argv: list[str] | None = None) -> int:
    return runner.main("memory", __doc__.splitlines()[0], add_arguments, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
