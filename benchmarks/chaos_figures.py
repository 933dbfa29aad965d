"""The campaign's bounds and its results: :class:`Sizes` (every size a scenario uses), :class:`Figures` (one
scenario's row) and :func:`table`, the report ``scripts/chaos`` prints. No processes here.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class Sizes:
    """Every bound of the campaign. The defaults are the full campaign; :meth:`short` is the test suite's."""

    tenants: int = 16  # kill storms
    concurrency: int = 32  # requests in flight (load of every in-process scenario)
    request_timeout: float = 10.0
    max_records: int = 20  # requests of the capture with at most this many records (fast, every rmgr)
    slow_kills: int = 400
    slow_rate: float = 20.0  # kills/s
    fast_kills: int = 600
    fast_rate: float = 100.0
    warm: int = 8  # template scenarios: warm tenants under load
    cold: int = 16  # and a ring of cold tenants whose children are killed so that each request spawns
    spawners: int = 4
    template_kills: int = 20
    template_kill_interval: float = 1.0
    stop_rounds: int = 2
    stop_request_timeout: float = 3.0
    stop_max: float = 40.0  # the template stays stopped until the cold probe ended, at most this long
    child_stops: int = 10
    child_stop_timeout: float = 1.0
    parent_kills: int = 5
    parent_tenants: int = 8
    parent_gone_bound: float = 5.0
    emfile_levels: int = 12  # fd headroom 0..levels-1 above what is open when the limit is lowered
    emfile_requests: int = 16  # per level
    soak_seconds: float = 600.0
    soak_tenants: int = 24
    soak_concurrency: int = 16
    soak_rotate: float = 1.0  # a fresh tenant replaces one every this many seconds (the rest go idle)
    soak_idle: float = 3.0  # idle_timeout of the soak's manager
    soak_kill_rate: float = 1.0  # child kills/s
    soak_template_every: float = 60.0
    sample_seconds: float = 5.0

    @classmethod
    def short(cls) -> Sizes:
        """Seconds per scenario, a few dozen kills: for tests (no timing is asserted there)."""
        return cls(tenants=6, concurrency=12, slow_kills=20, slow_rate=20.0, fast_kills=30, fast_rate=100.0,
                   warm=3, cold=4, spawners=2, template_kills=3, template_kill_interval=0.5, stop_rounds=1,
                   stop_request_timeout=2.0, stop_max=6.0, child_stops=2, parent_kills=2, parent_tenants=3,
                   emfile_levels=2, emfile_requests=6, soak_seconds=12.0, soak_tenants=6, soak_concurrency=6,
                   soak_rotate=0.5, soak_idle=1.0, soak_kill_rate=2.0, soak_template_every=5.0, sample_seconds=1.0)


@dataclass
class Figures:
    """One scenario's row of the table."""

    scenario: str
    answers: int = 0
    wrong: int = 0
    failed: Counter[str] = field(default_factory=Counter)  # by exception type (and its cause's type)
    hung: int = 0  # no answer nor error within the bound: cancelled and counted here
    recovery: list[float] = field(default_factory=list)  # seconds, the scenario says from what to what
    drift: str = "–"
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # why the row fails besides wrong/hung/leftovers
    leftovers: int = 0
    elapsed: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems and self.wrong == 0 and self.hung == 0 and self.leftovers == 0


def error_name(exc: BaseException) -> str:
    cause = exc.__cause__
    return f"{type(exc).__name__}({type(cause).__name__})" if cause is not None else type(exc).__name__


def p50_max(values: Sequence[float]) -> str:
    if not values:
        return "–"
    return f"p50 {statistics.median(values) * 1e3:.0f} ms, max {max(values) * 1e3:.0f} ms (n={len(values)})"


def table(figs: Sequence[Figures], leftover: Sequence[str]) -> str:
    head = ["scenario", "verdict", "answers", "wrong", "failed (by type)", "hung", "recovery", "drift", "time",
            "figures"]
    rows = []
    for f in figs:
        why = list(f.problems)
        why += [f"{f.wrong} wrong pages"] if f.wrong else []
        why += [f"{f.hung} hung requests"] if f.hung else []
        why += [f"{f.leftovers} leftover processes"] if f.leftovers else []
        verdict = "ok" if f.ok else "FAIL: " + "; ".join(why)
        failed = ", ".join(f"{k} {v}" for k, v in sorted(f.failed.items())) or "0"
        rows.append([f.scenario, verdict, f"{f.answers:,}", str(f.wrong), failed, str(f.hung), p50_max(f.recovery),
                     f.drift, f"{f.elapsed:.0f} s", "; ".join(f.notes)])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in r) + " |" for r in rows]
    lines.append(f"\nleft at the end: {', '.join(leftover) if leftover else 'no process, no zombie'}")
    return "\n".join(lines)
