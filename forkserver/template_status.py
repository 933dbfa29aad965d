"""``walredo-template status``: list a running template's children with their memory, as a table or JSON.

    walredo-template status --socket PATH [--key-file PATH] [--json]

Runs in its own short-lived process, as a client of the template (never inside it): it connects like any
parent (:meth:`forkserver.client.TemplateClient.connect`, the key from ``--key-file``, default
``PATH.key``), asks for the template's stats (:meth:`~forkserver.client.TemplateClient.stats`: counters
and the live tenant children with their start times), then reads each child's memory from ``/proc``
(:func:`forkserver.status.memory_of`).

USS and PSS come from ``/proc/<pid>/smaps_rollup``, readable only by a reader that may ptrace the child:
sandboxed children are not dumpable, so unless this runs as root (or with ``CAP_SYS_PTRACE``) they show RSS
alone (from ``/proc/<pid>/statm``), USS/PSS as ``-``; a note under the table says so (``memory_source`` per
child in JSON: ``"smaps"`` or ``"statm"``).

Exit codes: 0 listed, 2 bad arguments, 3 the template could not be reached or authenticated (no socket,
no key file, wrong key).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from typing import Any

from forkserver import status
from forkserver.secret import KEY_SIZE

__all__ = ["main", "collect"]

COLUMNS = ("tenant", "pid", "uptime", "uss", "pss", "rss")


def read_key(path: str) -> bytes:
    """The key in a key file (64 hex digits). Errors: ``OSError``; ``ValueError`` for anything else in it."""
    with open(path) as f:
        key = bytes.fromhex(f.read().strip())
    if len(key) != KEY_SIZE:
        raise ValueError(f"want {2 * KEY_SIZE} hex digits, got {2 * len(key)}")
    return key


async def _stats(socket_path: str, key: bytes, timeout: float) -> dict[str, Any]:
    from forkserver.client import TemplateClient

    client = await TemplateClient.connect(socket_path, key=key, timeout=timeout, spawn_timeout=timeout)
    try:
        return await client.stats()
    finally:
        await client.aclose()


def collect(socket_path: str, key: bytes, timeout: float = 5.0) -> dict[str, Any]:
    """Blocking: the template's counters (``template``) and its live children (``children``: tenant, pid,
    started, uptime, rss, uss, pss, memory_source), oldest first; ``children_omitted`` as in the stats reply.

    Errors: whatever :meth:`TemplateClient.connect` / ``stats`` raise (``TemplateUnavailable``,
    ``ControlProtocolError``)."""
    stats = asyncio.run(_stats(socket_path, key, timeout))
    now = time.time()
    children = []
    for entry in stats.pop("children", []):
        tenant, pid, started = entry
        mem = status.memory_of(pid)
        if mem is None:
            continue  # exited between the reply and the read
        children.append({"tenant": tenant, "pid": pid, "started": started, "uptime": max(0.0, now - started),
                         "rss": mem.rss, "uss": mem.uss, "pss": mem.pss, "memory_source": mem.source})
    omitted = stats.pop("children_omitted", 0)
    return {"template": stats, "children": children, "children_omitted": omitted}


def _summary(socket_path: str, t: dict[str, Any]) -> str:
    up = ""
    if isinstance(t.get("started"), int | float):
        up = f", up {max(0.0, time.time() - t['started']):.0f} s"
    return (f"template pid {t.get('pid')} on {socket_path}{up}: {t.get('live')} live, {t.get('idle')} idle "
            f"(pool {t.get('pool_size', '?')}), {t.get('spawns')} spawns ({t.get('pool_hits', '?')} from the "
            f"pool, {t.get('pool_misses', '?')} forked on request), {t.get('fork_failures', '?')} fork failures")


def _memory_note(children: list[dict[str, Any]]) -> str:
    statm = sum(1 for c in children if c["memory_source"] == "statm")
    if not statm:
        return "memory: USS, PSS and RSS from /proc/<pid>/smaps_rollup"
    return (f"memory: RSS only for {statm} of {len(children)} children (from /proc/<pid>/statm; '-' under "
            "uss/pss): their smaps is not readable by this user (sandboxed children are not dumpable; run "
            "as root or with CAP_SYS_PTRACE to see USS and PSS)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="walredo-template status",
        description="List a running template's tenant children (tenant, pid, uptime, USS/PSS/RSS).")
    parser.add_argument("--socket", required=True, help="the template's control socket")
    parser.add_argument("--key-file", default=None, metavar="PATH",
                        help="the template's key file (default: SOCKET.key)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the template (default 5)")
    args = parser.parse_args(argv)
    key_file = args.key_file if args.key_file is not None else args.socket + ".key"
    logging.basicConfig(level=logging.WARNING, format="walredo-template status: %(message)s")
    try:
        key = read_key(key_file)
    except (OSError, ValueError) as e:
        print(f"walredo-template status: cannot read the key file {key_file}: {e}", file=sys.stderr)
        return 3
    try:
        result = collect(args.socket, key, args.timeout)
    except Exception as e:  # TemplateUnavailable, ControlProtocolError (auth-failed: the wrong key)
        print(f"walredo-template status: cannot query the template at {args.socket}: {type(e).__name__}: {e}",
              file=sys.stderr)
        return 3
    children = result["children"]
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
        return 0
    print(_summary(args.socket, result["template"]))
    if children:
        print(status.format_table(children, COLUMNS))
        print(_memory_note(children))
    else:
        print("no tenant children")
    if result["children_omitted"]:
        print(f"({result['children_omitted']} more children not listed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
