"""``scripts/fuzz``: run the fuzz targets within a time budget and print one table (parent process).

Each target runs in its own worker process (:mod:`fuzzing.worker`), one after the other, for its share
of ``--seconds`` (default 600 in all; ``apply`` and ``apply-valid`` get 2 shares each, each decoder 1:
they are the slowest per input and have the largest space). A share is what is left of the budget, split
by weight over the targets still to run. The worker is told to stop a few seconds before its share ends,
its start-up (instrumenting the imports takes ~5 s) included, and is killed with its process group when
the share is over, so nothing outlives the budget.

Before the first run the corpus dirs (``WORKDIR/corpus/TARGET``) are seeded from the committed capture
(``tests/data/wal-small/capture.msgpack``); the committed corpus (``tests/data/fuzz-corpus/TARGET``) is
read too. ``--write-seeds`` regenerates that committed corpus from the capture instead of fuzzing.
Exit status: 1 if any target had a violation or a libFuzzer crash/timeout/oom artifact, else 0.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CAPTURE = os.path.join(REPO, "tests", "data", "wal-small", "capture.msgpack")
COMMITTED = os.path.join(REPO, "tests", "data", "fuzz-corpus")
WEIGHTS = {"control": 1, "child": 1, "record": 1, "apply": 2, "apply-valid": 2}
# Seeds kept per (access method, fork, rmgr, info, page kind) in the committed apply corpus (the
# run-time corpus gets 2): keeps tests/data/fuzz-corpus to a few hundred KB.
COMMITTED_APPLY_PER_KEY = 1


@dataclass
class Result:
    target: str
    seconds: float
    execs: int
    corpus: int
    signatures: dict[str, int]
    artifacts: list[str]
    rc: int | None

    @property
    def crashes(self) -> int:
        return len(self.signatures) + len(self.artifacts)


def _write_corpus(dirname: str, inputs: list[bytes]) -> int:
    os.makedirs(dirname, exist_ok=True)
    new = 0
    for data in inputs:
        path = os.path.join(dirname, hashlib.sha1(data).hexdigest())
        if not os.path.exists(path):
            with open(path, "wb") as f:
                f.write(data)
            new += 1
    return new


def seed_inputs(name: str, *, committed: bool = False) -> list[bytes]:
    from fuzzing import inputs, targets
    from walredo_tools.capture import load_capture

    doc = load_capture(CAPTURE)
    if name in ("apply", "apply-valid") and committed:
        return [inputs.encode_apply(i) for i in inputs.apply_seeds(doc, per_key=COMMITTED_APPLY_PER_KEY)]
    return targets.TARGETS[name].seeds(doc)


def write_committed_seeds(names: list[str]) -> None:
    from fuzzing.targets import TARGETS

    for name in names:
        if TARGETS[name].corpus != name:
            continue  # shares another target's corpus
        d = os.path.join(COMMITTED, name)
        shutil.rmtree(d, ignore_errors=True)
        n = _write_corpus(d, seed_inputs(name, committed=True))
        size = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
        print(f"{name}: {n} seeds, {size / 1024:.0f} KiB in {os.path.relpath(d, REPO)}")


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_target(name: str, share: float, workdir: str, engine: str) -> Result:
    from fuzzing.targets import TARGETS

    corpus = os.path.join(workdir, "corpus", name)
    _write_corpus(corpus, seed_inputs(name))
    stats_path = os.path.join(workdir, "stats", f"{name}.json")
    if os.path.exists(stats_path):
        os.unlink(stats_path)
    crash_dir = os.path.join(workdir, "crashes", name)
    os.makedirs(crash_dir, exist_ok=True)
    artifacts_before = set(os.listdir(crash_dir))
    # The worker stops itself this long before its share ends (libFuzzer's last round and exit); the
    # parent kills the group at the end of the share whatever happens.
    margin = min(5.0, max(1.5, share * 0.05))
    cmd = [sys.executable, "-m", "fuzzing.worker", name, "--workdir", workdir, "--engine", engine,
           "--seconds", str(max(1.0, share - margin)), "--seed-dir", os.path.join(COMMITTED, TARGETS[name].corpus)]
    log_path = os.path.join(workdir, f"{name}.log")
    t0 = time.monotonic()
    killed = False
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            proc.wait(timeout=max(1.0, share - (time.monotonic() - t0)))
        except subprocess.TimeoutExpired:
            killed = True
            print(f"fuzz: {name} still running at the end of its share: killing it", file=sys.stderr)
        except BaseException:
            _kill_group(proc)
            raise
        finally:
            _kill_group(proc)  # the worker's group: nothing it started may outlive its share
    elapsed = time.monotonic() - t0
    with open(log_path, "rb") as f:
        text = f.read().decode("utf-8", "replace")
    stats: dict[str, object] = {}
    if os.path.exists(stats_path):
        with open(stats_path) as f:
            stats = json.load(f)
    execs = int(str(stats.get("execs", 0)))
    m = re.findall(r"stat::number_of_executed_units: (\d+)", text)
    if m:
        execs = max(execs, int(m[-1]))
    sigs = stats.get("signatures", {})
    artifacts = sorted(a for a in set(os.listdir(crash_dir)) - artifacts_before
                       if re.match(r"(crash|timeout|oom|leak|slow-unit)-", a))
    # Killed at the end of its share (libFuzzer exits 72 on SIGTERM): the budget held, not a crash.
    if proc.returncode not in (0, None) and not artifacts and not killed:
        artifacts.append(f"worker exit status {proc.returncode} (see {os.path.relpath(log_path, REPO)})")
    return Result(name, elapsed, execs, len(os.listdir(corpus)), dict(sigs) if isinstance(sigs, dict) else {},
                  artifacts, proc.returncode)


def table(results: list[Result]) -> str:
    rows = [("target", "executions", "exec/s", "corpus", "crashes", "violations")]
    for r in results:
        rows.append((r.target, f"{r.execs:,}", f"{r.execs / r.seconds:,.0f}" if r.seconds else "-",
                     str(r.corpus), str(r.crashes), f"{sum(r.signatures.values()):,}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 epilog="crashes = distinct violation signatures + libFuzzer artifacts; "
                                        "violations = violating inputs executed")
    ap.add_argument("--target", default="all", choices=["all", *WEIGHTS])
    ap.add_argument("--seconds", type=float, default=600.0, help="time budget in all (default 600)")
    ap.add_argument("--workdir", default=os.path.join(REPO, ".tmp", "fuzz"),
                    help="corpus, crashes, logs (default .tmp/fuzz, git-ignored)")
    ap.add_argument("--engine", choices=["atheris", "random"], default="atheris",
                    help="random: the pure-Python mutator, no coverage guidance (no atheris needed)")
    ap.add_argument("--write-seeds", action="store_true",
                    help="regenerate the committed corpus tests/data/fuzz-corpus from the capture and exit")
    args = ap.parse_args(argv)
    names = list(WEIGHTS) if args.target == "all" else [args.target]
    if args.write_seeds:
        write_committed_seeds(names)
        return 0
    workdir = os.path.abspath(args.workdir)
    deadline = time.monotonic() + args.seconds
    results = []
    for i, name in enumerate(names):
        # What is left of the budget, split by weight over the targets still to run (seeding the corpus
        # dirs takes a second or so per target: it comes out of the budget too).
        left = sum(WEIGHTS[n] for n in names[i:])
        share = max(1.0, (deadline - time.monotonic()) * WEIGHTS[name] / left)
        print(f"fuzz: {name} for {share:.0f} s ({args.engine})", file=sys.stderr, flush=True)
        results.append(run_target(name, share, workdir, args.engine))
    print(table(results))
    bad = [r for r in results if r.crashes]
    for r in bad:
        print(f"\n{r.target}: {r.crashes} crash signature(s); inputs under "
              f"{os.path.relpath(os.path.join(workdir, 'crashes', r.target), REPO)}")
        for sig, n in sorted(r.signatures.items(), key=lambda kv: -kv[1]):
            print(f"  {n:>8,}  {sig}")
        for a in r.artifacts:
            print(f"  libFuzzer: {a}")
    return 1 if bad else 0
