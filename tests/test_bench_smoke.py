"""Smoke test of the benchmarks: each one runs end to end on tiny sizes, writes its JSON and Markdown,
and leaves no process behind. No timing is asserted (benchmarks are not tests; see ``scripts/bench``).

Leftovers are caught with ``PR_SET_CHILD_SUBREAPER``: while this module runs, any orphaned descendant
of a benchmark (a template, a tenant child, a baseline worker) is re-parented to the test process,
where ``psutil`` sees it.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.goals import evaluate, goals_table  # noqa: E402

PR_SET_CHILD_SUBREAPER = 36

TINY = {
    # The pool modes ride along with the method matrix: sporadic, burst and storm through WalRedoManager.
    "cold_spawn": ["--spawns", "3", "--heaps", "0,0.01", "--floor-seconds", "0.05", "--pool", "2",
                   "--sporadic", "3", "--bursts", "2", "--storm", "6", "--raw-samples", "5"],
    # Only this interpreter (no venv is created): the per-version subprocess and the table.
    "pyversions": ["--pythons", "current", "--rounds", "1", "--spawns", "3", "--siblings", "2"],
    "coalescing": ["--requests", "30", "--rounds", "1"],
    "walredo": ["--clients", "1,2", "--seconds", "0.05"],
    "memory": ["--requests", "40"],
    "scale": ["--tenants", "8", "--concurrency", "4"],
}


def _check_cold_spawn(data: dict) -> None:
    pool = data["pool_modes"]
    assert pool["pool"] == 2
    assert pool["sporadic"]["ready_ms"]["n"] == 3 and pool["back_to_back"]["ready_ms"]["n"] == 3
    assert pool["sporadic_prefaulted"]["ready_ms"]["n"] == 3 and pool["hit_split"]["reply"]["n"] == 3
    assert pool["burst"]["size"] == 2 and pool["burst"]["each_ready_ms"]["n"] == 4
    storm = pool["storm"]
    assert storm["n"] == 6 and storm["ready_ms"]["n"] == 6 and storm["live_at_end"] >= 6
    assert pool["raw_fork"]["storm"]["n"] == 6 and pool["raw_fork"]["ready_ms"]["n"] == 5
    assert {r["method"] for r in data["rows"]} >= {"template"}


def _check_pyversions(data: dict) -> None:
    (row,) = data["rows"].values()
    assert row["python"] == sys.version.split()[0]
    (run,) = data["runs"]["current"]
    assert run["sporadic"]["ready_ms"]["n"] == 3 and run["memory"]["siblings"] == 2


CHECKS = {"cold_spawn": _check_cold_spawn, "pyversions": _check_pyversions}


def _set_subreaper(on: bool) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def _reap_and_list_live() -> list[psutil.Process]:
    live = []
    for child in psutil.Process().children():
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                os.waitpid(child.pid, os.WNOHANG)
            else:
                live.append(child)
        except (psutil.NoSuchProcess, ChildProcessError):
            pass
    return live


@pytest.fixture(scope="module")
def subreaper():
    _set_subreaper(True)
    try:
        yield
    finally:
        _set_subreaper(False)


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bench-results")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", list(TINY))
def test_benchmark_runs_and_cleans_up(name, subreaper, results_dir):
    before = {p.pid for p in _reap_and_list_live()}
    proc = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{name}", "--quick", "--no-plots", "--out", str(results_dir), *TINY[name]],
        cwd=REPO, capture_output=True, text=True, timeout=100,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((results_dir / f"{name}.json").read_text())
    assert data["benchmark"] == name and data["tables"]
    assert (results_dir / f"{name}.md").read_text().count("|") > 4
    assert "#### " in proc.stdout  # the Markdown table is printed too
    CHECKS.get(name, lambda data: None)(data)
    # Nothing the benchmark started may outlive it (grace period: exits already under way).
    deadline = time.monotonic() + 3
    while (left := [p for p in _reap_and_list_live() if p.pid not in before]) and time.monotonic() < deadline:
        time.sleep(0.05)
    leaked = [(p.pid, p.cmdline()) for p in left]
    for p in left:  # our own descendants (re-parented to us): end them so a failure leaks nothing either
        try:
            p.kill()
            p.wait(5)
        except psutil.Error:
            pass
    assert not leaked, leaked


def test_goals_summary_from_results(results_dir):
    results = {}
    for name in TINY:
        path = results_dir / f"{name}.json"
        if path.exists():
            results[name] = json.loads(path.read_text())
    goals = evaluate(results)
    assert len(goals) >= 6
    md = goals_table(goals).to_markdown()
    assert "coalesced" in md and "| goal |" in md
    if "coalescing" in results:
        # Not a timing: the template's own spawn count for one cold tenant.
        assert results["coalescing"]["all_single_spawn"]
