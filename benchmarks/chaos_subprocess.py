"""The process-level scenarios: a parent with its own manager runs in a subprocess (benchmarks/chaos.py re-executed as
``python -m benchmarks.chaos --role parent|emfile``), and the fault is to that parent: ``parent-kill``
SIGKILLs it and checks that every process it owned is gone; ``emfile`` has it lower its own RLIMIT_NOFILE
and report (one JSON line on stdout) whether every request ended typed and nothing leaked.

The first half runs in the campaign's process, the roles (:func:`parent_role`, :func:`emfile_role`) in the
subprocess.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import resource
import sys
import time
from collections import Counter
from typing import Any

import psutil  # type: ignore[import-untyped]  # no stubs installed (types-psutil)

from benchmarks.chaos_figures import Figures, Sizes
from benchmarks.chaos_load import REPO, Load, all_exited, template_pid, tenant_ids, wait_until
from benchmarks.chaos_procs import Reaper, alive
from forkserver import WalRedoManager
from forkserver.errors import ForkServerError


def _role_cmd(role: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "benchmarks.chaos", "--role", role, *args]


def _role_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    return env


async def _read_json_line(stream: asyncio.StreamReader, bound: float) -> dict[str, Any]:
    while True:
        line = await asyncio.wait_for(stream.readline(), bound)
        if not line:
            raise EOFError("the subprocess exited without a report")
        if line.startswith(b"{"):
            out: dict[str, Any] = json.loads(line)
            return out


async def parent_kill(sz: Sizes, fig: Figures, reaper: Reaper) -> None:
    """SIGKILL a parent (a subprocess with a manager, warm tenants under load): every process it owned must be
    gone within ``parent_gone_bound``. Recovery: SIGKILL → the last of them gone."""
    counts: list[int] = []
    for _ in range(sz.parent_kills):
        proc = await asyncio.create_subprocess_exec(
            *_role_cmd("parent", "--tenants", str(sz.parent_tenants)), cwd=REPO, env=_role_env(),
            stdout=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL)
        reaper.protected.add(proc.pid)
        try:
            assert proc.stdout is not None
            report = await _read_json_line(proc.stdout, 60.0)
            await asyncio.sleep(0.3)  # under load
            owned = {p.pid: p for p in psutil.Process(proc.pid).children(recursive=True)}
            counts.append(len(owned))
            if not report.get("children"):
                fig.problems.append("the parent reported no children")
            proc.kill()
            took = await wait_until(all_exited(owned),
                                   sz.parent_gone_bound, 0.002)
            if took is None:
                left = [pid for pid, p in owned.items() if alive(p)]
                fig.problems.append(f"{len(left)} processes of a killed parent alive after "
                                    f"{sz.parent_gone_bound} s")
            else:
                fig.recovery.append(took)
        finally:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
            reaper.protected.discard(proc.pid)
    fig.notes += [f"{sz.parent_kills} parents killed, each owning {min(counts, default=0)}–"
                  f"{max(counts, default=0)} processes (template, pool child, {sz.parent_tenants} tenants)",
                  "recovery = parent SIGKILL → every process it owned gone"]


async def emfile(sz: Sizes, fig: Figures, reaper: Reaper) -> None:
    """RLIMIT_NOFILE lowered in a subprocess parent to what it has open + 0..levels-1: every request must end
    typed, the parent recover once the limit is back, and no fd leak."""
    proc = await asyncio.create_subprocess_exec(
        *_role_cmd("emfile", "--levels", str(sz.emfile_levels), "--requests", str(sz.emfile_requests)),
        cwd=REPO, env=_role_env(), stdout=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL)
    reaper.protected.add(proc.pid)
    try:
        assert proc.stdout is not None
        report = await _read_json_line(proc.stdout, 60.0 + sz.emfile_levels * 30.0)
    finally:
        if proc.returncode is None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(proc.wait(), 20.0)
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        reaper.protected.discard(proc.pid)
    fig.answers += int(report["answers"])
    fig.wrong += int(report["wrong"])
    fig.hung += int(report["hung"])
    fig.failed.update({str(k): int(v) for k, v in report["failed"].items()})
    fig.recovery += [float(v) for v in report["recovery"]]
    fig.problems += [str(v) for v in report["problems"]]
    fig.notes += [str(v) for v in report["notes"]]
    if proc.returncode != 0:
        fig.problems.append(f"the emfile parent exited with {proc.returncode}")


# ---------------------------------------------------------------------------------------------- subprocess roles


async def parent_role(tenants: int) -> None:
    """A parent to be SIGKILLed: a manager, warm tenants under load; reports its processes, runs ≤ 120 s."""
    async with WalRedoManager() as mgr:
        ids = tenant_ids(7, tenants)
        await asyncio.gather(*(mgr.ping(t) for t in ids))
        fig = Figures("parent")
        load = Load(mgr, fig, ids, max_records=20, rng=random.Random(7), hang_after=60.0)
        load.start(8)
        print(json.dumps({"template": template_pid(mgr), "children": [i.pid for i in mgr.processes().values()]}),
              flush=True)
        await asyncio.sleep(120.0)
        await load.stop()


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


async def emfile_role(levels: int, requests: int) -> dict[str, object]:
    fig = Figures("emfile")
    rng = random.Random(8)
    untyped: Counter[str] = Counter()
    by_level: list[str] = []
    async with WalRedoManager(request_timeout=5.0) as mgr:
        await asyncio.sleep(0.2)
        base = _fd_count()
        warm = tenant_ids(8, 4)
        await asyncio.gather(*(mgr.ping(t) for t in warm))
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        load = Load(mgr, fig, warm, max_records=20, rng=rng, hang_after=30.0)
        next_cold = 0
        for headroom in range(levels):
            cold = tenant_ids(9, requests // 2, next_cold)
            next_cold += len(cold)
            level = Figures("level")
            t_level = time.monotonic()
            resource.setrlimit(resource.RLIMIT_NOFILE, (_fd_count() + headroom, hard))
            try:
                errs = await asyncio.gather(*(load.one(t, level) for t in cold + warm[: requests - len(cold)]))
            finally:
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            untyped.update(type(e).__name__ for e in errs if e is not None and not isinstance(e, ForkServerError)
                           and not isinstance(e, TimeoutError))
            by_level.append(f"+{headroom}: {level.answers} ok" + (f", {dict(level.failed)}" if level.failed else "")
                            + f" in {time.monotonic() - t_level:.1f} s")
            for name in ("answers", "wrong", "hung"):
                setattr(fig, name, getattr(fig, name) + getattr(level, name))
            fig.failed.update(level.failed)
            # recovery: the limit back → a cold and a warm tenant answer
            t0 = time.monotonic()
            probe = Figures("probe")
            for _ in range(50):
                if (await load.one(tenant_ids(10, 1, headroom)[0], probe) is None
                        and await load.one(rng.choice(warm), probe) is None):
                    fig.recovery.append(time.monotonic() - t0)
                    break
                await asyncio.sleep(0.1)
            else:
                fig.problems.append(f"no recovery after EMFILE at headroom {headroom}")
            fig.wrong += probe.wrong
        mgr.quiesce_idle(now=time.time() + 1e9)  # stop every process: what is left open is a leak
        await wait_until(lambda: not mgr.processes(), 5.0)
        await asyncio.sleep(1.0)
        end = _fd_count()
        if end > base:
            fig.problems.append(f"fd leak: {base} open before, {end} after every process stopped")
        fig.notes += [f"headroom 0..{levels - 1} fds, {requests} requests each (half cold): " + "; ".join(by_level),
                      f"fds: {base} before, {end} after all processes stopped",
                      f"template restarts {mgr.template.restarts}", "recovery = limit restored → cold+warm answered"]
    if untyped:
        fig.problems.append(f"untyped failures {dict(untyped)}")
    return {"answers": fig.answers, "wrong": fig.wrong, "hung": fig.hung, "failed": dict(fig.failed),
            "recovery": fig.recovery, "problems": fig.problems, "notes": fig.notes}
