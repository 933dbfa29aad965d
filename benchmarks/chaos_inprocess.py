"""The in-process scenarios: a ``WalRedoManager`` in this process, a fault injected into its children or its
template (``kill-slow``/``kill-fast``, ``template-kill``/``template-stop``, ``child-stop``; see
benchmarks/chaos.py for what each checks).
"""

from __future__ import annotations

import asyncio
import random
import signal
import time

from benchmarks.chaos_figures import Figures, Sizes, error_name, p50_max
from benchmarks.chaos_load import Load, absent, exited, new_template, stops_note, template_pid, tenant_ids, wait_until
from benchmarks.chaos_procs import signal_mine
from forkserver import RedoTimeout, WalRedoManager


async def kill_storm(sz: Sizes, fig: Figures, kills: int, rate: float, rng: random.Random) -> None:
    """SIGKILL random tenant children at ``rate``/s under load; recovery: kill → that tenant listed with a new
    pid in ``processes()``."""
    async with WalRedoManager(request_timeout=sz.request_timeout) as mgr:
        tenants = tenant_ids(1, sz.tenants)
        await asyncio.gather(*(mgr.ping(t) for t in tenants))
        load = Load(mgr, fig, tenants, max_records=sz.max_records, rng=rng,
                    hang_after=(mgr.retries + 1) * sz.request_timeout + 5.0)
        load.start(sz.concurrency)
        pending: dict[str, tuple[int, float]] = {}
        done = 0
        t0 = time.monotonic()
        try:
            while done < kills:
                await asyncio.sleep(max(0.0, t0 + (done + 1) / rate - time.monotonic()))
                procs = mgr.processes()
                now = time.monotonic()
                for tenant, (pid, at) in list(pending.items()):
                    info = procs.get(tenant)
                    if info is not None and info.pid != pid:
                        fig.recovery.append(now - at)
                        del pending[tenant]
                victims = [i for i in procs.values() if i.tenant_id not in pending]
                if not victims:
                    continue
                victim = rng.choice(victims)
                if signal_mine(victim.pid, signal.SIGKILL):
                    done += 1
                    pending[victim.tenant_id] = (victim.pid, time.monotonic())
            storm = time.monotonic() - t0
            await asyncio.sleep(0.5)
        finally:
            await load.stop()
        if load.untyped:
            fig.problems.append(f"untyped failures {dict(load.untyped)}")
        fig.notes += [f"{done} kills in {storm:.1f} s ({done / storm:.0f}/s), {sz.tenants} tenants, "
                      f"{sz.concurrency} in flight", load.latency_note(), f"stops counted: {stops_note(mgr)}",
                      "recovery = kill → tenant has a new pid"]


async def template_faults(sz: Sizes, fig: Figures, rng: random.Random, *, stop: bool) -> None:
    """The template SIGKILLed (``stop=False``) or SIGSTOPped during a spawn storm, warm tenants under load."""
    rt = sz.stop_request_timeout if stop else sz.request_timeout
    async with WalRedoManager(request_timeout=rt) as mgr:
        warm, cold = tenant_ids(2, sz.warm), tenant_ids(3, sz.cold)
        await asyncio.gather(*(mgr.ping(t) for t in warm + cold))
        # Hung: no outcome within the bound a caller is promised (request_timeout per try) plus slack. With the
        # template stopped, the fix makes a cold request end within request_timeout.
        hang_after = rt + 2.0 if stop else (mgr.retries + 1) * rt + 5.0
        load = Load(mgr, fig, warm, max_records=sz.max_records, rng=rng, hang_after=hang_after)
        coldfig = Figures("cold")
        storm_on = asyncio.Event()
        storm_on.set()

        async def spawner() -> None:
            while not load._stop.is_set():
                await storm_on.wait()
                tenant = rng.choice(cold)
                info = mgr.processes().get(tenant)
                if info is not None:
                    signal_mine(info.pid, signal.SIGKILL)
                    await wait_until(absent(mgr, tenant), 1.0)
                await load.one(tenant, coldfig)

        load.start(sz.concurrency)
        spawners = [asyncio.get_running_loop().create_task(spawner()) for _ in range(sz.spawners)]
        replaced_while_stopped = 0
        try:
            rounds = sz.stop_rounds if stop else sz.template_kills
            for _ in range(rounds):
                await asyncio.sleep(sz.template_kill_interval)
                if await wait_until(lambda: template_pid(mgr) is not None, 15.0) is None:
                    fig.problems.append("no template for 15 s")
                    break
                pid = template_pid(mgr)
                assert pid is not None
                if not stop:
                    if not signal_mine(pid, signal.SIGKILL):
                        continue
                    t0 = time.monotonic()
                    await wait_until(new_template(mgr, pid), 15.0)
                else:
                    storm_on.clear()
                    answers0 = fig.answers
                    signal_mine(pid, signal.SIGSTOP)
                    t_stop = time.monotonic()
                    probe_tenant = rng.choice(cold)
                    info = mgr.processes().get(probe_tenant)
                    if info is not None:
                        signal_mine(info.pid, signal.SIGKILL)
                        await wait_until(absent(mgr, probe_tenant), 1.0)
                    probe = Figures("probe")
                    bounded = asyncio.ensure_future(load.one(probe_tenant, coldfig))
                    # The same request left to run to its own end (bounded by stop_max): how it fails today.
                    long_load = Load(mgr, probe, [], max_records=sz.max_records, rng=rng, hang_after=sz.stop_max)
                    long = asyncio.ensure_future(long_load.one(probe_tenant))
                    await asyncio.wait([long], timeout=sz.stop_max + 1)
                    stopped_for = time.monotonic() - t_stop
                    outcome = "answered" if probe.answers else ("hung" if probe.hung else "/".join(probe.failed))
                    if template_pid(mgr) not in (None, pid):
                        replaced_while_stopped += 1
                    fig.notes.append(f"cold request with template stopped: {outcome} after {stopped_for:.1f} s "
                                     f"(bound {hang_after:.0f} s); warm answers meanwhile "
                                     f"{fig.answers - answers0}")
                    if fig.answers == answers0:
                        fig.problems.append("warm tenants stopped answering while the template was stopped")
                    signal_mine(pid, signal.SIGCONT)
                    await bounded
                    t0 = time.monotonic()
                    storm_on.set()
                # recovery: the fault → a cold tenant answered again (a fresh spawn on a live template)
                tenant = rng.choice(cold)
                info = mgr.processes().get(tenant)
                if info is not None:
                    signal_mine(info.pid, signal.SIGKILL)
                    await wait_until(absent(mgr, tenant), 1.0)
                for _ in range(20):
                    if await load.one(tenant, coldfig) is None:
                        fig.recovery.append(time.monotonic() - t0)
                        break
                else:
                    fig.problems.append("cold tenants did not recover after 20 tries")
            await asyncio.sleep(0.5)
        finally:
            storm_on.set()
            await load.stop()
            await asyncio.gather(*spawners, return_exceptions=True)
        if stop:
            fig.notes.append(f"template replaced while stopped: {replaced_while_stopped} of {sz.stop_rounds}")
        fig.hung += coldfig.hung
        fig.wrong += coldfig.wrong
        if load.untyped:
            fig.problems.append(f"untyped failures {dict(load.untyped)}")
        if sum(fig.failed.values()):
            fig.problems.append("warm tenants had failed requests")
        fig.notes += [f"warm: {sz.warm} tenants, {sz.concurrency} in flight, {load.latency_note()}",
                      f"cold ({sz.cold} tenants, {sz.spawners} spawners): {coldfig.answers} answers, failed "
                      f"{dict(coldfig.failed) or 0}, hung {coldfig.hung}",
                      f"template restarts {mgr.template.restarts}",
                      "recovery = " + ("SIGCONT" if stop else "SIGKILL") + " → a cold tenant answered"]


