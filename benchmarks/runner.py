"""The command line every benchmark shares and the wrapper that runs one and writes its results.

A benchmark module defines ``add_arguments(parser)`` for its size flags and ``async def run(args)``
returning ``(data, tables)``; :func:`main` parses ``--quick`` / ``--out``, runs it on a fresh event loop and
writes ``<out>/<name>.json`` and ``<name>.md`` (see :mod:`benchmarks.report`).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.report import Table, write_results

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "bench-results"

RunFn = Callable[[argparse.Namespace], Awaitable[tuple[dict[str, Any], list[Table]]]]


def log(msg: str) -> None:
    """Progress on stderr (stdout carries the Markdown result)."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def main(name: str, description: str, add_arguments: Callable[[argparse.ArgumentParser], None],
         run: RunFn, argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"bench_{name}", description=description)
    parser.add_argument("--quick", action="store_true", help="small sizes: seconds, not minutes")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results directory (default: %(default)s)")
    parser.add_argument("--no-plots", action="store_true", help="skip PNG plots even if matplotlib is installed")
    add_arguments(parser)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        data, tables = asyncio.run(run(args))
    except KeyboardInterrupt:
        # asyncio.run cancelled the benchmark, whose finally blocks closed and reaped what it started.
        log(f"{name}: interrupted; nothing written")
        return 130
    data.setdefault("params", {})
    data["params"].update({k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()})
    data["wall_seconds"] = round(time.perf_counter() - started, 2)
    json_path, md_path = write_results(args.out, name, data, tables)
    for t in tables:
        print(t.to_markdown())
    log(f"{name}: wrote {json_path} and {md_path} in {data['wall_seconds']} s")
    return 0
