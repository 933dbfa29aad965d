"""One fuzzing process for one target (started by :mod:`fuzzing.campaign`; child process).

    python -m fuzzing.worker TARGET --workdir DIR --seconds N [--engine atheris|random] [--seed-dir DIR]

``atheris`` (default): libFuzzer, coverage-guided, with the project packages instrumented
(``atheris.instrument_imports``), the structure-aware mutators of :mod:`fuzzing.targets` as libFuzzer's
custom mutator, ``DIR/corpus/TARGET`` as the corpus it grows and ``--seed-dir`` (the committed corpus)
read too. ``random``: the pure-Python engine (:class:`fuzzing.mutate.ByteMutator`, no coverage feedback)
over the seeds, for machines without atheris.

A :class:`~fuzzing.targets.Violation` does not stop the process: it is counted by signature and its input
saved (at most 3 per signature) under ``DIR/crashes/TARGET/<signature>/<sha1>.bin`` with the traceback or
fault in ``<sha1>.txt``. What libFuzzer itself catches (a timeout, running out of memory, an exception
escaping the harness) ends the process with its artifact under ``DIR/crashes/TARGET/``.
``DIR/stats/TARGET.json`` is rewritten every second: executions, violations, signatures.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import sys
import time
from collections import Counter
from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fuzzing.targets import Target

MAX_SAVED_PER_SIGNATURE = 3


class Recorder:
    """Counts executions and violations, saves violating inputs, writes the stats file."""

    def __init__(self, workdir: str, target: str) -> None:
        self.target = target
        self.crash_dir = os.path.join(workdir, "crashes", target)
        self.stats_path = os.path.join(workdir, "stats", f"{target}.json")
        os.makedirs(self.crash_dir, exist_ok=True)
        os.makedirs(os.path.dirname(self.stats_path), exist_ok=True)
        self.execs = 0
        self.signatures: Counter[str] = Counter()
        self.started = time.monotonic()
        self._flushed = 0.0
        self.flush()

    def violation(self, signature: str, detail: str, data: bytes) -> None:
        self.signatures[signature] += 1
        if self.signatures[signature] <= MAX_SAVED_PER_SIGNATURE:
            dirname = re.sub(r"[^A-Za-z0-9_.@:-]+", "_", signature.replace("?", "unknown"))[:150]
            d = os.path.join(self.crash_dir, dirname)
            os.makedirs(d, exist_ok=True)
            name = hashlib.sha1(data).hexdigest()
            with open(os.path.join(d, name + ".bin"), "wb") as f:
                f.write(data)
            with open(os.path.join(d, name + ".txt"), "w") as f:
                f.write(f"target {self.target}\nsignature {signature}\n\n{detail}\n")
            print(f"fuzz[{self.target}]: VIOLATION {signature} (input saved in {d})", file=sys.stderr, flush=True)

    def tick(self) -> None:
        self.execs += 1
        if self.execs & 63 == 0 and time.monotonic() - self._flushed >= 1.0:
            self.flush()

    def flush(self) -> None:
        now = time.monotonic()
        self._flushed = now
        doc = {"target": self.target, "execs": self.execs, "seconds": now - self.started,
               "violations": sum(self.signatures.values()), "signatures": dict(self.signatures)}
        tmp = self.stats_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(doc, f)
        os.replace(tmp, self.stats_path)


def _load_targets(instrument: ModuleType | None) -> ModuleType:
    if instrument is None:
        from fuzzing import targets
        return targets
    # Only what is imported inside the block is instrumented: the project's packages (the harness is not).
    with instrument.instrument_imports(include=["walredo_template", "forkserver"]):
        from fuzzing import targets
    return targets


def _read_dir(path: str | None) -> list[bytes]:
    if not path or not os.path.isdir(path):
        return []
    out = []
    for name in sorted(os.listdir(path)):
        full = os.path.join(path, name)
        if os.path.isfile(full):
            with open(full, "rb") as f:
                out.append(f.read())
    return out


def main(argv: list[str] | None = None) -> int:
    started = time.monotonic()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("target")
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--seconds", type=float, required=True,
                    help="how long to fuzz, counted from the start of this process (start-up included)")
    ap.add_argument("--engine", choices=["atheris", "random"], default="atheris")
    ap.add_argument("--seed-dir", default=None, help="an extra corpus read but not written (the committed one)")
    ap.add_argument("--timeout", type=int, default=20, help="seconds one input may take (atheris)")
    args = ap.parse_args(argv)

    atheris: ModuleType | None = None
    if args.engine == "atheris":
        import atheris as _atheris  # type: ignore[import-untyped]  # no type information shipped
        atheris = _atheris
    targets = _load_targets(atheris)
    target: Target = targets.TARGETS[args.target]
    rec = Recorder(args.workdir, args.target)
    corpus = os.path.join(args.workdir, "corpus", args.target)
    os.makedirs(corpus, exist_ok=True)
    violation_type = targets.Violation

    def one_input(data: bytes) -> None:
        rec.tick()
        try:
            target.run(data)
        except violation_type as v:
            rec.violation(v.signature, v.detail, data)

    if atheris is None:
        left = args.seconds - (time.monotonic() - started)
        return _run_random(target, one_input, [*_read_dir(corpus), *_read_dir(args.seed_dir)], left, rec)

    lib = atheris
    structured = target.mutate

    def mutate_bytes(data: bytes, max_size: int) -> bytes:
        # Looked up on every call: Setup() rebinds atheris.Mutate to the core it loads (a reference taken
        # before Setup is a stub that fails with "Fuzz() must be called before Mutate()").
        out: bytes = lib.Mutate(data, max_size)
        return out

    def custom_mutator(data: bytes, max_size: int, seed: int) -> bytes:
        rng = random.Random(seed)
        if structured is None:
            return mutate_bytes(data, max_size)
        return structured(data, max_size, mutate_bytes, rng)

    # Instrumenting the imports takes seconds: libFuzzer's clock starts only now.
    left = int(args.seconds - (time.monotonic() - started))
    lf_args = [sys.argv[0], f"-max_total_time={max(1, left)}", f"-timeout={args.timeout}",
               "-rss_limit_mb=2048", f"-max_len={target.max_len}", "-print_final_stats=1",
               f"-artifact_prefix={rec.crash_dir}/", corpus]
    if args.seed_dir and os.path.isdir(args.seed_dir):
        lf_args.append(args.seed_dir)
    atheris.Setup(lf_args, one_input, custom_mutator=custom_mutator)
    atheris.Fuzz()  # libFuzzer exits the process at -max_total_time
    return 0


def _run_random(target: Target, one_input: Callable[[bytes], None], seeds: list[bytes], seconds: float,
                rec: Recorder) -> int:
    from fuzzing.mutate import ByteMutator

    rng = random.Random(0)
    mutator = ByteMutator(rng)
    deadline = time.monotonic() + seconds
    for s in seeds:
        one_input(s)
    while seeds and time.monotonic() < deadline:
        data = rng.choice(seeds)
        for _ in range(1 + rng.randrange(3)):
            data = target.mutate(data, target.max_len, mutator, rng) if target.mutate else \
                mutator(data, target.max_len)
        one_input(data)
    rec.flush()
    print(f"stat::number_of_executed_units: {rec.execs}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