async def child_stop(sz: Sizes, fig: Figures, rng: random.Random) -> None:
    """SIGSTOP a tenant's child: its request must fail with RedoTimeout within about request_timeout, and the
    tenant get a new child. Recovery: SIGSTOP → the tenant answered on a new pid."""
    rt = sz.child_stop_timeout
    async with WalRedoManager(request_timeout=rt) as mgr:
        others, victims = tenant_ids(4, 4), tenant_ids(5, max(1, sz.child_stops))
        await asyncio.gather(*(mgr.ping(t) for t in others + victims))
        bound = rt + mgr.watchdog_period + 1.0
        load = Load(mgr, fig, others, max_records=sz.max_records, rng=rng, hang_after=3 * rt + 5.0)
        load.start(min(8, sz.concurrency))
        probe_fig = Figures("probe")
        took: list[float] = []
        try:
            for i in range(sz.child_stops):
                victim = victims[i % len(victims)]
                await mgr.ping(victim)
                pid = mgr.processes()[victim].pid
                t0 = time.monotonic()
                signal_mine(pid, signal.SIGSTOP)
                probe = Load(mgr, probe_fig, [], max_records=sz.max_records, rng=rng, hang_after=bound + 5.0)
                err = await probe.one(victim)
                took.append(time.monotonic() - t0)
                if not isinstance(err, RedoTimeout):
                    fig.problems.append(f"stopped child: {'answer' if err is None else error_name(err)}, "
                                        "not RedoTimeout")
                elif took[-1] > bound:
                    fig.problems.append(f"RedoTimeout after {took[-1]:.2f} s > {bound:.2f} s")
                gone = await wait_until(exited(pid),
                                       5.0, 0.01)
                if gone is None:
                    fig.problems.append(f"stopped child {pid} still alive 5 s after its timeout")
                    signal_mine(pid, signal.SIGKILL)
                if await probe.one(victim) is None and mgr.processes().get(victim) is not None:
                    new = mgr.processes()[victim].pid
                    if new == pid:
                        fig.problems.append("the stopped child was not replaced")
                    fig.recovery.append(time.monotonic() - t0)
                else:
                    fig.problems.append("the tenant did not answer after its child was replaced")
        finally:
            await load.stop()
        fig.answers += probe_fig.answers
        fig.wrong += probe_fig.wrong
        fig.hung += probe_fig.hung
        fig.failed.update(probe_fig.failed)
        fig.notes += [f"{sz.child_stops} stops, request_timeout {rt} s: stopped request ended after "
                      f"{p50_max(took)} (bound {bound:.2f} s)", f"stops counted: {stops_note(mgr)}",
                      "recovery = SIGSTOP → the tenant answered on a new child"]
