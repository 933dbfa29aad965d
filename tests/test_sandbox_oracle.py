"""The oracle's redo cases through sandboxed walredo children: every kind of record PostgreSQL wrote in the
heap and index configurations (the ``samples`` the shared replays keep: up to 25 single-record cases per
record kind and block role) is sent through a real ``WalRedoManager`` — template, seccomp-filtered children —
and must give exactly what the engine gives in-process: the same page, or the same typed error. A code path
that needed a syscall outside the allowlist would end its child with SIGSYS and fail here as
``RedoProcessFailed``; a lazy import after the sandbox would do the same."""

from __future__ import annotations

import asyncio

import psutil
import pytest

from forkserver import RedoFailed, WalRedoManager
from walredo_template.pg.errors import RedoError
from walredo_template.redo import apply_records
from walredo_template.worker import redo_error_code


@pytest.mark.parametrize("name", ["default", "checksums", "indexes"])
async def test_every_record_kind_through_sandboxed_children(oracle_results, name):
    res = oracle_results.get(name)
    wal_log_hints = name == "checksums"
    cases = res.samples
    assert len(cases) > 100
    kinds = {key for *_rest, key in cases}
    expected = []
    for tag, base, end, raw, _key in cases:
        try:
            expected.append(apply_records(tag, base, [(end, raw)], wal_log_hints=wal_log_hints))
        except RedoError as e:
            expected.append(redo_error_code(e))
    tenants = [f"{0x5A4D0000 + i:032x}" for i in range(4)]
    async with WalRedoManager(request_timeout=30.0) as mgr:
        sem = asyncio.Semaphore(32)

        async def one(i: int) -> bytes | str:
            tag, base, end, raw, _key = cases[i]
            async with sem:
                try:
                    return await mgr.request_redo(tenants[i % 4], tag, end, base, [(end, raw)],
                                                  wal_log_hints=wal_log_hints)
                except RedoFailed as e:
                    return e.code

        got = await asyncio.gather(*(one(i) for i in range(len(cases))))
        pids = [info.pid for info in mgr.processes().values()]
        stats = mgr.metrics.registry.get_sample_value(
            "pageserver_wal_redo_processes_stopped_total", {"cause": "sandbox_violation"})
    wrong = [(cases[i][4], expected[i] if isinstance(expected[i], str) else "page",
              got[i] if isinstance(got[i], str) else "page") for i in range(len(cases)) if got[i] != expected[i]]
    assert not wrong, wrong[:10]
    assert len(pids) == 4, "a child was replaced: a sandbox violation or crash on a real record"
    assert not stats
    assert not psutil.Process().children(recursive=True)
    print(f"\n[{name}] {len(cases)} redo cases of {len(kinds)} record kinds through sandboxed children: all equal")
