"""``scripts/bench``: every benchmark, each in its own process, then a summary checked against the goals.

Each benchmark runs as ``python -m benchmarks.<name>`` (a fresh process, so one benchmark's heap, fds or
children cannot colour the next) with ``--quick`` / ``--out`` passed through. Afterwards
``<out>/summary.md`` holds the machine, the goals table (:mod:`benchmarks.goals`) and every benchmark's
tables; ``<out>/summary.json`` the goals and the machine.

Run: ``scripts/bench [--quick] [--profile] [--only cold_spawn,walredo,...] [--out DIR]``
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import asdict

from benchmarks.goals import evaluate, goals_table
from benchmarks.report import machine
from benchmarks.runner import DEFAULT_OUT, REPO_ROOT, log

BENCHMARKS = ["cold_spawn", "coalescing", "walredo", "memory", "scale", "pyversions"]
PROFILED = {"cold_spawn", "walredo"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes for every benchmark")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="results directory (default: %(default)s)")
    p.add_argument("--only", default=",".join(BENCHMARKS), help="comma-separated subset, in this order")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--profile", action="store_true",
                   help="add py-spy profiling passes (cold_spawn, walredo): where the time goes, as tables")
    args = p.parse_args(argv)
    names = [n for n in BENCHMARKS if n in args.only.split(",")]
    failed = []
    started = time.perf_counter()
    for name in names:
        cmd = [sys.executable, "-m", f"benchmarks.{name}", "--out", args.out]
        if args.quick:
            cmd.append("--quick")
        if args.no_plots:
            cmd.append("--no-plots")
        if args.profile and name in PROFILED:
            cmd.append("--profile")
        log(f"bench: {' '.join(cmd[1:])}")
        rc = subprocess.run(cmd, cwd=REPO_ROOT, stdout=subprocess.DEVNULL).returncode
        if rc != 0:
            failed.append(name)
            log(f"bench: {name} FAILED (exit {rc})")
    out = REPO_ROOT / args.out if not args.out.startswith("/") else __import__("pathlib").Path(args.out)
    results = {}
    for name in names:
        path = out / f"{name}.json"
        if name not in failed and path.exists():
            results[name] = json.loads(path.read_text())
    goals = evaluate(results)
    m = machine()
    header = (f"Machine: {m['nproc']} × {m['cpu_model']}, {m['memory_gib']} GiB RAM, Linux {m['kernel']}, "
              f"Python {m['python']}; load average at the end {m['loadavg']}; {m['time_utc']}.\n")
    parts = ["## Benchmark summary\n", header, goals_table(goals).to_markdown()]
    for name in names:
        md = out / f"{name}.md"
        if name in results and md.exists():
            parts.append(md.read_text())
    if failed:
        parts.append(f"Failed benchmarks: {', '.join(failed)}\n")
    (out / "summary.md").write_text("\n".join(parts))
    (out / "summary.json").write_text(json.dumps({"machine": m, "failed": failed,
                                                  "goals": [asdict(g) for g in goals]}, indent=2) + "\n")
    print("\n".join(parts))
    log(f"bench: wrote {out / 'summary.md'} in {time.perf_counter() - started:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
