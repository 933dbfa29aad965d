"""Python versions side by side: cold spawn, faults per spawn and idle child memory under 3.11, 3.12, 3.13.

Each version runs the whole service stack — this benchmark's parent side, ``WalRedoManager``, the template
and its children — in its own interpreter: ``<venv>/bin/python -m benchmarks.pyversions --measure`` (one
subprocess per version and round, the versions interleaved round by round so that the machine's load
drifts over all of them alike), running :func:`benchmarks.pool_spawn.measure_version`:

- cold spawn through ``WalRedoManager``: *sporadic* (10 ms apart: pool hits) and back to back, p50;
- the child's minor faults on the request path (after its first pong minus while idle in the pool) and in
  total at ready;
- idle child USS/PSS with ``--siblings`` (100) idle siblings, the template's RSS/USS;
- a warm ping and a raw fork of a process the template's size with the same interpreter (the floor).

Interpreters: ``--pythons 3.11,3.12,3.13`` resolves each to ``/root/.pyenv/versions/<v>*`` (or ``$PYENV_ROOT``)
or takes a path; ``current`` is this interpreter. For each one a throwaway venv with the project's runtime
dependencies only (read from ``pyproject.toml``; the source tree itself is on the path through ``-m`` from the
repository root) is created under ``.tmp/pyvenv/<version>`` (gitignored) when missing, with pip from the
package index.

Run: ``scripts/bench_pyversions [--quick] [--pythons 3.11,3.12,3.13] [--rounds N] [--pool N]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

from benchmarks import runner
from benchmarks.report import Table
from benchmarks.runner import REPO_ROOT, log
from benchmarks.stats import fmt

VENV_ROOT = REPO_ROOT / ".tmp" / "pyvenv"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pythons", default="3.11,3.12,3.13", help="versions (pyenv) or interpreter paths, or "
                   "'current'")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds per version (default 3; quick 1)")
    p.add_argument("--spawns", type=int, default=None, help="cold spawns per mode and round (default 100; quick 20)")
    p.add_argument("--siblings", type=int, default=None, help="idle siblings for the memory sample (default 100; "
                   "quick 10)")
    p.add_argument("--pool", type=int, default=None, help="template pool size ($WALREDO_TEMPLATE_POOL)")
    p.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)  # one version's run (internal)


def _pyenv_root() -> Path:
    return Path(os.environ.get("PYENV_ROOT", "/root/.pyenv"))


def base_interpreter(spec: str) -> Path:
    """The interpreter ``spec`` names: a path, or the newest pyenv version starting with it."""
    if spec == "current":
        return Path(sys.executable)
    if "/" in spec:
        return Path(spec)
    versions = sorted((_pyenv_root() / "versions").glob(f"{spec}*"),
                      key=lambda p: [int(x) if x.isdigit() else 0 for x in p.name.split(".")])
    versions = [v for v in versions if (v / "bin" / "python").exists() and v.name.split(".")[:2] == spec.split(".")[:2]]
    if not versions:
        raise SystemExit(f"no Python {spec} under {_pyenv_root() / 'versions'}")
    return versions[-1] / "bin" / "python"


def runtime_deps() -> list[str]:
    with open(REPO_ROOT / "pyproject.toml", "rb") as f:
        return list(tomllib.load(f)["project"]["dependencies"])


def ensure_venv(base: Path) -> Path:
    """A venv of ``base`` with the runtime dependencies under :data:`VENV_ROOT` (created when missing)."""
    if base == Path(sys.executable):
        return base
    version = subprocess.run([str(base), "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    venv = VENV_ROOT / version
    py = venv / "bin" / "python"
    deps = runtime_deps()
    check = [str(py), "-c", "import msgpack, psutil, setproctitle, prometheus_client, crc32c"]
    if py.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return py
    log(f"pyversions: creating {venv} ({base}) with {', '.join(deps)}")
    subprocess.run([str(base), "-m", "venv", str(venv)], check=True)
    subprocess.run([str(py), "-m", "pip", "install", "-q", *deps], check=True, stdout=sys.stderr)
    return py


def _measure_cmd(py: Path, args: argparse.Namespace, spawns: int, siblings: int) -> list[str]:
    cmd = [str(py), "-m", "benchmarks.pyversions", "--measure", "--spawns", str(spawns), "--siblings", str(siblings)]
    if args.pool is not None:
        cmd += ["--pool", str(args.pool)]
    return cmd


async def _measure_one(py: Path, cmd: list[str]) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(*cmd, cwd=REPO_ROOT, stdout=asyncio.subprocess.PIPE,
                                                stdin=asyncio.subprocess.DEVNULL)
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{py} --measure exited {proc.returncode}")
    return dict(json.loads(out))


def _med(values: list[float]) -> float:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else float("nan")


async def run(args: argparse.Namespace) -> tuple[dict[str, Any], list[Table]]:
    rounds = args.rounds or (1 if args.quick else 3)
    spawns = args.spawns or (20 if args.quick else 100)
    siblings = args.siblings if args.siblings is not None else (10 if args.quick else 100)
    specs = [s.strip() for s in args.pythons.split(",") if s.strip()]
    loop = asyncio.get_running_loop()
    pys = {}
    for spec in specs:
        # venv creation blocks (pip): off the loop, although nothing else runs yet
        pys[spec] = await loop.run_in_executor(None, ensure_venv, base_interpreter(spec))
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in specs}
    for r in range(rounds):
        for spec in specs:
            log(f"pyversions: round {r + 1}/{rounds}, Python {spec} ({pys[spec]})")
            runs[spec].append(await _measure_one(pys[spec], _measure_cmd(pys[spec], args, spawns, siblings)))
    table = Table(
        "Python versions side by side (median over rounds of each round's p50)",
        ["Python", "warm ping (ms)", "sporadic cold spawn p50 (ms)", "× warm", "back-to-back cold p50 (ms)",
         "raw fork→ready p50 (ms)", "child faults: request path / at ready", "template faults per spawn",
         f"idle child USS / PSS (MiB, {siblings} siblings)", "template RSS / USS (MiB)"],
        note=f"{rounds} interleaved round(s) per version, {spawns} cold spawns per mode and round, pool "
             f"{args.pool if args.pool is not None else 'default'}. Each version runs parent, manager, template and "
             "children in its own interpreter (a venv with the runtime dependencies). Sporadic: one cold tenant "
             "every 10 ms (pool hits). Faults: minor faults of the child after its first pong minus while idle in "
             "the pool / in total; template faults: the template's minor faults over one pool-hit spawn.")
    rows = {}
    for spec in specs:
        rs = runs[spec]
        row = {
            "python": rs[0]["python"],
            "warm_ms": _med([x["sporadic"]["warm_ms"]["p50"] for x in rs]),
            "sporadic_ms": _med([x["sporadic"]["ready_ms"]["p50"] for x in rs]),
            "back_to_back_ms": _med([x["back_to_back"]["ready_ms"]["p50"] for x in rs]),
            "raw_fork_ms": _med([x["raw_fork"]["ready_ms"]["p50"] for x in rs]),
            "faults_on_path": _med([x["sporadic"]["faults_on_path"]["p50"] for x in rs]),
            "faults_at_ready": _med([x["sporadic"]["faults_at_ready"]["p50"] for x in rs]),
            "template_faults": _med([x["sporadic"]["template_faults"]["p50"] for x in rs]),
            "uss": _med([x["memory"]["child"]["uss"] for x in rs]),
            "pss": _med([x["memory"]["child"]["pss"] for x in rs]),
            "tmpl_rss": _med([x["template_mem"]["rss"] for x in rs]),
            "tmpl_uss": _med([x["template_mem"]["uss"] for x in rs]),
        }
        rows[spec] = row
        table.add(row["python"], fmt(row["warm_ms"], 3), fmt(row["sporadic_ms"], 3),
                  f"{row['sporadic_ms'] / row['warm_ms']:.1f}×", fmt(row["back_to_back_ms"], 3),
                  fmt(row["raw_fork_ms"], 3), f"{fmt(row['faults_on_path'], 0)} / {fmt(row['faults_at_ready'], 0)}",
                  fmt(row["template_faults"], 0),
                  f"{fmt(row['uss'])} / {fmt(row['pss'])}", f"{fmt(row['tmpl_rss'], 1)} / {fmt(row['tmpl_uss'], 1)}")
    return {"rows": rows, "runs": runs, "interpreters": {s: str(p) for s, p in pys.items()}}, [table]


def _measure_main(argv: list[str]) -> int:
    from benchmarks.pool_spawn import measure_version

    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args(argv)
    res = asyncio.run(measure_version(args.pool, args.spawns or 100, args.siblings if args.siblings is not None
                                      else 100, raw_samples=200))
    json.dump(res, sys.stdout)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--measure" in argv:
        return _measure_main(argv)
    return runner.main("pyversions", __doc__.splitlines()[0], add_arguments, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
