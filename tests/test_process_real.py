"""forkserver.process.WalRedoProcess with the real worker, no stand-in engine: a ping, a round trip of the
real engine on real PostgreSQL 15 WAL checked against its own replay, and a process spawned through the
template (tests/test_process.py has the protocol tests on stand-in children).
"""

import asyncio
import signal

import pytest
from test_process import PAGE, TAG
from walredo_child import fork_child

from forkserver import RedoFailed, WalRedoProcess
from walredo_template import worker


async def test_real_worker_without_stand_in_answers_ping(monkeypatch):
    # Whatever engine is installed, the real worker module pings (the template preloads exactly this).
    monkeypatch.undo()
    child = fork_child(worker.main)
    proc = WalRedoProcess(child)
    try:
        await proc.ping()
    finally:
        await proc.aclose()
        child.cleanup()


# --- the real engine, on real PostgreSQL 15 WAL ----------------------------------------------------------


def _real_chains(small_wal, max_pages=40):
    """(tag, records, expected page) for pages of the small real WAL capture whose chain the engine can
    replay from no base image, with the expected page computed by the engine in this process."""
    from walredo_template.pg.errors import RedoError
    from walredo_template.redo import apply_records
    from walredo_tools.walreader import group_by_page, read_wal

    wal_dir, start, _ = small_wal
    by_page = group_by_page(read_wal(wal_dir, start_lsn=start))
    out = []
    for tag, chain in by_page.items():
        if tag.forknum != 0:
            continue
        # Pages that existed before the capture need a base image we do not have: start the chain at the
        # first record that initialises the page or carries its image.
        for k in range(min(len(chain), 4)):
            try:
                expected = apply_records(tag, None, chain[k:])
            except RedoError:
                continue
            out.append((tag, chain[k:], expected))
            break
        if len(out) >= max_pages:
            break
    return out


async def test_real_redo_round_trip(small_wal, monkeypatch):
    monkeypatch.undo()  # the real engine, as the template preloads it
    chains = _real_chains(small_wal)
    assert len(chains) >= 10, "the capture should give many replayable pages"
    child = fork_child(worker.main)
    proc = WalRedoProcess(child, tenant="real")
    try:
        # Pipelined: every page at once, and each chain's first half too (the page at an earlier LSN).
        from walredo_template.redo import apply_records

        jobs = []
        for tag, records, expected in chains:
            jobs.append((tag, records, expected))
            half = records[: (len(records) + 1) // 2]
            if len(half) < len(records):
                jobs.append((tag, half, apply_records(tag, None, half)))
        pages = await asyncio.gather(*(proc.redo(t, r[-1][0], None, r) for t, r, _ in jobs))
        assert pages == [e for _, _, e in jobs]
        assert len(jobs) > len(chains) and all(len(p_) == 8192 for p_ in pages)

        # Real engine errors come back typed and the process keeps serving.
        (tag, records, expected), (other_tag, _, _) = chains[0], chains[1]
        with pytest.raises(RedoFailed) as e:
            await proc.redo(other_tag._replace(relnode=other_tag.relnode + 999), records[0][0], None, records[:1])
        assert e.value.code == "block-not-referenced"
        with pytest.raises(RedoFailed) as e:
            await proc.redo(tag, 1, None, [(1, b"\x00" * 30)])
        assert e.value.code == "invalid-record"
        with pytest.raises(RedoFailed) as e:
            await proc.redo(tag, records[0][0], b"\xff" * 8192, records[:1])
        assert e.value.code in ("invalid-page", "invalid-record")
        assert await proc.redo(tag, records[-1][0], None, records) == expected
    finally:
        await proc.aclose()
        child.cleanup()


async def test_through_the_template(monkeypatch):
    # The real path: the template preloads walredo_template.worker and forks the child; WalRedoProcess
    # drives the template's ChildHandle.
    monkeypatch.undo()
    from forkserver.client import TemplateClient

    client = await TemplateClient.launch(worker="walredo_template.worker:main")
    try:
        handle = await client.spawn("0123456789abcdef0123456789abcdef")
        proc = WalRedoProcess(handle, tenant=handle.tenant)
        try:
            await asyncio.gather(*(proc.ping() for _ in range(100)))
            with pytest.raises(RedoFailed) as e:
                await proc.redo(TAG, 1, None, [(1, b"\x00" * 30)])
            assert e.value.code == "invalid-record"
            with pytest.raises(RedoFailed) as e:
                await proc.redo(TAG, 1, PAGE, [], pg_version=14)
            assert e.value.code == "unsupported-pg-version"
            await proc.ping()
        finally:
            assert await proc.aclose() == -signal.SIGKILL
    finally:
        await client.aclose()
